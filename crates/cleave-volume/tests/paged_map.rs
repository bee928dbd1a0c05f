//! The paged chunk map against real directory targets: checkpoints write only the pages
//! that changed, a volume reopens from its pages with a tiny page cache, an unreadable
//! page fails reads instead of reading as zeros, and a map from before paging migrates.

mod common;
use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use cleave_split::{Codec, Keyring};
use cleave_target::DynTarget;
use cleave_volume::claim::Ownership;
use cleave_volume::dispersal::Dispersal;
use cleave_volume::journal::{Checkpoint, Journal};
use cleave_volume::map::PAGE_CHUNKS;
use cleave_volume::{Durability, Volume, VolumeConfig, VolumeOptions};

/// Small chunks, so that a page (4096 chunks) is 16 MiB of volume and a test spans many.
const CHUNK: u64 = 4096;
const PAGE: u64 = PAGE_CHUNKS * CHUNK;

struct Rig {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    targets: Vec<DynTarget>,
    config: VolumeConfig,
    keys: Keyring,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (wrapped, uris) = common::faulty_dir_targets(&root, 5);
    let config = VolumeConfig {
        name: "paged".into(),
        uuid: "00112233445566778899aabbccddeeff".into(),
        size: 16 * PAGE,
        chunk_size: CHUNK as u32,
        m: 3,
        n: 5,
        durability: Durability::Dispersed,
        targets: uris,
        write_quorum: None,
        store_zero_chunks: false,
    };
    let targets = wrapped.into_iter().map(|f| f as DynTarget).collect();
    Rig { _dir: dir, root, targets, config, keys: Keyring::generate().unwrap() }
}

impl Rig {
    /// Opens the volume with its own cache directory and a page cache of one entry.
    async fn open(&self, cache: &str, checkpoint_every: u64) -> Volume {
        let mut opts = VolumeOptions::new(self.root.join(cache));
        opts.checkpoint_every = checkpoint_every;
        opts.map_cache_entries = 1;
        opts.hedge_after = Duration::from_millis(20);
        let volume = self.config.uuid_bytes().unwrap();
        cleave_volume::label::write_all(&self.targets, &self.keys, &self.config.uuid, volume, 0).await.unwrap();
        Volume::open(self.config.clone(), self.keys.clone(), self.targets.clone(), opts).await.unwrap()
    }

    /// The names of the map's page objects on target `i`.
    async fn pages_on(&self, i: usize) -> BTreeSet<String> {
        let prefix = cleave_volume::naming::page_prefix(&self.config.uuid);
        self.targets[i].list(&prefix).await.unwrap().into_iter().collect()
    }
}

fn block(chunk: u64) -> Vec<u8> {
    (0..CHUNK).map(|i| (i * 7 + chunk * 13 + 1) as u8).collect()
}

/// Chunk `i` of page `p`.
fn chunk(p: u64, i: u64) -> u64 {
    p * PAGE_CHUNKS + i
}

async fn write(v: &Volume, chunks: &[u64]) {
    for &c in chunks {
        v.write(c * CHUNK, Bytes::from(block(c)), false).await.unwrap();
    }
    // Dispersed: a flush returns once destaged and committed.
    v.flush().await.unwrap();
}

