//! Talking to the N targets of a volume: writes that count once a quorum has them,
//! and reads that ask the fastest targets first, hedge a late one, and read more
//! when a share turns out bad.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cleave_split::{ChunkId, Codec, DecodeError, Keyring};
use cleave_target::{DynTarget, TargetError};
use futures::stream::{FuturesUnordered, StreamExt};

/// Outcome of writing one object's N shares.
#[derive(Debug, Default)]
pub struct PutOutcome {
    pub stored: Vec<usize>,
    pub failed: Vec<(usize, String)>,
    /// Indices where a leftover of an interrupted attempt was in the way (and replaced).
    pub existed: Vec<usize>,
}

/// Per-target health and speed, learned from every operation.
#[derive(Debug)]
pub struct TargetStats {
    /// Exponentially weighted latency, microseconds.
    latency_us: AtomicU64,
    up: AtomicBool,
    last_error: std::sync::Mutex<Option<String>>,
    /// Operations finished, and those that failed for a reason that marks the target down.
    requests: AtomicU64,
    errors: AtomicU64,
}

/// A target's statistics as read at one moment, for metrics.
#[derive(Clone, Debug)]
pub struct TargetReport {
    /// The target's display name (its URI without credentials).
    pub name: String,
    pub up: bool,
    /// Exponentially weighted request latency.
    pub latency: Duration,
    pub requests: u64,
    pub errors: u64,
}

impl TargetStats {
    fn record(&self, started: Instant, result: Result<(), &TargetError>) {
        let us = started.elapsed().as_micros().min(u64::MAX as u128) as u64;
        let old = self.latency_us.load(Ordering::Relaxed);
        self.latency_us.store(if old == 0 { us } else { (old * 7 + us) / 8 }, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) | Err(TargetError::NotFound(_)) | Err(TargetError::AlreadyExists(_)) => {
                self.up.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.up.store(false, Ordering::Relaxed);
                *self.last_error.lock().expect("not poisoned") = Some(e.to_string());
            }
        }
    }
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("not poisoned").clone()
    }
}

/// The N targets of a volume, in share-index order.
#[derive(Debug)]
pub struct Dispersal {
    /// Swapped one at a time when a volume moves off a target.
    targets: std::sync::RwLock<Vec<DynTarget>>,
    stats: Vec<TargetStats>,
    put_timeout: Duration,
    /// Bytes of shares stored, over all targets: what the volume costs them in writes.
    stored_bytes: AtomicU64,
}

impl Dispersal {
    pub fn new(targets: Vec<DynTarget>, put_timeout: Duration) -> Self {
        let stats = targets
            .iter()
            .map(|_| TargetStats {
                latency_us: AtomicU64::new(0),
                up: AtomicBool::new(true),
                last_error: std::sync::Mutex::new(None),
                requests: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            })
            .collect();
        Dispersal { targets: std::sync::RwLock::new(targets), stats, put_timeout, stored_bytes: AtomicU64::new(0) }
    }

    /// The targets in share order (a snapshot).
    pub fn targets(&self) -> Vec<DynTarget> {
        self.targets.read().expect("not poisoned").clone()
    }

    fn target(&self, i: usize) -> DynTarget {
        self.targets.read().expect("not poisoned")[i].clone()
    }

    fn len(&self) -> usize {
        self.stats.len()
    }

    /// Puts `target` in place of target `i`, with fresh statistics.
    pub fn replace(&self, i: usize, target: DynTarget) {
        self.targets.write().expect("not poisoned")[i] = target;
        let s = &self.stats[i];
        s.latency_us.store(0, std::sync::atomic::Ordering::Relaxed);
        s.up.store(true, std::sync::atomic::Ordering::Relaxed);
        s.requests.store(0, Ordering::Relaxed);
        s.errors.store(0, Ordering::Relaxed);
        *s.last_error.lock().expect("not poisoned") = None;
    }
    pub fn stats(&self) -> &[TargetStats] {
        &self.stats
    }
    /// Each target's statistics with its name, in share order.
    pub fn reports(&self) -> Vec<TargetReport> {
        self.targets()
            .iter()
            .zip(&self.stats)
            .map(|(t, s)| TargetReport {
                name: t.name().to_string(),
                up: s.is_up(),
                latency: s.latency(),
                requests: s.requests.load(Ordering::Relaxed),
                errors: s.errors.load(Ordering::Relaxed),
            })
            .collect()
    }
    pub fn up_count(&self) -> usize {
        self.stats.iter().filter(|s| s.is_up()).count()
    }

