//! A randomized crash campaign of the volume engine in one process: writes, FLUSHes and
//! reads against a model, targets going down and coming back (injected and as a folder
//! moved away), damaged shares, replaced (emptied) targets, and crashes: the runtime is
//! torn down wherever it is, the cache sometimes deleted, and the volume opened again.
//!
//! What it asserts, per 4 KiB block: a read returns the last acknowledged write; after a
//! crash the block holds its last FLUSHed value or a write issued after that FLUSH, never
//! anything else. At most N-M targets are faulty at once (down, damaged, replaced, or
//! lacking shares since they were down); healing waits until the volume is clean.
//!
//! Size: `CLEAVE_STRESS_SEEDS` seeds (default 3) of `CLEAVE_STRESS_LIVES` crashes each
//! (default 20); `CLEAVE_STRESS_SEED` picks the first seed; `CLEAVE_STRESS_LOG` (a tracing
//! filter) shows the engine's log; `CLEAVE_STRESS_VERBOSE` prints each life's end and every
//! operation slower than a second. It found a FLUSHed-data loss the process campaign hit
//! once in CI (a checkpoint written twice deleted itself) within a minute, and, in CI, a
//! volume stuck behind a share its own failed journal commit had left.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cleave_split::Keyring;
use cleave_target::{DynTarget, Faults};
use cleave_volume::{Durability, Health, Volume, VolumeConfig, VolumeOptions};

const BLOCK: u64 = 4096;
const CHUNK: u64 = 64 << 10;
const CHUNKS: u64 = 12;
const BLOCKS: u64 = CHUNKS * CHUNK / BLOCK;
const N: usize = 5;
const M: usize = 3;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

fn block_bytes(b: u64, version: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK as usize);
    for w in 0..BLOCK / 16 {
        out.extend_from_slice(&b.to_le_bytes());
        out.extend_from_slice(&(version ^ w).to_le_bytes());
    }
    out
}

fn version_of(b: u64, bytes: &[u8]) -> Option<u64> {
    if bytes.iter().all(|&x| x == 0) {
        return Some(0);
    }
    let v = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    (bytes == block_bytes(b, v)).then_some(v)
}

/// Per block: the value FLUSHed last, the writes since (any may have landed), the latest,
/// and failed writes since the last good one: a failed write leaves its range undefined
/// (some pieces may have landed, and a later FLUSH makes them durable).
#[derive(Default)]
struct Model {
    durable: Vec<u64>,
    maybe: Vec<BTreeSet<u64>>,
    current: Vec<u64>,
    failed: Vec<BTreeSet<u64>>,
}

impl Model {
    fn flushed(&mut self) {
        for i in 0..BLOCKS as usize {
            self.durable[i] = self.current[i];
            self.maybe[i] = self.failed[i].clone();
        }
    }
}

struct World {
    root: PathBuf,
    targets: Vec<DynTarget>,
    faults: Vec<Arc<Faults>>,
    config: VolumeConfig,
    keys: Keyring,
    /// Targets that may lack or have bad shares: at most N-M.
    faulty: BTreeSet<usize>,
    /// Targets whose folder is moved away (down the way a lost mount looks).
    moved: BTreeSet<usize>,
    /// Targets down by injection.
    injected: BTreeSet<usize>,
    log: Vec<String>,
    /// The volume of the life under way: what it looked like is reported if the life hangs.
    open: Option<Volume>,
}

impl World {
    fn target_dir(&self, i: usize) -> PathBuf {
        self.root.join(format!("t{i}"))
    }

    fn opts(&self) -> VolumeOptions {
        let mut o = VolumeOptions::new(self.root.join("cache"));
        o.cache_bytes = 4 * CHUNK;
        o.hedge_after = Duration::from_millis(5);
        o.flush_timeout = Duration::from_secs(3);
        o.put_timeout = Duration::from_secs(5);
        o.checkpoint_every = 3;
        o.destage_after = Duration::from_millis(5);
        o.destage_batch = 3;
        o
    }

