//! The bodies of the fuzz targets in `crates/cleave-volume/fuzz` (journal_record,
//! checkpoint, map_page, superblock, target_label), run on stable in CI: over arbitrary bytes, and
//! over valid encodings with bytes flipped, cut short or spliced in, which reach further
//! than random bytes do (past the JSON parser, past the MAC).

use cleave_split::GroupKey;
use cleave_volume::fuzzing;
use cleave_volume::journal::{Checkpoint, Record};
use cleave_volume::map::{StoredPage, PAGE_CHUNKS};
use cleave_volume::{Durability, Superblock, VolumeConfig};
use proptest::prelude::*;

/// A valid encoding with a few bytes changed, cut short, or with bytes inserted.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len().max(1);
    (prop::collection::vec((0..len, any::<u8>()), 0..6), 0..=len, prop::collection::vec(any::<u8>(), 0..8), 0..4u8)
        .prop_map(move |(flips, cut, insert, how)| {
            let mut v = valid.clone();
            for (at, x) in flips {
                if at < v.len() {
                    v[at] ^= x;
                }
            }
            match how {
                0 => v.truncate(cut),
                1 => {
                    let at = cut.min(v.len());
                    v.splice(at..at, insert);
                }
                _ => {}
            }
            v
        })
}

fn entries() -> impl Strategy<Value = Vec<(u64, u64, u32)>> {
    prop::collection::vec((0u64..64, prop_oneof![0u64..8, Just(u64::MAX), any::<u64>()], any::<u32>()), 0..8)
}

fn missing() -> impl Strategy<Value = Vec<(u64, Vec<u8>)>> {
    prop::collection::vec((0u64..64, prop::collection::vec(any::<u8>(), 0..4)), 0..4)
}

fn record_json() -> impl Strategy<Value = Vec<u8>> {
    (any::<u64>(), entries(), missing())
        .prop_map(|(seq, entries, missing)| serde_json::to_vec(&Record { seq, entries, missing, epoch: 0 }).unwrap())
}

fn pages() -> impl Strategy<Value = Vec<(u64, u64, u64, bool)>> {
    prop::collection::vec((0u64..8, prop_oneof![0u64..16, any::<u64>()], 0u64..5000, any::<bool>()), 0..6)
}

fn checkpoint_json() -> impl Strategy<Value = Vec<u8>> {
    (any::<u64>(), any::<u64>(), entries(), missing(), pages()).prop_map(
        |(seq, next_generation, entries, missing, pages)| {
            serde_json::to_vec(&Checkpoint { seq, next_generation, entries, missing, pages }).unwrap()
        },
    )
}

/// Page 1 version 7 as the body asks for it, with entries in and out of its range.
fn map_page_json() -> impl Strategy<Value = Vec<u8>> {
    let chunk = prop_oneof![PAGE_CHUNKS..2 * PAGE_CHUNKS, any::<u64>()];
    (prop_oneof![Just(1u64), any::<u64>()], prop::collection::vec((chunk, 0u64..4, any::<u32>()), 0..8)).prop_map(
        |(page, mut entries)| {
            entries.sort_unstable();
            serde_json::to_vec(&StoredPage { page, version: 7, entries }).unwrap()
        },
    )
}

/// A real sealed superblock under the fuzz master key (config fields vary, some invalid).
fn sealed_superblock(m: u8, n: u8, size: u64, chunk_size: u32) -> Vec<u8> {
    let config = VolumeConfig {
        name: "v".into(),
        uuid: "00112233445566778899aabbccddeeff".into(),
        size: 16 << 20,
        chunk_size: 1 << 20,
        m: 3,
        n: 5,
        durability: Durability::Dispersed,
        targets: (0..5).map(|i| format!("file:///t{i}")).collect(),
        write_quorum: None,
        store_zero_chunks: false,
    };
    let master = fuzzing::master();
    let (mut sb, _) = Superblock::create(config, &master, "admin", &GroupKey::generate().unwrap()).unwrap();
    // Seal what validation would refuse too: `open` must refuse it, not panic.
    sb.config.m = m;
    sb.config.n = n;
    sb.config.size = size;
    sb.config.chunk_size = chunk_size;
    sb.seal(&master).unwrap()
}

