//! NBD_OPT_STARTTLS: peers off loopback must start TLS; client certificates reach the
//! export provider; certificates from another CA never get past the handshake.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use cleave_nbd::proto::{self, Command, Request};
use cleave_nbd::{
    BlockDevice, BlockError, Client, ClientError, ExportProvider, MemDevice, Peer, Refusal, Server, ServerConfig,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Pki {
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca = p.self_signed(&key).unwrap();
        Pki { ca_der: ca.der().clone(), issuer: Issuer::new(p, key) }
    }
    fn leaf(&self, name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()]).unwrap().signed_by(&key, &self.issuer).unwrap();
        (cert.der().clone(), PrivateKeyDer::try_from(key.serialize_der()).unwrap())
    }
    fn roots(&self) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        Arc::new(roots)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn server_tls(pki: &Pki) -> Arc<rustls::ServerConfig> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(pki.roots(), provider())
        .allow_unauthenticated()
        .build()
        .unwrap();
    let (cert, key) = pki.leaf("localhost");
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .unwrap();
    Arc::new(config)
}

fn client_tls(
    pki: &Pki,
    cert: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> tokio_rustls::TlsConnector {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots());
    let config = match cert {
        Some((c, k)) => b.with_client_auth_cert(vec![c], k).unwrap(),
        None => b.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One export; refuses peers without a certificate, and remembers the certificates it saw.
struct Guarded {
    dev: Arc<dyn BlockDevice>,
    seen: Mutex<Vec<Vec<u8>>>,
}

impl ExportProvider for Guarded {
    fn list(&self) -> Vec<String> {
        vec!["disk".into()]
    }
    fn open(&self, _name: &str) -> Option<Arc<dyn BlockDevice>> {
        Some(self.dev.clone())
    }
    fn open_for(&self, name: &str, peer: &Peer) -> Result<Arc<dyn BlockDevice>, Refusal> {
        let cert = peer.certificate.clone().ok_or_else(|| Refusal::Denied("no certificate".into()))?;
        assert!(peer.tls);
        self.seen.lock().unwrap().push(cert);
        self.open(name).ok_or(Refusal::Unknown)
    }
}

/// A server whose connections all claim to come from `claimed` (to play a remote peer).
async fn start(pki: &Pki, claimed: SocketAddr) -> (SocketAddr, Arc<Guarded>) {
    let provider = Arc::new(Guarded { dev: Arc::new(MemDevice::new(1 << 20)), seen: Mutex::new(Vec::new()) });
    let config = ServerConfig { tls: Some(server_tls(pki)), ..Default::default() };
    let server = Arc::new(Server::new(provider.clone(), config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            tokio::spawn(server.clone().serve_connection(sock, claimed));
        }
    });
    (addr, provider)
}

const REMOTE: ([u8; 4], u16) = ([192, 0, 2, 7], 40000);

async fn greeted(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).await.unwrap();
    s.write_all(&3u32.to_be_bytes()).await.unwrap();
    s
}

/// Sends an option; returns the final reply type (skipping INFO and SERVER replies).
async fn option<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, option: u32, data: &[u8]) -> u32 {
    s.write_all(&proto::encode_option(option, data)).await.unwrap();
    loop {
        let mut h = [0u8; 20];
        tokio::time::timeout(common::T, s.read_exact(&mut h)).await.unwrap().unwrap();
        let (o, t, l) = proto::parse_option_reply_header(&h).unwrap();
        assert_eq!(o, option);
        let mut d = vec![0u8; l as usize];
        s.read_exact(&mut d).await.unwrap();
        if t != proto::REP_INFO && t != proto::REP_SERVER {
            return t;
        }
    }
}

async fn go<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> u32 {
    option(s, proto::OPT_GO, &proto::encode_info_request("disk", &[])).await
}

#[tokio::test]
async fn remote_peers_must_start_tls() {
    let pki = Pki::new();
    let (addr, _) = start(&pki, REMOTE.into()).await;
    let mut s = greeted(addr).await;
    assert_eq!(option(&mut s, proto::OPT_LIST, &[]).await, proto::REP_ERR_TLS_REQD);
    assert_eq!(go(&mut s).await, proto::REP_ERR_TLS_REQD);
    assert_eq!(
        option(&mut s, proto::OPT_INFO, &proto::encode_info_request("disk", &[])).await,
        proto::REP_ERR_TLS_REQD
    );
    // EXPORT_NAME has no error reply: the server closes.
    s.write_all(&proto::encode_option(proto::OPT_EXPORT_NAME, b"disk")).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(common::T, s.read_to_end(&mut buf)).await.unwrap();
    assert!(buf.is_empty(), "no export data for a plaintext remote peer");
}

