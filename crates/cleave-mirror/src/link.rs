//! The primary's link to a peer: n TLS connections, each with a writer and a reader task,
//! requests spread over them, every request answered on its own connection. Any connection
//! failing, or a request unanswered for [`REQUEST_TIMEOUT`], closes the whole link: the
//! volumes on it go back to journaling until heartbeats bring the peer back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::control::{Control, PeerCredentials};
use crate::error::{MirrorError, Result};
use crate::primary::Channel;
use crate::wire::{next_queued, read_frame, write_frame, Frame, Op};

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The label of the heartbeat key both sides export from the first connection's TLS session.
pub const HEARTBEAT_LABEL: &[u8] = b"cleave mirror heartbeat v1";

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<(bool, Bytes)>>>>>;

struct Request {
    frame: Frame,
    reply: oneshot::Sender<Result<(bool, Bytes)>>,
}

/// An open link to a peer.
pub struct Link {
    pub addr: String,
    conns: std::sync::OnceLock<Vec<mpsc::Sender<Request>>>,
    next_conn: AtomicUsize,
    next_id: AtomicU64,
    closed: AtomicBool,
    closing: Notify,
}

/// A TLS client configuration from a peer's credentials.
pub fn client_config(c: &PeerCredentials) -> Result<Arc<rustls::ClientConfig>> {
    let bad = |what: &str, e: String| MirrorError::Invalid(format!("peer credentials: {what}: {e}"));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(c.ca_pem.as_bytes()).map_err(|e| bad("CA", e.to_string()))?;
    roots.add(ca).map_err(|e| bad("CA", e.to_string()))?;
    let cert = CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).map_err(|e| bad("certificate", e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).map_err(|e| bad("key", e.to_string()))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS", e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| bad("client certificate", e.to_string()))?;
    Ok(Arc::new(config))
}

impl Link {
    /// Opens `n` connections to `addr`, says hello on the first, and returns the link, the
    /// peer's answer, and the heartbeat key of the first session.
    pub async fn connect(
        addr: &str,
        tls: Arc<rustls::ClientConfig>,
        n: usize,
        hello: &Control,
    ) -> Result<(Arc<Link>, Bytes, [u8; 32])> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| MirrorError::Invalid(format!("peer address {addr}: {e}")))?;
        let connector = TlsConnector::from(tls);
        let link = Arc::new(Link {
            addr: addr.to_string(),
            conns: std::sync::OnceLock::new(),
            next_conn: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            closing: Notify::new(),
        });
        let mut conns = Vec::new();
        let mut key = [0u8; 32];
        for i in 0..n.max(1) {
            let down = |e: String| MirrorError::LinkDown(format!("{addr}: {e}"));
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| down("connect timed out".into()))?
                .map_err(|e| down(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp))
                .await
                .map_err(|_| down("TLS handshake timed out".into()))?
                .map_err(|e| down(format!("TLS: {e}")))?;
            if i == 0 {
                key = tls
                    .get_ref()
                    .1
                    .export_keying_material([0u8; 32], HEARTBEAT_LABEL, None)
                    .map_err(|e| down(e.to_string()))?;
            }
            conns.push(spawn_connection(Arc::downgrade(&link), tls));
        }
        let _ = link.conns.set(conns);
        let body = serde_json::to_vec(hello).map_err(|e| MirrorError::Local(e.to_string()))?;
        let answer = link.request_on(0, |id| Frame::Control { id, body: body.into() }).await?;
        Ok((link, answer, key))
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes every connection; requests in flight fail with `LinkDown`.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.closing.notify_waiters();
        }
    }

    /// Sends a control request and returns the answer's body.
    pub async fn control(&self, c: &Control) -> Result<Bytes> {
        let body = serde_json::to_vec(c).map_err(|e| MirrorError::Local(e.to_string()))?;
        let i = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.request_on(i, |id| Frame::Control { id, body: body.into() }).await
    }

    async fn request_on(&self, i: usize, frame: impl FnOnce(u64) -> Frame) -> Result<Bytes> {
        let conns = match self.conns.get() {
            Some(c) if !c.is_empty() && !self.is_closed() => c,
            _ => return Err(MirrorError::LinkDown(format!("{}: link closed", self.addr))),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let conn = &conns[i % conns.len()];
        if conn.send(Request { frame: frame(id), reply: tx }).await.is_err() {
            self.close();
            return Err(MirrorError::LinkDown(format!("{}: connection closed", self.addr)));
        }
        let answer = match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(MirrorError::LinkDown(format!("{}: connection closed", self.addr))),
            Err(_) => {
                self.close();
                Err(MirrorError::LinkDown(format!("{}: no answer in {} s", self.addr, REQUEST_TIMEOUT.as_secs())))
            }
        }?;
        match answer {
            (true, body) => Ok(body),
            (false, body) => Err(MirrorError::Refused(String::from_utf8_lossy(&body).into_owned())),
        }
    }

    /// Sends a block change for the volume attached as `handle`.
    pub async fn data(&self, handle: u32, op: Op) -> Result<()> {
        let i = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.request_on(i, |id| Frame::Data { id, handle, op }).await.map(|_| ())
    }
}

