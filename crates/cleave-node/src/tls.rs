//! A node's TLS credentials and the TLS side of its server.
//!
//! Files in the node's data directory: `node.key` (its private key, PKCS#8 PEM, mode 0600, made
//! on first start), `node-ca.crt` (control's node CA, kept from the first registration: trust on
//! first use) and `node.crt` (its certificate, replaced at every registration).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use crate::NodeError;

/// Time allowed for a TLS handshake, so that a silent client cannot hold a task for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct NodeCredentials {
    dir: PathBuf,
    key_der: zeroize::Zeroizing<Vec<u8>>,
    public_key: Vec<u8>,
    ca: Mutex<Option<Vec<u8>>>,
    config: RwLock<Option<Arc<ServerConfig>>>,
}

impl std::fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCredentials").field("dir", &self.dir).finish()
    }
}

fn cred_err(what: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError::Credentials(format!("{what}: {e}"))
}

fn pem(tag: &str, der: &[u8]) -> String {
    ::pem::encode(&::pem::Pem::new(tag, der.to_vec()))
}

fn read_pem(path: &Path) -> Option<Vec<u8>> {
    let text = std::fs::read_to_string(path).ok()?;
    ::pem::parse(text).ok().map(|p| p.into_contents())
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl NodeCredentials {
    /// Loads the node's key (making one on first start) and whatever control issued before.
    pub fn load(dir: &Path) -> Result<NodeCredentials, NodeError> {
        std::fs::create_dir_all(dir)?;
        let key_path = dir.join("node.key");
        let key = match std::fs::read_to_string(&key_path) {
            Ok(text) => rcgen::KeyPair::from_pem(&text).map_err(|e| cred_err("node.key", e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate().map_err(|e| cred_err("new key", e))?;
                write_private(&key_path, key.serialize_pem().as_bytes())?;
                key
            }
            Err(e) => return Err(e.into()),
        };
        let creds = NodeCredentials {
            dir: dir.to_path_buf(),
            key_der: zeroize::Zeroizing::new(key.serialize_der()),
            public_key: key.public_key_raw().to_vec(),
            ca: Mutex::new(read_pem(&dir.join("node-ca.crt"))),
            config: RwLock::new(None),
        };
        if let Some(cert) = read_pem(&dir.join("node.crt")) {
            if let Err(e) = creds.install(cert) {
                tracing::warn!(error = %e, "the stored node certificate is not usable; waiting for a new one");
            }
        }
        Ok(creds)
    }

    /// The public key control certifies: an uncompressed P-256 point.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// Control's node CA (DER), as announced at registration. The first one is kept; a node
    /// never trusts another later (so a forged announcement cannot replace it).
    pub fn trust_ca(&self, ca_der: Vec<u8>) -> Result<(), NodeError> {
        let mut ca = self.ca.lock().expect("not poisoned");
        match &*ca {
            Some(known) if *known == ca_der => Ok(()),
            Some(_) => Err(NodeError::Credentials("control announced another CA than the one kept".into())),
            None => {
                write_private(&self.dir.join("node-ca.crt"), pem("CERTIFICATE", &ca_der).as_bytes())?;
                tracing::info!("control's node CA kept");
                *ca = Some(ca_der);
                Ok(())
            }
        }
    }

    /// The node's certificate from control: used at once for new connections, and kept.
    pub fn install(&self, cert_der: Vec<u8>) -> Result<(), NodeError> {
        let ca = self.ca.lock().expect("not poisoned").clone();
        let ca = ca.ok_or_else(|| NodeError::Credentials("a certificate before control's CA".into()))?;
        let config = server_config(&ca, &cert_der, &self.key_der)?;
        let path = self.dir.join("node.crt");
        if read_pem(&path).as_deref() != Some(&cert_der[..]) {
            write_private(&path, pem("CERTIFICATE", &cert_der).as_bytes())?;
        }
        *self.config.write().expect("not poisoned") = Some(Arc::new(config));
        Ok(())
    }

    /// The TLS configuration, once the node holds a certificate.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.config.read().expect("not poisoned").clone()
    }
}

/// Mutual TLS: this node's certificate, and clients must present a client certificate from
/// control's node CA (node certificates are server-only, so they do not qualify).
fn server_config(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<ServerConfig, NodeError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.to_vec())).map_err(|e| cred_err("node CA", e))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| cred_err("client verifier", e))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cred_err("TLS", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::from(cert.to_vec())], key)
        .map_err(|e| cred_err("node certificate", e))
}

/// One connection: the TLS handshake (within [`HANDSHAKE_TIMEOUT`]), then HTTP/1.1.
pub(crate) async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    app: axum::Router,
) {
    let _ = tcp.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => return,
    };
    let service = hyper_util::service::TowerToHyperService::new(app);
    let io = hyper_util::rt::TokioIo::new(tls);
    if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}
