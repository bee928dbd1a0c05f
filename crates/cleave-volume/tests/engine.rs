//! The volume engine against real directory targets wrapped in fault injection.

mod common;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cleave_split::Keyring;
use cleave_target::{DynTarget, Faults};
use cleave_volume::{Durability, Health, Volume, VolumeConfig, VolumeOptions};

const MIB: u64 = 1 << 20;

struct Rig {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    targets: Vec<DynTarget>,
    faults: Vec<Arc<Faults>>,
    config: VolumeConfig,
    keys: Keyring,
}

fn rig(durability: Durability) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (wrapped, uris) = common::faulty_dir_targets(&root, 5);
    let faults = wrapped.iter().map(|f| f.faults()).collect();
    let targets = wrapped.into_iter().map(|f| f as DynTarget).collect();
    let config = VolumeConfig {
        name: "t".into(),
        uuid: "00112233445566778899aabbccddeeff".into(),
        size: 16 * MIB,
        chunk_size: MIB as u32,
        m: 3,
        n: 5,
        durability,
        targets: uris,
        write_quorum: None,
        store_zero_chunks: false,
    };
    Rig { _dir: dir, root, targets, faults, config, keys: Keyring::generate().unwrap() }
}

impl Rig {
    /// Opens the volume with its own cache directory: a different cache means reads go to the targets.
    async fn open(&self, cache: &str, tune: impl FnOnce(&mut VolumeOptions)) -> Volume {
        let mut opts = VolumeOptions::new(self.root.join(cache));
        opts.hedge_after = Duration::from_millis(20);
        tune(&mut opts);
        let volume = self.config.uuid_bytes().unwrap();
        cleave_volume::label::write_all(&self.targets, &self.keys, &self.config.uuid, volume, 0).await.unwrap();
        Volume::open(self.config.clone(), self.keys.clone(), self.targets.clone(), opts).await.unwrap()
    }
}

fn pattern(chunk: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 * 7 + chunk * 13) as u8).collect()
}

