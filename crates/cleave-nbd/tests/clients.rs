//! Interoperability with real NBD clients: libnbd's nbdinfo/nbdcopy, qemu-io, fio.
//! Each test is skipped (with a message) if its client is not installed.

mod common;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cleave_nbd::{BlockDevice, BlockError, MemDevice, ServerConfig};
use common::{have, start, start_disk, uri};
use tokio::process::Command;

const MIB: usize = 1 << 20;

async fn run(cmd: &mut Command) -> String {
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), cmd.output())
        .await
        .expect("client timed out")
        .expect("spawn client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    stdout
}

/// Counts the operations a client actually sent, so tests know FUA/zero/flush reached the device.
#[derive(Default)]
struct Counts {
    fua_writes: AtomicU64,
    zeroes: AtomicU64,
    flushes: AtomicU64,
    trims: AtomicU64,
}

struct Counting(MemDevice, Arc<Counts>);

#[async_trait]
impl BlockDevice for Counting {
    fn size(&self) -> u64 {
        self.0.size()
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        self.0.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        if fua {
            self.1.fua_writes.fetch_add(1, Relaxed);
        }
        self.0.write(offset, data, fua).await
    }
    async fn flush(&self) -> Result<(), BlockError> {
        self.1.flushes.fetch_add(1, Relaxed);
        self.0.flush().await
    }
    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.1.trims.fetch_add(1, Relaxed);
        self.0.trim(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        self.1.zeroes.fetch_add(1, Relaxed);
        self.0.write_zeroes(offset, len, fua).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_json_and_list() {
    if !have("nbdinfo") {
        return;
    }
    let disk: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(16 * MIB as u64));
    let other: Arc<dyn BlockDevice> = Arc::new(MemDevice::read_only(MIB as u64));
    let addr = start(vec![("disk", disk), ("other", other)], ServerConfig::default()).await;

    let out = run(Command::new("nbdinfo").arg("--json").arg(uri(addr, "disk"))).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "disk");
    assert_eq!(e["export-size"], 16 * MIB as u64);
    assert_eq!(e["is_read_only"], false);
    assert_eq!(e["can_multi_conn"], true);
    assert_eq!(e["can_flush"], true);
    assert_eq!(e["can_fua"], true);
    assert_eq!(e["can_trim"], true);
    assert_eq!(e["can_zero"], true);
    assert_eq!(e["block_size_maximum"], 32 * MIB as u64);

