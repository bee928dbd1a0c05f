//! A target that lies on purpose: it lists objects that no one wrote, serves crafted bytes
//! for them, ignores deletes of its inventions, and can claim every put already exists.
//! The tests use it to show that nothing read from a target is trusted before its MAC.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::{DynTarget, Target, TargetError};

/// What the target invents, changeable while it is in use.
#[derive(Debug, Default)]
pub struct Lies {
    forged: Mutex<BTreeMap<String, Bytes>>,
    claim_exists: AtomicBool,
}

impl Lies {
    /// Lists `key` and serves `body` for it (over anything real at that name).
    pub fn forge(&self, key: &str, body: impl Into<Bytes>) {
        self.forged.lock().expect("not poisoned").insert(key.to_string(), body.into());
    }
    /// Every put answers `AlreadyExists` and stores nothing.
    pub fn set_claim_exists(&self, v: bool) {
        self.claim_exists.store(v, Ordering::SeqCst)
    }
    fn forged(&self, key: &str) -> Option<Bytes> {
        self.forged.lock().expect("not poisoned").get(key).cloned()
    }
}

#[derive(Debug)]
pub struct HostileTarget {
    inner: DynTarget,
    lies: Arc<Lies>,
}

impl HostileTarget {
    pub fn new(inner: DynTarget) -> Self {
        HostileTarget { inner, lies: Arc::new(Lies::default()) }
    }
    pub fn lies(&self) -> Arc<Lies> {
        self.lies.clone()
    }
}

#[async_trait::async_trait]
impl Target for HostileTarget {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), TargetError> {
        if self.lies.claim_exists.load(Ordering::SeqCst) || self.lies.forged(key).is_some() {
            return Err(TargetError::AlreadyExists(key.to_string()));
        }
        self.inner.put(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, TargetError> {
        match self.lies.forged(key) {
            Some(b) => Ok(b),
            None => self.inner.get(key).await,
        }
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, TargetError> {
        match self.lies.forged(key) {
            Some(b) => {
                let len = b.len() as u64;
                let (start, end) = (range.start.min(len), range.end.min(len));
                Ok(b.slice(start as usize..end.max(start) as usize))
            }
            None => self.inner.get_range(key, range).await,
        }
    }
    async fn delete(&self, key: &str) -> Result<(), TargetError> {
        // Inventions survive deletes: the target keeps lying.
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, TargetError> {
        let mut keys = self.inner.list(prefix).await?;
        keys.extend(self.lies.forged.lock().expect("not poisoned").keys().filter(|k| k.starts_with(prefix)).cloned());
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
    async fn health(&self) -> Result<(), TargetError> {
        self.inner.health().await
    }
}
