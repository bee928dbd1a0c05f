//! `cleave-target`: where shares live.
//!
//! - [`Target`]: one small trait: create-only put, get (whole or range), delete, list, health.
//! - [`file`]: a local directory (`file:///path`); durable puts by fsync and an atomic link.
//! - [`node`]: a Cleave storage node (`node://host:port`).
//! - [`s3`]: an S3-compatible bucket and prefix, through `object_store`.
//! - [`faulty`]: a wrapper that injects latency, errors, outages and corruption into any target.
//! - [`open`]: a target from its URI.

pub mod error;
pub mod faulty;
pub mod file;
pub mod node;
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
    if let Some(addr) = uri.strip_prefix("node://") {
        let addr = addr.trim_end_matches('/');
        if addr.is_empty() || addr.contains('/') {
            return Err(TargetError::InvalidUri(format!("{uri}: use node://host:port")));
        }
        let token = std::env::var("CLEAVE_NODE_TOKEN").map_err(|_| {
            TargetError::InvalidUri(format!("{uri}: set CLEAVE_NODE_TOKEN (derived from the cluster secret)"))
        })?;
        return Ok(Arc::new(node::NodeTarget::new(addr.to_string(), token)));
    }
    Err(TargetError::InvalidUri(format!("{uri}: use file:///path or s3://bucket/prefix")))
}
