//! An S3-compatible bucket and prefix, through `object_store`. Credentials come from
//! the usual AWS environment variables and never appear in names or errors.

use std::ops::Range;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use crate::error::check_key;
use crate::{Target, TargetError};

#[derive(Debug)]
pub struct S3Target {
    store: AmazonS3,
    prefix: String,
    name: String,
}

impl S3Target {
    /// `s3://bucket/prefix?endpoint=http://host:port&region=us-east-1`
    pub fn from_uri(uri: &str) -> Result<Self, TargetError> {
        let bad = |m: &str| TargetError::InvalidUri(format!("{uri}: {m}"));
        let url = url::Url::parse(uri).map_err(|e| bad(&e.to_string()))?;
        let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| bad("missing bucket"))?.to_string();
        let prefix = url.path().trim_matches('/').to_string();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
        let mut region = None;
        let mut endpoint = None;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "endpoint" => endpoint = Some(v.to_string()),
                "region" => region = Some(v.to_string()),
                other => return Err(bad(&format!("unknown parameter {other:?} (use endpoint, region)"))),
            }
        }
        if let Some(r) = &region {
            builder = builder.with_region(r);
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

    fn path(&self, key: &str) -> Result<Path, TargetError> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() { Path::from(key) } else { Path::from(format!("{}/{key}", self.prefix)) })
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

    async fn put(&self, key: &str, data: Bytes) -> Result<(), TargetError> {
        let path = self.path(key)?;
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&path, PutPayload::from(data.clone()), opts).await {
            Ok(_) => Ok(()),
            // Servers without conditional writes: check, then write (racy, documented).
            Err(object_store::Error::NotImplemented) => {
                if self.store.head(&path).await.is_ok() {
                    return Err(TargetError::AlreadyExists(format!("{}/{key}", self.name)));
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

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, TargetError> {
        let path = self.path(key)?;
        let len = self.store.head(&path).await.map_err(|e| self.err(key, e))?.size;
        let (start, end) = (range.start.min(len), range.end.min(len).max(range.start.min(len)));
        if start == end {
            return Ok(Bytes::new());
        }
        self.store.get_range(&path, start..end).await.map_err(|e| self.err(key, e))
    }

    async fn delete(&self, key: &str) -> Result<(), TargetError> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, TargetError> {
        let base = if self.prefix.is_empty() { None } else { Some(Path::from(self.prefix.as_str())) };
        let metas: Vec<_> = self.store.list(base.as_ref()).try_collect().await.map_err(|e| self.err(prefix, e))?;
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