    /// Writes share i to target i, all in parallel. Does not decide success: the caller
    /// compares `stored` with its quorum.
    ///
    /// With `replace`, an object already at `key` on a target is the leftover of an attempt
    /// that never committed (the caller's names are its own), so it is deleted and the put
    /// tried once more. Either way a target that still has the object counts as failed, so
    /// a lying target costs one share, never the write.
    pub async fn put_all(&self, key: &str, shares: Vec<Bytes>, replace: bool) -> PutOutcome {
        let lens: Vec<u64> = shares.iter().map(|s| s.len() as u64).collect();
        let mut pending: FuturesUnordered<_> =
            shares.into_iter().enumerate().map(|(i, share)| self.put_replacing(i, key, share, replace)).collect();
        let mut out = PutOutcome::default();
        while let Some((i, result, replaced)) = pending.next().await {
            if replaced {
                out.existed.push(i);
            }
            match result {
                Ok(()) => out.stored.push(i),
                Err(e) => out.failed.push((i, e.to_string())),
            }
        }
        out.stored.sort_unstable();
        out.failed.sort_unstable_by_key(|(i, _)| *i);
        self.stored_bytes.fetch_add(out.stored.iter().map(|&i| lens[i]).sum(), Ordering::Relaxed);
        out
    }

    /// Bytes of shares stored on the targets since this volume opened.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }

    async fn put_one(&self, i: usize, key: &str, share: Bytes) -> Result<(), TargetError> {
        let target = self.target(i);
        let started = Instant::now();
        let result = tokio::time::timeout(self.put_timeout, target.put(key, share))
            .await
            .unwrap_or_else(|_| Err(TargetError::Unavailable("put timed out".into())));
        self.stats[i].record(started, result.as_ref().map(|_| ()));
        result
    }

    /// (index, result, whether a leftover had to be replaced).
    async fn put_replacing(
        &self,
        i: usize,
        key: &str,
        share: Bytes,
        replace: bool,
    ) -> (usize, Result<(), TargetError>, bool) {
        match self.put_one(i, key, share.clone()).await {
            Err(TargetError::AlreadyExists(k)) if !replace => (i, Err(TargetError::AlreadyExists(k)), true),
            Err(TargetError::AlreadyExists(_)) => {
                if let Err(e) = self.target(i).delete(key).await {
                    return (i, Err(e), true);
                }
                let result = match self.put_one(i, key, share).await {
                    Err(TargetError::AlreadyExists(k)) => {
                        Err(TargetError::Unavailable(format!("{k}: still exists after it was deleted")))
                    }
                    other => other,
                };
                (i, result, true)
            }
            other => (i, other, false),
        }
    }

    /// Asks every target believed down whether it answers again (its `health`), so a
    /// volume without I/O notices a target that came back. Returns those that did.
    pub async fn probe_down(&self) -> Vec<usize> {
        let targets = self.targets();
        let probes = targets.iter().enumerate().filter(|(i, _)| !self.stats[*i].is_up()).map(|(i, t)| async move {
            let started = Instant::now();
            let result = tokio::time::timeout(self.put_timeout, t.health())
                .await
                .unwrap_or_else(|_| Err(TargetError::Unavailable("health check timed out".into())));
            self.stats[i].record(started, result.as_ref().map(|_| ()));
            result.is_ok().then_some(i)
        });
        futures::future::join_all(probes).await.into_iter().flatten().collect()
    }

    /// Gets `key` from target `i`.
    pub async fn get(&self, i: usize, key: &str) -> Result<Bytes, TargetError> {
        let started = Instant::now();
        let result = self.target(i).get(key).await;
        self.stats[i].record(started, result.as_ref().map(|_| ()));
        result
    }