fn spawn_connection(
    link: std::sync::Weak<Link>,
    tls: tokio_rustls::client::TlsStream<TcpStream>,
) -> mpsc::Sender<Request> {
    let (tx, mut rx) = mpsc::channel::<Request>(256);
    let pending: Pending = Arc::default();
    let (mut read, write) = tokio::io::split(tls);
    let p2 = pending.clone();
    let l2 = link.clone();
    tokio::spawn(async move {
        let mut write = BufWriter::with_capacity(256 << 10, write);
        let closing = async {
            if let Some(l) = l2.upgrade() {
                l.closing.notified().await
            }
        };
        tokio::pin!(closing);
        loop {
            let req = tokio::select! {
                r = rx.recv() => r,
                _ = &mut closing => None,
            };
            let Some(req) = req else { break };
            p2.lock().expect("not poisoned").insert(req.frame.id(), req.reply);
            let mut ok = write_frame(&mut write, &req.frame).await.is_ok();
            // Batch what is queued, and what the tasks that run meanwhile add, into one flush.
            let mut yielded = false;
            while ok {
                let Some(more) = next_queued(&mut rx, &mut yielded).await else { break };
                p2.lock().expect("not poisoned").insert(more.frame.id(), more.reply);
                ok = write_frame(&mut write, &more.frame).await.is_ok();
            }
            if !ok || write.flush().await.is_err() {
                break;
            }
        }
        fail_all(&p2, &l2);
    });
    let l3 = link.clone();
    tokio::spawn(async move {
        let closing = async {
            if let Some(l) = l3.upgrade() {
                l.closing.notified().await
            }
        };
        tokio::pin!(closing);
        loop {
            let frame = tokio::select! {
                f = read_frame(&mut read) => f,
                _ = &mut closing => break,
            };
            match frame {
                Ok(Some(Frame::Reply { id, ok, body })) => {
                    if let Some(tx) = pending.lock().expect("not poisoned").remove(&id) {
                        let _ = tx.send(Ok((ok, body)));
                    }
                }
                Ok(Some(other)) => {
                    debug!(id = other.id(), "unexpected frame from the mirror");
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        fail_all(&pending, &link);
    });
    tx
}

fn fail_all(pending: &Pending, link: &std::sync::Weak<Link>) {
    if let Some(l) = link.upgrade() {
        l.close();
    }
    for (_, tx) in pending.lock().expect("not poisoned").drain() {
        let _ = tx.send(Err(MirrorError::LinkDown("connection closed".into())));
    }
}

/// One volume's changes over a link.
pub struct VolumeChannel {
    pub link: Arc<Link>,
    pub handle: u32,
}

#[async_trait::async_trait]
impl Channel for VolumeChannel {
    async fn send(&self, op: Op) -> Result<()> {
        self.link.data(self.handle, op).await
    }
    async fn mark_consistent(&self, consistent: bool) -> Result<()> {
        self.link.control(&Control::Consistent { handle: self.handle, consistent }).await.map(|_| ())
    }
}
