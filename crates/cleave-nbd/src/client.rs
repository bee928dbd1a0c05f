//! An NBD client: fixed newstyle, NBD_OPT_STARTTLS with a client certificate, NBD_OPT_GO,
//! then pipelined requests with simple replies matched by handle. It is what a gateway uses
//! to forward a host's requests to another gateway; it speaks only what [`crate::Server`]
//! speaks. Nothing here panics on what the server sends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::device::{BlockDevice, BlockError};
use crate::proto::{self, Command, Request};
use crate::server::read_payload;

/// Why a request or a connection failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The connection failed or was closed; requests in flight on it fail with this.
    #[error("connection: {0}")]
    Connection(String),
    /// The server sent something that is not NBD as this client speaks it.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server refused the export (an option error reply).
    #[error("export refused: {0}")]
    Refused(String),
    /// The server answered the request with this error number (`proto::EIO`, ...).
    #[error("the server answered error {0}")]
    Errno(u32),
}

type Reply = oneshot::Sender<Result<Bytes, ClientError>>;
/// Requests in flight by handle: when each was sent, how many data bytes its reply
/// carries, and the waiter.
type Pending = Arc<Mutex<HashMap<u64, (Instant, u32, Reply)>>>;

struct Outgoing {
    header: [u8; proto::REQUEST_LEN],
    payload: Option<Bytes>,
}

/// One connection to one export.
pub struct Client {
    size: u64,
    flags: u16,
    tx: mpsc::Sender<Outgoing>,
    pending: Pending,
    next_handle: AtomicU64,
    closed: Arc<AtomicBool>,
}

fn io(e: std::io::Error) -> ClientError {
    ClientError::Connection(e.to_string())
}

impl Client {
    /// Connects over `tcp`: STARTTLS as `server` with `tls`, then opens `export`.
    pub async fn connect(
        mut tcp: TcpStream,
        server: ServerName<'static>,
        tls: Arc<rustls::ClientConfig>,
        export: &str,
    ) -> Result<Client, ClientError> {
        let _ = tcp.set_nodelay(true);
        greeting(&mut tcp).await?;
        option(&mut tcp, proto::OPT_STARTTLS, &[]).await?;
        let mut s = tokio_rustls::TlsConnector::from(tls).connect(server, tcp).await.map_err(io)?;
        let infos =
            match option(&mut s, proto::OPT_GO, &proto::encode_info_request(export, &[proto::INFO_EXPORT])).await {
                Ok(infos) => infos,
                Err(e) => {
                    // Refused: end TLS properly rather than drop the connection.
                    let _ = s.shutdown().await;
                    return Err(e);
                }
            };
        let (size, flags) = infos
            .iter()
            .find_map(|i| proto::parse_info_export(i))
            .ok_or_else(|| ClientError::Protocol("NBD_OPT_GO without NBD_INFO_EXPORT".into()))?;
        Ok(Client::start(s, size, flags))
    }

    fn start<S: AsyncRead + AsyncWrite + Send + 'static>(s: S, size: u64, flags: u16) -> Client {
        let (read, write) = tokio::io::split(s);
        let (tx, rx) = mpsc::channel(256);
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(send_loop(write, rx, pending.clone(), closed.clone()));
        tokio::spawn(receive_loop(read, pending.clone(), closed.clone()));
        Client { size, flags, tx, pending, next_handle: AtomicU64::new(1), closed }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_only(&self) -> bool {
        self.flags & proto::TFLAG_READ_ONLY != 0
    }

