//! `cleave-target`: where shares live.
//!
//! - [`Target`]: one small trait: create-only put, get (whole or range), delete, list, health.
//! - [`file`]: a local directory (`file:///path`); durable puts by fsync and an atomic link.
//! - [`node`]: a Cleave storage node (`node://host:port`), over mutual TLS.
//! - [`s3`]: an S3-compatible bucket and prefix, through `object_store`.
//! - [`faulty`]: a wrapper that injects latency, errors, outages and corruption into any target.
//! - [`hostile`]: a wrapper that lies: forged listings and objects, false "already exists".
//! - [`open`]: a target from its URI.

pub mod error;
pub mod faulty;
pub mod file;
pub mod hostile;
pub mod node;
pub mod s3;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

pub use error::TargetError;
pub use faulty::{Faults, FaultyTarget};
pub use hostile::{HostileTarget, Lies};

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

/// Opens `file:///abs/path`, `s3://bucket/prefix?endpoint=URL&region=R` or `node://host:port`.
/// A `file://` root is not created: one that is missing is a target that is down. Use
/// [`create`] for a target being set up for a new volume.
///
/// A `file://` path is taken literally (no percent-decoding), so `format!("file://{}", p.display())`
/// round-trips. Errors show the URI with any user-info and unknown parameter values masked, so a
/// credential pasted into a URI does not end up in logs.
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
    let bad = |m: &str| TargetError::InvalidUri(format!("{}: {m}", redact_uri(uri)));
    if let Some(path) = uri.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(bad("file:// needs an absolute path, as in file:///var/lib/cleave"));
        }
        if path.contains('\0') {
            return Err(bad("the path contains a NUL byte"));
        }
        if create_root {
            return Ok(Arc::new(file::FileTarget::new(path.into())?));
        }
        return Ok(Arc::new(file::FileTarget::open(path.into())));
    }
    if uri.starts_with("s3://") {
        return Ok(Arc::new(s3::S3Target::from_uri(uri)?));
    }
    if let Some(addr) = uri.strip_prefix("node://") {
        let addr = addr.trim_end_matches('/');
        if addr.is_empty() || addr.contains(['/', '?', '#', '@']) {
            return Err(bad("use node://host:port"));
        }
        let access = creds.node.clone().ok_or_else(|| {
            bad("node:// targets need the gateway's node credentials (open them through a control server)")
        })?;
        return Ok(Arc::new(node::NodeTarget::new(addr.to_string(), access)));
    }
    Err(bad("unknown scheme; use file:///path, s3://bucket/prefix or node://host:port"))
}

/// The URI for messages: user-info and the values of parameters other than `endpoint` and
/// `region` become `***`, since either may hold a credential.
pub(crate) fn redact_uri(uri: &str) -> String {
    let (scheme, rest) = match uri.split_once("://") {
        Some((s, r)) => (s, r),
        None => {
            let lower = uri.to_ascii_lowercase();
            return if lower.contains(['@', '?']) || lower.contains("%40") {
                "***".to_string()
            } else {
                uri.to_string()
            };
        }
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if k == "endpoint" || k == "region" => format!("{k}={}", redact_uri(v)),
                Some((k, _)) => format!("{k}=***"),
                None => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_uri;

    #[test]
    fn redaction() {
        assert_eq!(redact_uri("file:///a/b"), "file:///a/b");
        assert_eq!(redact_uri("s3://AK:SECRET@bucket/p"), "s3://***@bucket/p");
        assert_eq!(
            redact_uri("s3://b/p?endpoint=http://u:pw@h:1&region=r&secret=SECRET"),
            "s3://b/p?endpoint=http://***@h:1&region=r&secret=***"
        );
        assert_eq!(redact_uri("garbage@SECRET"), "***");
        assert_eq!(redact_uri("s3://b/p?endpoint=http%3A%2F%2Fu%3Apw%40h"), "s3://b/p?endpoint=***");
        assert_eq!(redact_uri(""), "");
    }
}