#[tokio::test]
async fn client_certificate_reaches_the_provider_and_io_works() {
    let pki = Pki::new();
    let (addr, provider) = start(&pki, REMOTE.into()).await;
    let (cert, key) = pki.leaf("host-1");
    let mut s = greeted(addr).await;
    assert_eq!(option(&mut s, proto::OPT_STARTTLS, b"junk").await, proto::REP_ERR_INVALID, "STARTTLS takes no data");
    assert_eq!(option(&mut s, proto::OPT_STARTTLS, &[]).await, proto::REP_ACK);
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = client_tls(&pki, Some((cert.clone(), key))).connect(name, s).await.unwrap();
    assert_eq!(option(&mut tls, proto::OPT_STARTTLS, &[]).await, proto::REP_ERR_INVALID, "TLS already started");
    assert_eq!(go(&mut tls).await, proto::REP_ACK);
    assert_eq!(provider.seen.lock().unwrap().as_slice(), &[cert.to_vec()]);
    let w = Request { flags: 0, command: Command::Write, handle: 1, offset: 4096, len: 5 };
    let mut msg = proto::encode_request(&w).to_vec();
    msg.extend(b"hello");
    msg.extend(proto::encode_request(&Request { command: Command::Read, handle: 2, ..w }));
    tls.write_all(&msg).await.unwrap();
    let mut r = [0u8; 16];
    tls.read_exact(&mut r).await.unwrap();
    assert_eq!(proto::parse_simple_reply(&r).unwrap(), (0, 1));
    tls.read_exact(&mut r).await.unwrap();
    assert_eq!(proto::parse_simple_reply(&r).unwrap(), (0, 2));
    let mut d = [0u8; 5];
    tls.read_exact(&mut d).await.unwrap();
    assert_eq!(&d, b"hello");
}

#[tokio::test]
async fn no_certificate_is_refused_by_policy_and_strangers_fail_the_handshake() {
    let pki = Pki::new();
    let (addr, provider) = start(&pki, REMOTE.into()).await;
    let name = || ServerName::try_from("localhost").unwrap();

    let mut s = greeted(addr).await;
    assert_eq!(option(&mut s, proto::OPT_STARTTLS, &[]).await, proto::REP_ACK);
    let mut tls = client_tls(&pki, None).connect(name(), s).await.unwrap();
    assert_eq!(go(&mut tls).await, proto::REP_ERR_POLICY);

    let stranger = Pki::new();
    let mut s = greeted(addr).await;
    assert_eq!(option(&mut s, proto::OPT_STARTTLS, &[]).await, proto::REP_ACK);
    let connected = client_tls(&pki, Some(stranger.leaf("mallory"))).connect(name(), s).await;
    // TLS 1.3 clients learn of the refusal on their first read.
    if let Ok(mut tls) = connected {
        let _ = tls.write_all(&proto::encode_option(proto::OPT_GO, &proto::encode_info_request("disk", &[]))).await;
        let mut h = [0u8; 20];
        assert!(tls.read_exact(&mut h).await.is_err(), "a certificate from another CA must not get a reply");
    }
    assert!(provider.seen.lock().unwrap().is_empty());

    // The server keeps serving.
    let mut s = greeted(addr).await;
    assert_eq!(option(&mut s, proto::OPT_STARTTLS, &[]).await, proto::REP_ACK);
    let mut tls = client_tls(&pki, Some(pki.leaf("host-2"))).connect(name(), s).await.unwrap();
    assert_eq!(go(&mut tls).await, proto::REP_ACK);
}

#[tokio::test]
async fn loopback_may_stay_in_plain_text() {
    let pki = Pki::new();
    let (addr, _) = start(&pki, ([127, 0, 0, 1], 40000).into()).await;
    let mut s = greeted(addr).await;
    assert_eq!(option(&mut s, proto::OPT_LIST, &[]).await, proto::REP_ACK);
    // The provider still decides: this one wants a certificate.
    assert_eq!(go(&mut s).await, proto::REP_ERR_POLICY);
}

fn client_config(pki: &Pki, name: &str) -> Arc<rustls::ClientConfig> {
    let (cert, key) = pki.leaf(name);
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_client_auth_cert(vec![cert], key)
        .unwrap();
    Arc::new(config)
}

async fn client(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, export: &str) -> Result<Client, ClientError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    Client::connect(tcp, ServerName::try_from("localhost").unwrap(), tls, export).await
}

