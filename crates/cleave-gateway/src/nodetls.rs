//! The node plane's credentials (docs/control.md, "Credentials"): control's node CA in
//! `DIR/tls/node-ca.{crt,key}`, which certifies each storage node's own key at registration
//! and the gateway's client certificate; the node keys pinned per node id (key `node-keys` of
//! the configuration database); and the [`cleave_target::Credentials`] the gateway opens
//! `node://` targets with. Nothing here is read from the environment.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use cleave_control::ca::{pem_to_der, Ca};
use cleave_control::pool::{Enroller, Pool};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::data_dir::{random_hex, write_private, DataDir, Stored};

/// Loads control's node CA, making it on first run. It is apart from the CA of NBD clients, so
/// that a client certificate opens no node.
pub fn node_ca(data: &DataDir) -> Result<Arc<Ca>> {
    let tls = data.root.join("tls");
    std::fs::create_dir_all(&tls)?;
    let (cert, key, id) = (tls.join("node-ca.crt"), tls.join("node-ca.key"), tls.join("node-ca.id"));
    if cert.exists() {
        let id = std::fs::read_to_string(&id).context("reading tls/node-ca.id")?;
        let key_pem = zeroize::Zeroizing::new(std::fs::read_to_string(&key).context("reading tls/node-ca.key")?);
        let ca = Ca::load(id.trim(), &std::fs::read_to_string(&cert)?, &key_pem).context("loading the node CA")?;
        return Ok(Arc::new(ca));
    }
    let name = format!("nodes {}", random_hex(8)?);
    let (ca, key_pem) = Ca::generate(&name)?;
    write_private(&key, key_pem.as_bytes())?;
    std::fs::write(&id, format!("{name}\n"))?;
    std::fs::write(&cert, ca.cert_pem())?;
    Ok(Arc::new(ca))
}

/// Issues node certificates at registration, keeping the first key seen for each node id.
pub struct ControlEnroller {
    ca: Arc<Ca>,
    trust: serde_json::Value,
    pins: Stored<BTreeMap<String, String>>,
}

impl ControlEnroller {
    pub fn new(data: &DataDir, ca: Arc<Ca>) -> Result<Self> {
        let trust = serde_json::json!({
            "ca": hex::encode(ca.cert_der()?),
            "signer": hex::encode(ca.public_key()),
        });
        let pins = Stored::load(data, "node-keys", || Ok(BTreeMap::new()))?;
        Ok(ControlEnroller { ca, trust, pins })
    }
}

impl Enroller for ControlEnroller {
    fn trust(&self) -> serde_json::Value {
        self.trust.clone()
    }

    fn admit(&self, id: &str, key: &[u8]) -> Result<Vec<u8>, String> {
        if !cleave_target::node::valid_node_id(id) {
            return Err(format!("node id {id:?} cannot be named in a certificate"));
        }
        let key_hex = hex::encode(key);
        let pinned = self.pins.read().get(id).cloned();
        match pinned {
            Some(pinned) if pinned != key_hex => return Err(format!("node {id} registered before with another key")),
            Some(_) => {}
            None => {
                self.pins
                    .update(|p| {
                        p.insert(id.to_string(), key_hex.clone());
                        Ok(())
                    })
                    .map_err(|e| format!("{e:#}"))?;
            }
        }
        self.ca.issue_node(&cleave_target::node::server_name(id), key).map_err(|e| e.to_string())
    }
}

/// What the gateway opens targets with: its client certificate towards the nodes (fresh at
/// every start), the node CA as the only root, and the pool to find which node is registered
/// at an address.
pub fn target_credentials(ca: &Ca, pool: Arc<Pool>) -> Result<cleave_target::Credentials> {
    let issued = ca.issue_gateway()?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.cert_der()?))?;
    let key = {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).context("gateway key")?
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![CertificateDer::from(pem_to_der(&issued.cert_pem)?)], key)?;
    let resolve: cleave_target::node::Resolve = Arc::new(move |addr: &str| pool.node_at(addr).map(|n| n.id));
    Ok(cleave_target::Credentials { node: Some(cleave_target::node::NodeAccess { tls: Arc::new(tls), resolve }) })
}
