//! Behaviour of the codec as a user of the crate sees it: round trips for every
//! layout, each kind of bad share, secrecy of the share bytes, key versions.

use cleave_split::{ChunkId, Codec, DecodeError, Keyring, ShareFault, ShareKind};
use proptest::prelude::*;

const VOLUME: [u8; 16] = *b"volume-uuid-0001";

fn id(chunk: u64, generation: u64) -> ChunkId {
    ChunkId { volume: VOLUME, kind: ShareKind::Data, chunk, generation }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
}

fn refs(shares: &[Vec<u8>]) -> Vec<&[u8]> {
    shares.iter().map(|s| s.as_slice()).collect()
}

/// Every subset of `0..n` of size `m`, as bit masks.
fn subsets(n: usize, m: usize) -> impl Iterator<Item = u64> {
    (0u64..1 << n).filter(move |mask| mask.count_ones() as usize == m)
}

#[test]
fn every_m_of_n_subset_rebuilds_for_n_up_to_6() {
    let keys = Keyring::generate().unwrap();
    for n in 1..=6 {
        for m in 1..=n {
            let codec = Codec::new(m, n).unwrap();
            // An odd length exercises the padding of the last piece.
            let data = pattern(1000 + 7 * n + m, (m * 10 + n) as u8);
            let shares = codec.encode(keys.current(), &id(3, 9), &data).unwrap();
            assert_eq!(shares.len(), n);
            for mask in subsets(n, m) {
                let subset: Vec<&[u8]> =
                    (0..n).filter(|i| mask & (1 << i) != 0).map(|i| shares[i].as_slice()).rev().collect();
                let out = codec.decode(&keys, &id(3, 9), &subset).unwrap();
                assert_eq!(out.data, data, "{m}-of-{n} subset {mask:b}");
                assert!(out.report.bad.is_empty());
            }
            // One fewer than M is never enough.
            if m > 1 {
                for mask in subsets(n, m - 1) {
                    let subset: Vec<&[u8]> =
                        (0..n).filter(|i| mask & (1 << i) != 0).map(|i| shares[i].as_slice()).collect();
                    match codec.decode(&keys, &id(3, 9), &subset) {
                        Err(DecodeError::NotEnoughShares { needed, good, .. }) => {
                            assert_eq!((needed, good), (m, m - 1))
                        }
                        Ok(_) => panic!("{m}-of-{n} decoded from {} shares", m - 1),
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_layouts_up_to_64_round_trip(
        n in 1usize..=64,
        m_frac in 0.0f64..1.0,
        len in 1usize..20_000,
        seed in any::<u8>(),
        order in any::<u64>(),
    ) {
        let m = 1 + ((n - 1) as f64 * m_frac) as usize;
        let keys = Keyring::generate().unwrap();
        let codec = Codec::new(m, n).unwrap();
        let data = pattern(len, seed);
        let shares = codec.encode(keys.current(), &id(7, 1), &data).unwrap();
        // A pseudo-random choice of exactly M shares, in a shuffled order.
        let mut idx: Vec<usize> = (0..n).collect();
        let mut x = order | 1;
        for i in (1..n).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            idx.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let subset: Vec<&[u8]> = idx[..m].iter().map(|&i| shares[i].as_slice()).collect();
        let out = codec.decode(&keys, &id(7, 1), &subset).unwrap();
        prop_assert_eq!(out.data, data);
        prop_assert!(out.report.bad.is_empty());
    }

    #[test]
    fn any_flipped_bit_is_caught_or_harmless(
        which in 0usize..5,
        pos_frac in 0.0f64..1.0,
        bit in 0u8..8,
    ) {
        let keys = Keyring::generate().unwrap();
        let codec = Codec::new(3, 5).unwrap();
        let data = pattern(4096, 1);
        let mut shares = codec.encode(keys.current(), &id(1, 1), &data).unwrap();
        let pos = ((shares[which].len() - 1) as f64 * pos_frac) as usize;
        shares[which][pos] ^= 1 << bit;
        let out = codec.decode_verify_all(&keys, &id(1, 1), &refs(&shares)).unwrap();
        prop_assert_eq!(out.data, data);
        // The damaged share is named by its position (a flip in the label may change the index it claims).
        let positions: Vec<usize> = out.report.bad.iter().map(|b| b.position).collect();
        prop_assert_eq!(positions, vec![which]);
    }
}

fn setup() -> (Keyring, Codec, Vec<u8>, Vec<Vec<u8>>) {
    let keys = Keyring::generate().unwrap();
    let codec = Codec::new(3, 5).unwrap();
    let data = pattern(64 * 1024 + 5, 42);
    let shares = codec.encode(keys.current(), &id(10, 4), &data).unwrap();
    (keys, codec, data, shares)
}

#[test]
fn flipped_bit_in_data_and_parity_shares_is_named() {
    let (keys, codec, data, mut shares) = setup();
    let last = shares[0].len() - 1;
    shares[0][last] ^= 0x01; // data payload
    shares[4][last / 2] ^= 0x80; // parity payload
    let out = codec.decode_verify_all(&keys, &id(10, 4), &refs(&shares)).unwrap();
    assert_eq!(out.data, data);
    assert_eq!(out.report.bad_indices(), vec![0, 4]);
    assert!(out.report.bad.iter().all(|b| matches!(b.fault, ShareFault::Damaged(_))));
    assert_eq!(out.report.used, vec![1, 2, 3]);
}

#[test]
fn flipped_bit_in_header_is_named() {
    let (keys, codec, data, mut shares) = setup();
    shares[1][80] ^= 0x10; // inside the key fragment
    shares[2][30] ^= 0x02; // inside the chunk index: looks like another chunk
    let out = codec.decode(&keys, &id(10, 4), &refs(&shares)).unwrap();
    assert_eq!(out.data, data);
    assert_eq!(out.report.bad_indices(), vec![1, 2]);
}

#[test]
fn truncated_share_is_named() {
    let (keys, codec, data, mut shares) = setup();
    let len = shares[2].len();
    shares[2].truncate(len - 1);
    shares[3].truncate(50);
    let out = codec.decode(&keys, &id(10, 4), &refs(&shares)).unwrap();
    assert_eq!(out.data, data);
    let faults: Vec<_> = out.report.bad.iter().map(|b| (b.position, b.fault.clone())).collect();
    assert!(faults.contains(&(2, ShareFault::Truncated { expected: len, found: len - 1 })), "{faults:?}");
    assert!(faults.iter().any(|(p, f)| *p == 3 && matches!(f, ShareFault::Truncated { .. })), "{faults:?}");
}

#[test]
fn share_from_another_chunk_generation_or_volume_is_named() {
    let (keys, codec, data, shares) = setup();
    let other_chunk = codec.encode(keys.current(), &id(11, 4), &data).unwrap();
    let other_gen = codec.encode(keys.current(), &id(10, 3), &data).unwrap();
    let other_keys = Keyring::generate().unwrap();
    let mut other_volume_id = id(10, 4);
    other_volume_id.volume = *b"volume-uuid-0002";
    let other_vol = codec.encode(other_keys.current(), &other_volume_id, &data).unwrap();

    let input: Vec<&[u8]> = vec![&other_chunk[0], &shares[4], &other_gen[1], &other_vol[2], &shares[0], &shares[2]];
    let out = codec.decode(&keys, &id(10, 4), &input).unwrap();
    assert_eq!(out.data, data);
    let faults: Vec<_> = out.report.bad.iter().map(|b| (b.position, b.fault.clone())).collect();
    assert!(faults.contains(&(0, ShareFault::OtherChunk { found: 11 })), "{faults:?}");
    assert!(faults.contains(&(2, ShareFault::OtherGeneration { found: 3 })), "{faults:?}");
    assert!(faults.contains(&(3, ShareFault::OtherVolume)), "{faults:?}");
    assert_eq!(faults.len(), 3);
}

#[test]
fn volume_uuid_cannot_be_relabelled_without_the_key() {
    // Rewriting the label of a share from another volume is caught by the header MAC.
    let (keys, codec, data, shares) = setup();
    let other_keys = Keyring::generate().unwrap();
    let mut other = id(10, 4);
    other.volume = *b"volume-uuid-0002";
    let mut foreign = codec.encode(other_keys.current(), &other, &data).unwrap();
    foreign[1][12..28].copy_from_slice(&VOLUME);
    let input: Vec<&[u8]> = vec![&foreign[1], &shares[0], &shares[2], &shares[3]];
    let out = codec.decode(&keys, &id(10, 4), &input).unwrap();
    assert_eq!(out.data, data);
    assert_eq!(out.report.bad.len(), 1);
    assert_eq!(out.report.bad[0].fault, ShareFault::Damaged("header MAC"));
}

#[test]
fn duplicated_index_is_named() {
    let (keys, codec, data, shares) = setup();
    let input: Vec<&[u8]> = vec![&shares[1], &shares[1], &shares[3], &shares[1], &shares[4]];
    let out = codec.decode(&keys, &id(10, 4), &input).unwrap();
    assert_eq!(out.data, data);
    assert_eq!(out.report.bad.len(), 2);
    assert!(out.report.bad.iter().all(|b| b.fault == ShareFault::Duplicate(1)));
    // Duplicates do not count towards M.
    let input: Vec<&[u8]> = vec![&shares[1], &shares[1], &shares[3]];
    assert!(matches!(
        codec.decode(&keys, &id(10, 4), &input),
        Err(DecodeError::NotEnoughShares { needed: 3, good: 2, .. })
    ));
}

#[test]
fn shares_of_two_writes_of_one_generation_are_not_mixed() {
    let (keys, codec, data, shares) = setup();
    let again = codec.encode(keys.current(), &id(10, 4), &pattern(data.len(), 7)).unwrap();
    let input: Vec<&[u8]> = vec![&shares[0], &again[1], &shares[2], &shares[3]];
    let out = codec.decode(&keys, &id(10, 4), &input).unwrap();
    assert_eq!(out.data, data);
    assert_eq!(out.report.bad[0].fault, ShareFault::OtherWrite);
}

#[test]
fn garbage_among_shares_is_ignored() {
    let (keys, codec, data, shares) = setup();
    let junk = pattern(5000, 3);
    let input: Vec<&[u8]> = vec![&[], &junk, b"CLVS", &shares[3], &shares[1], &shares[4]];
    let out = codec.decode(&keys, &id(10, 4), &input).unwrap();
    assert_eq!(out.data, data);
    assert_eq!(out.report.bad.len(), 3);
}

#[test]
fn fewer_than_m_good_shares_is_a_clear_error() {
    let (keys, codec, _data, mut shares) = setup();
    shares[0][500] ^= 1;
    shares[3][500] ^= 1;
    let input = refs(&shares[..4]);
    let err = codec.decode(&keys, &id(10, 4), &input).unwrap_err();
    let DecodeError::NotEnoughShares { needed, good, report } = &err;
    assert_eq!((*needed, *good), (3, 2));
    assert_eq!(report.bad_indices(), vec![0, 3]);
    assert!(err.to_string().contains("only 2 good shares of the 3 needed"), "{err}");
}

#[test]
fn wrong_keyring_decodes_nothing() {
    let (_keys, codec, _data, shares) = setup();
    let stranger = Keyring::generate().unwrap();
    let err = codec.decode(&stranger, &id(10, 4), &refs(&shares)).unwrap_err();
    let DecodeError::NotEnoughShares { good, report, .. } = err;
    assert_eq!(good, 0);
    assert_eq!(report.bad.len(), 5);
}

/// Longest run of bytes of `needle` (of at least `min` bytes) found in `hay`.
fn contains_run(hay: &[u8], needle: &[u8], min: usize) -> bool {
    needle.windows(min).step_by(min / 2).any(|w| hay.windows(min).any(|h| h == w))
}

#[test]
fn no_share_holds_a_plaintext_run_and_writes_differ() {
    let keys = Keyring::generate().unwrap();
    let codec = Codec::new(3, 5).unwrap();
    let mut data = Vec::new();
    while data.len() < 32 * 1024 {
        data.extend_from_slice(b"TOP-SECRET customer ledger row; ");
    }
    let a = codec.encode(keys.current(), &id(1, 1), &data).unwrap();
    let b = codec.encode(keys.current(), &id(1, 1), &data).unwrap();
    for share in a.iter().chain(&b) {
        assert!(!contains_run(share, &data[..64], 16), "share holds a 16-byte plaintext run");
        assert!(!share.windows(10).any(|w| w == b"TOP-SECRET"));
    }
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.len(), y.len());
        let same = x.iter().zip(y).filter(|(p, q)| p == q).count();
        // Only the label (magic, layout, ids, lengths) may coincide; payloads and key fragments differ.
        assert!(same < 120, "{same} equal bytes between two writes of one plaintext");
        let h = x.len() - data.len().div_ceil(3);
        assert_ne!(x[h..], y[h..]);
    }
    // All-zero data does not show through either.
    let zeros = vec![0u8; 8192];
    for share in codec.encode(keys.current(), &id(2, 1), &zeros).unwrap() {
        assert!(!share.windows(32).any(|w| w.iter().all(|&b| b == 0)));
    }
}

#[test]
fn re_key_covers_new_writes_and_old_ones_stay_readable() {
    let mut keys = Keyring::generate().unwrap();
    let codec = Codec::new(2, 3).unwrap();
    let data = pattern(3000, 9);
    let old = codec.encode(keys.current(), &id(1, 1), &data).unwrap();
    let v2 = keys.rotate().unwrap();
    assert_eq!(v2, 2);
    let new = codec.encode(keys.current(), &id(1, 2), &data).unwrap();
    assert_eq!(cleave_split::read_label(&old[0]).unwrap().key_id, 1);
    assert_eq!(cleave_split::read_label(&new[0]).unwrap().key_id, 2);
    assert_eq!(codec.decode(&keys, &id(1, 1), &refs(&old)).unwrap().data, data);
    assert_eq!(codec.decode(&keys, &id(1, 2), &refs(&new)).unwrap().data, data);
    keys.retire(1);
    let err = codec.decode(&keys, &id(1, 1), &refs(&old)).unwrap_err();
    let DecodeError::NotEnoughShares { report, .. } = err;
    assert!(report.bad.iter().all(|b| b.fault == ShareFault::UnknownKey(1)));
}

#[test]
fn journal_shares_do_not_decode_as_data() {
    let keys = Keyring::generate().unwrap();
    let codec = Codec::new(2, 3).unwrap();
    let mut jid = id(0, 5);
    jid.kind = ShareKind::Journal;
    let shares = codec.encode(keys.current(), &jid, b"journal record").unwrap();
    assert_eq!(codec.decode(&keys, &jid, &refs(&shares)).unwrap().data, b"journal record");
    assert!(codec.decode(&keys, &id(0, 5), &refs(&shares)).is_err());
}

#[test]
fn labels_read_without_keys() {
    let (_keys, _codec, data, shares) = setup();
    for (i, s) in shares.iter().enumerate() {
        let label = cleave_split::read_label(s).unwrap();
        assert_eq!(label.index as usize, i);
        assert_eq!((label.m, label.n), (3, 5));
        assert_eq!(label.id, id(10, 4));
        assert_eq!(label.chunk_len as usize, data.len());
        assert_eq!(label.share_len(), s.len());
    }
}

#[test]
fn layouts_out_of_range_are_refused() {
    assert!(Codec::new(0, 3).is_err());
    assert!(Codec::new(4, 3).is_err());
    assert!(Codec::new(3, 65).is_err());
    assert!(Codec::new(64, 64).is_ok());
    let keys = Keyring::generate().unwrap();
    let codec = Codec::new(1, 1).unwrap();
    assert!(codec.encode(keys.current(), &id(0, 0), &[]).is_err());
}
