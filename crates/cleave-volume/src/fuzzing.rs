//! The bodies of the fuzz targets in `crates/cleave-volume/fuzz`: everything this crate
//! parses from what a target returns (journal records, checkpoints, map pages, superblocks,
//! target labels). Kept here so that the stable test `tests/fuzz_bodies.rs` runs the very same
//! code over generated inputs in CI, where cargo fuzz (nightly) does not run.
//!
//! Each body takes arbitrary bytes and must never panic; where a parse succeeds it also
//! checks a property (a round trip, a MAC that cannot be forged by chance).

use cleave_split::keys::Secret;
use cleave_split::{Keyring, MasterKey, VolumeKey};

use crate::journal::{Checkpoint, Record, Replayed};
use crate::meta::Superblock;

/// The fixed master key of the fuzz targets.
pub fn master() -> MasterKey {
    MasterKey::from_key_file(&format!("cleave-master-key-v1:{}", "5a".repeat(32))).expect("a valid key file")
}

/// The fixed volume keyring of the fuzz targets.
pub fn keyring() -> Keyring {
    Keyring::from_key(VolumeKey::new(1, Secret::from_bytes([7; 32])))
}

pub const VOLUME: [u8; 16] = *b"cleave-fuzz-vol!";

/// What replay does with each record after the checkpoint.
fn replay_records(out: &mut Replayed, records: &[Record]) {
    for r in records {
        if out.apply_record(r).is_err() {
            // Only a generation of u64::MAX can make it fail.
            assert!(r.entries.iter().any(|e| e.1 == u64::MAX));
            return;
        }
        assert!(out.delta.values().flatten().all(|m| m.generation != 0), "generation 0 (zeros) in the map");
        assert!(out.next_generation > r.entries.iter().map(|e| e.1).max().unwrap_or(0));
    }
}

/// A stored journal record (its decrypted body, JSON) into replay.
pub fn journal_record(data: &[u8]) {
    let Ok(record) = serde_json::from_slice::<Record>(data) else { return };
    let bytes = serde_json::to_vec(&record).expect("a record serializes");
    assert_eq!(serde_json::from_slice::<Record>(&bytes).expect("round trip"), record);
    let mut out = Replayed { next_generation: 1, ..Default::default() };
    replay_records(&mut out, std::slice::from_ref(&record));
    // Twice the same record: replay is idempotent on the map.
    let map = out.delta.clone();
    if out.apply_record(&record).is_ok() {
        assert_eq!(out.delta, map);
    }
}

/// A stored checkpoint (its decrypted body, JSON) into replay, then records after it.
pub fn checkpoint(data: &[u8]) {
    let Ok(cp) = serde_json::from_slice::<Checkpoint>(data) else { return };
    let bytes = serde_json::to_vec(&cp).expect("a checkpoint serializes");
    let again: Checkpoint = serde_json::from_slice(&bytes).expect("round trip");
    assert_eq!(serde_json::to_vec(&again).unwrap(), bytes);
    let mut out = Replayed { next_generation: 1, ..Default::default() };
    if out.apply_checkpoint(&cp).is_err() {
        // Only an impossible directory is refused.
        assert!(!cp.pages.is_empty());
        return;
    }
    assert!(out.next_generation >= 1);
    assert!(out.directory.values().all(|r| r.version <= cp.seq && r.count > 0));
    assert_eq!((out.last_seq, out.last_checkpoint), (cp.seq, cp.seq));
    // The checkpoint's own entries as a record on top change nothing but the counters.
    let map = out.delta.clone();
    let record = Record { seq: cp.seq.wrapping_add(1), entries: cp.entries.clone(), missing: Vec::new(), epoch: 0 };
    if out.apply_record(&record).is_ok() {
        assert_eq!(out.delta, map);
    }
}

/// A stored map page (its decrypted body, JSON), asked for as page 1 version 7: what
/// parses is in that page's range, in order, without zeros, and survives storing again.
pub fn map_page(data: &[u8]) {
    use crate::map::{StoredPage, PAGE_CHUNKS};
    let Ok(page) = StoredPage::parse(data, 1, 7) else { return };
    assert!(page.keys().all(|c| (PAGE_CHUNKS..2 * PAGE_CHUNKS).contains(c)));
    assert!(page.values().all(|m| m.generation != 0));
    let again = StoredPage::new(1, 7, &page).to_bytes();
    assert_eq!(StoredPage::parse(&again, 1, 7).expect("round trip"), page);
}

/// A stored superblock: parse and authenticate under the fixed master key; what parses
/// as a superblock is sealed and opened again, then unlocked.
pub fn superblock(data: &[u8]) {
    let master = master();
    if let Ok(sb) = Superblock::open(data, &master) {
        // Authenticated under the fuzz key: only inputs built from a sealed one get here.
        let _ = sb.unlock(&master);
    }
    if let Ok(sb) = serde_json::from_slice::<Superblock>(data) {
        let sealed = sb.seal(&master).expect("a parsed superblock seals");
        match Superblock::open(&sealed, &master) {
            Ok(opened) => {
                assert!(opened.config.validate().is_ok());
                assert_eq!(serde_json::to_vec(&opened).unwrap(), serde_json::to_vec(&sb).unwrap());
                let _ = opened.unlock(&master);
            }
            // Only a configuration that does not validate is refused.
            Err(_) => assert!(sb.config.validate().is_err()),
        }
        let other = MasterKey::from_key_file(&format!("cleave-master-key-v1:{}", "a5".repeat(32))).unwrap();
        assert!(Superblock::open(&sealed, &other).is_err(), "a superblock opened under another key");
    }
}

/// A stored target label, checked against the fixed volume and share 2; then a label
/// made for the volume and index the input names, with the input's bytes XORed in: it
/// verifies exactly when they changed nothing.
pub fn target_label(data: &[u8]) {
    let keys = keyring();
    let _ = crate::label::verify(data, &keys, VOLUME, 2);
    let volume: [u8; 16] = match data.get(..16) {
        Some(v) => v.try_into().unwrap(),
        None => VOLUME,
    };
    let index = data.get(16).copied().unwrap_or(0);
    let good = crate::label::encode(&keys, volume, index);
    assert_eq!(crate::label::verify(&good, &keys, volume, index), Ok(()));
    let mut label = good.clone();
    for (l, d) in label.iter_mut().zip(data.iter().skip(17)) {
        *l ^= d;
    }
    assert_eq!(crate::label::verify(&label, &keys, volume, index).is_ok(), label == good);
    if index != 255 {
        assert!(crate::label::verify(&good, &keys, volume, index + 1).is_err());
    }
}
