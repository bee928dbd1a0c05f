//! Connection handling: fixed newstyle handshake, then pipelined transmission.
//!
//! Transmission runs three kinds of tasks per connection: the connection task reads
//! requests (and write payloads) in order, each request runs on its own task (at most
//! `max_inflight` at once), and a single writer task owns the write half so replies,
//! which may complete out of order, are never interleaved.
//!
//! Memory is bounded by byte budgets: a read or write reserves its length, per connection and
//! over all connections, before its request is taken on, and gives it back once its reply is
//! written. A client that pipelines more than that, or does not read its replies, stops being
//! read from until replies drain.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn, Instrument};

use crate::device::{BlockDevice, BlockError, ExportProvider, Peer, PeerAddr, Refusal};
use crate::proto::{self, Command, ExportLimits, ProtoError, Request};

mod haggle;

/// Limits that bound what one client can make the server hold in memory.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest read or write payload (advertised as the maximum block size). Values below 512 are raised to 512.
    pub max_request: u32,
    /// Requests executing concurrently per connection. 0 is treated as 1.
    pub max_inflight: usize,
    /// Offered through NBD_OPT_STARTTLS. When set, peers that are not local (a Unix socket or
    /// loopback) must use it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Read and write payload bytes one connection may have in flight, from the request until its
    /// reply is written. Raised to `max_request`.
    pub max_connection_bytes: u64,
    /// The same over all connections together. Raised to `max_connection_bytes`.
    pub max_total_bytes: u64,
    /// Connections open at once, handshakes included; more are closed at once. 0 is treated as 1.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_request: 32 << 20,
            max_inflight: 64,
            tls: None,
            max_connection_bytes: 64 << 20,
            max_total_bytes: 512 << 20,
            max_connections: 256,
        }
    }
}

/// Why a connection ended abnormally.
#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed input: {0}")]
    Proto(#[from] ProtoError),
    #[error("handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("option {option} carries {len} bytes, more than we accept")]
    OptionTooBig { option: u32, len: u32 },
    /// NBD_OPT_EXPORT_NAME cannot report errors; the spec says to close.
    #[error("export {0:?} requested with NBD_OPT_EXPORT_NAME refused: {1}")]
    UnknownExport(String, Refusal),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("write of {0} bytes is too large to drain")]
    OversizedWrite(u32),
}

/// A client that has not finished negotiating by then is dropped, so idle sockets don't pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes longer than `max_request` are answered with EINVAL after their payload is read and
/// discarded, which keeps the stream in sync without buffering it. Beyond this cap draining
/// costs more than it saves, so we close instead (the spec allows either).
const MAX_DRAIN: u64 = 128 << 20;

/// Small on purpose: request headers are read through it, while payloads larger than it
/// bypass it; a large buffer made every write payload take an extra copy (measured).
const READ_BUFFER: usize = 16 << 10;
const WRITE_BUFFER: usize = 256 << 10;

/// The NBD server: hands out exports from an [`ExportProvider`].
pub struct Server {
    provider: Arc<dyn ExportProvider>,
    config: ServerConfig,
    /// One permit per open connection.
    connections: Arc<Semaphore>,
    /// One permit per payload byte in flight, over all connections.
    total_bytes: Arc<Semaphore>,
}

/// An export chosen during the handshake.
struct Export {
    name: String,
    device: Arc<dyn BlockDevice>,
    size: u64,
    flags: u16,
}

/// How option haggling ended.
enum Haggled {
    Export(Export),
    /// ABORT or EOF.
    Left,
    /// The client sent NBD_OPT_STARTTLS and got its ACK.
    StartTls,
}

/// One reply for the writer task.
struct Reply {
    handle: u64,
    error: u32,
    data: Option<Bytes>,
    /// Given back once the reply is written.
    _budget: Option<Budget>,
}

