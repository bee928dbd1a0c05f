//! `cleave-target`: where shares live.
//!
//! - [`Target`]: one small trait: create-only put, get (whole or range), delete, list, health.
//! - [`file`]: a local directory (`file:///path`); durable puts by fsync and an atomic link.
//! - [`s3`]: an S3-compatible bucket and prefix, through `object_store`.
//! - [`faulty`]: a wrapper that injects latency, errors, outages and corruption into any target.
//! - [`open`]: a target from its URI.

pub mod error;
pub mod faulty;
pub mod file;
pub mod s3;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

pub use error::TargetError;
pub use faulty::{Faults, FaultyTarget};

/// A place that stores objects by key. Objects are never overwritten.
#[async_trait::async_trait]
pub trait Target: Send + Sync + std::fmt::Debug {
    /// Display name: the URI without credentials.
    fn name(&self) -> &str;
    /// Create-only: `AlreadyExists` if `key` exists. Durable once Ok is returned.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), TargetError>;
    async fn get(&self, key: &str) -> Result<Bytes, TargetError>;
    /// A range past the end is clamped to the object's end.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, TargetError>;
    /// Idempotent: deleting a missing key is Ok.
    async fn delete(&self, key: &str) -> Result<(), TargetError>;
    /// Every key starting with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, TargetError>;
    async fn health(&self) -> Result<(), TargetError>;
}

pub type DynTarget = Arc<dyn Target>;

/// Opens `file:///abs/path` or `s3://bucket/prefix?endpoint=URL&region=R`.
/// `node://host:port` comes with the storage-node issue.
pub fn open(uri: &str) -> Result<DynTarget, TargetError> {
    if let Some(path) = uri.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(TargetError::InvalidUri(format!("{uri}: file:// needs an absolute path")));
        }
        return Ok(Arc::new(file::FileTarget::new(path.into())?));
    }
    if uri.starts_with("s3://") {
        return Ok(Arc::new(s3::S3Target::from_uri(uri)?));
    }
    if uri.starts_with("node://") {
        return Err(TargetError::Unsupported(format!("{uri}: node:// targets come with storage nodes")));
    }
    Err(TargetError::InvalidUri(format!("{uri}: use file:///path or s3://bucket/prefix")))
}
