//! An S3-compatible bucket and prefix, through `object_store`. Credentials come from
//! the usual AWS environment variables and never appear in names, `Debug` or errors.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{BackoffConfig, GetOptions, GetRange, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig};

use crate::error::check_key;
use crate::{redact_uri, Target, TargetError};

pub struct S3Target {
    store: AmazonS3,
    /// The URI path: every key lives below it. Empty, or a valid key without a trailing '/'.
    prefix: String,
    name: String,
}

// By hand: the store's own Debug includes its configuration, and we print nothing we did not choose.
impl std::fmt::Debug for S3Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Target").field("name", &self.name).finish()
    }
}

/// Dispersal reads around a slow or dead target, so fail within seconds instead of
/// object_store's default of ten retries over up to three minutes.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(20),
    }
}

impl S3Target {
    /// `s3://bucket/prefix?endpoint=http://host:port&region=us-east-1`
    pub fn from_uri(uri: &str) -> Result<Self, TargetError> {
        let bad = |m: &str| TargetError::InvalidUri(format!("{}: {m}", redact_uri(uri)));
        let url = url::Url::parse(uri).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "s3" {
            return Err(bad("not an s3:// URI"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("credentials do not belong in the URI; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"));
        }
        if url.port().is_some() {
            return Err(bad("s3://bucket takes no port; put the server in ?endpoint="));
        }
        if url.fragment().is_some() {
            return Err(bad("unexpected #fragment"));
        }
        let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| bad("missing bucket"))?.to_string();
        let prefix = url.path().trim_matches('/').to_string();
        if !prefix.is_empty() && check_key(&prefix).is_err() {
            return Err(bad("the prefix must be a plain relative path (no '..', '//', '%', hidden parts)"));
        }
        if prefix.contains('%') {
            return Err(bad("the prefix must not need percent-encoding"));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket).with_retry(retry_config());
        let mut endpoint = None;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "endpoint" => {
                    let e = url::Url::parse(&v).map_err(|e| bad(&format!("endpoint: {e}")))?;
                    if !matches!(e.scheme(), "http" | "https") || e.host_str().is_none() {
                        return Err(bad("endpoint must be an http:// or https:// URL"));
                    }
                    if !e.username().is_empty() || e.password().is_some() {
                        return Err(bad("credentials do not belong in the endpoint; use AWS_* variables"));
                    }
                    endpoint = Some(v.trim_end_matches('/').to_string());
                }
                "region" if !v.is_empty() => builder = builder.with_region(v.as_ref()),
                other => return Err(bad(&format!("unknown parameter {other:?} (use endpoint, region)"))),
            }
        }
        if let Some(e) = &endpoint {
            builder = builder.with_endpoint(e).with_virtual_hosted_style_request(false);
            if e.starts_with("http://") {
                builder = builder.with_allow_http(true);
            }
        }
        let store = builder.build().map_err(|e| bad(&e.to_string()))?;
        let mut name = format!("s3://{bucket}/{prefix}");
        if let Some(e) = &endpoint {
            name.push_str(&format!("?endpoint={e}"));
        }
        Ok(S3Target { store, prefix, name })
    }

    /// `Path::parse`, not `Path::from`: the latter percent-encodes characters such as '%',
    /// and `list` would then return a different key than was put.
    fn path(&self, key: &str) -> Result<Path, TargetError> {
        check_key(key)?;
        let full = if self.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.prefix) };
        Path::parse(full).map_err(|_| TargetError::InvalidKey(key.to_string()))
    }

    /// The object_store directory to list for `prefix`: its deepest '/'-ended part, so
    /// listing one volume does not walk the bucket. None: nothing can match.
    fn list_base(&self, prefix: &str) -> Option<Option<Path>> {
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        if !dir.is_empty() && check_key(dir).is_err() {
            return None;
        }
        let full = match (self.prefix.is_empty(), dir.is_empty()) {
            (true, true) => return Some(None),
            (true, false) => dir.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{dir}", self.prefix),
        };
        Path::parse(full).ok().map(Some)
    }

    fn err(&self, key: &str, e: object_store::Error) -> TargetError {
        match e {
            object_store::Error::NotFound { .. } => TargetError::NotFound(format!("{}/{key}", self.name)),
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
                TargetError::AlreadyExists(format!("{}/{key}", self.name))
            }
            e => TargetError::Unavailable(format!("{}/{key}: {e}", self.name)),
        }
    }
}

#[async_trait::async_trait]
impl Target for S3Target {
    fn name(&self) -> &str {
        &self.name
    }

    /// Create-only through `If-None-Match: *`. A store configured without conditional puts
    /// (`AWS_CONDITIONAL_PUT=disabled`) gets a HEAD-then-PUT instead, which is racy: two
    /// writers of one key can both succeed, the last one winning.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), TargetError> {
        let path = self.path(key)?;
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&path, PutPayload::from(data.clone()), opts).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotImplemented) => {
                match self.store.head(&path).await {
                    Ok(_) => return Err(TargetError::AlreadyExists(format!("{}/{key}", self.name))),
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.err(key, e)),
                }
                self.store.put(&path, PutPayload::from(data)).await.map(|_| ()).map_err(|e| self.err(key, e))
            }
            Err(e) => Err(self.err(key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, TargetError> {
        let path = self.path(key)?;
        let r = self.store.get(&path).await.map_err(|e| self.err(key, e))?;
        r.bytes().await.map_err(|e| self.err(key, e))
    }

    /// One ranged GET; S3 clamps the end itself. Only a range starting at or past the end
    /// (which S3 refuses) costs a HEAD, to tell "empty" from "missing".
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, TargetError> {
        let path = self.path(key)?;
        if range.start < range.end {
            let opts = GetOptions { range: Some(GetRange::Bounded(range.clone())), ..Default::default() };
            let first = match self.store.get_opts(&path, opts).await {
                Ok(r) => return r.bytes().await.map_err(|e| self.err(key, e)),
                Err(e @ object_store::Error::NotFound { .. }) => return Err(self.err(key, e)),
                Err(e) => e,
            };
            let len = self.store.head(&path).await.map_err(|e| self.err(key, e))?.size;
            return if range.start >= len { Ok(Bytes::new()) } else { Err(self.err(key, first)) };
        }
        self.store.head(&path).await.map_err(|e| self.err(key, e))?;
        Ok(Bytes::new())
    }

    async fn delete(&self, key: &str) -> Result<(), TargetError> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, TargetError> {
        let Some(base) = self.list_base(prefix) else { return Ok(Vec::new()) };
        let metas: Vec<_> = self
            .store
            .list(base.as_ref())
            .try_collect()
            .await
            .map_err(|e| TargetError::Unavailable(format!("{}: listing {prefix:?}: {e}", self.name)))?;
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let mut keys: Vec<String> = metas
            .into_iter()
            .filter_map(|m| m.location.as_ref().strip_prefix(&strip).map(str::to_string))
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn health(&self) -> Result<(), TargetError> {
        let base = if self.prefix.is_empty() { None } else { Some(Path::from(self.prefix.as_str())) };
        self.store
            .list_with_delimiter(base.as_ref())
            .await
            .map(|_| ())
            .map_err(|e| TargetError::Unavailable(format!("{}: {e}", self.name)))
    }
}
