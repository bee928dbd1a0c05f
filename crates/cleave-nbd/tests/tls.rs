//! NBD_OPT_STARTTLS: peers off loopback must start TLS; client certificates reach the
//! export provider; certificates from another CA never get past the handshake.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use cleave_nbd::proto::{self, Command, Request};
use cleave_nbd::{BlockDevice, ExportProvider, MemDevice, Peer, Refusal, Server, ServerConfig};
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