/// Payload bytes reserved for one request, on its connection and in total.
struct Budget {
    _connection: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl Server {
    pub fn new(provider: Arc<dyn ExportProvider>, config: ServerConfig) -> Self {
        let max_request = config.max_request.max(512);
        let max_connection_bytes = config.max_connection_bytes.max(max_request.into());
        let max_total_bytes = config.max_total_bytes.max(max_connection_bytes);
        let config = ServerConfig {
            max_request,
            max_inflight: config.max_inflight.max(1),
            tls: config.tls,
            max_connection_bytes,
            max_total_bytes,
            max_connections: config.max_connections.max(1),
        };
        let total_bytes = Arc::new(Semaphore::new(permits(max_total_bytes)));
        Self { provider, connections: Arc::new(Semaphore::new(config.max_connections)), total_bytes, config }
    }

    /// Accept loop; each connection on its own task; a bad client never affects others. Returns only on listener error.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let Some((sock, addr)) = accepted(listener.accept().await).await? else { continue };
            // NBD is request/response; Nagle would add latency to every small reply.
            let _ = sock.set_nodelay(true);
            self.spawn_connection(sock, addr.into());
        }
    }

    /// The same on a Unix socket; peers are known by their user id.
    pub async fn serve_unix(self: Arc<Self>, listener: UnixListener) -> std::io::Result<()> {
        loop {
            let Some((sock, _)) = accepted(listener.accept().await).await? else { continue };
            let uid = sock.peer_cred().ok().map(|c| c.uid());
            self.spawn_connection(sock, PeerAddr::Unix { uid });
        }
    }

    /// Serves a connection on its own task, or closes it at once when `max_connections` are open.
    fn spawn_connection<S>(self: &Arc<Self>, sock: S, addr: PeerAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            warn!(peer = %addr, limit = self.config.max_connections, "NBD connection refused: too many open");
            return;
        };
        let this = self.clone();
        // Everything logged for this connection carries its peer, and its export once known.
        let span = tracing::info_span!("nbd", peer = %addr, export = tracing::field::Empty);
        tokio::spawn(
            async move {
                // Errors are logged inside serve_connection.
                let _ = this.serve_connection(sock, addr).await;
                drop(permit);
            }
            .instrument(span),
        );
    }

    /// One connection over any stream. `addr` decides whether TLS is required (everything
    /// but a Unix socket and loopback).
    pub async fn serve_connection<S>(
        self: Arc<Self>,
        mut stream: S,
        addr: impl Into<PeerAddr>,
    ) -> Result<(), ProtocolError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let addr = addr.into();
        debug!(peer = %addr, "NBD connection opened");
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        let mut peer = Peer { addr, tls: false, certificate: None };
        let negotiated = tokio::time::timeout_at(deadline, async {
            let Some(client) = self.greet(&mut stream).await? else { return Ok((Haggled::Left, None)) };
            Ok((self.haggle(&mut stream, &peer, client).await?, Some(client)))
        })
        .await
        .unwrap_or(Err(ProtocolError::HandshakeTimeout(HANDSHAKE_TIMEOUT)));
        match negotiated {
            Ok((Haggled::StartTls, Some(client))) => {
                let config = self.config.tls.clone().expect("STARTTLS is only accepted with a TLS config");
                let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                let mut tls = match tokio::time::timeout_at(deadline, accept).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return self.failed(&peer, ProtocolError::Tls(e)),
                    Err(_) => return self.failed(&peer, ProtocolError::HandshakeTimeout(HANDSHAKE_TIMEOUT)),
                };
                peer.tls = true;
                peer.certificate = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
                let negotiated = tokio::time::timeout_at(deadline, self.haggle(&mut tls, &peer, client))
                    .await
                    .unwrap_or(Err(ProtocolError::HandshakeTimeout(HANDSHAKE_TIMEOUT)));
                self.after_handshake(tls, negotiated, &peer).await
            }
            Ok((outcome, _)) => self.after_handshake(stream, Ok(outcome), &peer).await,
            Err(e) => self.failed(&peer, e),
        }
    }

    fn failed(&self, peer: &Peer, e: ProtocolError) -> Result<(), ProtocolError> {
        warn!(peer = %peer.addr, tls = peer.tls, error = %e, "NBD handshake failed");
        Err(e)
    }

    async fn after_handshake<S>(
        &self,
        stream: S,
        negotiated: Result<Haggled, ProtocolError>,
        peer: &Peer,
    ) -> Result<(), ProtocolError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let export = match negotiated {
            Ok(Haggled::Export(export)) => export,
            Ok(Haggled::Left) => {
                debug!(peer = %peer.addr, "NBD client left during negotiation");
                return Ok(());
            }
            // Only reachable when TLS is not configured, where STARTTLS is refused instead.
            Ok(Haggled::StartTls) => return Ok(()),
            Err(e) => return self.failed(peer, e),
        };
        let who = peer.addr.to_string();
        tracing::Span::current().record("export", export.name.as_str());
        info!(peer = %who, tls = peer.tls, export = %export.name, size = export.size, read_only = export.device.read_only(), "NBD client connected");
        let name = export.name.clone();
        let result = self.transmission(stream, export, &who).await;
        match &result {
            Ok(()) => info!(peer = %who, export = %name, "NBD client disconnected"),
            Err(e) => warn!(peer = %who, export = %name, error = %e, "NBD client disconnected with protocol error"),
        }
        result
    }

    /// Resolves an export name for this peer; the empty name means the first export it may see.
    fn resolve(&self, name: &str, peer: &Peer) -> Result<(String, Arc<dyn BlockDevice>), Refusal> {
        let name = if name.is_empty() {
            self.provider.list_for(peer).into_iter().next().ok_or(Refusal::Unknown)?
        } else {
            name.to_owned()
        };
        let device = self.provider.open_for(&name, peer)?;
        Ok((name, device))
    }

    /// TLS is offered and this peer is not local, but has not started it yet.
    fn tls_missing(&self, peer: &Peer) -> bool {
        self.config.tls.is_some() && !peer.tls && !peer.is_local()
    }

    fn export(&self, name: String, device: Arc<dyn BlockDevice>) -> Export {
        let mut flags = proto::TFLAG_HAS_FLAGS
            | proto::TFLAG_SEND_FLUSH
            | proto::TFLAG_SEND_FUA
            | proto::TFLAG_SEND_TRIM
            | proto::TFLAG_SEND_WRITE_ZEROES;
        if device.read_only() {
            flags |= proto::TFLAG_READ_ONLY;
        }
        if device.can_multi_conn() {
            flags |= proto::TFLAG_CAN_MULTI_CONN;
        }
        let size = device.size();
        Export { name, device, size, flags }
    }

    async fn transmission<S>(&self, stream: S, export: Export, peer: &str) -> Result<(), ProtocolError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        let mut rd = BufReader::with_capacity(READ_BUFFER, rd);
        let (tx, rx) = mpsc::channel::<Reply>(self.config.max_inflight);
        let writer = tokio::spawn(write_replies(wr, rx));
        let read_result = self.read_requests(&mut rd, tx, &export, peer).await;
        // The writer ends once every in-flight request has replied (each holds a sender).
        let write_result = match writer.await {
            Ok(r) => r.map_err(ProtocolError::from),
            Err(e) => Err(ProtocolError::Io(std::io::Error::other(e))),
        };
        read_result.and(write_result)
    }

    /// Reads requests until DISC, EOF or a fatal error, dispatching each to its own task.
    async fn read_requests<R>(
        &self,
        rd: &mut R,
        tx: mpsc::Sender<Reply>,
        export: &Export,
        peer: &str,
    ) -> Result<(), ProtocolError>
    where
        R: AsyncRead + Unpin,
    {
        let limits = ExportLimits {
            size: export.size,
            read_only: export.flags & proto::TFLAG_READ_ONLY != 0,
            max_request: self.config.max_request,
        };
        let inflight = Arc::new(Semaphore::new(self.config.max_inflight));
        let connection_bytes = Arc::new(Semaphore::new(permits(self.config.max_connection_bytes)));
        loop {
            let mut hdr = [0u8; proto::REQUEST_LEN];
            if !read_exact_or_eof(rd, &mut hdr).await? {
                debug!(peer = %peer, "NBD client closed without NBD_CMD_DISC");
                return Ok(());
            }
            // A bad magic means we have lost framing: no reply is possible.
            let req = proto::parse_request(&hdr)?;
            if req.command == Command::Disc {
                debug!(peer = %peer, "NBD_CMD_DISC");
                return Ok(());
            }
            if req.command == Command::Write && req.len > self.config.max_request {
                if u64::from(req.len) > MAX_DRAIN.max(self.config.max_request.into()) {
                    return Err(ProtocolError::OversizedWrite(req.len));
                }
                warn!(peer = %peer, len = req.len, "NBD write larger than max_request; discarding payload");
                drain(rd, req.len.into()).await?;
                if !send_error(&tx, req.handle, proto::EINVAL).await {
                    return Ok(());
                }
                continue;
            }
            if let Err(error) = proto::check_request(&req, &limits) {
                debug!(peer = %peer, ?req, error, "NBD request rejected");
                if req.command == Command::Write {
                    drain(rd, req.len.into()).await?;
                }
                if !send_error(&tx, req.handle, error).await {
                    return Ok(());
                }
                continue;
            }
            // Taken before reading the payload so at most max_inflight payloads are buffered.
            let Ok(permit) = inflight.clone().acquire_owned().await else {
                return Ok(());
            };
            let budget = self.reserve(&connection_bytes, &req).await;
            let payload = if req.command == Command::Write { read_payload(rd, req.len).await? } else { Bytes::new() };
            let device = export.device.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reply = execute(device, req, payload).await;
                reply._budget = budget;
                // Fails only if the writer is gone, i.e. the connection is already dead.
                let _ = tx.send(reply).await;
                drop(permit);
            });
        }
    }
}

