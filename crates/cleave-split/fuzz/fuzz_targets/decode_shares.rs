//! Arbitrary bytes into share parsing and decoding: never a panic, a hang or an
//! unbounded allocation, and never data that differs from what was encoded.
#![no_main]

use std::sync::OnceLock;

use cleave_split::keys::Secret;
use cleave_split::{read_label, ChunkId, Codec, Keyring, VolumeKey};
use libfuzzer_sys::fuzz_target;

const M: usize = 3;
const N: usize = 5;

struct Fixture {
    keys: Keyring,
    codec: Codec,
    id: ChunkId,
    data: Vec<u8>,
    shares: Vec<Vec<u8>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let keys = Keyring::from_key(VolumeKey::new(1, Secret::from_bytes([7; 32])));
        let codec = Codec::new(M, N).unwrap();
        let id = ChunkId::data(*b"fuzz-volume-uuid", 3, 9);
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
        let shares = codec.encode(keys.current(), &id, &data).unwrap();
        Fixture { keys, codec, id, data, shares }
    })
}

fuzz_target!(|input: &[u8]| {
    let f = fixture();
    let _ = read_label(input);
    let Some((&mode, rest)) = input.split_first() else { return };
    if mode & 1 == 0 {
        // Raw: the input is cut into shares at 0xFF 0xFE markers.
        let pieces: Vec<&[u8]> = rest.split(|&b| b == 0xFF).take(2 * N).collect();
        if let Ok(out) = f.codec.decode(&f.keys, &f.id, &pieces) {
            assert_eq!(out.data, f.data);
        }
        return;
    }
    // Mutations of a valid encoding: (share, position, xor) triples, then truncations.
    let mut shares = f.shares.clone();
    for op in rest.chunks_exact(4) {
        let s = &mut shares[op[0] as usize % N];
        if s.is_empty() {
            continue;
        }
        let pos = u16::from_le_bytes([op[1], op[2]]) as usize % s.len();
        if op[3] == 0 {
            s.truncate(pos);
        } else {
            s[pos] ^= op[3];
        }
    }
    let order: Vec<&[u8]> = shares.iter().rev().map(|s| s.as_slice()).collect();
    if let Ok(out) = f.codec.decode_verify_all(&f.keys, &f.id, &order) {
        assert_eq!(out.data, f.data, "decoded wrong data");
    }
});