    /// The connection failed or was closed: every request fails from now on.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ends the connection; requests in flight fail with [`ClientError::Connection`].
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        fail_all(&self.pending, "closed");
    }

    /// How long the oldest request in flight has waited for its answer.
    pub fn oldest_in_flight(&self) -> Option<Duration> {
        let pending = self.pending.lock().expect("not poisoned");
        pending.values().map(|(sent, _, _)| sent.elapsed()).max()
    }

    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ClientError> {
        self.request(Command::Read, 0, offset, len, None).await
    }

    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), ClientError> {
        let len = u32::try_from(data.len()).map_err(|_| ClientError::Protocol("write too large".into()))?;
        self.request(Command::Write, fua_flag(fua), offset, len, Some(data)).await.map(drop)
    }

    pub async fn flush(&self) -> Result<(), ClientError> {
        self.request(Command::Flush, 0, 0, 0, None).await.map(drop)
    }

    pub async fn trim(&self, offset: u64, len: u32) -> Result<(), ClientError> {
        self.request(Command::Trim, 0, offset, len, None).await.map(drop)
    }

    pub async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), ClientError> {
        self.request(Command::WriteZeroes, fua_flag(fua), offset, len, None).await.map(drop)
    }

    async fn request(
        &self,
        command: Command,
        flags: u16,
        offset: u64,
        len: u32,
        payload: Option<Bytes>,
    ) -> Result<Bytes, ClientError> {
        if self.is_closed() {
            return Err(ClientError::Connection("closed".into()));
        }
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let header = proto::encode_request(&Request { flags, command, handle, offset, len });
        let (reply, answer) = oneshot::channel();
        let read_len = if command == Command::Read { len } else { 0 };
        self.pending.lock().expect("not poisoned").insert(handle, (Instant::now(), read_len, reply));
        if self.tx.send(Outgoing { header, payload }).await.is_err() {
            self.pending.lock().expect("not poisoned").remove(&handle);
            return Err(ClientError::Connection("closed".into()));
        }
        answer.await.unwrap_or_else(|_| Err(ClientError::Connection("closed".into())))
    }
}

impl ClientError {
    /// As a device error: what the server answered, or, when the connection failed,
    /// [`BlockError::Unavailable`] (the export is not reachable this way now).
    pub fn into_block(self) -> BlockError {
        match self {
            ClientError::Errno(proto::EPERM) => BlockError::Denied("refused by the server".into()),
            ClientError::Errno(proto::ENOSPC) => BlockError::NoSpace("at the server".into()),
            ClientError::Errno(proto::EINVAL) => BlockError::Invalid("at the server".into()),
            ClientError::Errno(proto::ESHUTDOWN) => BlockError::Unavailable("the server no longer serves it".into()),
            ClientError::Errno(n) => BlockError::Io(format!("the server answered error {n}")),
            e => BlockError::Unavailable(e.to_string()),
        }
    }
}

/// The export as a device: a client is a [`BlockDevice`] too.
#[async_trait::async_trait]
impl BlockDevice for Client {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        Client::read_only(self)
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        Client::read(self, offset, len).await.map_err(ClientError::into_block)
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        Client::write(self, offset, data, fua).await.map_err(ClientError::into_block)
    }
    async fn flush(&self) -> Result<(), BlockError> {
        Client::flush(self).await.map_err(ClientError::into_block)
    }
    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        Client::trim(self, offset, len).await.map_err(ClientError::into_block)
    }
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        Client::write_zeroes(self, offset, len, fua).await.map_err(ClientError::into_block)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
    }
}

fn fua_flag(fua: bool) -> u16 {
    if fua {
        proto::CMD_FLAG_FUA
    } else {
        0
    }
}

/// Reads the server's greeting and answers it with the fixed-newstyle client flags.
/// Whether an NBD server answers at `addr`: its greeting, then NBD_OPT_ABORT and its ACK. A
/// check that the listener works, with no TLS and no export.
pub async fn probe(addr: &str) -> Result<(), ClientError> {
    let mut tcp = TcpStream::connect(addr).await.map_err(io)?;
    greeting(&mut tcp).await?;
    option(&mut tcp, proto::OPT_ABORT, &[]).await?;
    Ok(())
}

async fn greeting(s: &mut TcpStream) -> Result<(), ClientError> {
    let mut g = [0u8; proto::GREETING_LEN];
    s.read_exact(&mut g).await.map_err(io)?;
    let server_flags =
        proto::parse_greeting(&g).map_err(|e| ClientError::Protocol(format!("not an NBD newstyle server: {e}")))?;
    if server_flags & proto::FLAG_FIXED_NEWSTYLE == 0 {
        return Err(ClientError::Protocol("the server is not fixed newstyle".into()));
    }
    let flags = proto::CLIENT_FLAG_FIXED_NEWSTYLE | (u32::from(server_flags & proto::FLAG_NO_ZEROES));
    s.write_all(&flags.to_be_bytes()).await.map_err(io)
}

