//! A node served over real TLS on a loopback port, used through the `node://` target (and,
//! for what a target cannot send, raw HTTP inside TLS). The node's certificate and the
//! gateway's come from a CA made here, as control's node CA would issue them.

use std::sync::Arc;

use bytes::Bytes;
use cleave_control::ca::{pem_to_der, Ca};
use cleave_node::{Node, NodeConfig};
use cleave_target::node::{server_name, NodeAccess, NodeTarget};
use cleave_target::{DynTarget, Target, TargetError};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE_ID: &str = "n1";

struct Running {
    dir: tempfile::TempDir,
    node: Node,
    addr: String,
    ca: Arc<Ca>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A TLS client configuration trusting `ca`, presenting `client` (certificate PEM, key PEM) if any.
fn client_config(ca: &Ca, client: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.cert_der().unwrap())).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client {
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from(pem_to_der(cert).unwrap())],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    })
}

fn gateway_config(ca: &Ca) -> Arc<rustls::ClientConfig> {
    let g = ca.issue_gateway().unwrap();
    client_config(ca, Some((&g.cert_pem, &g.key_pem)))
}

impl Running {
    fn target(&self) -> NodeTarget {
        let resolve: cleave_target::node::Resolve = Arc::new(|_| Some(NODE_ID.to_string()));
        NodeTarget::new(self.addr.clone(), NodeAccess { tls: gateway_config(&self.ca), resolve })
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.await.unwrap().unwrap();
    }
}

/// Gives the node its CA and certificate, as control does at registration.
fn enroll(node: &Node, ca: &Ca) {
    let c = node.credentials();
    c.trust_ca(ca.cert_der().unwrap()).unwrap();
    c.install(ca.issue_node(&server_name(NODE_ID), c.public_key()).unwrap()).unwrap();
}

