//! Shared test helpers: a named-export provider, a server on 127.0.0.1:0, and a raw NBD client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cleave_nbd::proto::{self, Command, Request};
use cleave_nbd::{BlockDevice, ExportProvider, MemDevice, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Exports(pub Vec<(String, Arc<dyn BlockDevice>)>);

impl ExportProvider for Exports {
    fn list(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.clone()).collect()
    }
    fn open(&self, name: &str) -> Option<Arc<dyn BlockDevice>> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, d)| d.clone())
    }
}

/// Starts a server with the given exports; returns its address.
pub async fn start(exports: Vec<(&str, Arc<dyn BlockDevice>)>, config: ServerConfig) -> SocketAddr {
    let provider = Arc::new(Exports(exports.into_iter().map(|(n, d)| (n.to_owned(), d)).collect()));
    let server = Arc::new(Server::new(provider, config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    addr
}

/// One writable MemDevice named "disk".
pub async fn start_disk(size: u64) -> (SocketAddr, Arc<MemDevice>) {
    let dev = Arc::new(MemDevice::new(size));
    let addr = start(vec![("disk", dev.clone() as Arc<dyn BlockDevice>)], ServerConfig::default()).await;
    (addr, dev)
}

pub fn uri(addr: SocketAddr, export: &str) -> String {
    format!("nbd://{addr}/{export}")
}

/// Asserts that an external client is installed: `.ci/run` installs them, and a
/// missing tool must fail the test, never skip it.
pub fn have(tool: &str) -> bool {
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "{tool} is not installed (run .ci/run, which installs it)");
    ok
}

pub const T: Duration = Duration::from_secs(20);

/// A hand-written client for poking at the wire protocol.
pub struct Raw {
    pub s: TcpStream,
}

impl Raw {
    /// Connects and reads the greeting; does not send client flags.
    pub async fn connect_greeted(addr: SocketAddr) -> Raw {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).await.unwrap();
        assert_eq!(g, proto::server_greeting());
        Raw { s }
    }

    /// Connects and sends FIXED_NEWSTYLE | NO_ZEROES.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let mut r = Self::connect_greeted(addr).await;
        r.s.write_all(&3u32.to_be_bytes()).await.unwrap();
        r
    }

    pub async fn send_option(&mut self, option: u32, data: &[u8]) {
        self.s.write_all(&proto::encode_option(option, data)).await.unwrap();
    }

    /// (option, reply type, data)
    pub async fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        tokio::time::timeout(T, self.s.read_exact(&mut h)).await.unwrap().unwrap();
        let (o, t, l) = proto::parse_option_reply_header(&h).unwrap();
        let mut d = vec![0u8; l as usize];
        self.s.read_exact(&mut d).await.unwrap();
        (o, t, d)
    }

    /// Sends INFO/GO; returns all NBD_REP_INFO payloads, then the final reply type.
    pub async fn info(&mut self, option: u32, name: &str, infos: &[u16]) -> (Vec<Vec<u8>>, u32) {
        self.send_option(option, &proto::encode_info_request(name, infos)).await;
        let mut out = Vec::new();
        loop {
            let (o, t, d) = self.option_reply().await;
            assert_eq!(o, option);
            if t == proto::REP_INFO {
                out.push(d);
            } else {
                return (out, t);
            }
        }
    }

    /// GO to `name`; returns (size, transmission flags).
    pub async fn go(&mut self, name: &str) -> (u64, u16) {
        let (infos, t) = self.info(proto::OPT_GO, name, &[]).await;
        assert_eq!(t, proto::REP_ACK, "GO {name:?} failed");
        let e = infos.iter().find(|d| d[0..2] == [0, 0]).expect("INFO_EXPORT");
        (u64::from_be_bytes(e[2..10].try_into().unwrap()), u16::from_be_bytes(e[10..12].try_into().unwrap()))
    }

    pub async fn send_request(&mut self, command: Command, flags: u16, handle: u64, offset: u64, len: u32) {
        let r = Request { flags, command, handle, offset, len };
        self.s.write_all(&proto::encode_request(&r)).await.unwrap();
    }

    /// (error, handle)
    pub async fn reply(&mut self) -> (u32, u64) {
        let mut h = [0u8; 16];
        tokio::time::timeout(T, self.s.read_exact(&mut h)).await.expect("reply timed out").unwrap();
        proto::parse_simple_reply(&h).unwrap()
    }

    pub async fn read(&mut self, handle: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.send_request(Command::Read, 0, handle, offset, len).await;
        let (err, h) = self.reply().await;
        assert_eq!(h, handle);
        if err != 0 {
            return Err(err);
        }
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d).await.unwrap();
        Ok(d)
    }

    pub async fn write(&mut self, handle: u64, offset: u64, data: &[u8], flags: u16) -> u32 {
        let r = Request { flags, command: Command::Write, handle, offset, len: data.len() as u32 };
        let mut b = proto::encode_request(&r).to_vec();
        b.extend_from_slice(data);
        self.s.write_all(&b).await.unwrap();
        let (err, h) = self.reply().await;
        assert_eq!(h, handle);
        err
    }

    pub async fn simple(&mut self, command: Command, flags: u16, handle: u64, offset: u64, len: u32) -> u32 {
        self.send_request(command, flags, handle, offset, len).await;
        let (err, h) = self.reply().await;
        assert_eq!(h, handle);
        err
    }

    /// True if the server closes the connection (EOF or reset) within the timeout, skipping any data.
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let fut = async {
            loop {
                match self.s.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => continue,
                }
            }
        };
        tokio::time::timeout(T, fut).await.unwrap_or(false)
    }
}