impl Server {
    /// Waits until the payload of `req` fits in its connection's budget and in the total one.
    /// Only reads and writes carry payloads; their length is at most `max_request`, which both
    /// budgets hold whole.
    async fn reserve(&self, connection: &Arc<Semaphore>, req: &Request) -> Option<Budget> {
        if !matches!(req.command, Command::Read | Command::Write) || req.len == 0 {
            return None;
        }
        let n = req.len.min(self.config.max_request);
        // Neither semaphore is ever closed.
        let connection = connection.clone().acquire_many_owned(n).await.ok()?;
        let total = self.total_bytes.clone().acquire_many_owned(n).await.ok()?;
        Some(Budget { _connection: connection, _total: total })
    }
}

/// Semaphore permits for a byte count, within what tokio's semaphore holds.
fn permits(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS)
}

/// What to do with the result of an accept: a connection, `None` to try again, or the
/// listener's own error.
async fn accepted<T>(r: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match r {
        Ok(x) => Ok(Some(x)),
        Err(e) if is_per_connection_error(&e) => {
            debug!(error = %e, "accept failed for one connection");
            Ok(None)
        }
        Err(e) if is_resource_exhaustion(&e) => {
            // Out of fds or buffers: back off instead of spinning; existing connections may free some.
            warn!(error = %e, "accept: resources exhausted, backing off");
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn is_per_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock | TimedOut)
}

fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Fills `buf`, or returns `Ok(false)` on EOF before its first byte (a clean close).
async fn read_exact_or_eof<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(true)
}

