//! `cleave bench split`: single-thread codec throughput, measured in this process.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cleave_split::{ChunkId, Codec, Keyring, Verify};
use serde::Serialize;

use cleave_gateway::ByteSize;

#[derive(clap::Args, Debug)]
pub struct SplitArgs {
    /// Shares needed to rebuild a chunk.
    #[arg(long, default_value_t = 3)]
    pub m: usize,
    /// Shares written per chunk.
    #[arg(long, default_value_t = 5)]
    pub n: usize,
    /// Chunk size, e.g. 1MiB.
    #[arg(long, default_value = "1MiB")]
    pub chunk_size: ByteSize,
    /// Seconds to spend on each measurement.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
}

/// GB/s (10^9 bytes) of chunk bytes, on one core.
#[derive(Serialize, Debug)]
pub struct SplitReport {
    pub m: usize,
    pub n: usize,
    pub chunk_size: u64,
    pub encode_gbps: f64,
    pub decode_gbps: f64,
    /// Decode with as many data shares missing as parity can replace (the worst case).
    pub decode_degraded_gbps: f64,
    /// Decode with exactly one data share missing.
    pub decode_one_missing_gbps: f64,
}

/// Runs `op` repeatedly for about `seconds` after a short warm-up; returns GB/s.
fn throughput(bytes: usize, seconds: f64, mut op: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs_f64((seconds / 10.0).min(0.3)) {
        op();
    }
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut iterations = 0u64;
    while start.elapsed() < budget {
        op();
        iterations += 1;
    }
    (iterations as f64 * bytes as f64) / start.elapsed().as_secs_f64() / 1e9
}

pub fn split(args: &SplitArgs) -> Result<SplitReport> {
    let codec = Codec::new(args.m, args.n)?;
    let len = usize::try_from(args.chunk_size.0).context("chunk size")?;
    ensure!(len > 0 && len <= cleave_split::MAX_CHUNK_LEN, "chunk size must be 1 byte to 64MiB");
    ensure!(args.seconds > 0.0 && args.seconds.is_finite(), "--seconds must be positive");
    let keys = Keyring::generate()?;
    let data: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let id = ChunkId::data(*b"cleave-bench-vol", 1, 1);

    // Buffers are reused across iterations, as the volume engine reuses them.
    let mut buffers = Vec::new();
    let encode_gbps = throughput(len, args.seconds, || {
        codec.encode_into(keys.current(), &id, black_box(&data), &mut buffers).expect("encode");
        black_box(&buffers);
    });
    let shares = codec.encode(keys.current(), &id, &data)?;
    let all: Vec<&[u8]> = shares.iter().map(|s| s.as_slice()).collect();
    let (m, n) = (args.m, args.n);
    let mut out = Vec::new();
    let mut decode = |set: &[&[u8]]| {
        codec.decode_into(&keys, &id, black_box(set), Verify::Needed, &mut out).expect("decode");
        assert!(out.len() == len);
        black_box(&out);
    };
    let decode_gbps = throughput(len, args.seconds, || decode(&all[..m]));
    // Worst case: the first min(N-M, M) data shares are gone, parity stands in.
    let lost = (n - m).min(m);
    let degraded: Vec<&[u8]> = all[lost..lost + m].to_vec();
    let decode_degraded_gbps =
        if lost == 0 { decode_gbps } else { throughput(len, args.seconds, || decode(&degraded)) };
    let decode_one_missing_gbps =
        if lost == 0 { decode_gbps } else { throughput(len, args.seconds, || decode(&all[1..=m])) };
    Ok(SplitReport {
        m,
        n,
        chunk_size: len as u64,
        encode_gbps,
        decode_gbps,
        decode_degraded_gbps,
        decode_one_missing_gbps,
    })
}

pub fn print(report: &SplitReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!(
            "cleave-split {}-of-{}, {} chunks, one thread (GB/s of chunk bytes)",
            report.m,
            report.n,
            ByteSize(report.chunk_size)
        );
        println!("  encode                        {:6.2}", report.encode_gbps);
        println!("  decode (all data shares)      {:6.2}", report.decode_gbps);
        println!("  decode (one data share lost)  {:6.2}", report.decode_one_missing_gbps);
        println!("  decode (N-M data shares lost) {:6.2}", report.decode_degraded_gbps);
    }
    Ok(())
}