    let out = run(Command::new("nbdinfo").arg("--json").arg(uri(addr, "other"))).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["exports"][0]["is_read_only"], true);
    assert_eq!(v["exports"][0]["export-size"], MIB as u64);

    let out = run(Command::new("nbdinfo").arg("--list").arg("--json").arg(format!("nbd://{addr}"))).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> =
        v["exports"].as_array().unwrap().iter().map(|e| e["export-name"].as_str().unwrap()).collect();
    assert_eq!(names, ["disk", "other"]);
    assert_eq!(v["exports"][1]["export-size"], MIB as u64);

    let out = run(Command::new("nbdinfo").arg("--list").arg(format!("nbd://{addr}"))).await;
    assert!(out.contains("disk") && out.contains("other"), "{out}");

    // Unknown export: nbdinfo fails cleanly.
    let st = Command::new("nbdinfo").arg(uri(addr, "missing")).output().await.unwrap();
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(err.contains("opt_go") && err.contains("missing"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_writes_then_nbdcopy_matches() {
    if !have("qemu-io") || !have("nbdcopy") {
        return;
    }
    let size = 8 * MIB;
    let base: Vec<u8> = (0..size).map(|i| (i % 251) as u8 ^ 0x80).collect();
    let dev = Arc::new(MemDevice::from_vec(base.clone(), false));
    let addr = start(vec![("disk", dev.clone() as Arc<dyn BlockDevice>)], ServerConfig::default()).await;
    let counts = Arc::new(Counts::default());
    let counted: Arc<dyn BlockDevice> = Arc::new(Counting(MemDevice::from_vec(base.clone(), false), counts.clone()));
    let addr2 = start(vec![("disk", counted)], ServerConfig::default()).await;

    // (command, offset, len, resulting byte or None for zero)
    let k = 1024;
    let ops: &[(&str, usize, usize, u8)] = &[
        ("write -P 0x5a", MIB, 64 * k, 0x5a),
        ("write -f -P 0x11", 3 * MIB, 4 * k, 0x11),
        ("write -P 0x22", 512, 1536, 0x22),
        ("write -P 0x33", size - 4 * k, 4 * k, 0x33),
        ("write -P 0x44", 5 * MIB + 123, 70_001, 0x44),
        ("write -z", 2 * MIB, 8 * k, 0),
        ("write -z -f", 6 * MIB, 128 * k, 0),
        ("write -P 0x66", 7 * MIB, 3 * MIB / 4, 0x66),
    ];
    let mut expected = base.clone();
    let mut cmd = Command::new("qemu-io");
    cmd.arg("-f").arg("raw");
    for (c, off, len, byte) in ops {
        cmd.arg("-c").arg(format!("{c} {off} {len}"));
        expected[*off..off + len].fill(*byte);
    }
    cmd.arg("-c").arg("flush");
    for (c, off, len, byte) in ops {
        if c.starts_with("write -P") || c.starts_with("write -f -P") {
            cmd.arg("-c").arg(format!("read -P {byte:#x} {off} {len}"));
        } else {
            cmd.arg("-c").arg(format!("read -P 0 {off} {len}"));
        }
    }
    let mut cmd2 = Command::new("qemu-io");
    cmd2.args(cmd.as_std().get_args());
    cmd.arg(uri(addr, "disk"));
    let out = run(&mut cmd).await;
    assert!(!out.contains("fail") && !out.contains("error"), "qemu-io reported:\n{out}");
    assert!(dev.contents() == expected, "device contents after qemu-io");
    // Same commands against the counting device: FUA, write-zeroes and flush really went over the wire.
    cmd2.arg(uri(addr2, "disk"));
    run(&mut cmd2).await;
    assert!(counts.fua_writes.load(Relaxed) >= 1);
    assert!(counts.zeroes.load(Relaxed) >= 2);
    assert!(counts.flushes.load(Relaxed) >= 1);
    let mut cmd3 = Command::new("qemu-io");
    cmd3.args(["-f", "raw", "-c", "discard 0 64k"]).arg(uri(addr2, "disk"));
    run(&mut cmd3).await;
    assert!(counts.trims.load(Relaxed) >= 1);

    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.img");
    run(Command::new("nbdcopy").arg(uri(addr, "disk")).arg(&img)).await;
    let copied = std::fs::read(&img).unwrap();
    assert_eq!(copied.len(), expected.len());
    assert!(copied == expected, "nbdcopy image differs from the expected image");

    // And back: nbdcopy a file into the export (exercises multi-conn writes + trim/zero).
    let src: Vec<u8> = (0..size).map(|i| if (i / 65536) % 3 == 0 { 0 } else { (i % 13) as u8 + 1 }).collect();
    let src_path = dir.path().join("src.img");
    std::fs::write(&src_path, &src).unwrap();
    run(Command::new("nbdcopy").arg(&src_path).arg(uri(addr, "disk"))).await;
    assert!(dev.contents() == src, "export differs after nbdcopy upload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fio_randwrite_verify() {
    if !have("fio") {
        return;
    }
    let (addr, _dev) = start_disk(32 * MIB as u64).await;
    // fio drops a verify-state file in its working directory.
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new("fio")
        .current_dir(dir.path())
        .arg("--name=t")
        .arg("--ioengine=nbd")
        .arg(format!("--uri={}", uri(addr, "disk")))
        .arg("--rw=randwrite")
        .arg("--bs=4k")
        .arg("--iodepth=32")
        .arg("--size=32M")
        .arg("--verify=crc32c")
        .arg("--do_verify=1"))
    .await;
    assert!(out.contains("err= 0"), "{out}");
    // 32 MiB written then read back for verification.
    assert!(out.contains("WRITE: bw=") && out.contains("READ: bw="), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_convert_roundtrip() {
    if !have("qemu-img") {
        return;
    }
    let (addr, dev) = start_disk(4 * MIB as u64).await;
    let dir = tempfile::tempdir().unwrap();
    let src: Vec<u8> = (0..4 * MIB).map(|i| (i * 31 % 256) as u8).collect();
    let src_path = dir.path().join("src.raw");
    std::fs::write(&src_path, &src).unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src_path)
        .arg(uri(addr, "disk")))
    .await;
    assert!(dev.contents() == src);
    run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&src_path).arg(uri(addr, "disk")))
        .await;
}