fn superblock_bytes() -> impl Strategy<Value = Vec<u8>> {
    (0u8..8, 0u8..8, prop_oneof![Just(16u64 << 20), any::<u64>()], prop_oneof![Just(1u32 << 20), any::<u32>()])
        .prop_flat_map(|(m, n, size, cs)| {
            let sealed = sealed_superblock(m, n, size, cs);
            // The superblock alone (what serde sees inside the seal), and the sealed form.
            let inner =
                serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&sealed).unwrap()["superblock"])
                    .unwrap();
            prop_oneof![Just(sealed.clone()), Just(inner.clone()), mutated(sealed), mutated(inner)]
        })
}

fn label_bytes() -> impl Strategy<Value = Vec<u8>> {
    (any::<[u8; 16]>(), any::<u8>()).prop_flat_map(|(volume, index)| {
        let good = cleave_volume::label::encode(&fuzzing::keyring(), volume, index);
        // The body's own layout: volume, index, then bytes XORed into the label.
        let mut framed = volume.to_vec();
        framed.push(index);
        prop_oneof![
            Just(good.clone()),
            mutated(good),
            prop::collection::vec(any::<u8>(), 0..80).prop_map(move |x| {
                let mut v = framed.clone();
                v.extend(x);
                v
            })
        ]
    })
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..600)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn journal_record_arbitrary(data in bytes()) {
        fuzzing::journal_record(&data);
    }

    #[test]
    fn journal_record_mutated(data in record_json().prop_flat_map(mutated)) {
        fuzzing::journal_record(&data);
    }

    #[test]
    fn checkpoint_arbitrary(data in bytes()) {
        fuzzing::checkpoint(&data);
    }

    #[test]
    fn checkpoint_mutated(data in checkpoint_json().prop_flat_map(mutated)) {
        fuzzing::checkpoint(&data);
    }

    #[test]
    fn map_page_arbitrary(data in bytes()) {
        fuzzing::map_page(&data);
    }

    #[test]
    fn map_page_mutated(data in map_page_json().prop_flat_map(mutated)) {
        fuzzing::map_page(&data);
    }

    #[test]
    fn superblock_arbitrary(data in bytes()) {
        fuzzing::superblock(&data);
    }

    #[test]
    fn target_label_arbitrary(data in bytes()) {
        fuzzing::target_label(&data);
    }

    #[test]
    fn target_label_mutated(data in label_bytes()) {
        fuzzing::target_label(&data);
    }
}

proptest! {
    // Sealing and opening a superblock costs key wrapping: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn superblock_mutated(data in superblock_bytes()) {
        fuzzing::superblock(&data);
    }
}

/// Valid encodings go all the way through each body.
#[test]
fn valid_inputs_reach_the_checks() {
    let r = Record { seq: 7, entries: vec![(1, 3, 1), (2, 0, 1), (1, 4, 1)], missing: vec![(1, vec![4])], epoch: 0 };
    fuzzing::journal_record(&serde_json::to_vec(&r).unwrap());
    let cp = Checkpoint { seq: 9, next_generation: 12, entries: vec![(1, 4, 1)], ..Default::default() };
    fuzzing::checkpoint(&serde_json::to_vec(&cp).unwrap());
    let cp = Checkpoint {
        seq: 9,
        next_generation: 12,
        pages: vec![(0, 9, 3, true), (4, 2, 1, false)],
        ..Default::default()
    };
    fuzzing::checkpoint(&serde_json::to_vec(&cp).unwrap());
    let page = StoredPage { page: 1, version: 7, entries: vec![(PAGE_CHUNKS, 3, 1), (PAGE_CHUNKS + 9, 4, 1)] };
    fuzzing::map_page(&page.to_bytes());
    let sealed = sealed_superblock(3, 5, 16 << 20, 1 << 20);
    assert!(Superblock::open(&sealed, &fuzzing::master()).is_ok());
    fuzzing::superblock(&sealed);
    let label = cleave_volume::label::encode(&fuzzing::keyring(), fuzzing::VOLUME, 2);
    assert_eq!(cleave_volume::label::verify(&label, &fuzzing::keyring(), fuzzing::VOLUME, 2), Ok(()));
    fuzzing::target_label(&label);
}