async fn start(capacity: Option<u64>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node =
        Node::open(NodeConfig { data: dir.path().to_path_buf(), listen: addr, capacity, site: "a".into() }).unwrap();
    let ca = Arc::new(Ca::generate("nodes").unwrap().0);
    enroll(&node, &ca);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(node.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    Running { dir, node, addr: addr.to_string(), ca, stop: Some(stop), server }
}

/// One raw HTTP/1.1 request inside TLS with `config`; the status code and the body, or None
/// when the TLS handshake or the exchange fails.
async fn raw_with(addr: &str, config: Arc<rustls::ClientConfig>, request_head: &str) -> Option<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(server_name(NODE_ID)).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.ok()?;
    s.write_all(request_head.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok())?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// [`raw_with`] as the gateway.
async fn raw(n: &Running, request_head: &str) -> (u16, String) {
    raw_with(&n.addr, gateway_config(&n.ca), request_head).await.expect("an answer to the gateway")
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_target_conformance() {
    let n = start(None).await;
    let t: DynTarget = Arc::new(n.target());
    assert_eq!(t.name(), format!("node://{}", n.addr));
    cleave_target::testing::conformance(t.clone()).await;
    // The objects the suite leaves behind.
    assert_eq!(n.node.stats().objects, 108);
    assert_eq!(t.list("").await.unwrap().len(), 108);
    let leftovers = walk(n.dir.path()).into_iter().filter(|p| p.contains(".tmp-")).count();
    assert_eq!(leftovers, 0, "no temporary files left behind");
    // Keys with characters that need encoding in a URL.
    t.put("odd/a b+c%d?e#f&g=h", Bytes::from_static(b"odd")).await.unwrap();
    assert_eq!(&t.get("odd/a b+c%d?e#f&g=h").await.unwrap()[..], b"odd");
    assert_eq!(t.list("odd/a b+").await.unwrap(), vec!["odd/a b+c%d?e#f&g=h"]);
    assert_eq!(&t.get_range("odd/a b+c%d?e#f&g=h", 5..5).await.unwrap()[..], b"");
    assert!(t.get_range("odd/missing", 5..5).await.unwrap_err().is_not_found());
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_follow_puts_and_deletes() {
    let n = start(None).await;
    let t = n.target();
    let before = n.node.stats();
    assert_eq!((before.used_bytes, before.objects), (0, 0));
    assert!(before.capacity_bytes > 0 && before.free_bytes > 0 && before.free_bytes <= before.capacity_bytes);
    t.put("v/chunks/1/a", Bytes::from_static(b"share bytes")).await.unwrap();
    t.put("v/chunks/1/b", Bytes::from(vec![9u8; 5000])).await.unwrap();
    let s = n.node.stats();
    assert_eq!((s.used_bytes, s.objects), (5011, 2));
    // A refused duplicate changes nothing.
    assert!(t.put("v/chunks/1/a", Bytes::from_static(b"x")).await.unwrap_err().is_already_exists());
    assert_eq!(n.node.stats().used_bytes, 5011);
    t.delete("v/chunks/1/a").await.unwrap();
    t.delete("v/chunks/1/a").await.unwrap();
    let s = n.node.stats();
    assert_eq!((s.used_bytes, s.objects), (5000, 1));
    // Concurrent deletes of one key subtract it once.
    let results = futures::future::join_all((0..8).map(|_| t.delete("v/chunks/1/b"))).await;
    assert!(results.iter().all(|r| r.is_ok()));
    let s = n.node.stats();
    assert_eq!((s.used_bytes, s.objects), (0, 0));

    // The health route reports the same numbers, as JSON.
    t.put("k", Bytes::from_static(b"1234")).await.unwrap();
    let (status, body) = raw(&n, "GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 200, "{body}");
    let stats: cleave_node::NodeStats = serde_json::from_str(&body).unwrap();
    assert_eq!((stats.used_bytes, stats.objects), (4, 1));
    assert!(stats.capacity_bytes >= stats.free_bytes);

    // Reopening the directory counts what is there.
    let data = n.dir.path().to_path_buf();
    std::fs::write(data.join("objects").join(".tmp-leftover"), b"half").unwrap();
    let again = Node::open(NodeConfig {
        data: data.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        capacity: None,
        site: "a".into(),
    })
    .unwrap();
    assert_eq!((again.stats().used_bytes, again.stats().objects), (4, 1));
    assert!(!data.join("objects").join(".tmp-leftover").exists(), "leftover temporary file removed");
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_callers_without_a_gateway_certificate() {
    let n = start(None).await;
    n.target().put("k", Bytes::from_static(b"x")).await.unwrap();
    let head = "GET /v1/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // No client certificate; a client certificate from another CA; and another node's own
    // credential (its server certificate and key) used as a client: all refused at the handshake.
    assert!(raw_with(&n.addr, client_config(&n.ca, None), head).await.is_none());
    let (stranger, _) = Ca::generate("other").unwrap();
    let foreign = stranger.issue_gateway().unwrap();
    let config = client_config(&n.ca, Some((&foreign.cert_pem, &foreign.key_pem)));
    assert!(raw_with(&n.addr, config, head).await.is_none());
    let other_node = tempfile::tempdir().unwrap();
    let other = Node::open(NodeConfig {
        data: other_node.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        capacity: None,
        site: "a".into(),
    })
    .unwrap();
    enroll(&other, &n.ca);
    let cert = std::fs::read_to_string(other_node.path().join("node.crt")).unwrap();
    let key = std::fs::read_to_string(other_node.path().join("node.key")).unwrap();
    assert!(raw_with(&n.addr, client_config(&n.ca, Some((&cert, &key))), head).await.is_none());
    // Plain HTTP gets no HTTP answer.
    let mut s = tokio::net::TcpStream::connect(&n.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    assert!(!String::from_utf8_lossy(&out).contains("HTTP/1.1 200"), "plain HTTP served");
    // Nothing was written or deleted by any of them.
    assert_eq!(n.target().list("").await.unwrap(), vec!["k"]);

    // As the gateway: the server itself rejects bad keys with 400 and serves ranges with 206.
    let (status, body) =
        raw(&n, "PUT /v1/objects/a/.hidden HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx")
            .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (status, body) =
        raw(&n, "GET /v1/objects/k HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0\r\nConnection: close\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (206, "x"));
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_certificate_serves_nobody_and_keeps_its_first_ca() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node =
        Node::open(NodeConfig { data: dir.path().to_path_buf(), listen: addr, capacity: None, site: "a".into() })
            .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(node.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    let ca = Ca::generate("nodes").unwrap().0;
    let head = "GET /v1/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert!(raw_with(&addr.to_string(), gateway_config(&ca), head).await.is_none(), "served before enrolment");
    enroll(&node, &ca);
    assert_eq!(raw_with(&addr.to_string(), gateway_config(&ca), head).await.map(|r| r.0), Some(200));
    // A later, different CA is not taken.
    let (intruder, _) = Ca::generate("nodes").unwrap();
    assert!(node.credentials().trust_ca(intruder.cert_der().unwrap()).is_err());
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    // Reopened, the node serves with what it kept.
    let again =
        Node::open(NodeConfig { data: dir.path().to_path_buf(), listen: addr, capacity: None, site: "a".into() })
            .unwrap();
    assert!(again.credentials().server_config().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_says_so_and_keeps_nothing() {
    let n = start(Some(1 << 20)).await;
    let t = n.target();
    t.put("small", Bytes::from(vec![1u8; 1000])).await.unwrap();
    let used = n.node.stats().used_bytes;
    assert_eq!(used, 1000);
    let err = t.put("big", Bytes::from(vec![2u8; 2 << 20])).await.unwrap_err();
    assert!(matches!(err, TargetError::Full(ref m) if m.contains("full")), "{err}");
    assert!(t.get("big").await.unwrap_err().is_not_found());
    assert_eq!(t.list("").await.unwrap(), vec!["small"]);
    assert_eq!(n.node.stats().used_bytes, used);
    let leftovers: Vec<_> = std::fs::read_dir(n.dir.path().join("objects")).unwrap().flatten().collect();
    assert_eq!(leftovers.len(), 1, "no partial object or temporary file");
    let s = n.node.stats();
    assert_eq!((s.capacity_bytes, s.free_bytes, s.objects), (1 << 20, (1 << 20) - 1000, 1));

    // Concurrent puts that together exceed the capacity: the admitted ones fit.
    let results = futures::future::join_all((0..6).map(|i| {
        let t = t.clone();
        async move { t.put(&format!("part/{i}"), Bytes::from(vec![3u8; 300 << 10])).await }
    }))
    .await;
    let stored = results.iter().filter(|r| r.is_ok()).count();
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, TargetError::Full(_))));
    assert_eq!(stored, 3, "{results:?}");
    assert!(n.node.stats().used_bytes <= 1 << 20);
    assert_eq!(t.list("part/").await.unwrap().len(), stored);

    // Space comes back with a delete.
    t.delete("part/0").await.unwrap();
    t.put("after-delete", Bytes::from(vec![4u8; 300 << 10])).await.unwrap();
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused() {
    let n = start(None).await;
    let t = n.target();
    let err = t.put("huge", Bytes::from(vec![0u8; (80 << 20) + 1])).await.unwrap_err();
    assert!(!err.is_not_found() && !matches!(err, TargetError::InvalidKey(_)), "{err}");
    assert!(t.list("").await.unwrap().is_empty());
    t.put("exactly-max", Bytes::from(vec![0u8; 80 << 20])).await.unwrap();
    assert_eq!(t.get("exactly-max").await.unwrap().len(), 80 << 20);
    n.shutdown().await;
}
