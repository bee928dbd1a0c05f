//! A storage node (`node://host:port`) as a target, over its HTTP share API (`cleave-node`),
//! always inside mutual TLS. The gateway presents its client certificate from control's node
//! CA; the node presents a server certificate from the same CA that names its node id. The
//! address is looked up in the pool of registered nodes before any connection is made, so an
//! address no node registered is never contacted, and nothing secret is ever sent as a bearer
//! token: a node, or an impostor, learns no credential it could use elsewhere.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, RANGE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::error::check_key;
use crate::{Target, TargetError, TargetUri};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response body accepted (the node refuses objects over 80 MiB).
const MAX_BODY: usize = 128 << 20;
/// Idle connections kept per node.
const MAX_IDLE: usize = 64;

/// The DNS name a node's certificate carries: its id under a name no real host has.
pub fn server_name(node_id: &str) -> String {
    format!("{node_id}.node.cleave")
}

/// Whether a node id can be named in a certificate (one DNS label).
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 63 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The registered node id at an address (`host:port`), or None.
pub type Resolve = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How the gateway reaches storage nodes, passed explicitly.
#[derive(Clone)]
pub struct NodeAccess {
    /// The gateway's certificate and key (client use), and control's node CA as the only root.
    pub tls: Arc<rustls::ClientConfig>,
    /// Which node is registered at an address: only such addresses are contacted.
    pub resolve: Resolve,
}

impl std::fmt::Debug for NodeAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeAccess")
    }
}

#[derive(Clone)]
pub struct NodeTarget {
    addr: String,
    name: String,
    access: NodeAccess,
    idle: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>,
}

impl std::fmt::Debug for NodeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTarget").field("name", &self.name).finish()
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error and its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The node's `{"error": "..."}` message, or the start of whatever it sent.
fn message(body: &[u8]) -> String {
    let inner = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string));
    let mut msg = inner.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    if msg.len() > 300 {
        let mut end = 300;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
    }
    msg
}

impl NodeTarget {
    /// `addr` is `host:port`. Nothing is contacted until a call, and then only if a node is
    /// registered at `addr`.
    pub fn new(addr: String, access: NodeAccess) -> Self {
        NodeTarget { name: TargetUri::node(&addr).to_string(), addr, access, idle: Arc::new(Mutex::new(Vec::new())) }
    }

    /// An idle connection, or a new one to the node registered at this address.
    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, TargetError> {
        while let Some(c) = self.idle.lock().expect("not poisoned").pop() {
            if !c.is_closed() && c.is_ready() {
                return Ok(c);
            }
        }
        let unavailable = |m: String| TargetError::Unavailable(format!("{}: {m}", self.name));
        let id = (self.access.resolve)(&self.addr).ok_or_else(|| unavailable("not a registered node".into()))?;
        let name = rustls::pki_types::ServerName::try_from(server_name(&id))
            .map_err(|_| unavailable(format!("node id {id:?} cannot be named in a certificate")))?;
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(&self.addr).await.map_err(|e| unavailable(chain(&e)))?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(self.access.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| unavailable(format!("TLS with node {id}: {}", chain(&e))))?;
            let (send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| unavailable(chain(&e)))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(send)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| unavailable(format!("no connection within {} s", CONNECT_TIMEOUT.as_secs())))?
    }

    /// One request; Ok((status, body)) for a 2xx answer, the matching error otherwise.
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        key: &str,
        range: Option<String>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), TargetError> {
        let what = if key.is_empty() { self.name.clone() } else { format!("{}/{key}", self.name) };
        let mut req = Request::builder().method(method).uri(path_and_query).header(HOST, &self.addr);
        if let Some(range) = range {
            req = req.header(RANGE, range);
        }
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, "application/octet-stream");
        }
        let req = req.body(Full::new(body)).map_err(|e| TargetError::InvalidUri(format!("{what}: {e}")))?;
        let exchange = async {
            let mut conn = self.connection().await?;
            let resp =
                conn.send_request(req).await.map_err(|e| TargetError::Unavailable(format!("{what}: {}", chain(&e))))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| TargetError::Unavailable(format!("{what}: reading the answer: {e}")))?
                .to_bytes();
            let mut idle = self.idle.lock().expect("not poisoned");
            if idle.len() < MAX_IDLE && !conn.is_closed() {
                idle.push(conn);
            }
            Ok::<_, TargetError>((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| {
            TargetError::Unavailable(format!("{what}: no answer within {} s", REQUEST_TIMEOUT.as_secs()))
        })??;
        if status.is_success() {
            return Ok((status, body));
        }
        let detail = message(&body);
        Err(match status {
            StatusCode::NOT_FOUND => TargetError::NotFound(what),
            StatusCode::CONFLICT => TargetError::AlreadyExists(what),
            StatusCode::INSUFFICIENT_STORAGE => TargetError::Full(format!("{what}: {detail}")),
            StatusCode::BAD_REQUEST => TargetError::InvalidKey(key.to_string()),
            _ => TargetError::Unavailable(format!("{what}: {status}: {detail}")),
        })
    }

    fn object(key: &str) -> String {
        format!("/v1/objects/{}", encode(key))
    }
}

