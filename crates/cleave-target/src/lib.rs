//! `cleave-target`: where shares live.
//!
//! - [`Target`]: one small trait: create-only put, get (whole or range), delete, list, health.
//! - [`file`]: a local directory (`file:///path`); durable puts by fsync and an atomic link.
//! - [`node`]: a Cleave storage node (`node://host:port`), over mutual TLS.
//! - [`s3`]: an S3-compatible bucket and prefix, through `object_store`.
//! - [`faulty`]: a wrapper that injects latency, errors, outages and corruption into any target.
//! - [`hostile`]: a wrapper that lies: forged listings and objects, false "already exists".
//! - [`uri`]: [`TargetUri`], a target's location, parsed once.
//! - [`open`]: a target from its URI.
//! - `testing` (feature `testing`): the conformance suite every backend runs.

pub mod error;
pub mod faulty;
pub mod file;
pub mod hostile;
pub mod node;
pub mod s3;
#[cfg(feature = "testing")]
pub mod testing;
pub mod uri;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

pub use error::TargetError;
pub use faulty::{Faults, FaultyTarget};
pub use hostile::{HostileTarget, Lies};
pub use uri::{S3Uri, TargetUri};

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

/// Opens `file:///abs/path`, `s3://bucket/prefix?endpoint=URL&region=R` or `node://host:port`
/// (see [`TargetUri`]). A `file://` root is not created: one that is missing is a target that is
/// down. Use [`create`] for a target being set up for a new volume.
///
/// `node://` targets need the gateway's node credentials: use [`open_with`].
pub fn open(uri: &str) -> Result<DynTarget, TargetError> {
    open_uri(uri, &Credentials::default(), false)
}

/// Like [`open`], but creates a missing `file://` root: for a new volume's targets only.
pub fn create(uri: &str) -> Result<DynTarget, TargetError> {
    open_uri(uri, &Credentials::default(), true)
}

/// Credentials for targets, passed explicitly (never read from the environment).
#[derive(Clone, Default, Debug)]
pub struct Credentials {
    /// How to reach storage nodes; without it, `node://` targets cannot be opened.
    pub node: Option<node::NodeAccess>,
}

/// [`open`] with credentials.
pub fn open_with(uri: &str, creds: &Credentials) -> Result<DynTarget, TargetError> {
    open_uri(uri, creds, false)
}

/// [`create`] with credentials.
pub fn create_with(uri: &str, creds: &Credentials) -> Result<DynTarget, TargetError> {
    open_uri(uri, creds, true)
}

fn open_uri(uri: &str, creds: &Credentials, create_root: bool) -> Result<DynTarget, TargetError> {
    open_parsed(&uri.parse()?, creds, create_root)
}

/// A target at an already parsed location; `create_root` as in [`create`].
pub fn open_parsed(uri: &TargetUri, creds: &Credentials, create_root: bool) -> Result<DynTarget, TargetError> {
    Ok(match uri {
        TargetUri::File(path) if create_root => Arc::new(file::FileTarget::new(path.clone())?),
        TargetUri::File(path) => Arc::new(file::FileTarget::open(path.clone())),
        TargetUri::S3(s3) => Arc::new(s3::S3Target::new(s3)?),
        TargetUri::Node(addr) => {
            let access = creds.node.clone().ok_or_else(|| {
                TargetError::InvalidUri(format!(
                    "{uri}: node:// targets need the gateway's node credentials (open them through a control server)"
                ))
            })?;
            Arc::new(node::NodeTarget::new(addr.clone(), access))
        }
    })
}
