//! The cold read path: read-ahead for sequential readers, fetches that do not wait on each
//! other, one fetch per chunk however many readers want it, and read-ahead that keeps to
//! the cache's bound. No test here asserts a time: targets count the gets in flight.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cleave_split::Keyring;
use cleave_target::{DynTarget, Target, TargetError};
use cleave_volume::stats::IoStats;
use cleave_volume::{Durability, Volume, VolumeConfig, VolumeError, VolumeOptions};

const MIB: u64 = 1 << 20;
const M: usize = 3;

/// What every target of a rig counts, shared.
#[derive(Debug, Default)]
struct Gets {
    total: AtomicUsize,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    /// While set, gets wait before they read: what is in flight together stays so.
    hold: AtomicBool,
}

impl Gets {
    fn reset(&self) {
        self.total.store(0, Ordering::SeqCst);
        self.peak.store(0, Ordering::SeqCst);
    }
}

/// A target that counts its gets, and how many of every target's are in flight at once.
#[derive(Debug)]
struct Counting {
    inner: DynTarget,
    gets: Arc<Gets>,
}

#[async_trait::async_trait]
impl Target for Counting {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), TargetError> {
        self.inner.put(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, TargetError> {
        let g = &self.gets;
        g.total.fetch_add(1, Ordering::SeqCst);
        let now = g.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        g.peak.fetch_max(now, Ordering::SeqCst);
        while g.hold.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let result = self.inner.get(key).await;
        g.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, TargetError> {
        self.inner.get_range(key, range).await
    }
    async fn delete(&self, key: &str) -> Result<(), TargetError> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, TargetError> {
        self.inner.list(prefix).await
    }
    async fn health(&self) -> Result<(), TargetError> {
        self.inner.health().await
    }
}

struct Rig {
    dir: tempfile::TempDir,
    targets: Vec<DynTarget>,
    gets: Arc<Gets>,
    config: VolumeConfig,
    keys: Keyring,
}

fn rig(size: u64) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let uris: Vec<String> = (0..5).map(|i| format!("file://{}/t{i}", dir.path().display())).collect();
    let gets = Arc::new(Gets::default());
    let targets = uris
        .iter()
        .map(|u| Arc::new(Counting { inner: cleave_target::create(u).unwrap(), gets: gets.clone() }) as DynTarget)
        .collect();
    let config = VolumeConfig {
        name: "cold".into(),
        uuid: "00112233445566778899aabbccddeeff".into(),
        size,
        chunk_size: MIB as u32,
        m: M as u8,
        n: 5,
        durability: Durability::Local,
        targets: uris,
        write_quorum: None,
        store_zero_chunks: false,
    };
    Rig { dir, targets, gets, config, keys: Keyring::generate().unwrap() }
}

impl Rig {
    /// Opens the volume on cache directory `cache` (a new one: every read goes to the targets).
    async fn open(&self, cache: &str, tune: impl FnOnce(&mut VolumeOptions)) -> Volume {
        let mut opts = VolumeOptions::new(self.dir.path().join(cache));
        // No hedged gets: each chunk costs exactly M.
        opts.hedge_after = Duration::from_secs(600);
        tune(&mut opts);
        let volume = self.config.uuid_bytes().unwrap();
        cleave_volume::label::write_all(&self.targets, &self.keys, &self.config.uuid, volume, 0).await.unwrap();
        Volume::open(self.config.clone(), self.keys.clone(), self.targets.clone(), opts).await.unwrap()
    }