#[tokio::test]
async fn the_client_pipelines_requests_over_tls_and_maps_errors() {
    let pki = Pki::new();
    let (addr, provider) = start(&pki, REMOTE.into()).await;
    let c = Arc::new(client(addr, client_config(&pki, "gateway-1"), "disk").await.unwrap());
    assert_eq!(c.size(), 1 << 20);
    assert!(!c.read_only());
    assert_eq!(provider.seen.lock().unwrap().len(), 1, "the client certificate reached the provider");
    // Many requests in flight on one connection, answered in any order.
    let writes = (0..64u64).map(|i| {
        let c = c.clone();
        async move { c.write(i * 4096, bytes::Bytes::from(vec![i as u8 + 1; 4096]), i % 2 == 0).await }
    });
    for r in futures::future::join_all(writes).await {
        r.unwrap();
    }
    c.flush().await.unwrap();
    c.write_zeroes(0, 4096, false).await.unwrap();
    c.trim(4096, 4096).await.unwrap();
    let reads = (0..64u64).map(|i| {
        let c = c.clone();
        async move { c.read(i * 4096, 4096).await }
    });
    for (i, r) in futures::future::join_all(reads).await.into_iter().enumerate() {
        let want = match i {
            0 | 1 => 0,
            i => i as u8 + 1,
        };
        assert!(r.unwrap().iter().all(|&b| b == want), "block {i}");
    }
    // The server's errors come back as its error numbers; the connection goes on.
    match c.read(1 << 20, 4096).await {
        Err(ClientError::Errno(e)) => assert_eq!(e, proto::EINVAL),
        other => panic!("a read past the end: {other:?}"),
    }
    assert_eq!(c.read(0, 512).await.unwrap().len(), 512);
    assert!(!c.is_closed());
    // As a device, the same errors are device errors; a lost connection is "unavailable".
    let d: &dyn BlockDevice = c.as_ref();
    assert!(matches!(d.read(1 << 20, 4096).await, Err(BlockError::Invalid(_))));
    c.close();
    assert!(matches!(c.read(0, 512).await, Err(ClientError::Connection(_))));
    assert!(matches!(d.write(0, bytes::Bytes::from_static(b"x"), false).await, Err(BlockError::Unavailable(_))));
}

#[tokio::test]
async fn the_client_is_refused_without_a_certificate_and_does_not_trust_a_stranger() {
    let pki = Pki::new();
    let (addr, _) = start(&pki, REMOTE.into()).await;
    // The provider refuses a peer without a certificate: an option error.
    let anonymous = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    match client(addr, Arc::new(anonymous), "disk").await {
        Err(ClientError::Refused(m)) => assert!(m.contains("no certificate"), "{m}"),
        other => panic!("{:?}", other.err()),
    }
    // A server whose certificate another CA issued is not trusted.
    let stranger = Pki::new();
    let (other, _) = start(&stranger, REMOTE.into()).await;
    assert!(matches!(client(other, client_config(&pki, "gateway-1"), "disk").await, Err(ClientError::Connection(_))));
}

/// A server that does the handshake, then answers the first request with a handle nobody
/// sent: every request in flight fails, and so does every later one.
#[tokio::test]
async fn the_client_fails_everything_in_flight_when_the_server_lies() {
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = server_tls(&pki);
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(&proto::server_greeting()).await.unwrap();
        let mut flags = [0u8; 4];
        s.read_exact(&mut flags).await.unwrap();
        let mut h = [0u8; 16];
        s.read_exact(&mut h).await.unwrap();
        s.write_all(&proto::option_reply(proto::OPT_STARTTLS, proto::REP_ACK, &[])).await.unwrap();
        let mut s = tokio_rustls::TlsAcceptor::from(tls).accept(s).await.unwrap();
        s.read_exact(&mut h).await.unwrap();
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut body = vec![0u8; len as usize];
        s.read_exact(&mut body).await.unwrap();
        s.write_all(&proto::option_reply(proto::OPT_GO, proto::REP_INFO, &proto::info_export(1 << 20, 1)))
            .await
            .unwrap();
        s.write_all(&proto::option_reply(proto::OPT_GO, proto::REP_ACK, &[])).await.unwrap();
        let mut req = [0u8; proto::REQUEST_LEN];
        s.read_exact(&mut req).await.unwrap();
        s.write_all(&proto::simple_reply_header(0, 999)).await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    });
    let c = Arc::new(client(addr, client_config(&pki, "gateway-1"), "disk").await.unwrap());
    let (a, b) = tokio::join!(c.read(0, 512), c.read(512, 512));
    assert!(matches!(a, Err(ClientError::Connection(_))), "{a:?}");
    assert!(matches!(b, Err(ClientError::Connection(_))), "{b:?}");
    assert!(c.is_closed());
    assert!(matches!(c.flush().await, Err(ClientError::Connection(_))));
}
