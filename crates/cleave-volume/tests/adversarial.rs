//! The volume engine against degraded, lying and hostile targets (issue 10, items 1, 3, 4, 9).

mod common;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cleave_split::keys::MasterKey;
use cleave_split::Keyring;
use cleave_target::{DynTarget, Faults, HostileTarget, Lies};
use cleave_volume::meta::{names, ADMIN_GROUP};
use cleave_volume::{recover, Durability, Superblock, Volume, VolumeConfig, VolumeError, VolumeOptions};

const MIB: u64 = 1 << 20;
const UUID: &str = "00112233445566778899aabbccddeeff";

struct Rig {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    targets: Vec<DynTarget>,
    faults: Vec<Arc<Faults>>,
    lies: Vec<Arc<Lies>>,
    config: VolumeConfig,
    keys: Keyring,
    master: MasterKey,
}

/// M-of-N directory targets, each wrapped in fault injection and then in lies; the
/// superblock is published as `cleave serve` does, so offline recovery finds it.
async fn rig(m: u8, n: u8) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (wrapped, uris) = common::faulty_dir_targets(&root, n as usize);
    let (mut targets, mut faults, mut lies) = (Vec::new(), Vec::new(), Vec::new());
    for f in wrapped {
        faults.push(f.faults());
        let h = HostileTarget::new(f);
        lies.push(h.lies());
        targets.push(Arc::new(h) as DynTarget);
    }
    let config = VolumeConfig {
        name: "t".into(),
        uuid: UUID.into(),
        size: 16 * MIB,
        chunk_size: MIB as u32,
        m,
        n,
        durability: Durability::Dispersed,
        targets: uris,
        write_quorum: None,
        store_zero_chunks: false,
    };
    let master = MasterKey::generate().unwrap();
    let group_key = cleave_split::keys::GroupKey::generate().unwrap();
    let (sb, keys) = Superblock::create(config.clone(), &master, ADMIN_GROUP, &group_key).unwrap();
    let sealed = Bytes::from(sb.seal(&master).unwrap());
    for t in &targets {
        t.put(&names::superblock(UUID, 1), sealed.clone()).await.unwrap();
    }
    let volume = config.uuid_bytes().unwrap();
    cleave_volume::label::write_all(&targets, &keys, UUID, volume, n as usize).await.unwrap();
    Rig { _dir: dir, root, targets, faults, lies, config, keys, master }
}

impl Rig {
    async fn open(&self, cache: &str) -> Result<Volume, VolumeError> {
        self.open_as(cache, "local", false).await
    }

    async fn open_as(&self, cache: &str, owner: &str, takeover: bool) -> Result<Volume, VolumeError> {
        let mut opts = VolumeOptions::new(self.root.join(cache));
        opts.owner = owner.into();
        opts.takeover = takeover;
        opts.hedge_after = Duration::from_millis(20);
        opts.flush_timeout = Duration::from_secs(10);
        opts.destage_after = Duration::from_millis(10);
        Volume::open(self.config.clone(), self.keys.clone(), self.targets.clone(), opts).await
    }

    /// Offline recovery from the targets `which`, as `cleave recover` does it.
    async fn recover(&self, which: &[usize], accept_stale: bool) -> Result<Vec<u8>, VolumeError> {
        let out = self.root.join("recovered.img");
        let targets = which.iter().map(|&i| self.targets[i].clone()).collect();
        recover::export(targets, &self.master, "t", &out, accept_stale, |_, _| {}).await?;
        Ok(std::fs::read(out).unwrap())
    }
}

async fn write_chunk(v: &Volume, chunk: u64, byte: u8) {
    v.write(chunk * MIB, Bytes::from(vec![byte; MIB as usize]), false).await.unwrap();
    if let Err(e) = v.flush().await {
        panic!("flush: {e}; last destage error: {:?}", v.status().last_destage_error);
    }
}

fn chunk_of(image: &[u8], chunk: u64) -> &[u8] {
    &image[(chunk * MIB) as usize..((chunk + 1) * MIB) as usize]
}

