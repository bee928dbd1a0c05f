//! Control's own certificate authority: it issues the NBD server certificate and one
//! client certificate per host (`cleave client add`). Clients are then known by the
//! SHA-256 fingerprint of their certificate, so removing a client from the registry
//! revokes it without a CRL.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// A certificate and its private key, both PEM. Debug never shows the key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: zeroize::Zeroizing<String>,
    pub fingerprint: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("fingerprint", &self.fingerprint).field("key_pem", &"<redacted>").finish()
    }
}

pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// The CA's subject; fixed so that the issuer can be rebuilt from the stored key alone.
fn ca_params(cluster: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Cleave");
    dn.push(DnType::CommonName, format!("Cleave CA {cluster}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2074, 1, 1);
    p
}

/// SHA-256 of a DER certificate, as lowercase hex (what `openssl x509 -fingerprint -sha256` shows, without colons).
pub fn fingerprint(der: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn leaf_params(common_name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Cleave");
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2054, 1, 1);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.use_authority_key_identifier_extension = true;
    let mut serial = [0u8; 16];
    if cleave_split::keys::fill_random(&mut serial).is_ok() {
        serial[0] &= 0x7f;
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    }
    p
}

impl Ca {
    /// A new CA; returns it and its key (PEM) for the caller to store privately.
    pub fn generate(cluster: &str) -> Result<(Ca, zeroize::Zeroizing<String>), CaError> {
        let key = KeyPair::generate()?;
        let cert = ca_params(cluster).self_signed(&key)?;
        let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
        Ok((Ca { cert_pem: cert.pem(), issuer: Issuer::new(ca_params(cluster), key) }, key_pem))
    }

    /// Loads a stored CA.
    pub fn load(cluster: &str, cert_pem: &str, key_pem: &str) -> Result<Ca, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Ca { cert_pem: cert_pem.to_string(), issuer: Issuer::new(ca_params(cluster), key) })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The DER of the CA certificate, for trust stores.
    pub fn cert_der(&self) -> Result<Vec<u8>, CaError> {
        pem_to_der(&self.cert_pem)
    }

    /// A client certificate naming `client` (common name), for TLS client authentication.
    pub fn issue_client(&self, client: &str) -> Result<Issued, CaError> {
        let mut p = leaf_params(client);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(p)
    }

    /// A server certificate for these DNS names and IP addresses.
    pub fn issue_server(&self, names: &[String]) -> Result<Issued, CaError> {
        let mut p = leaf_params(names.first().map_or("cleave", |s| s.as_str()));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        for n in names {
            let san = match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into()?),
            };
            p.subject_alt_names.push(san);
        }
        self.issue(p)
    }

    /// A storage node's server certificate, for the public key the node generated and sent at
    /// registration (an uncompressed P-256 point). It names only `dns_name` and can serve, not
    /// act as a client: a node's credential opens no other node.
    pub fn issue_node(&self, dns_name: &str, public_key: &[u8]) -> Result<Vec<u8>, CaError> {
        if public_key.len() != 65 || public_key[0] != 4 {
            return Err(CaError::Invalid("a node key must be an uncompressed P-256 point".into()));
        }
        let mut p = leaf_params(dns_name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.subject_alt_names.push(SanType::DnsName(dns_name.to_string().try_into()?));
        Ok(p.signed_by(&RawP256(public_key.to_vec()), &self.issuer)?.der().to_vec())
    }

    /// The gateway's client certificate towards storage nodes: client use only.
    pub fn issue_gateway(&self) -> Result<Issued, CaError> {
        let mut p = leaf_params("cleave gateway");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(p)
    }

    /// The CA key's public half, an uncompressed P-256 point: what [`Ca::sign`] is checked against.
    pub fn public_key(&self) -> Vec<u8> {
        self.issuer.key().public_key_raw().to_vec()
    }

    /// An ECDSA P-256 (SHA-256, ASN.1) signature by the CA key.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CaError> {
        use rcgen::SigningKey;
        Ok(self.issuer.key().sign(message)?)
    }

    fn issue(&self, p: CertificateParams) -> Result<Issued, CaError> {
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            fingerprint: fingerprint(cert.der()),
            cert_pem: cert.pem(),
            key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        })
    }
}

/// Whether `signature` is a signature by [`Ca::sign`] of the CA whose public key is `public_key`.
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key).verify(message, signature).is_ok()
}

/// A public key received as bytes, to be certified.
struct RawP256(Vec<u8>);

impl rcgen::PublicKeyData for RawP256 {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// The first certificate in a PEM text, as DER.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, CaError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| CaError::Invalid(format!("certificate PEM: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_verifiable_certificates_and_reloads() {
        let (ca, key) = Ca::generate("test").unwrap();
        let again = Ca::load("test", ca.cert_pem(), &key).unwrap();
        let client = again.issue_client("host-1").unwrap();
        assert_eq!(client.fingerprint, fingerprint(&pem_to_der(&client.cert_pem).unwrap()));
        assert_eq!(client.fingerprint.len(), 64);
        assert!(!format!("{client:?}").contains("PRIVATE"), "Debug must not show the key");
        let server = ca.issue_server(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert_ne!(server.fingerprint, client.fingerprint);
        // A certificate from the reloaded CA chains to the stored CA certificate.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().unwrap().into()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider).build().unwrap();
        let der = rustls_pki_types::CertificateDer::from(pem_to_der(&client.cert_pem).unwrap());
        let now = rustls_pki_types::UnixTime::now();
        verifier.verify_client_cert(&der, &[], now).expect("client certificate verifies");
        let (other, _) = Ca::generate("test").unwrap();
        let stranger =
            rustls_pki_types::CertificateDer::from(pem_to_der(&other.issue_client("x").unwrap().cert_pem).unwrap());
        assert!(verifier.verify_client_cert(&stranger, &[], now).is_err(), "another CA's client is refused");
    }

    #[test]
    fn node_certificates_fit_a_datagram_and_signatures_verify() {
        let (ca, _) = Ca::generate("nodes").unwrap();
        let node_key = KeyPair::generate().unwrap();
        let der = ca.issue_node("0123456789ab.node.cleave", node_key.public_key_raw()).unwrap();
        // Sent hex-encoded in one auto-configuration datagram (1400 bytes).
        assert!(der.len() * 2 < 1200, "{}", der.len());
        assert!(ca.cert_der().unwrap().len() * 2 + 140 < 1200);
        assert!(ca.issue_node("x.node.cleave", &[4; 10]).is_err());
        let sig = ca.sign(b"message").unwrap();
        assert!(verify(&ca.public_key(), b"message", &sig));
        assert!(!verify(&ca.public_key(), b"other", &sig));
        assert!(!verify(node_key.public_key_raw(), b"message", &sig));
        assert!(!verify(&ca.public_key(), b"message", b"garbage"));
    }
}
