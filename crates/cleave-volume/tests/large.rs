//! Volumes far larger than the cache: the cache's files are sized by the cache, not by the
//! volume (a cache as large as a 64 TiB volume is more than ext4 allows in one file).

mod common;
use std::time::Duration;

use bytes::Bytes;
use cleave_split::Keyring;
use cleave_target::DynTarget;
use cleave_volume::{Durability, Volume, VolumeConfig, VolumeOptions};

const KIB: u64 = 1 << 10;
const TIB: u64 = 1 << 40;
const CHUNK: u64 = 64 * KIB;
const CACHE: u64 = 16 << 20;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 * 31 + seed * 17 + 1) as u8).collect()
}

/// Bytes allocated on disk for everything in `dir`.
fn disk_use(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut apparent, mut allocated) = (0, 0);
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        apparent += m.len();
        allocated += m.blocks() * 512;
    }
    (apparent, allocated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_64_tib_volume_works_with_a_16_mib_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (wrapped, uris) = common::faulty_dir_targets(dir.path(), 5);
    let targets: Vec<DynTarget> = wrapped.into_iter().map(|f| f as DynTarget).collect();
    let config = VolumeConfig {
        name: "huge".into(),
        uuid: "00112233445566778899aabbccddeeff".into(),
        size: 64 * TIB,
        chunk_size: CHUNK as u32,
        m: 3,
        n: 5,
        durability: Durability::Dispersed,
        targets: uris,
        write_quorum: None,
        store_zero_chunks: false,
    };
    let keys = Keyring::generate().unwrap();
    let cache_dir = dir.path().join("cache");
    let volume = config.uuid_bytes().unwrap();
    cleave_volume::label::write_all(&targets, &keys, &config.uuid, volume, 0).await.unwrap();
    let open = || {
        let mut opts = VolumeOptions::new(cache_dir.clone());
        opts.cache_bytes = CACHE;
        Volume::open(config.clone(), keys.clone(), targets.clone(), opts)
    };
    let v = open().await.unwrap();

    // The first and last blocks, then scattered 4 KiB writes over the whole volume: far more
    // chunks than the cache holds, so chunks are evicted and filled again all along.
    let last = config.size - 4 * KIB;
    let mut writes: Vec<(u64, Vec<u8>)> = vec![(0, pattern(0, 4096)), (last, pattern(1, 4096))];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..1500u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = (x % (config.size / (4 * KIB))) * 4 * KIB;
        writes.push((offset, pattern(i + 2, 4096)));
    }
    for (offset, data) in &writes {
        v.write(*offset, Bytes::from(data.clone()), false).await.unwrap();
    }
    v.flush().await.unwrap();
    let (apparent, allocated) = disk_use(&cache_dir);
    assert!(apparent <= 2 * CACHE, "the cache's files take {apparent} bytes for a {CACHE}-byte cache");
    assert!(allocated <= 2 * CACHE, "the cache's files allocate {allocated} bytes for a {CACHE}-byte cache");
    // Later writes to the same place win.
    let mut expected = std::collections::BTreeMap::new();
    for (offset, data) in &writes {
        expected.insert(*offset, data.clone());
    }
    for (offset, data) in &expected {
        let got = v.read(*offset, 4096).await.unwrap();
        assert!(got[..] == data[..], "read back at {offset}");
    }
    v.shutdown(Duration::from_secs(60)).await.unwrap();

    // From the targets alone (an empty cache), and with the cache kept.
    std::fs::remove_dir_all(&cache_dir).unwrap();
    let v = open().await.unwrap();
    for (offset, data) in expected.iter().take(200).chain(expected.iter().rev().take(10)) {
        let got = v.read(*offset, 4096).await.unwrap();
        assert!(got[..] == data[..], "read back from the targets at {offset}");
    }
    v.shutdown(Duration::from_secs(60)).await.unwrap();
    let v = open().await.unwrap();
    let got = v.read(last, 4096).await.unwrap();
    assert!(got[..] == pattern(1, 4096)[..], "the last block after a clean restart");
    v.shutdown(Duration::from_secs(60)).await.unwrap();
    // Nothing in memory is sized by the volume either (the peak of this whole test process).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(peak_kib < 512 << 10, "peak resident memory {peak_kib} KiB");
    eprintln!("peak resident memory: {peak_kib} KiB");
}