    /// Deletes `key` from the targets at `indices` only (what one write stored), best effort.
    pub async fn delete_at(&self, key: &str, indices: &[usize]) {
        let targets = self.targets();
        futures::future::join_all(indices.iter().filter_map(|&i| targets.get(i)).map(|t| t.delete(key))).await;
    }

    /// Deletes `key` everywhere, best effort; returns how many targets failed.
    pub async fn delete_all(&self, key: &str) -> usize {
        let results = futures::future::join_all(self.targets().iter().map(|t| t.delete(key))).await;
        results.iter().filter(|r| r.is_err()).count()
    }

    /// Target indices, fastest first; targets believed down go last.
    fn read_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by_key(|&i| (!self.stats[i].is_up(), self.stats[i].latency()));
        order
    }

    /// Reads and decodes the object `key` (a chunk generation or a journal record).
    /// Shares the codec rejects are reported by target index, so that another is read.
    pub async fn read_decoded(
        &self,
        key: &str,
        codec: &Codec,
        keys: &Keyring,
        id: &ChunkId,
        hedge_after: Duration,
    ) -> Result<(Vec<u8>, Vec<usize>), String> {
        self.read_decode(key, codec.m(), hedge_after, |got| {
            let shares: Vec<&[u8]> = got.iter().map(|(_, b)| b.as_ref()).collect();
            codec.decode(keys, id, &shares).map(|d| d.data).map_err(
                |DecodeError::NotEnoughShares { report, .. }| report.bad.iter().map(|b| got[b.position].0).collect(),
            )
        })
        .await
    }

    /// Reads shares of `key` until `decode` succeeds. Asks the `m` fastest targets,
    /// adds one more each time `hedge_after` passes without success, and one more for
    /// every error or share that `decode` reports bad (by target index).
    /// Returns the decoded value and the target indices whose share was missing or bad.
    async fn read_decode<T>(
        &self,
        key: &str,
        m: usize,
        hedge_after: Duration,
        mut decode: impl FnMut(&[(usize, Bytes)]) -> Result<T, Vec<usize>>,
    ) -> Result<(T, Vec<usize>), String> {
        let order = self.read_order();
        let mut next = 0usize;
        let mut pending = FuturesUnordered::new();
        let launch = |i: usize| async move { (i, self.get(i, key).await) };
        while next < order.len().min(m) {
            pending.push(launch(order[next]));
            next += 1;
        }
        let mut got: Vec<(usize, Bytes)> = Vec::new();
        let mut bad: Vec<usize> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        let mut tried_with = usize::MAX;
        loop {
            let good = got.len();
            if good >= m && good != tried_with {
                match decode(&got) {
                    Ok(v) => return Ok((v, bad)),
                    Err(bad_targets) => {
                        for t in bad_targets {
                            if !bad.contains(&t) {
                                bad.push(t);
                                if next < order.len() {
                                    pending.push(launch(order[next]));
                                    next += 1;
                                }
                            }
                        }
                        got.retain(|(i, _)| !bad.contains(i));
                        tried_with = got.len();
                    }
                }
            }
            if pending.is_empty() {
                if next < order.len() {
                    pending.push(launch(order[next]));
                    next += 1;
                    continue;
                }
                errors.extend(bad.iter().map(|t| format!("target {t}: bad share")));
                return Err(format!("only {} of {m} shares usable: {}", got.len(), errors.join("; ")));
            }
            tokio::select! {
                Some((i, result)) = pending.next() => match result {
                    Ok(bytes) => got.push((i, bytes)),
                    Err(e) => {
                        errors.push(format!("{}: {e}", self.target(i).name()));
                        bad.push(i);
                        if next < order.len() {
                            pending.push(launch(order[next]));
                            next += 1;
                        }
                    }
                },
                _ = tokio::time::sleep(hedge_after), if next < order.len() => {
                    pending.push(launch(order[next]));
                    next += 1;
                }
            }
        }
    }
}
