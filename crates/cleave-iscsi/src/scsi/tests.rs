//! The command set against a MemDevice.

use std::sync::Arc;

use bytes::Bytes;
use cleave_nbd::MemDevice;

use super::*;
use crate::access::StaticAccess;

fn lu(rights: Rights) -> Lu {
    let names = Names { volume: "disk".into(), serial: "disk".into(), target: "iqn.x:cleave:disk".into() };
    Lu::new(Arc::new(MemDevice::new(1 << 20)), rights, names, Arc::new(StaticAccess::default()), Arc::default())
}

async fn run(lu: &Lu, cdb: &[u8], data: &[u8]) -> Outcome {
    lu.execute(&mut Nexus::default(), cdb, Bytes::copy_from_slice(data)).await
}

#[tokio::test]
async fn write_read_and_errors() {
    let lu = lu(Rights::ReadWrite);
    let block = vec![0xab; 512];
    let w = run(&lu, &[0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0], &block).await;
    assert_eq!(w.status, Status::Good);
    let r = run(&lu, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[]).await;
    assert_eq!(r.data, block);
    let out = run(&lu, &[0x28, 0, 0, 0, 0x08, 0, 0, 0, 1, 0], &[]).await;
    assert_eq!(out.sense, Some(Sense::LBA_OUT_OF_RANGE));
    assert_eq!(run(&lu, &[0xff], &[]).await.sense.map(|s| (s.asc, s.ascq)), Some((0x20, 0)));
    // Less data than the CDB asks for: only that much is written.
    let short = run(&lu, &[0x2a, 0, 0, 0, 0, 2, 0, 0, 2, 0], &block[..200]).await;
    assert_eq!(short.status, Status::Good);
    let r = run(&lu, &[0x28, 0, 0, 0, 0, 2, 0, 0, 1, 0], &[]).await;
    assert_eq!((&r.data[..200], &r.data[200..]), (&block[..200], &[0u8; 312][..]));
}

#[tokio::test]
async fn read_only_writes_are_data_protect() {
    let lu = lu(Rights::ReadOnly);
    let w = run(&lu, &[0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[0; 512]).await;
    assert_eq!(w.sense.map(|s| s.key), Some(Key::DataProtect));
}

#[tokio::test]
async fn compare_and_write_miscompares() {
    let lu = lu(Rights::ReadWrite);
    let mut data = vec![0u8; 1024];
    data[512..].fill(7);
    let ok = run(&lu, &[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0], &data).await;
    assert_eq!(ok.status, Status::Good);
    let bad = run(&lu, &[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0], &data).await;
    assert_eq!(bad.sense.map(|s| (s.key, s.info)), Some((Key::Miscompare, Some(0))));
}

#[tokio::test]
async fn inquiry_pages_and_capacity() {
    let lu = lu(Rights::ReadWrite);
    let std = run(&lu, &[0x12, 0, 0, 0, 255, 0], &[]).await;
    assert_eq!(std.data[5] & 0x30, 0x10, "TPGS implicit");
    let pages = run(&lu, &[0x12, 1, 0, 0, 255, 0], &[]).await;
    assert_eq!(&pages.data[4..], &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    let ids = run(&lu, &[0x12, 1, 0x83, 0, 255, 0], &[]).await;
    assert_eq!(ids.data[4 + 4] >> 4, 6, "NAA 6 first");
    let cap = run(&lu, &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], &[]).await;
    assert_eq!(u64::from_be_bytes(cap.data[..8].try_into().unwrap()), 2047);
    assert_eq!(cap.data[14] & 0x80, 0x80, "LBPME");
    let rtpg = run(&lu, &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]).await;
    assert_eq!(rtpg.data[4] & 0x0f, 0, "active/optimized");
}
