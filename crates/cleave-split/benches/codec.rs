//! Codec throughput at 1 MiB chunks, and the Reed-Solomon crates we chose between.
//! Run: `cargo bench -p cleave-split --bench codec`.

use cleave_split::{ChunkId, Codec, Keyring, Verify};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const CHUNK: usize = 1 << 20;
const LAYOUTS: [(usize, usize); 3] = [(3, 5), (6, 10), (10, 16)];

fn codec(c: &mut Criterion) {
    let keys = Keyring::generate().unwrap();
    let data: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();
    let id = ChunkId::data([1; 16], 7, 1);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    for (m, n) in LAYOUTS {
        let codec = Codec::new(m, n).unwrap();
        let name = format!("{m}-of-{n}");
        // Buffers are reused, as the volume engine reuses them.
        let mut bufs = Vec::new();
        g.bench_function(BenchmarkId::new("encode", &name), |b| {
            b.iter(|| codec.encode_into(keys.current(), &id, &data, &mut bufs).unwrap())
        });
        let shares = codec.encode(keys.current(), &id, &data).unwrap();
        let all: Vec<&[u8]> = shares.iter().map(|s| &s[..]).collect();
        let mut out = Vec::new();
        g.bench_function(BenchmarkId::new("decode", &name), |b| {
            b.iter(|| codec.decode_into(&keys, &id, &all[..m], Verify::Needed, &mut out).unwrap())
        });
        // Degraded: as many data shares missing as there is parity to replace them.
        let degraded: Vec<&[u8]> = all[n - m..].to_vec();
        g.bench_function(BenchmarkId::new("decode_degraded", &name), |b| {
            b.iter(|| codec.decode_into(&keys, &id, &degraded, Verify::Needed, &mut out).unwrap())
        });
    }
    g.finish();
}

/// Reed-Solomon alone: reed-solomon-erasure (matrix, SIMD C kernels), reed-solomon-simd
/// (FFT-based, Leopard-style) and ours (reed-solomon-erasure's matrix, fec-rs GFNI kernels,
/// in cache-sized segments, rebuilding without copies).
fn reed_solomon(c: &mut Criterion) {
    let mut g = c.benchmark_group("reed_solomon");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    for (m, n) in LAYOUTS {
        let p = CHUNK.div_ceil(m).next_multiple_of(64);
        let name = format!("{m}-of-{n}");
        let data: Vec<Vec<u8>> = (0..m).map(|i| vec![i as u8 ^ 0x5a; p]).collect();
        let rse = reed_solomon_erasure::galois_8::ReedSolomon::new(m, n - m).unwrap();
        let mut parity: Vec<Vec<u8>> = (0..n - m).map(|_| vec![0; p]).collect();
        g.bench_function(BenchmarkId::new("erasure_encode", &name), |b| {
            b.iter(|| rse.encode_sep(&data, &mut parity).unwrap())
        });
        g.bench_function(BenchmarkId::new("simd_encode", &name), |b| {
            b.iter(|| reed_solomon_simd::encode(m, n - m, &data).unwrap())
        });
        let ours = cleave_split::erasure::Erasure::new(m, n).unwrap();
        g.bench_function(BenchmarkId::new("ours_encode", &name), |b| {
            b.iter(|| {
                let ins: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
                let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(|p| p.as_mut_slice()).collect();
                ours.encode(&ins, &mut outs)
            })
        });
        let lost = n - m; // lose the first n-m data shards
        let mut work: Vec<Vec<u8>> = data.iter().chain(parity.iter()).cloned().collect();
        g.bench_function(BenchmarkId::new("erasure_reconstruct", &name), |b| {
            b.iter(|| {
                let mut slots: Vec<(&mut [u8], bool)> =
                    work.iter_mut().enumerate().map(|(i, s)| (&mut s[..], i >= lost)).collect();
                rse.reconstruct_data(&mut slots).unwrap()
            })
        });
        let mut rebuilt = vec![vec![0u8; p]; lost];
        g.bench_function(BenchmarkId::new("ours_rebuild", &name), |b| {
            b.iter(|| {
                let sources: Vec<(usize, &[u8])> =
                    (lost..n).map(|i| (i, if i < m { &data[i][..] } else { &parity[i - m][..] })).collect();
                let mut targets: Vec<(usize, &mut [u8])> =
                    rebuilt.iter_mut().enumerate().map(|(i, b)| (i, b.as_mut_slice())).collect();
                assert!(ours.rebuild(&sources, &mut targets))
            })
        });
        let simd_parity = reed_solomon_simd::encode(m, n - m, &data).unwrap();
        g.bench_function(BenchmarkId::new("simd_reconstruct", &name), |b| {
            b.iter(|| {
                let originals = (lost..m).map(|i| (i, &data[i][..]));
                let recovery = (0..n - m).map(|i| (i, &simd_parity[i][..]));
                reed_solomon_simd::decode(m, n - m, originals, recovery).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec, reed_solomon);
criterion_main!(benches);
