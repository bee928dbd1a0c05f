//! Access control at the gateway: the registry of clients and groups (key `access` of the
//! configuration database), the CA (`crate::authority`), the NBD TLS configuration,
//! and [`Guarded`], the device wrapper that checks the caller's rights on every request.
//!
//! Identity: a verified client certificate whose fingerprint is in the registry names a
//! client; a peer on the Unix socket inside the data directory (`DIR/nbd.sock`, which only
//! the directory's owner can reach) is a local administrator (the `admin` group); anything
//! else is refused, TCP on loopback included: any local user can connect there.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use bytes::Bytes;
use cleave_control::access::{Identity, Registry, Rights, LOCAL_GROUP};
use cleave_control::ca::{self, Ca};
use cleave_nbd::{BlockDevice, BlockError, Peer, PeerAddr, Refusal};
use cleave_split::keys::MasterKey;

use crate::data_dir::{DataDir, Stored};

/// Key of the registry in the configuration database.
const KEY: &str = "access";

pub struct AccessControl {
    /// Its version changes with every change, so connections re-check their rights.
    registry: Stored<Registry>,
    pub ca: Ca,
}

impl AccessControl {
    /// Loads the registry and the CA (`crate::authority`), creating both on first run.
    pub fn load(data: &DataDir, master: &MasterKey) -> Result<Self> {
        let ca = crate::authority::load(data, master)?;
        let registry = Stored::load(data, KEY, || {
            let mut r = Registry::default();
            r.add_group(LOCAL_GROUP)?;
            Ok(r)
        })?;
        Ok(AccessControl { registry, ca })
    }

    pub fn snapshot(&self) -> Registry {
        self.registry.snapshot()
    }

    /// Applies a change to a copy, stores it, then makes it current.
    pub fn update<T>(&self, f: impl FnMut(&mut Registry) -> Result<T>) -> Result<T> {
        self.registry.update(f)
    }

    /// Follows the changes other gateways of the appliance make.
    pub fn follow(&self) {
        self.registry.follow();
    }

    /// Changes with every change of the registry, here or on another gateway.
    fn version(&self) -> u64 {
        self.registry.version()
    }

    /// Reads the current registry without copying it.
    pub fn with_registry<R>(&self, f: impl FnOnce(&Registry) -> R) -> R {
        f(&self.registry.read())
    }

    pub fn rights(&self, who: &Identity, volume: &str) -> Rights {
        self.registry.read().rights(who, volume)
    }

    /// Who a peer is, or why it gets nothing.
    pub fn identify(&self, peer: &Peer) -> Result<Identity, Refusal> {
        match &peer.certificate {
            Some(der) => {
                let fp = ca::fingerprint(der);
                match self.registry.read().client_by_fingerprint(&fp) {
                    Some(c) => Ok(Identity::Client(c.name.clone())),
                    None => Err(Refusal::Denied(format!("client certificate {fp} is not registered (removed?)"))),
                }
            }
            None => match peer.addr {
                PeerAddr::Unix { uid } if uid.is_none_or(may_administer) => Ok(Identity::Local),
                PeerAddr::Unix { .. } => Err(Refusal::Denied("this socket is for the data directory's owner".into())),
                PeerAddr::Tcp(_) if !peer.tls => Err(Refusal::TlsRequired(
                    "use TLS with a client certificate, or the Unix socket in the data directory".into(),
                )),
                PeerAddr::Tcp(_) => Err(Refusal::Denied("a client certificate is required".into())),
            },
        }
    }

    /// The admin API over TLS: a server certificate for `names` from control's CA (issued
    /// fresh at each start); clients trust `DIR/tls/ca.crt`.
    pub fn https_config(&self, names: &[String]) -> Result<Arc<rustls::ServerConfig>> {
        use rustls_pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let issued = self.ca.issue_server(names)?;
        let chain = vec![rustls_pki_types::CertificateDer::from(ca::pem_to_der(&issued.cert_pem)?)];
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("server key: {e}"))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// NBD TLS: a server certificate for `names` (issued fresh at each start), and client
    /// certificates verified against the CA when presented.
    pub fn tls_config(&self, names: &[String]) -> Result<Arc<rustls::ServerConfig>> {
        self.server_config(names, true)
    }

    /// The mirror listener's TLS: as NBD's, but a client certificate is required.
    pub fn mirror_tls_config(&self, names: &[String]) -> Result<Arc<rustls::ServerConfig>> {
        self.server_config(names, false)
    }

    fn server_config(&self, names: &[String], anonymous_allowed: bool) -> Result<Arc<rustls::ServerConfig>> {
        use rustls_pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.cert_der()?.into())?;
        let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone());
        let verifier = if anonymous_allowed { builder.allow_unauthenticated().build()? } else { builder.build()? };
        let issued = self.ca.issue_server(names)?;
        let chain = vec![rustls_pki_types::CertificateDer::from(ca::pem_to_der(&issued.cert_pem)?)];
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("server key: {e}"))?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        Ok(Arc::new(config))
    }
}

/// Whether a peer with user id `uid` on the Unix socket is a local administrator. The socket's
/// place (mode 0600 in a 0700 directory) already keeps others out; this also refuses them if
/// someone loosens those modes.
fn may_administer(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// A volume as one identity may use it. Rights are looked up again whenever the
/// registry changes, so removing a client or a grant takes effect on open connections.
pub struct Guarded {
    inner: Arc<dyn BlockDevice>,
    access: Arc<AccessControl>,
    who: Identity,
    volume: String,
    cached: Mutex<(u64, Rights)>,
    read_only: bool,
}

impl Guarded {
    pub fn new(inner: Arc<dyn BlockDevice>, access: Arc<AccessControl>, who: Identity, volume: String) -> Self {
        let version = access.version();
        let rights = access.rights(&who, &volume);
        let read_only = rights.read_only();
        Guarded { inner, access, who, volume, cached: Mutex::new((version, rights)), read_only }
    }

    fn check(&self, write: bool, offset: u64, len: u64) -> Result<(), BlockError> {
        let version = self.access.version();
        let mut cached = self.cached.lock().expect("not poisoned");
        if cached.0 != version {
            *cached = (version, self.access.rights(&self.who, &self.volume));
        }
        let ranges = if write { &cached.1.write } else { &cached.1.read };
        if ranges.covers(offset, len) {
            Ok(())
        } else {
            let what = if write { "write" } else { "read" };
            Err(BlockError::Denied(format!("{what} of {len} bytes at {offset} is outside this client's rights")))
        }
    }
}

#[async_trait::async_trait]
impl BlockDevice for Guarded {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        self.read_only || self.inner.read_only()
    }
    fn can_multi_conn(&self) -> bool {
        self.inner.can_multi_conn()
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        self.check(false, offset, len as u64)?;
        self.inner.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.check(true, offset, data.len() as u64)?;
        self.inner.write(offset, data, fua).await
    }
    async fn flush(&self) -> Result<(), BlockError> {
        self.inner.flush().await
    }
    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.check(true, offset, len as u64)?;
        self.inner.trim(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        self.check(true, offset, len as u64)?;
        self.inner.write_zeroes(offset, len, fua).await
    }
}
