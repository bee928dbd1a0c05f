//! A wrapper that makes any target misbehave on demand: the tests' main tool.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::{DynTarget, Target, TargetError};

/// Knobs, changeable while the target is in use.
#[derive(Debug, Default)]
pub struct Faults {
    down: AtomicBool,
    fail_puts: AtomicBool,
    corrupt_reads: AtomicBool,
    latency_us: AtomicU64,
    /// Error probability in millionths.
    error_ppm: AtomicU64,
    ops: AtomicU64,
}

impl Faults {
    pub fn set_down(&self, v: bool) {
        self.down.store(v, Ordering::SeqCst)
    }
    pub fn set_fail_puts(&self, v: bool) {
        self.fail_puts.store(v, Ordering::SeqCst)
    }
    pub fn set_corrupt_reads(&self, v: bool) {
        self.corrupt_reads.store(v, Ordering::SeqCst)
    }
    pub fn set_latency(&self, d: Duration) {
        self.latency_us.store(d.as_micros() as u64, Ordering::SeqCst)
    }
    pub fn set_error_rate(&self, p: f64) {
        self.error_ppm.store((p.clamp(0.0, 1.0) * 1e6) as u64, Ordering::SeqCst)
    }
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    async fn before(&self, name: &str) -> Result<(), TargetError> {
        self.ops.fetch_add(1, Ordering::SeqCst);
        let latency = self.latency_us.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_micros(latency)).await;
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(TargetError::Unavailable(format!("{name}: injected outage")));
        }
        let ppm = self.error_ppm.load(Ordering::SeqCst);
        if ppm > 0 && fastrand::u64(0..1_000_000) < ppm {
            return Err(TargetError::Unavailable(format!("{name}: injected error")));
        }
        Ok(())
    }

    fn corrupt(&self, data: Bytes) -> Bytes {
        if !self.corrupt_reads.load(Ordering::SeqCst) || data.is_empty() {
            return data;
        }
        let mut v = data.to_vec();
        let i = fastrand::usize(..v.len());
        v[i] ^= 1 << fastrand::u8(0..8);
        Bytes::from(v)
    }
}

/// Any target, with [`Faults`].
#[derive(Debug)]
pub struct FaultyTarget {
    inner: DynTarget,
    faults: Arc<Faults>,
    name: String,
}

impl FaultyTarget {
    pub fn new(inner: DynTarget) -> Self {
        let name = format!("faulty({})", inner.name());
        FaultyTarget { inner, faults: Arc::new(Faults::default()), name }
    }
    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }
}

#[async_trait::async_trait]
impl Target for FaultyTarget {
    fn name(&self) -> &str {
        &self.name
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), TargetError> {
        self.faults.before(&self.name).await?;
        if self.faults.fail_puts.load(Ordering::SeqCst) {
            return Err(TargetError::Unavailable(format!("{}: injected put failure", self.name)));
        }
        self.inner.put(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, TargetError> {
        self.faults.before(&self.name).await?;
        self.inner.get(key).await.map(|d| self.faults.corrupt(d))
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, TargetError> {
        self.faults.before(&self.name).await?;
        self.inner.get_range(key, range).await.map(|d| self.faults.corrupt(d))
    }
    async fn delete(&self, key: &str) -> Result<(), TargetError> {
        self.faults.before(&self.name).await?;
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, TargetError> {
        self.faults.before(&self.name).await?;
        self.inner.list(prefix).await
    }
    async fn health(&self) -> Result<(), TargetError> {
        self.faults.before(&self.name).await?;
        self.inner.health().await
    }
}
