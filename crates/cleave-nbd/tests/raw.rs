//! Wire-level tests with a hand-written client: misbehaving clients, error replies, pipelining.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cleave_nbd::proto::{self, Command};
use cleave_nbd::{BlockDevice, BlockError, MemDevice, Server, ServerConfig};
use common::{start, start_disk, Raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_handshake_closes_and_server_keeps_serving() {
    let (addr, _) = start_disk(MIB).await;
    let mut r = Raw::connect_greeted(addr).await;
    r.s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(r.closed().await);

    // Client flags without FIXED_NEWSTYLE are refused too.
    let mut r = Raw::connect_greeted(addr).await;
    r.s.write_all(&0u32.to_be_bytes()).await.unwrap();
    assert!(r.closed().await);

    // Bad option magic.
    let mut r = Raw::connect(addr).await;
    r.s.write_all(&[0x55; 16]).await.unwrap();
    assert!(r.closed().await);

    // A client that just connects and leaves.
    drop(tokio::net::TcpStream::connect(addr).await.unwrap());

    let mut r = Raw::connect(addr).await;
    assert_eq!(r.go("disk").await.0, MIB);
    assert_eq!(r.read(1, 0, 16).await.unwrap(), vec![0; 16]);

    if common::have("nbdinfo") {
        let out = tokio::process::Command::new("nbdinfo").arg(common::uri(addr, "disk")).output().await.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_options_then_go() {
    let (addr, _) = start_disk(MIB).await;
    let mut r = Raw::connect(addr).await;
    for opt in [0xdead, proto::OPT_STRUCTURED_REPLY, proto::OPT_STARTTLS, proto::OPT_LIST_META_CONTEXT] {
        r.send_option(opt, b"").await;
        let (o, t, _) = r.option_reply().await;
        assert_eq!((o, t), (opt, proto::REP_ERR_UNSUP));
    }
    // Malformed INFO/GO payloads: ERR_INVALID, session continues.
    r.send_option(proto::OPT_GO, &[0, 0, 0, 9, b'd']).await;
    assert_eq!(r.option_reply().await.1, proto::REP_ERR_INVALID);
    let mut trailing = proto::encode_info_request("disk", &[]);
    trailing.push(0);
    r.send_option(proto::OPT_INFO, &trailing).await;
    assert_eq!(r.option_reply().await.1, proto::REP_ERR_INVALID);
    r.send_option(proto::OPT_LIST, b"x").await;
    assert_eq!(r.option_reply().await.1, proto::REP_ERR_INVALID);
    // Unknown export: ERR_UNKNOWN, session continues.
    let (_, t) = r.info(proto::OPT_GO, "nope", &[]).await;
    assert_eq!(t, proto::REP_ERR_UNKNOWN);

    let (size, flags) = r.go("disk").await;
    assert_eq!(size, MIB);
    for f in [
        proto::TFLAG_HAS_FLAGS,
        proto::TFLAG_SEND_FLUSH,
        proto::TFLAG_SEND_FUA,
        proto::TFLAG_SEND_TRIM,
        proto::TFLAG_SEND_WRITE_ZEROES,
        proto::TFLAG_CAN_MULTI_CONN,
    ] {
        assert_ne!(flags & f, 0, "flag {f:#x}");
    }
    assert_eq!(flags & proto::TFLAG_READ_ONLY, 0);
    assert_eq!(r.write(1, 0, b"hi", 0).await, 0);
    assert_eq!(r.read(2, 0, 2).await.unwrap(), b"hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_info_and_default_export() {
    let disk: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(MIB));
    let other: Arc<dyn BlockDevice> = Arc::new(MemDevice::read_only(2 * MIB));
    let addr = start(vec![("disk", disk), ("other", other)], ServerConfig::default()).await;

    let mut r = Raw::connect(addr).await;
    r.send_option(proto::OPT_LIST, b"").await;
    let mut names = Vec::new();
    loop {
        let (o, t, d) = r.option_reply().await;
        assert_eq!(o, proto::OPT_LIST);
        if t == proto::REP_ACK {
            break;
        }
        assert_eq!(t, proto::REP_SERVER);
        let n = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
        names.push(String::from_utf8(d[4..4 + n].to_vec()).unwrap());
    }
    assert_eq!(names, ["disk", "other"]);

    // INFO on "" resolves to the first export and reports its canonical name and block sizes.
    let (infos, t) = r.info(proto::OPT_INFO, "", &[proto::INFO_NAME, proto::INFO_BLOCK_SIZE]).await;
    assert_eq!(t, proto::REP_ACK);
    let by_type: HashMap<u16, Vec<u8>> =
        infos.into_iter().map(|d| (u16::from_be_bytes([d[0], d[1]]), d[2..].to_vec())).collect();
    assert_eq!(by_type[&proto::INFO_NAME], b"disk");
    let bs = &by_type[&proto::INFO_BLOCK_SIZE];
    assert_eq!(bs[0..4], 1u32.to_be_bytes());
    assert_eq!(bs[4..8], 4096u32.to_be_bytes());
    assert_eq!(bs[8..12], (32u32 << 20).to_be_bytes());

    // GO to the read-only export.
    let (size, flags) = r.go("other").await;
    assert_eq!(size, 2 * MIB);
    assert_ne!(flags & proto::TFLAG_READ_ONLY, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_name_option() {
    let (addr, _) = start_disk(MIB).await;
    // With NO_ZEROES: 10 bytes.
    let mut r = Raw::connect(addr).await;
    r.send_option(proto::OPT_EXPORT_NAME, b"disk").await;
    let mut b = [0u8; 10];
    r.s.read_exact(&mut b).await.unwrap();
    assert_eq!(u64::from_be_bytes(b[0..8].try_into().unwrap()), MIB);
    assert_eq!(r.read(5, 0, 4).await.unwrap(), vec![0; 4]);

    // Without NO_ZEROES: 124 zero bytes follow; empty name is the default export.
    let mut r = Raw::connect_greeted(addr).await;
    r.s.write_all(&1u32.to_be_bytes()).await.unwrap();
    r.send_option(proto::OPT_EXPORT_NAME, b"").await;
    let mut b = [0xffu8; 134];
    r.s.read_exact(&mut b).await.unwrap();
    assert!(b[10..].iter().all(|&x| x == 0));
    assert_eq!(r.read(6, 0, 4).await.unwrap(), vec![0; 4]);

    // Unknown export cannot be reported with EXPORT_NAME: the server closes.
    let mut r = Raw::connect(addr).await;
    r.send_option(proto::OPT_EXPORT_NAME, b"nope").await;
    assert!(r.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_and_too_big_option() {
    let (addr, _) = start_disk(MIB).await;
    let mut r = Raw::connect(addr).await;
    r.send_option(proto::OPT_ABORT, b"").await;
    assert_eq!(r.option_reply().await.1, proto::REP_ACK);
    assert!(r.closed().await);

    let mut r = Raw::connect(addr).await;
    let mut hdr = proto::encode_option(proto::OPT_GO, b"");
    hdr[12..16].copy_from_slice(&(1u32 << 30).to_be_bytes());
    r.s.write_all(&hdr).await.unwrap();
    assert_eq!(r.option_reply().await.1, proto::REP_ERR_TOO_BIG);
    assert!(r.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_export_via_go() {
    let (addr, _) = start_disk(MIB).await;
    let mut r = Raw::connect(addr).await;
    let (infos, t) = r.info(proto::OPT_GO, "missing", &[]).await;
    assert!(infos.is_empty());
    assert_eq!(t, proto::REP_ERR_UNKNOWN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_and_invalid_requests_keep_stream_in_sync() {
    let dev = Arc::new(MemDevice::new(MIB));
    let cfg = ServerConfig { max_request: 64 * 1024, ..Default::default() };
    let addr = start(vec![("disk", dev.clone() as Arc<dyn BlockDevice>)], cfg).await;
    let mut r = Raw::connect(addr).await;
    r.go("disk").await;

    // Reads out of range, overflowing, too long.
    assert_eq!(r.read(1, MIB - 4, 8).await, Err(proto::EINVAL));
    assert_eq!(r.read(2, u64::MAX - 1, 4).await, Err(proto::EINVAL));
    assert_eq!(r.read(3, 0, 64 * 1024 + 1).await, Err(proto::EINVAL));
    assert_eq!(r.read(4, MIB - 4, 4).await.unwrap(), vec![0; 4]);

    // Writes past the end: payload consumed, EINVAL, next request fine.
    assert_eq!(r.write(5, MIB - 2, &[0xee; 100], 0).await, proto::EINVAL);
    assert_eq!(r.write(6, u64::MAX, &[0xee; 100], 0).await, proto::EINVAL);
    // Longer than max_request but drainable.
    assert_eq!(r.write(7, 0, &vec![0xee; 200 * 1024], 0).await, proto::EINVAL);
    // Write with a flag the server does not accept for writes.
    assert_eq!(r.write(8, 0, &[0xee; 10], proto::CMD_FLAG_NO_HOLE).await, proto::EINVAL);
    assert_eq!(r.write(9, 10, b"ok", proto::CMD_FLAG_FUA).await, 0);
    assert_eq!(r.read(10, 8, 6).await.unwrap(), b"\0\0ok\0\0");
    assert!(dev.contents().iter().filter(|&&b| b == 0xee).count() == 0);

    // Unknown commands and flags; commands we never advertised.
    assert_eq!(r.simple(Command::Other(99), 0, 11, 0, 0).await, proto::EINVAL);
    assert_eq!(r.simple(Command::Other(proto::CMD_CACHE), 0, 12, 0, 16).await, proto::EINVAL);
    assert_eq!(r.simple(Command::Read, 0x8000, 13, 0, 0).await, proto::EINVAL);
    assert_eq!(r.simple(Command::Trim, proto::CMD_FLAG_FAST_ZERO, 14, 0, 16).await, proto::EINVAL);
    // Trim/write_zeroes out of range.
    assert_eq!(r.simple(Command::Trim, 0, 15, MIB, 1).await, proto::EINVAL);
    assert_eq!(r.simple(Command::WriteZeroes, 0, 16, MIB - 1, 2).await, proto::EINVAL);

    // Zero-length requests are no-ops; flush works.
    assert_eq!(r.read(17, 0, 0).await.unwrap(), Vec::<u8>::new());
    assert_eq!(r.write(18, 0, &[], 0).await, 0);
    assert_eq!(r.simple(Command::Flush, 0, 19, 0, 0).await, 0);

    // Trim with FUA and write_zeroes with NO_HOLE.
    assert_eq!(r.write(20, 0, &[7; 64], 0).await, 0);
    assert_eq!(r.simple(Command::Trim, proto::CMD_FLAG_FUA, 21, 0, 16).await, 0);
    assert_eq!(r.simple(Command::WriteZeroes, proto::CMD_FLAG_NO_HOLE, 22, 48, 16).await, 0);
    let got = r.read(23, 0, 64).await.unwrap();
    assert_eq!(&got[..16], &[0; 16]);
    assert_eq!(&got[16..48], &[7; 32]);
    assert_eq!(&got[48..], &[0; 16]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_write_beyond_drain_cap_closes() {
    let cfg = ServerConfig { max_request: 64 * 1024, ..Default::default() };
    let addr = start(vec![("disk", Arc::new(MemDevice::new(MIB)) as Arc<dyn BlockDevice>)], cfg).await;
    let mut r = Raw::connect(addr).await;
    r.go("disk").await;
    r.send_request(Command::Write, 0, 1, 0, u32::MAX).await;
    assert!(r.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_export_refuses_writes() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::from_vec(vec![9; MIB as usize], true));
    let addr = start(vec![("ro", dev)], ServerConfig::default()).await;
    let mut r = Raw::connect(addr).await;
    let (_, flags) = r.go("ro").await;
    assert_ne!(flags & proto::TFLAG_READ_ONLY, 0);
    assert_eq!(r.write(1, 0, &[1; 512], 0).await, proto::EPERM);
    assert_eq!(r.simple(Command::Trim, 0, 2, 0, 512).await, proto::EPERM);
    assert_eq!(r.simple(Command::WriteZeroes, 0, 3, 0, 512).await, proto::EPERM);
    assert_eq!(r.simple(Command::Flush, 0, 4, 0, 0).await, 0);
    assert_eq!(r.read(5, 0, 512).await.unwrap(), vec![9; 512]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_magic_closes() {
    let (addr, _) = start_disk(MIB).await;
    let mut r = Raw::connect(addr).await;
    r.go("disk").await;
    assert_eq!(r.read(1, 0, 8).await.unwrap(), vec![0; 8]);
    r.s.write_all(&[0xaa; 28]).await.unwrap();
    assert!(r.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_reads_each_answered_once() {
    let data: Vec<u8> = (0..MIB as usize).map(|i| (i * 7 % 251) as u8).collect();
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::from_vec(data.clone(), false));
    let addr = start(vec![("disk", dev)], ServerConfig::default()).await;
    let mut r = Raw::connect(addr).await;
    r.go("disk").await;

    let mut batch = Vec::new();
    let mut expect = HashMap::new();
    for i in 0..64u64 {
        let handle = 0x1000 + i * 3;
        let (off, len) = (i * 12_345 % (MIB - 8192), 512 + (i as u32 * 97) % 7000);
        let req = proto::Request { flags: 0, command: Command::Read, handle, offset: off, len };
        batch.extend_from_slice(&proto::encode_request(&req));
        expect.insert(handle, (off as usize, len as usize));
    }
    r.s.write_all(&batch).await.unwrap();
    let mut seen = HashMap::new();
    for _ in 0..64 {
        let (err, handle) = r.reply().await;
        assert_eq!(err, 0);
        let (off, len) = *expect.get(&handle).expect("unknown handle");
        let mut d = vec![0u8; len];
        r.s.read_exact(&mut d).await.unwrap();
        assert_eq!(d, &data[off..off + len], "handle {handle:#x}");
        *seen.entry(handle).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 64);
    assert!(seen.values().all(|&n| n == 1));
    // Nothing extra, and the connection still works.
    assert_eq!(r.read(7, 0, 4).await.unwrap(), data[..4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_with_small_inflight_then_disc() {
    let dev = Arc::new(MemDevice::new(MIB));
    let cfg = ServerConfig { max_inflight: 2, ..Default::default() };
    let addr = start(vec![("disk", dev.clone() as Arc<dyn BlockDevice>)], cfg).await;
    let mut r = Raw::connect(addr).await;
    r.go("disk").await;
    let mut batch = Vec::new();
    for i in 0..100u64 {
        let req = proto::Request { flags: 0, command: Command::Write, handle: i, offset: i * 4096, len: 4096 };
        batch.extend_from_slice(&proto::encode_request(&req));
        batch.extend_from_slice(&[i as u8 + 1; 4096]);
    }
    batch.extend_from_slice(&proto::encode_request(&proto::Request {
        flags: 0,
        command: Command::Disc,
        handle: 999,
        offset: 0,
        len: 0,
    }));
    // Write and read concurrently, as real clients must.
    let (mut rd, mut wr) = r.s.into_split();
    let w = tokio::spawn(async move { wr.write_all(&batch).await.unwrap() });
    let mut replies = Vec::new();
    rd.read_to_end(&mut replies).await.unwrap();
    w.await.unwrap();
    // DISC: every in-flight write answered, then the server closed (read_to_end returned).
    assert_eq!(replies.len(), 100 * 16);
    let mut handles: Vec<u64> = replies
        .chunks(16)
        .map(|c| {
            let (err, h) = proto::parse_simple_reply(c.try_into().unwrap()).unwrap();
            assert_eq!(err, 0);
            h
        })
        .collect();
    handles.sort();
    assert_eq!(handles, (0..100).collect::<Vec<_>>());
    let c = dev.contents();
    for i in 0..100usize {
        assert!(c[i * 4096..(i + 1) * 4096].iter().all(|&b| b == i as u8 + 1));
    }
}

/// A device whose every operation misbehaves.
struct Broken;

#[async_trait]
impl BlockDevice for Broken {
    fn size(&self) -> u64 {
        MIB
    }
    async fn read(&self, offset: u64, _len: u32) -> Result<Bytes, BlockError> {
        match offset {
            0 => Ok(Bytes::from_static(b"short")),
            8192 => Err(BlockError::Unavailable("served by another gateway now".into())),
            _ => panic!("device bug"),
        }
    }
    async fn write(&self, _: u64, _: Bytes, _: bool) -> Result<(), BlockError> {
        Err(BlockError::NoSpace("full".into()))
    }
    async fn flush(&self) -> Result<(), BlockError> {
        Err(BlockError::Io("disk on fire".into()))
    }
    async fn trim(&self, _: u64, _: u32) -> Result<(), BlockError> {
        Err(BlockError::ReadOnly)
    }
    async fn write_zeroes(&self, _: u64, _: u32, _: bool) -> Result<(), BlockError> {
        Err(BlockError::Invalid("no".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_errors_map_to_nbd_errors() {
    let addr = start(vec![("b", Arc::new(Broken) as Arc<dyn BlockDevice>)], ServerConfig::default()).await;
    let mut r = Raw::connect(addr).await;
    r.go("b").await;
    assert_eq!(r.read(1, 0, 4096).await, Err(proto::EIO)); // short read
    assert_eq!(r.read(2, 4096, 4096).await, Err(proto::EIO)); // panic
    assert_eq!(r.read(7, 8192, 4096).await, Err(proto::ESHUTDOWN)); // moved elsewhere
    assert_eq!(r.write(3, 0, &[1; 16], 0).await, proto::ENOSPC);
    assert_eq!(r.simple(Command::Flush, 0, 4, 0, 0).await, proto::EIO);
    assert_eq!(r.simple(Command::Trim, 0, 5, 0, 16).await, proto::EPERM);
    assert_eq!(r.simple(Command::WriteZeroes, 0, 6, 0, 16).await, proto::EINVAL);
}

#[tokio::test]
async fn serve_connection_over_duplex() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(MIB));
    let provider = Arc::new(common::Exports(vec![("disk".into(), dev)]));
    let server = Arc::new(Server::new(provider, ServerConfig::default()));
    let (client, srv) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(server.serve_connection(srv, std::net::SocketAddr::from(([127, 0, 0, 1], 1))));
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut g = [0u8; 18];
    rd.read_exact(&mut g).await.unwrap();
    let mut msg = 3u32.to_be_bytes().to_vec();
    msg.extend(proto::encode_option(proto::OPT_GO, &proto::encode_info_request("disk", &[])));
    let w = proto::Request { flags: 0, command: Command::Write, handle: 1, offset: 0, len: 3 };
    msg.extend(proto::encode_request(&w));
    msg.extend(b"abc");
    msg.extend(proto::encode_request(&proto::Request { command: Command::Disc, handle: 2, ..w }));
    wr.write_all(&msg).await.unwrap();
    let mut out = Vec::new();
    rd.read_to_end(&mut out).await.unwrap();
    task.await.unwrap().unwrap();
    // Two INFO replies + ACK, then one simple reply.
    let tail = &out[out.len() - 16..];
    assert_eq!(proto::parse_simple_reply(tail.try_into().unwrap()).unwrap(), (0, 1));
}

/// Reads that take a while, counting the bytes they hold at once.
struct Slow {
    held: std::sync::atomic::AtomicU64,
    peak: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl BlockDevice for Slow {
    fn size(&self) -> u64 {
        64 * MIB
    }
    async fn read(&self, _: u64, len: u32) -> Result<Bytes, BlockError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.held.fetch_add(len.into(), SeqCst) + u64::from(len);
        self.peak.fetch_max(now, SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        self.held.fetch_sub(len.into(), SeqCst);
        Ok(Bytes::from(vec![7u8; len as usize]))
    }
    async fn write(&self, _: u64, _: Bytes, _: bool) -> Result<(), BlockError> {
        Ok(())
    }
    async fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
    async fn trim(&self, _: u64, _: u32) -> Result<(), BlockError> {
        Ok(())
    }
    async fn write_zeroes(&self, _: u64, _: u32, _: bool) -> Result<(), BlockError> {
        Ok(())
    }
}

/// A client that pipelines far more than the byte budget, and reads its replies late, gets
/// every reply while the server holds no more than the budget at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_reads_stay_within_the_byte_budget() {
    let dev = Arc::new(Slow { held: 0.into(), peak: 0.into() });
    let cfg = ServerConfig { max_request: 256 << 10, max_connection_bytes: MIB, ..Default::default() };
    let addr = start(vec![("slow", dev.clone() as Arc<dyn BlockDevice>)], cfg).await;
    let mut r = Raw::connect(addr).await;
    r.go("slow").await;
    for handle in 0..40 {
        r.send_request(Command::Read, 0, handle, handle * (256 << 10), 256 << 10).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (err, handle) = r.reply().await;
        assert_eq!(err, 0);
        let mut d = vec![0u8; 256 << 10];
        r.s.read_exact(&mut d).await.unwrap();
        assert!(d.iter().all(|&b| b == 7));
        seen.insert(handle);
    }
    assert_eq!(seen.len(), 40);
    let peak = dev.peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!(peak <= MIB, "the device held {peak} bytes at once");
}

/// Past `max_connections`, a connection is closed before the greeting; once one closes,
/// the next is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(MIB));
    let addr = start(vec![("disk", dev)], ServerConfig { max_connections: 2, ..Default::default() }).await;
    let first = Raw::connect_greeted(addr).await;
    let _second = Raw::connect_greeted(addr).await;
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 18];
    let n = tokio::time::timeout(common::T, third.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "a third connection was greeted");
    drop(first);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut r = Raw::connect(addr).await;
    assert_eq!(r.go("disk").await.0, MIB);
}

/// Records the peers that open exports.
struct Recording {
    dev: Arc<dyn BlockDevice>,
    peers: std::sync::Mutex<Vec<cleave_nbd::PeerAddr>>,
}

impl cleave_nbd::ExportProvider for Recording {
    fn list(&self) -> Vec<String> {
        vec!["disk".into()]
    }
    fn open(&self, _: &str) -> Option<Arc<dyn BlockDevice>> {
        Some(self.dev.clone())
    }
    fn open_for(&self, name: &str, peer: &cleave_nbd::Peer) -> Result<Arc<dyn BlockDevice>, cleave_nbd::Refusal> {
        assert!(peer.is_local() && !peer.is_loopback());
        self.peers.lock().unwrap().push(peer.addr);
        self.open(name).ok_or(cleave_nbd::Refusal::Unknown)
    }
}

/// A Unix listener serves real clients, and names each peer by its user id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_peers_are_known_by_user_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    let provider = Arc::new(Recording { dev: Arc::new(MemDevice::new(MIB)), peers: Default::default() });
    let server = Arc::new(Server::new(provider.clone(), ServerConfig::default()));
    tokio::spawn(server.serve_unix(tokio::net::UnixListener::bind(&path).unwrap()));
    assert!(common::have("nbdinfo"));
    let out = tokio::process::Command::new("nbdinfo")
        .arg(format!("nbd+unix:///disk?socket={}", path.display()))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    assert!(provider.peers.lock().unwrap().contains(&cleave_nbd::PeerAddr::Unix { uid: Some(uid) }));
}