    /// Writes `chunks` with their patterns and closes the volume cleanly: all on the targets.
    async fn store(&self, chunks: impl IntoIterator<Item = u64>) {
        let v = self.open("writer", |_| {}).await;
        for c in chunks {
            v.write(c * MIB, Bytes::from(pattern(c, 0)), false).await.unwrap();
        }
        v.shutdown(Duration::from_secs(60)).await.unwrap();
    }
}

/// A cache of `mib` MiB that destages a chunk once it has been unwritten for `destage_after`.
fn small_cache(o: &mut VolumeOptions, mib: u64, destage_after: Duration) {
    o.cache_bytes = mib * MIB;
    o.destage_after = destage_after;
}

fn pattern(chunk: u64, salt: u8) -> Vec<u8> {
    (0..MIB).map(|i| (i * 7 + chunk * 13) as u8 ^ salt).collect()
}

fn spawn_read(v: &Volume, offset: u64, len: u64) -> tokio::task::JoinHandle<Result<Bytes, VolumeError>> {
    let v = v.clone();
    tokio::spawn(async move { v.read(offset, len as u32).await })
}

async fn read_chunk(v: &Volume, c: u64) -> Bytes {
    v.read(c * MIB, MIB as u32).await.unwrap()
}

/// Waits (without asserting a time) until `done` holds.
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the condition never held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_cold_read_reads_ahead_and_returns_exactly_what_was_written() {
    let r = rig(64 * MIB);
    r.store(0..32).await;
    let v = r.open("cold", |_| {}).await;
    let io = v.io_stats();
    r.gets.reset();
    for c in 0..3 {
        assert!(read_chunk(&v, c).await[..] == pattern(c, 0)[..], "chunk {c}");
    }
    // The third chunk in a row makes a stream: the chunks after it come in unasked.
    until(|| IoStats::get(&io.prefetched) >= 8).await;
    for c in 3..32 {
        assert!(read_chunk(&v, c).await[..] == pattern(c, 0)[..], "chunk {c}");
    }
    assert!(IoStats::get(&io.prefetched) >= 8);
    // Each chunk was fetched once, by read-ahead or by its read: the reads used what
    // read-ahead brought.
    assert!(r.gets.total.load(Ordering::SeqCst) <= 32 * M, "{:?}", r.gets);
    // A sequential scan does not go through the cache: only the two chunks read before
    // the stream was known are there.
    assert!(v.status().cache_bytes <= 2 * MIB, "{}", v.status().cache_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_different_missing_chunks_fetch_at_once_and_one_chunk_is_fetched_once() {
    let r = rig(512 * MIB);
    // Chunks 0 and 256 share a stripe lock; 1 and 2..6 are read below.
    r.store([0, 1, 2, 3, 4, 5, 256]).await;
    let v = r.open("cold", |o| o.readahead_bytes = 0).await;
    r.gets.hold.store(true, Ordering::SeqCst);
    let (a, b) = (spawn_read(&v, 0, MIB), spawn_read(&v, 256 * MIB, MIB));
    // Never reached if one chunk's fetch waited for the other's.
    until(|| r.gets.in_flight.load(Ordering::SeqCst) == 2 * M).await;
    r.gets.hold.store(false, Ordering::SeqCst);
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert!(a[..] == pattern(0, 0)[..] && b[..] == pattern(256, 0)[..]);
    assert_eq!(r.gets.peak.load(Ordering::SeqCst), 2 * M);

    // Four readers of one missing chunk share one fetch.
    r.gets.reset();
    let pieces = (0..4u64).map(|i| v.read(MIB + i * MIB / 4, (MIB / 4) as u32));
    let got = futures::future::join_all(pieces).await;
    let joined: Vec<u8> = got.into_iter().flat_map(|p| p.unwrap().to_vec()).collect();
    assert!(joined == pattern(1, 0));
    assert_eq!(r.gets.total.load(Ordering::SeqCst), M, "one fetch of M shares");

    // One read over four missing chunks fetches them together.
    r.gets.reset();
    r.gets.hold.store(true, Ordering::SeqCst);
    let read = spawn_read(&v, 2 * MIB, 4 * MIB);
    until(|| r.gets.in_flight.load(Ordering::SeqCst) == 4 * M).await;
    r.gets.hold.store(false, Ordering::SeqCst);
    let data = read.await.unwrap().unwrap();
    for c in 2..6u64 {
        let at = ((c - 2) * MIB) as usize;
        assert!(data[at..at + MIB as usize] == pattern(c, 0)[..], "chunk {c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_keeps_to_the_cache_bound_and_never_evicts_dirty_data() {
    let r = rig(64 * MIB);
    r.store(0..32).await;
    // The dirty chunks stay dirty for the whole test.
    let v = r.open("small", |o| small_cache(o, 8, Duration::from_secs(3600))).await;
    for c in 40..43u64 {
        v.write(c * MIB, Bytes::from(pattern(c, 0x5a)), false).await.unwrap();
    }
    let limit = v.status().cache_limit_bytes;
    assert_eq!(limit, 8 * MIB);
    for pass in 0..2 {
        for c in 0..32u64 {
            assert!(read_chunk(&v, c).await[..] == pattern(c, 0)[..], "pass {pass}, chunk {c}");
            let s = v.status();
            assert!(s.cache_bytes <= limit, "{} bytes cached, limit {limit}", s.cache_bytes);
            assert_eq!(s.dirty_bytes, 3 * MIB, "dirty chunks stay");
        }
    }
    assert!(IoStats::get(&v.io_stats().prefetched) > 0, "read-ahead ran in the small cache");
    for c in 40..43u64 {
        assert!(read_chunk(&v, c).await[..] == pattern(c, 0x5a)[..], "dirty chunk {c}");
    }
}

/// A fetch still under way when its chunk is written, destaged and evicted holds data older
/// than the targets' now: neither later readers nor the cache may ever see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_outlives_a_write_destage_and_eviction_is_never_used() {
    let r = rig(16 * MIB);
    r.store(0..16).await;
    let v = r
        .open("race", |o| {
            small_cache(o, 4, Duration::ZERO);
            o.readahead_bytes = 0;
        })
        .await;
    r.gets.hold.store(true, Ordering::SeqCst);
    let early = spawn_read(&v, 5 * MIB, MIB);
    until(|| r.gets.in_flight.load(Ordering::SeqCst) == M).await;
    // Meanwhile chunk 5 is zeroed (no fetch needed), destaged, and pushed out of the cache.
    v.write_zeroes(5 * MIB, MIB, false).await.unwrap();
    v.destage_all(Duration::from_secs(60)).await.unwrap();
    for c in 8..16u64 {
        v.write_zeroes(c * MIB, MIB, false).await.unwrap();
    }
    v.destage_all(Duration::from_secs(60)).await.unwrap();
    r.gets.hold.store(false, Ordering::SeqCst);
    let early = early.await.unwrap().unwrap();
    assert!(early[..] == pattern(5, 0)[..] || early.iter().all(|&b| b == 0));
    assert!(read_chunk(&v, 5).await.iter().all(|&b| b == 0), "chunk 5 rolled back to the early fetch");
}
