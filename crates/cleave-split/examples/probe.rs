use cleave_split::{ChunkId, Codec, Keyring, Verify};
use std::time::Instant;
fn main() {
    let what = std::env::args().nth(1).unwrap_or("encode".into());
    let codec = Codec::new(3, 5).unwrap();
    let keys = Keyring::generate().unwrap();
    let data: Vec<u8> = (0..1 << 20).map(|i: usize| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let id = ChunkId::data([1; 16], 1, 1);
    let mut bufs = Vec::new();
    codec.encode_into(keys.current(), &id, &data, &mut bufs).unwrap();
    let all: Vec<&[u8]> = bufs.iter().map(|s| s.as_slice()).collect();
    let mut out = Vec::new();
    let mut bufs2 = Vec::new();
    let t = Instant::now();
    let iters = 4000;
    for _ in 0..iters {
        match what.as_str() {
            "encode" => codec.encode_into(keys.current(), &id, &data, &mut bufs2).unwrap(),
            _ => { codec.decode_into(&keys, &id, &all[2..], Verify::Needed, &mut out).unwrap(); }
        }
    }
    println!("{what}: {:.2} GB/s", iters as f64 * data.len() as f64 / t.elapsed().as_secs_f64() / 1e9);
}
