//! An S3-compatible bucket and prefix, through `object_store`. Credentials come from
//! the usual AWS environment variables and never appear in names, `Debug` or errors.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientConfigKey, GetOptions, GetRange, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig,
};

use crate::error::check_key;
use crate::{S3Uri, Target, TargetError};

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

/// The HTTP client's limits, each applied unless the environment (`AWS_*`, as object_store
/// reads it) sets it. Shares are at most a chunk over M (about 350 KiB at 1 MiB, 3-of-5).
const CLIENT_LIMITS: [(ClientConfigKey, &str); 5] = [
    // A connection that does not open in this time is a dead endpoint: read around it.
    (ClientConfigKey::ConnectTimeout, "5s"),
    // A whole request, body included; a share moves in milliseconds on a healthy link.
    (ClientConfigKey::Timeout, "30s"),
    // Enough idle connections for the destager and readers (a few dozen requests in
    // flight per bucket at most), so bursts reuse connections rather than open new ones.
    (ClientConfigKey::PoolMaxIdlePerHost, "64"),
    // Idle connections close well before servers (S3 itself after about 20 s) drop them,
    // so a request rarely meets a half-closed connection.
    (ClientConfigKey::PoolIdleTimeout, "15s"),
    // HTTP/1.1: object_store's default, measured faster than HTTP/2 for many parallel
    // bodies (one TCP connection per request in flight).
    (ClientConfigKey::Http1Only, "true"),
];

/// The object_store client for `uri`, as `S3Target` uses it: limits above, retries bounded,
/// path-style requests to an explicit endpoint. Public for the plain-client reference bench.
pub fn client(uri: &S3Uri) -> Result<AmazonS3, TargetError> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(&uri.bucket).with_retry(retry_config());
    for (key, value) in CLIENT_LIMITS {
        let key = AmazonS3ConfigKey::Client(key);
        if builder.get_config_value(&key).is_none() {
            builder = builder.with_config(key, value);
        }
    }
    if let Some(region) = &uri.region {
        builder = builder.with_region(region);
    }
    if let Some(e) = &uri.endpoint {
        builder = builder.with_endpoint(e).with_virtual_hosted_style_request(false);
        if e.starts_with("http://") {
            builder = builder.with_allow_http(true);
        }
    }
    builder.build().map_err(|e| TargetError::InvalidUri(format!("{}: {e}", display_name(uri))))
}

/// The name leaves out the region: it does not change which objects are meant.
fn display_name(uri: &S3Uri) -> String {
    let mut name = format!("s3://{}/{}", uri.bucket, uri.prefix);
    if let Some(e) = &uri.endpoint {
        name.push_str(&format!("?endpoint={e}"));
    }
    name
}

impl S3Target {
    /// The bucket and prefix of `uri`; nothing is contacted until a call.
    pub fn new(uri: &S3Uri) -> Result<Self, TargetError> {
        Ok(S3Target { store: client(uri)?, prefix: uri.prefix.clone(), name: display_name(uri) })
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