async fn check(v: &Volume, written: &[u64], zeros: &[u64]) {
    for &c in written {
        assert_eq!(v.read(c * CHUNK, CHUNK as u32).await.unwrap()[..], block(c)[..], "chunk {c}");
    }
    for &c in zeros {
        assert!(v.read(c * CHUNK, CHUNK as u32).await.unwrap().iter().all(|&b| b == 0), "chunk {c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_write_only_the_pages_that_changed() {
    let r = rig();
    let v = r.open("c1", 1).await;
    let first: Vec<u64> = (0..6).map(|p| chunk(p * 2, p + 1)).collect();
    write(&v, &first).await;
    let before = r.pages_on(0).await;
    assert_eq!(before.len(), 6, "one page object per page written: {before:?}");

    // One chunk of one page changes: one page version is written, the old one goes.
    write(&v, &[chunk(4, 100)]).await;
    let after = r.pages_on(0).await;
    assert_eq!(after.len(), 6, "{after:?}");
    assert_eq!(after.difference(&before).count(), 1, "exactly one new page version");
    assert_eq!(before.difference(&after).count(), 1, "its old version deleted");
    assert_eq!(v.mapped_count(), 7);

    // Trimming the only chunk of page 0 empties it: no page object remains for it.
    v.trim(chunk(0, 1) * CHUNK, CHUNK).await.unwrap();
    v.flush().await.unwrap();
    assert_eq!(r.pages_on(0).await.len(), 5);
    v.shutdown(Duration::from_secs(60)).await.unwrap();
    drop(v);

    // Another cache and a page cache of one entry: every read goes to the pages.
    let cold = r.open("c2", 1).await;
    let mut written: Vec<u64> = first[1..].to_vec();
    written.push(chunk(4, 100));
    check(&cold, &written, &[chunk(0, 1), chunk(1, 1), chunk(4, 101), chunk(15, PAGE_CHUNKS - 1)]).await;
    assert_eq!(cold.mapped_count(), 6);
    assert_eq!(cold.mapped().await.unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_after_the_last_checkpoint_survive_an_unclean_stop() {
    let r = rig();
    let v = r.open("c1", 1).await;
    write(&v, &[chunk(1, 1), chunk(3, 3)]).await;
    drop(v);
    // No checkpoint after these: they live in journal records only.
    let v = r.open("c2", 1_000).await;
    write(&v, &[chunk(1, 2), chunk(5, 5)]).await;
    v.trim(chunk(3, 3) * CHUNK, CHUNK).await.unwrap();
    v.flush().await.unwrap();
    drop(v);
    let cold = r.open("c3", 1_000).await;
    check(&cold, &[chunk(1, 1), chunk(1, 2), chunk(5, 5)], &[chunk(3, 3)]).await;
    assert_eq!(cold.mapped_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_page_fails_reads_instead_of_reading_zeros() {
    let r = rig();
    let v = r.open("c1", 1).await;
    write(&v, &[chunk(2, 7), chunk(9, 9)]).await;
    v.shutdown(Duration::from_secs(60)).await.unwrap();
    drop(v);
    // Page objects lost on three of five targets: fewer than M = 3 remain.
    for i in 0..3 {
        for name in r.pages_on(i).await {
            r.targets[i].delete(&name).await.unwrap();
        }
    }
    let cold = r.open("c2", 1).await;
    let err = cold.read(chunk(2, 7) * CHUNK, CHUNK as u32).await.expect_err("a chunk whose page is lost read as data");
    assert!(err.to_string().contains("map page"), "{err}");
    // A page that never held anything needs no object.
    check(&cold, &[], &[chunk(4, 0)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_from_before_paging_is_written_as_pages() {
    let r = rig();
    let written = [chunk(0, 1), chunk(3, 2), chunk(3, 9)];
    let v = r.open("c1", 1_000).await;
    write(&v, &written).await;
    let map = v.mapped().await.unwrap();
    let seq = v.status().journal_seq;
    v.shutdown(Duration::from_secs(60)).await.unwrap();
    drop(v);
    assert!(r.pages_on(0).await.is_empty());

    // The whole map in one checkpoint, as volumes made before paging stored it.
    let legacy = Checkpoint {
        seq,
        next_generation: map.iter().map(|(_, m)| m.generation).max().unwrap() + 1,
        entries: map.iter().map(|(c, m)| (*c, m.generation, m.key_id)).collect(),
        ..Default::default()
    };
    let codec = Codec::new(3, 5).unwrap();
    let dispersal = Dispersal::new(r.targets.clone(), Duration::from_secs(10));
    let journal = Journal {
        dispersal: &dispersal,
        codec: &codec,
        keys: &r.keys,
        uuid: &r.config.uuid,
        volume: r.config.uuid_bytes().unwrap(),
        quorum: 4,
        hedge_after: Duration::from_millis(20),
        prune: true,
        accept_stale: false,
        trusted: &[],
        ownership: &Ownership { claims: Vec::new(), released: Vec::new() },
    };
    journal.checkpoint(&legacy, true).await.unwrap();

    let v = r.open("c2", 1_000).await;
    check(&v, &written, &[chunk(3, 3)]).await;
    assert_eq!(v.mapped_count(), 3);
    // The first commit writes the map as pages.
    write(&v, &[chunk(7, 7)]).await;
    assert_eq!(r.pages_on(0).await.len(), 3, "pages 0, 3 and 7");
    v.shutdown(Duration::from_secs(60)).await.unwrap();
    drop(v);
    let cold = r.open("c3", 1).await;
    check(&cold, &[chunk(0, 1), chunk(3, 2), chunk(3, 9), chunk(7, 7)], &[chunk(3, 3)]).await;
}