    fn set_down(&mut self, i: usize, down: bool, moved: bool) {
        if moved {
            let d = self.target_dir(i);
            if down {
                std::fs::rename(&d, d.with_extension("away")).unwrap();
                std::fs::write(&d, b"not a directory").unwrap();
                self.moved.insert(i);
            } else {
                std::fs::remove_file(&d).unwrap();
                std::fs::rename(d.with_extension("away"), &d).unwrap();
                self.moved.remove(&i);
            }
        } else {
            self.faults[i].set_down(down);
            if down {
                self.injected.insert(i);
            } else {
                self.injected.remove(&i);
            }
        }
    }

    fn all_up(&mut self) {
        for i in 0..N {
            self.set_down(i, false, false);
            if self.moved.contains(&i) {
                self.set_down(i, false, true);
            }
        }
    }

    fn damage(&mut self, i: usize, rng: &mut Rng) {
        let dir = self.target_dir(i).join(&self.config.uuid).join("d");
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        let files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        if files.is_empty() {
            return;
        }
        let f = &files[rng.below(files.len() as u64) as usize];
        let Ok(mut bytes) = std::fs::read(f) else { return };
        if bytes.is_empty() {
            return;
        }
        let at = rng.below(bytes.len() as u64) as usize;
        bytes[at] ^= 0x5a;
        // In place, as a disk would: a share deleted meanwhile is not recreated.
        if let Ok(mut h) = std::fs::OpenOptions::new().write(true).open(f) {
            use std::io::{Seek, SeekFrom, Write};
            let _ = h.seek(SeekFrom::Start(at as u64)).and_then(|_| h.write_all(&bytes[at..at + 1]));
            self.log.push(format!("damage t{i} {}", f.display()));
        }
    }
}

fn uuid_bytes(c: &VolumeConfig) -> [u8; 16] {
    c.uuid_bytes().unwrap()
}

async fn write_blocks(v: &Volume, first: u64, count: u64, version: u64) -> Result<(), String> {
    let data: Vec<u8> = (first..first + count).flat_map(|b| block_bytes(b, version)).collect();
    v.write(first * BLOCK, Bytes::from(data), false).await.map_err(|e| e.to_string())
}