/// Item 1: write A; target 4 down; write B (acknowledged on four targets); target 4 back.
/// Targets 2, 3 and 4 then must not yield A or zeros: recovery stops with an error that
/// names the record, `accept_stale` gives the last fully redundant state (A), and after
/// re-replication (which a restart does not forget) any three targets give B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_writes_keep_any_m_targets_sufficient() {
    let r = rig(3, 5).await;
    let v = r.open("c1").await.unwrap();
    write_chunk(&v, 1, 0xa1).await;
    r.faults[4].set_down(true);
    write_chunk(&v, 1, 0xb2).await;
    assert!(v.needs_rereplication(), "a write that missed a target must leave the volume degraded");
    v.shutdown(Duration::from_secs(30)).await.unwrap();
    drop(v);
    r.faults[4].set_down(false);

    let err = r.recover(&[2, 3, 4], false).await.expect_err("targets 2, 3, 4 lack the last record");
    assert!(matches!(err, VolumeError::MetadataUnavailable(_)), "{err}");
    assert!(err.to_string().contains("journal record"), "{err}");
    let stale = r.recover(&[2, 3, 4], true).await.unwrap();
    assert!(chunk_of(&stale, 1).iter().all(|&b| b == 0xa1), "accept_stale must give A, the last full state");

    // A restart remembers what the degraded write missed, and re-replication restores it.
    let v = r.open("c2").await.unwrap();
    assert!(v.needs_rereplication(), "the journal must carry the missing shares across a restart");
    let report = v.rereplicate(|_, _| {}).await.unwrap();
    assert_eq!(report.still_missing, 0, "{report:?}");
    assert!(!v.needs_rereplication());
    v.shutdown(Duration::from_secs(30)).await.unwrap();
    for subset in [[2, 3, 4], [0, 1, 4], [0, 2, 4]] {
        let image = r.recover(&subset, false).await.unwrap();
        assert!(chunk_of(&image, 1).iter().all(|&b| b == 0xb2), "targets {subset:?} must give B");
    }
}

/// Item 3: forged journal and checkpoint names, empty or garbage, with sequence numbers at
/// the top of the range, on one target: no panic, writes go on, a reopen reads them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_journal_objects_do_not_stop_the_volume() {
    let r = rig(3, 5).await;
    let lies = &r.lies[1];
    lies.forge(&names::journal(UUID, u64::MAX - 1), Bytes::new());
    lies.forge(&names::journal(UUID, u64::MAX), Bytes::from_static(b"garbage"));
    lies.forge(&names::journal(UUID, 2), Bytes::from(vec![0xff; 300]));
    lies.forge(&names::checkpoint(UUID, u64::MAX), Bytes::from_static(b"CLVS\x01"));
    lies.forge(&names::chunk(UUID, 0, 1), Bytes::from(vec![0u8; 4096]));
    let v = r.open("c1").await.unwrap();
    for (chunk, byte) in [(0u64, 0x11u8), (3, 0x33), (0, 0x44)] {
        write_chunk(&v, chunk, byte).await;
    }
    v.shutdown(Duration::from_secs(30)).await.unwrap();
    drop(v);
    let v = r.open("c2").await.expect("a reopen must not trust forged names");
    assert_eq!(v.read(0, MIB as u32).await.unwrap(), Bytes::from(vec![0x44; MIB as usize]));
    assert_eq!(v.read(3 * MIB, MIB as u32).await.unwrap(), Bytes::from(vec![0x33; MIB as usize]));
    write_chunk(&v, 5, 0x55).await;
    v.shutdown(Duration::from_secs(30)).await.unwrap();
}

/// Item 4: one target answers "already exists" to every put. Writes still reach the
/// quorum, the volume shows the missing share, and everything reads back elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_claims_every_object_exists_does_not_block_destage() {
    let r = rig(3, 5).await;
    r.lies[2].set_claim_exists(true);
    let v = r.open("c1").await.unwrap();
    for chunk in 0..4u64 {
        write_chunk(&v, chunk, chunk as u8 + 1).await;
    }
    assert!(v.needs_rereplication());
    v.shutdown(Duration::from_secs(30)).await.unwrap();
    drop(v);
    let v = r.open("c2").await.unwrap();
    for chunk in 0..4u64 {
        assert_eq!(v.read(chunk * MIB, MIB as u32).await.unwrap(), Bytes::from(vec![chunk as u8 + 1; MIB as usize]));
    }
}

/// Item 9: a 2-of-3 volume with one target down keeps taking dispersed writes (the default
/// quorum is 2), shows reduced redundancy, and re-replicates when the target returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_with_one_target_down_keeps_taking_writes() {
    let r = rig(2, 3).await;
    assert_eq!(r.config.write_quorum(), 2);
    let v = r.open("c1").await.unwrap();
    r.faults[0].set_down(true);
    write_chunk(&v, 2, 0x22).await;
    assert!(v.needs_rereplication());
    r.faults[0].set_down(false);
    v.rereplicate(|_, _| {}).await.unwrap();
    assert!(!v.needs_rereplication());
    v.shutdown(Duration::from_secs(30)).await.unwrap();
    let image = r.recover(&[0, 2], false).await.unwrap();
    assert!(chunk_of(&image, 2).iter().all(|&b| b == 0x22));
}