async fn write_chunks(v: &Volume, chunks: &[u64]) {
    for &c in chunks {
        v.write(c * MIB, Bytes::from(pattern(c, MIB as usize)), false).await.unwrap();
    }
    v.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_replay_and_checkpoints_rebuild_the_map() {
    let r = rig(Durability::Local);
    let v = r.open("c1", |o| o.checkpoint_every = 2).await;
    for round in 0..5u64 {
        write_chunks(&v, &[round, round + 5]).await;
        v.destage_all(Duration::from_secs(60)).await.unwrap();
    }
    // Trim one chunk: it must read back as zeros and store nothing.
    v.trim(3 * MIB, MIB).await.unwrap();
    v.destage_all(Duration::from_secs(60)).await.unwrap();
    v.shutdown(Duration::from_secs(60)).await.unwrap();
    let journal = r.targets[0].list(&format!("{}/journal/", r.config.uuid)).await.unwrap();
    let checkpoints = r.targets[0].list(&format!("{}/checkpoint/", r.config.uuid)).await.unwrap();
    assert!(journal.len() <= 2, "records covered by a checkpoint are pruned: {journal:?}");
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");

    let cold = r.open("c2", |_| {}).await;
    for c in 0..10u64 {
        let got = cold.read(c * MIB, MIB as u32).await.unwrap();
        let want = if c == 3 { vec![0u8; MIB as usize] } else { pattern(c, MIB as usize) };
        assert!(got[..] == want[..], "chunk {c}");
    }
    assert_eq!(cold.mapped().await.unwrap().len(), 9);
    assert_eq!(cold.mapped_count(), 9);
}

/// A checkpoint requested (re-replication ends with one) right when one was due: the
/// commit before it had already written the checkpoint of that sequence number and pruned
/// everything older. Writing it again found it on every target, counted that as a failed
/// write, and the clean-up of the "failed" write deleted the only checkpoint: the next
/// open saw none, and every chunk not written since read as zeros (found by
/// `tests/crash_stress.rs`, and by the fault campaign in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_requested_when_one_is_due_keeps_the_journal() {
    let r = rig(Durability::Dispersed);
    let v = r.open("c1", |o| o.checkpoint_every = 1).await;
    write_chunks(&v, &[0, 1, 2, 3]).await;
    v.checkpoint_now().await.expect("checkpoint");
    drop(v);
    let checkpoints = r.targets[0].list(&format!("{}/checkpoint/", r.config.uuid)).await.unwrap();
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    let cold = r.open("c2", |_| {}).await;
    for c in 0..4u64 {
        let got = cold.read(c * MIB, MIB as u32).await.unwrap();
        assert!(got[..] == pattern(c, MIB as usize)[..], "chunk {c} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_slow_down_and_corrupt_targets() {
    let r = rig(Durability::Dispersed);
    let v = r.open("c1", |_| {}).await;
    write_chunks(&v, &[0, 1, 2, 7]).await; // dispersed: flush means destaged
    v.shutdown(Duration::from_secs(60)).await.unwrap();

    r.faults[0].set_latency(Duration::from_millis(500));
    r.faults[1].set_down(true);
    r.faults[2].set_corrupt_reads(true);
    let cold = r.open("c2", |_| {}).await;
    for c in [0u64, 1, 2, 7] {
        let got = cold.read(c * MIB, MIB as u32).await.unwrap();
        assert!(got[..] == pattern(c, MIB as usize)[..], "chunk {c}");
    }
    match cold.status().health {
        Health::Degraded { .. } => {}
        h => panic!("expected degraded, got {h:?}"),
    }
    // With a third target gone, a read of stored data fails: never wrong data.
    r.faults[3].set_down(true);
    let fresh = cold.read(7 * MIB + 4096, 4096).await;
    assert!(fresh.is_ok(), "chunk 7 was cached by the read above");
    // Opening needs M targets answering the journal listing: 2 of 5 is not enough.
    let mut opts = VolumeOptions::new(r.root.join("c3"));
    opts.hedge_after = Duration::from_millis(20);
    let opened = Volume::open(r.config.clone(), r.keys.clone(), r.targets.clone(), opts).await;
    assert!(opened.is_err(), "opened with only 2 of 5 targets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_in_the_cache_while_targets_are_down() {
    let r = rig(Durability::Local);
    let v = r.open("c1", |o| o.destage_after = Duration::ZERO).await;
    for f in &r.faults[..3] {
        f.set_down(true);
    }
    write_chunks(&v, &[4, 5]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(v.status().dirty_bytes >= 2 * MIB, "writes stay dirty while destage cannot reach a quorum");
    assert!(matches!(v.status().health, Health::Unavailable { .. }));
    assert!(v.destage_all(Duration::from_millis(500)).await.is_err());
    for f in &r.faults[..3] {
        f.set_down(false);
    }
    v.destage_all(Duration::from_secs(60)).await.unwrap();
    assert_eq!(v.status().dirty_bytes, 0);
    v.shutdown(Duration::from_secs(60)).await.unwrap();
    let cold = r.open("c2", |_| {}).await;
    assert!(cold.read(5 * MIB, MIB as u32).await.unwrap()[..] == pattern(5, MIB as usize)[..]);
}

/// With M targets up but fewer than the write quorum, destage cannot store anything: a
/// write that needs room in a cache full of dirty data must fail once the FLUSH timeout has
/// passed, not wait forever (it hung: only fewer than M targets up ended the wait; found by
/// `tests/crash_stress.rs`). The targets answering again, writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_below_the_write_quorum_fails_writes_instead_of_hanging() {
    let r = rig(Durability::Local);
    let v = r
        .open("c1", |o| {
            o.cache_bytes = 4 * MIB;
            o.flush_timeout = Duration::from_secs(1);
        })
        .await;
    for f in &r.faults[..2] {
        f.set_down(true);
    }
    let writes = async {
        for c in 0..8u64 {
            v.write(c * MIB, Bytes::from(pattern(c, MIB as usize)), false).await?;
        }
        Ok::<(), cleave_volume::VolumeError>(())
    };
    // Far above the FLUSH timeout: only a hang reaches it.
    let outcome = tokio::time::timeout(Duration::from_secs(60), writes).await.expect("a write hung");
    let err = outcome.expect_err("eight chunks fit neither the cache nor two targets down");
    assert!(err.to_string().contains("destage needs 4"), "{err}");
    for f in &r.faults[..2] {
        f.set_down(false);
    }
    v.write(7 * MIB, Bytes::from(pattern(7, MIB as usize)), false).await.unwrap();
    v.destage_all(Duration::from_secs(60)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_io_is_refused() {
    let r = rig(Durability::Local);
    let v = r.open("c1", |_| {}).await;
    assert!(v.read(16 * MIB - 512, 1024).await.is_err());
    assert!(v.write(u64::MAX - 10, Bytes::from_static(b"x"), false).await.is_err());
    assert!(v.trim(16 * MIB, 1).await.is_err());
    assert!(v.read(16 * MIB - 512, 512).await.is_ok());
}

/// A `local` volume whose FLUSH must reach the targets (another gateway may serve the volume
/// next, from what the targets hold): a flushed write is readable from the targets alone,
/// without waiting for the destage delay, while an unflushed one may still be only cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_volume_flushing_to_targets_makes_a_flush_durable_there() {
    let r = rig(Durability::Local);
    let v = r
        .open("c1", |o| {
            o.destage_after = Duration::from_secs(3600);
            o.flush_to_targets = true;
        })
        .await;
    assert!(v.flushes_to_targets());
    write_chunks(&v, &[2]).await;
    assert_eq!(v.status().dirty_bytes, 0, "a flush left dirty data in the cache");
    v.fence("another gateway takes over");
    // Another gateway's view: a fresh cache, a takeover, the targets only.
    let other = r
        .open("c2", |o| {
            o.takeover = true;
            o.owner = "other".into();
        })
        .await;
    assert!(other.read(2 * MIB, MIB as u32).await.unwrap()[..] == pattern(2, MIB as usize)[..]);
}

/// A handover loses nothing: a write that was never flushed is on the targets for the next
/// gateway, and the volume refuses host I/O once handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_volume_refuses_io_and_leaves_every_write_on_the_targets() {
    let r = rig(Durability::Local);
    let v = r.open("c1", |o| o.destage_after = Duration::from_secs(3600)).await;
    v.write(3 * MIB, Bytes::from(pattern(3, MIB as usize)), false).await.unwrap();
    v.hand_over("handed over to gateway B", Duration::from_secs(60)).await.unwrap();
    let refused = v.write(0, Bytes::from(vec![1u8; 4096]), false).await.unwrap_err();
    assert!(refused.to_string().contains("handed over to gateway B"), "{refused}");
    assert!(v.read(0, 4096).await.is_err());
    assert!(v.flush().await.is_err());
    // The next gateway needs no takeover: the claim was released.
    let next = r.open("c2", |o| o.owner = "b".into()).await;
    assert!(next.read(3 * MIB, MIB as u32).await.unwrap()[..] == pattern(3, MIB as usize)[..]);
}

/// A failed commit can leave a share of its record behind (a target failed after storing
/// it, or the delete afterwards failed). The next record must not be stuck behind it: with
/// exactly the write quorum up, a record name that one of them already holds never commits,
/// and once the cache filled, writes waited for a destage that never came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_of_a_failed_commit_does_not_block_the_next_records() {
    let r = rig(Durability::Dispersed);
    let v = r.open("c1", |o| o.flush_timeout = Duration::from_secs(5)).await;
    write_chunks(&v, &[0]).await;
    let next = v.status().journal_seq + 1;
    let name = cleave_volume::meta::names::journal(&r.config.uuid, next);
    r.targets[2].put(&name, Bytes::from_static(b"a share of a commit that failed")).await.unwrap();
    // Four targets up: the write quorum of 3-of-5, one of them holding the leftover.
    r.faults[0].set_down(true);
    v.write(MIB, Bytes::from(pattern(1, MIB as usize)), false).await.unwrap();
    let flushed = tokio::time::timeout(Duration::from_secs(60), v.flush()).await.expect("the FLUSH hung");
    flushed.expect("four targets answer: the FLUSH must reach them");
    r.faults[0].set_down(false);
    v.close().await;
    // The leftover is skipped on replay, and both chunks read back.
    let v = r.open("c2", |_| {}).await;
    for c in [0, 1] {
        assert!(v.read(c * MIB, MIB as u32).await.unwrap() == pattern(c, MIB as usize), "chunk {c}");
    }
}