/// Reads the whole volume and checks it against the model after a crash; collapses it.
async fn verify_after_crash(v: &Volume, model: &mut Model, what: &str) -> Result<(), String> {
    let image = v.read(0, (BLOCKS * BLOCK) as u32).await.map_err(|e| format!("{what}: read failed: {e}"))?;
    let mut problems = Vec::new();
    for b in 0..BLOCKS {
        let bytes = &image[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize];
        let got = version_of(b, bytes);
        let i = b as usize;
        match got {
            Some(x) if x == model.durable[i] || model.maybe[i].contains(&x) || model.failed[i].contains(&x) => {
                model.current[i] = x;
                model.failed[i].clear();
            }
            other => problems.push(format!(
                "block {b} (chunk {}): got {other:?}, durable {:#x}, maybe {:x?}",
                b * BLOCK / CHUNK,
                model.durable[i],
                model.maybe[i]
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {}", problems.join("\n")))
    }
}

/// Waits until the volume is clean (re-replicating and repairing), all targets up.
async fn heal(v: &Volume, w: &mut World) -> Result<(), String> {
    w.all_up();
    for _ in 0..200 {
        if v.needs_rereplication() {
            let _ = v.rereplicate(|_, _| {}).await;
        }
        let report = cleave_volume::scrub::scrub(v, true, |_, _| {}).await.map_err(|e| e.to_string())?;
        if !report.chunks_unrecoverable.is_empty() {
            return Err(format!("unrecoverable chunks {:?}", report.chunks_unrecoverable));
        }
        let clean = matches!(v.status().health, Health::Clean);
        if clean && report.problems.is_empty() {
            w.faulty.clear();
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("did not heal: {:?}", v.status().health))
}

/// One life of the gateway: open, then random operations until it "crashes".
async fn life(w: &mut World, model: &mut Model, rng: &mut Rng, version: &mut u64) -> Result<(), String> {
    let v = Volume::open(w.config.clone(), w.keys.clone(), w.targets.clone(), w.opts())
        .await
        .map_err(|e| format!("open: {e}"))?;
    w.open = Some(v.clone());
    verify_after_crash(&v, model, "after restart").await?;
    // What was read back becomes durable once a FLUSH succeeds (at most one target down).
    let down: Vec<usize> = (0..N).filter(|i| w.moved.contains(i)).collect();
    for i in down.into_iter().skip(1) {
        w.set_down(i, false, true);
    }
    for i in 0..N {
        w.set_down(i, false, false);
    }
    v.flush().await.map_err(|e| format!("flush after restart: {e}"))?;
    model.flushed();
    let ops = 5 + rng.below(40);
    for _ in 0..ops {
        let op_started = std::time::Instant::now();
        let log_len = w.log.len();
        let r = rng.below(100);
        if r < 55 {
            let first = rng.below(BLOCKS);
            let count = (1 + rng.below(24)).min(BLOCKS - first);
            *version += 1;
            for b in first..first + count {
                model.maybe[b as usize].insert(*version);
            }
            w.log.push(format!("write {first}+{count} v{:#x}", *version));
            let r = write_blocks(&v, first, count, *version).await;
            w.log.push(format!("  -> {r:?}"));
            for b in first..first + count {
                if r.is_ok() {
                    model.current[b as usize] = *version;
                    model.failed[b as usize].clear();
                } else {
                    model.failed[b as usize].insert(*version);
                }
            }
        } else if r < 70 {
            w.log.push("flush".into());
            let r = v.flush().await;
            w.log.push(format!("  -> {r:?}"));
            if r.is_ok() {
                model.flushed();
            }
        } else if r < 80 {
            let first = rng.below(BLOCKS);
            let count = (1 + rng.below(32)).min(BLOCKS - first);
            let data = v.read(first * BLOCK, (count * BLOCK) as u32).await.map_err(|e| format!("read: {e}"))?;
            for b in first..first + count {
                let at = ((b - first) * BLOCK) as usize;
                let got = version_of(b, &data[at..at + BLOCK as usize]);
                let i = b as usize;
                if got != Some(model.current[i]) && !got.is_some_and(|g| model.failed[i].contains(&g)) {
                    return Err(format!("read of block {b}: got {got:?}, wrote {:#x}", model.current[b as usize]));
                }
            }
        } else if r < 90 {
            // A target goes down (or comes back) while the destager works.
            let i = rng.below(N as u64) as usize;
            if w.moved.contains(&i) {
                w.set_down(i, false, true);
            } else if w.injected.contains(&i) {
                w.set_down(i, false, false);
            } else if !w.moved.contains(&i) && (w.faulty.contains(&i) || w.faulty.len() < N - M) {
                w.faulty.insert(i);
                let moved = rng.chance(0.5);
                w.set_down(i, true, moved);
                w.log.push(format!("down t{i} moved={moved}"));
                tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
                if rng.chance(0.5) {
                    w.set_down(i, false, moved);
                }
            }
        } else if r < 95 {
            let i = rng.below(N as u64) as usize;
            if w.faulty.contains(&i) || w.faulty.len() < N - M {
                w.faulty.insert(i);
                w.damage(i, rng);
            }
        } else if w.faulty.len() == N - M || rng.chance(0.3) {
            w.log.push("heal".into());
            heal(&v, w).await?;
        }
        if std::env::var_os("CLEAVE_STRESS_VERBOSE").is_some() && op_started.elapsed() > Duration::from_secs(1) {
            eprintln!("slow op {:?}: {:?}", op_started.elapsed(), &w.log[log_len..]);
        }
    }
    // The crash: the runtime goes away wherever its tasks are.
    std::mem::forget(v);
    std::mem::forget(w.open.take());
    Ok(())
}

fn run_seed(seed: u64, lives: u64) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (wrapped, uris) = common::faulty_dir_targets(&root, N);
    let faults = wrapped.iter().map(|f| f.faults()).collect();
    let targets = wrapped.into_iter().map(|f| f as DynTarget).collect();
    let config = VolumeConfig {
        name: "stress".into(),
        uuid: "00112233445566778899aabbccddeeff".into(),
        size: CHUNKS * CHUNK,
        chunk_size: CHUNK as u32,
        m: M as u8,
        n: N as u8,
        durability: Durability::Dispersed,
        targets: uris,
        write_quorum: None,
        store_zero_chunks: false,
    };
    let mut w = World {
        root,
        targets,
        faults,
        config,
        keys: Keyring::generate().unwrap(),
        faulty: BTreeSet::new(),
        moved: BTreeSet::new(),
        injected: BTreeSet::new(),
        log: Vec::new(),
        open: None,
    };
    let mut model = Model {
        durable: vec![0; BLOCKS as usize],
        maybe: vec![BTreeSet::new(); BLOCKS as usize],
        current: vec![0; BLOCKS as usize],
        failed: vec![BTreeSet::new(); BLOCKS as usize],
    };
    let mut rng = Rng(seed);
    let mut version = seed << 32;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(cleave_volume::label::write_all(&w.targets, &w.keys, &w.config.uuid, uuid_bytes(&w.config), N))
        .map_err(|e| e.to_string())?;
    drop(rt);
    for life_no in 0..lives {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let result = rt.block_on(async {
            match tokio::time::timeout(Duration::from_secs(120), life(&mut w, &mut model, &mut rng, &mut version)).await
            {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "a life did not finish within 120 s (an operation hangs)\nvolume: {:#?}\ntargets: {:#?}\nmoved {:?}, injected {:?}",
                    w.open.as_ref().map(|v| v.status()),
                    w.open.as_ref().map(|v| v.target_reports()),
                    w.moved,
                    w.injected
                )),
            }
        });
        // Blocking target operations finish (a killed process's syscalls do too); nothing
        // of this life runs on into the next.
        rt.shutdown_timeout(Duration::from_secs(10));
        if let Err(e) = result {
            let tail: Vec<&String> = w.log.iter().rev().take(30).collect();
            return Err(format!("seed {seed}, life {life_no}: {e}\nlast events (newest first): {tail:#?}"));
        }
        w.log.push(format!("--- crash after life {life_no}"));
        if std::env::var_os("CLEAVE_STRESS_VERBOSE").is_some() {
            eprintln!("seed {seed}: life {life_no} done, faulty {:?}", w.faulty);
        }
        if rng.chance(0.3) {
            let _ = std::fs::remove_dir_all(w.root.join("cache"));
            w.log.push("cache deleted".into());
        }
        if w.faulty.len() < N - M && rng.chance(0.3) {
            let candidates: Vec<usize> = (0..N).filter(|i| !w.faulty.contains(i) && !w.moved.contains(i)).collect();
            if !candidates.is_empty() {
                let i = candidates[rng.below(candidates.len() as u64) as usize];
                let d = w.target_dir(i);
                std::fs::remove_dir_all(&d).unwrap();
                std::fs::create_dir(&d).unwrap();
                w.faulty.insert(i);
                w.log.push(format!("replaced t{i}"));
            }
        }
    }
    Ok(())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn crashes_faults_and_replacements_lose_no_flushed_write() {
    if let Ok(filter) = std::env::var("CLEAVE_STRESS_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
    let first = env_u64("CLEAVE_STRESS_SEED", 1);
    let seeds = env_u64("CLEAVE_STRESS_SEEDS", 3);
    let lives = env_u64("CLEAVE_STRESS_LIVES", 20);
    let mut failures = BTreeMap::new();
    for seed in first..first + seeds {
        if let Err(e) = run_seed(seed, lives) {
            failures.insert(seed, e);
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