#[async_trait::async_trait]
impl Target for NodeTarget {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), TargetError> {
        check_key(key)?;
        self.call(Method::PUT, &Self::object(key), key, None, data).await.map(|_| ())
    }

    async fn get(&self, key: &str) -> Result<Bytes, TargetError> {
        check_key(key)?;
        Ok(self.call(Method::GET, &Self::object(key), key, None, Bytes::new()).await?.1)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, TargetError> {
        check_key(key)?;
        if range.end <= range.start {
            // Still reports a missing object.
            self.call(Method::GET, &Self::object(key), key, Some("bytes=0-0".into()), Bytes::new()).await?;
            return Ok(Bytes::new());
        }
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let (status, body) = self.call(Method::GET, &Self::object(key), key, Some(header), Bytes::new()).await?;
        if status == StatusCode::PARTIAL_CONTENT {
            return Ok(body);
        }
        // A server that ignored the range sent the whole object.
        let len = body.len() as u64;
        let (start, end) = (range.start.min(len), range.end.min(len));
        Ok(body.slice(start as usize..end.max(start) as usize))
    }

    async fn delete(&self, key: &str) -> Result<(), TargetError> {
        check_key(key)?;
        match self.call(Method::DELETE, &Self::object(key), key, None, Bytes::new()).await {
            Ok(_) => Ok(()),
            Err(TargetError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, TargetError> {
        let path = format!("/v1/list?prefix={}", encode(prefix));
        let (_, body) = self.call(Method::GET, &path, "", None, Bytes::new()).await?;
        let mut keys: Vec<String> = serde_json::from_slice(&body)
            .map_err(|e| TargetError::Corrupt(format!("{}: list of {prefix:?}: {e}", self.name)))?;
        keys.sort();
        Ok(keys)
    }

    async fn health(&self) -> Result<(), TargetError> {
        self.call(Method::GET, "/v1/health", "", None, Bytes::new()).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefixes_are_encoded() {
        assert_eq!(encode("vol/chunks/1/a-b_c.d~"), "vol/chunks/1/a-b_c.d~");
        assert_eq!(encode("a b?c#d%e&f=g+h"), "a%20b%3Fc%23d%25e%26f%3Dg%2Bh");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn error_messages_are_extracted() {
        assert_eq!(message(br#"{"error":"node full: 2 bytes"}"#), "node full: 2 bytes");
        assert_eq!(message(b"plain"), "plain");
        assert!(message(&[b'x'; 1000]).len() <= 300);
    }

    fn access(resolve: Resolve) -> NodeAccess {
        let roots = rustls::RootCertStore::empty();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        NodeAccess { tls: Arc::new(tls), resolve }
    }

    #[tokio::test]
    async fn an_unregistered_address_is_never_contacted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let t = NodeTarget::new(addr.clone(), access(Arc::new(|_| None)));
        assert_eq!(t.name(), format!("node://{addr}"));
        let err = t.get("k").await.unwrap_err();
        assert!(matches!(err, TargetError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("not a registered node"), "{err}");
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "the gateway connected to an unregistered address");
    }

    #[test]
    fn node_ids_and_names() {
        assert!(valid_node_id("0123456789ab"));
        assert!(!valid_node_id("a.b") && !valid_node_id("") && !valid_node_id(&"a".repeat(64)));
        assert_eq!(server_name("n1"), "n1.node.cleave");
    }
}