/// Item 7: a second gateway is refused while the first holds the volume; after an explicit
/// takeover the first one's next commit fails, it stops serving, and nothing it writes
/// afterwards reaches a reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_is_refused_and_a_takeover_fences_the_first() {
    let r = rig(3, 5).await;
    let a = r.open_as("a", "gateway-a", false).await.unwrap();
    write_chunk(&a, 0, 0x0a).await;
    let refused = r.open_as("b", "gateway-b", false).await.expect_err("the volume is claimed by gateway-a");
    assert!(matches!(refused, VolumeError::Claimed { ref owner, .. } if owner == "gateway-a"), "{refused}");
    let b = r.open_as("b", "gateway-b", true).await.unwrap();
    assert_eq!(b.read(0, MIB as u32).await.unwrap(), Bytes::from(vec![0x0a; MIB as usize]));
    write_chunk(&b, 1, 0x1b).await;
    // The old owner's next commit finds the newer claim: it fails and A is fenced.
    a.write(2 * MIB, Bytes::from(vec![0x2a; MIB as usize]), false).await.unwrap();
    let err = a.flush().await.expect_err("a commit after a takeover must fail");
    assert!(matches!(err, VolumeError::Fenced(_)), "{err}");
    assert!(matches!(a.read(0, 4096).await, Err(VolumeError::Fenced(_))));
    b.shutdown(Duration::from_secs(30)).await.unwrap();
    let image = r.recover(&[0, 1, 2, 3, 4], false).await.unwrap();
    assert!(chunk_of(&image, 0).iter().all(|&x| x == 0x0a) && chunk_of(&image, 1).iter().all(|&x| x == 0x1b));
    assert!(chunk_of(&image, 2).iter().all(|&x| x == 0), "a write of the fenced gateway reached a reader");
    // B released the volume cleanly: a third gateway may open it without a takeover.
    r.open_as("c", "gateway-c", false).await.unwrap();
}

/// A fenced gateway's cache still holds what it wrote after the takeover. When that gateway
/// opens the volume again (here after the new owner released it), the cache is older than
/// the other gateway's writes: it is dropped, never destaged over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_older_than_another_gateways_claim_is_dropped() {
    let r = rig(3, 5).await;
    let a = r.open_as("a", "gateway-a", false).await.unwrap();
    write_chunk(&a, 0, 0x0a).await;
    let b = r.open_as("b", "gateway-b", true).await.unwrap();
    write_chunk(&b, 1, 0x1b).await;
    a.write(MIB, Bytes::from(vec![0x2a; MIB as usize]), false).await.unwrap();
    assert!(matches!(a.flush().await, Err(VolumeError::Fenced(_))));
    drop(a);
    b.shutdown(Duration::from_secs(30)).await.unwrap();
    drop(b);
    let a = r.open_as("a", "gateway-a", false).await.unwrap();
    let read = a.read(MIB, MIB as u32).await.unwrap();
    assert!(read.iter().all(|&x| x == 0x1b), "the stale cache is served: {:#x}", read[0]);
    a.shutdown(Duration::from_secs(30)).await.unwrap();
    let image = r.recover(&[0, 1, 2, 3, 4], false).await.unwrap();
    assert!(chunk_of(&image, 0).iter().all(|&x| x == 0x0a));
    assert!(chunk_of(&image, 1).iter().all(|&x| x == 0x1b), "a fenced gateway's stale cache reached a reader");
}

/// Item 6's loud failure at the engine: targets that hold chunk objects (in the opaque
/// layout) while the journal maps none are refused by `check_against_journal`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_objects_without_a_journal_are_refused() {
    let r = rig(3, 5).await;
    let v = r.open("c1").await.unwrap();
    write_chunk(&v, 2, 0x2c).await;
    v.shutdown(Duration::from_secs(30)).await.unwrap();
    drop(v);
    for i in 0..5 {
        for dir in ["journal", "checkpoint"] {
            let _ = std::fs::remove_dir_all(r.root.join(format!("t{i}")).join(UUID).join(dir));
        }
    }
    let v = r.open("c2").await.unwrap();
    assert!(v.mapped().await.unwrap().is_empty());
    assert_eq!(v.mapped_count(), 0);
    let err = recover::check_against_journal(&v, &r.targets).await.expect_err("chunk objects but no journal");
    assert!(err.to_string().contains("maps none"), "{err}");
}