/// Reads `len` bytes (a write's payload, a read's reply data) into a new buffer; a stream
/// that ends first is `UnexpectedEof`.
pub(crate) async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, len: u32) -> std::io::Result<Bytes> {
    // read_to_end into exact capacity avoids zero-filling the buffer first.
    let mut buf = Vec::with_capacity(len as usize);
    r.take(len.into()).read_to_end(&mut buf).await?;
    if buf.len() != len as usize {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Bytes::from(buf))
}

async fn drain<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> std::io::Result<()> {
    let n = tokio::io::copy(&mut r.take(len), &mut tokio::io::sink()).await?;
    if n != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Queues an error reply; false if the writer is gone.
async fn send_error(tx: &mpsc::Sender<Reply>, handle: u64, error: u32) -> bool {
    tx.send(Reply { handle, error, data: None, _budget: None }).await.is_ok()
}

/// Runs one validated request against the device.
async fn execute(device: Arc<dyn BlockDevice>, req: Request, payload: Bytes) -> Reply {
    let handle = req.handle;
    // Zero-length requests are no-ops (flush has no length and always runs).
    if req.len == 0 && req.command != Command::Flush {
        return Reply { handle, error: 0, data: (req.command == Command::Read).then(Bytes::new), _budget: None };
    }
    let op = async {
        match req.command {
            Command::Read => {
                let data = device.read(req.offset, req.len).await?;
                if data.len() != req.len as usize {
                    // A short reply would desynchronise the stream.
                    return Err(BlockError::Io(format!("device returned {} bytes, wanted {}", data.len(), req.len)));
                }
                Ok(Some(data))
            }
            Command::Write => device.write(req.offset, payload, req.fua()).await.map(|_| None),
            Command::Flush => device.flush().await.map(|_| None),
            Command::Trim => {
                device.trim(req.offset, req.len).await?;
                if req.fua() {
                    device.flush().await?;
                }
                Ok(None)
            }
            Command::WriteZeroes => device.write_zeroes(req.offset, req.len, req.fua()).await.map(|_| None),
            Command::Disc | Command::Other(_) => Err(BlockError::Invalid("not a data command".into())),
        }
    };
    match catch_panic(op).await {
        Ok(Ok(data)) => Reply { handle, error: 0, data, _budget: None },
        Ok(Err(e)) => {
            debug!(?req, error = %e, "NBD request failed");
            Reply { handle, error: e.nbd_error(), data: None, _budget: None }
        }
        Err(()) => {
            warn!(?req, "block device panicked; replying EIO");
            Reply { handle, error: proto::EIO, data: None, _budget: None }
        }
    }
}

/// A panicking device must not leave the client waiting forever for its reply.
async fn catch_panic<T>(fut: impl Future<Output = T>) -> Result<T, ()> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
        Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
        Ok(Poll::Pending) => Poll::Pending,
        Err(_) => Poll::Ready(Err(())),
    })
    .await
}

/// The only writer of the transmission stream; batches replies and flushes when idle.
async fn write_replies<W>(wr: W, mut rx: mpsc::Receiver<Reply>) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut w = BufWriter::with_capacity(WRITE_BUFFER, wr);
    while let Some(reply) = rx.recv().await {
        write_reply(&mut w, reply).await?;
        while let Ok(reply) = rx.try_recv() {
            write_reply(&mut w, reply).await?;
        }
        w.flush().await?;
    }
    // Client may already be gone after DISC; nothing left to report.
    let _ = w.shutdown().await;
    Ok(())
}

async fn write_reply<W: AsyncWrite + Unpin>(w: &mut W, reply: Reply) -> std::io::Result<()> {
    w.write_all(&proto::simple_reply_header(reply.error, reply.handle)).await?;
    if let Some(data) = reply.data {
        w.write_all(&data).await?;
    }
    Ok(())
}
