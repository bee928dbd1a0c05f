//! The reference for `bench/s3.sh`: the object_store client exactly as Cleave builds it
//! (`cleave_target::s3::client`), doing plain puts and then gets of share-sized objects with
//! the destager's and the read path's parallelism, and none of Cleave's work around them.
//!
//!   s3_reference --endpoint URL --buckets b0,b1,b2,b3,b4 --chunks 256 --share-size 349600 \
//!     --m 3 --put-parallel 4 --get-parallel 8 [--chunk-size 1048576] [--region us-east-1]
//!
//! A "chunk" is N puts (one share to each bucket, all at once), as the destager stores a
//! chunk; `--put-parallel` chunks are in flight. Reading a chunk gets M shares at once,
//! `--get-parallel` chunks in flight. Prints one line of JSON: volume data per second
//! (chunks x chunk size / time) for each phase. Credentials come from `AWS_*`.

use std::time::Instant;

use bytes::Bytes;
use cleave_target::S3Uri;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("usage: {0}")]
    Usage(String),
    #[error(transparent)]
    Target(#[from] cleave_target::TargetError),
    #[error(transparent)]
    Store(#[from] object_store::Error),
    #[error("{0}: got {1} bytes, expected {2}")]
    Short(String, usize, usize),
}

struct Args {
    endpoint: String,
    region: String,
    buckets: Vec<String>,
    chunks: usize,
    chunk_size: usize,
    share_size: usize,
    m: usize,
    put_parallel: usize,
    get_parallel: usize,
}

fn parse_args() -> Result<Args, BenchError> {
    let mut args = Args {
        endpoint: String::new(),
        region: "us-east-1".into(),
        buckets: Vec::new(),
        chunks: 256,
        chunk_size: 1 << 20,
        share_size: 0,
        m: 3,
        put_parallel: 4,
        get_parallel: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| BenchError::Usage(format!("{flag} needs a value")))?;
        let num = || value.parse::<usize>().map_err(|_| BenchError::Usage(format!("{flag}: not a number")));
        match flag.as_str() {
            "--endpoint" => args.endpoint = value.clone(),
            "--region" => args.region = value.clone(),
            "--buckets" => args.buckets = value.split(',').map(str::to_string).collect(),
            "--chunks" => args.chunks = num()?,
            "--chunk-size" => args.chunk_size = num()?,
            "--share-size" => args.share_size = num()?,
            "--m" => args.m = num()?,
            "--put-parallel" => args.put_parallel = num()?,
            "--get-parallel" => args.get_parallel = num()?,
            other => return Err(BenchError::Usage(format!("unknown flag {other}"))),
        }
    }
    if args.endpoint.is_empty() || args.buckets.len() < args.m || args.m == 0 {
        return Err(BenchError::Usage("--endpoint and at least --m --buckets are required".into()));
    }
    if args.share_size == 0 {
        args.share_size = args.chunk_size.div_ceil(args.m);
    }
    Ok(args)
}

fn key(chunk: usize) -> Path {
    Path::from(format!("reference/chunks/{chunk}"))
}

/// Puts every chunk's shares; seconds taken.
async fn put_phase(stores: &[AmazonS3], args: &Args, share: &Bytes) -> Result<f64, BenchError> {
    let started = Instant::now();
    futures::stream::iter(0..args.chunks)
        .map(|c| async move {
            let path = key(c);
            let puts = stores.iter().map(|s| s.put(&path, PutPayload::from(share.clone())));
            futures::future::try_join_all(puts).await.map(|_| ())
        })
        .buffer_unordered(args.put_parallel)
        .try_collect::<()>()
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

/// Gets M shares of every chunk; seconds taken.
async fn get_phase(stores: &[AmazonS3], args: &Args) -> Result<f64, BenchError> {
    let started = Instant::now();
    futures::stream::iter(0..args.chunks)
        .map(|c| async move {
            for body in futures::future::try_join_all(stores[..args.m].iter().map(|s| get(s, c))).await? {
                if body.len() != args.share_size {
                    return Err(BenchError::Short(key(c).to_string(), body.len(), args.share_size));
                }
            }
            Ok(())
        })
        .buffer_unordered(args.get_parallel)
        .try_collect::<()>()
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn get(store: &AmazonS3, chunk: usize) -> Result<Bytes, BenchError> {
    Ok(store.get(&key(chunk)).await?.bytes().await?)
}

#[tokio::main]
async fn main() -> Result<(), BenchError> {
    let args = parse_args()?;
    let stores = args
        .buckets
        .iter()
        .map(|b| {
            let uri = S3Uri {
                bucket: b.clone(),
                prefix: String::new(),
                endpoint: Some(args.endpoint.clone()),
                region: Some(args.region.clone()),
            };
            cleave_target::s3::client(&uri)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let share =
        Bytes::from((0..args.share_size).map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8).collect::<Vec<_>>());
    let put_s = put_phase(&stores, &args, &share).await?;
    let get_s = get_phase(&stores, &args).await?;
    let data_mb = (args.chunks * args.chunk_size) as f64 / 1e6;
    println!(
        "{{\"chunks\": {}, \"share_size\": {}, \"put_s\": {put_s:.3}, \"get_s\": {get_s:.3}, \
         \"put_mbps\": {:.1}, \"get_mbps\": {:.1}}}",
        args.chunks,
        args.share_size,
        data_mb / put_s,
        data_mb / get_s
    );
    Ok(())
}