/// Sends one option and reads its replies up to the ACK: the data of every `NBD_REP_INFO`.
async fn option<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    option: u32,
    data: &[u8],
) -> Result<Vec<Vec<u8>>, ClientError> {
    s.write_all(&proto::encode_option(option, data)).await.map_err(io)?;
    s.flush().await.map_err(io)?;
    let mut infos = Vec::new();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).await.map_err(io)?;
        let (answered, kind, len) =
            proto::parse_option_reply_header(&h).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if answered != option || len > proto::MAX_OPTION_LEN {
            return Err(ClientError::Protocol(format!("option reply {answered} of {len} bytes to option {option}")));
        }
        let mut body = vec![0u8; len as usize];
        s.read_exact(&mut body).await.map_err(io)?;
        match kind {
            proto::REP_ACK => return Ok(infos),
            proto::REP_INFO => infos.push(body),
            k if k & (1 << 31) != 0 => {
                let why = String::from_utf8_lossy(&body).into_owned();
                return Err(ClientError::Refused(format!("option {option}: error {:#x}: {why}", k)));
            }
            k => return Err(ClientError::Protocol(format!("option reply type {k} to option {option}"))),
        }
    }
}

fn fail_all(pending: &Pending, why: &str) {
    let waiting: Vec<_> = pending.lock().expect("not poisoned").drain().collect();
    for (_, (_, _, reply)) in waiting {
        let _ = reply.send(Err(ClientError::Connection(why.to_string())));
    }
}

async fn send_loop<W: AsyncWrite + Unpin>(
    write: W,
    mut rx: mpsc::Receiver<Outgoing>,
    pending: Pending,
    closed: Arc<AtomicBool>,
) {
    let mut w = BufWriter::with_capacity(256 << 10, write);
    let mut failed = false;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut ok = true;
        let mut yielded = false;
        // Everything queued, and what the ready tasks queue when they run once, goes out
        // with one flush.
        while let (true, Some(o)) = (ok, next.take()) {
            ok = w.write_all(&o.header).await.is_ok();
            if let (true, Some(p)) = (ok, o.payload.as_ref()) {
                ok = w.write_all(p).await.is_ok();
            }
            next = rx.try_recv().ok();
            if next.is_none() && !yielded {
                yielded = true;
                tokio::task::yield_now().await;
                next = rx.try_recv().ok();
            }
        }
        if !ok || w.flush().await.is_err() || closed.load(Ordering::Acquire) {
            failed = true;
            break;
        }
    }
    closed.store(true, Ordering::Release);
    fail_all(&pending, "the connection failed while sending");
    if !failed {
        // The client was dropped: say goodbye as the protocol asks.
        let disc = Request { flags: 0, command: Command::Disc, handle: 0, offset: 0, len: 0 };
        let _ = w.write_all(&proto::encode_request(&disc)).await;
        let _ = w.flush().await;
    }
    let _ = w.shutdown().await;
}

async fn receive_loop<R: AsyncRead + Unpin>(mut read: R, pending: Pending, closed: Arc<AtomicBool>) {
    let why = loop {
        let mut h = [0u8; proto::SIMPLE_REPLY_LEN];
        if let Err(e) = read.read_exact(&mut h).await {
            break e.to_string();
        }
        let (error, handle) = match proto::parse_simple_reply(&h) {
            Ok(r) => r,
            Err(e) => break e.to_string(),
        };
        let Some((_, len, reply)) = pending.lock().expect("not poisoned").remove(&handle) else {
            break format!("a reply to handle {handle}, which was not asked");
        };
        if error != 0 {
            let _ = reply.send(Err(ClientError::Errno(error)));
            continue;
        }
        match read_payload(&mut read, len).await {
            Ok(data) => {
                let _ = reply.send(Ok(data));
            }
            Err(e) => {
                let _ = reply.send(Err(io(e)));
                break "the connection failed while receiving".into();
            }
        }
    };
    closed.store(true, Ordering::Release);
    fail_all(&pending, &why);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn data_is_read_whole_across_short_reads_or_fails_at_an_early_end() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let (mut tx, mut rx) = tokio::io::duplex(4096);
        let sent = bytes.clone();
        let writer = tokio::spawn(async move {
            tx.write_all(&sent).await.unwrap();
            tx.write_all(b"next").await.unwrap();
        });
        assert_eq!(read_payload(&mut rx, 200_000).await.unwrap(), bytes);
        writer.await.unwrap();
        // What follows is left for the next read, and a stream that ends early fails.
        assert_eq!(read_payload(&mut rx, 4).await.unwrap().as_ref(), b"next");
        let short = read_payload(&mut rx, 1).await.unwrap_err();
        assert_eq!(short.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
