//! The CA that issues the certificates of clients, of this gateway's NBD and API listeners and
//! of mirror peers. Gateways that share a configuration database share it (key `ca`, its
//! private key sealed by the master key), so a client's certificate opens its volumes on any
//! gateway of an appliance. A copy is kept in `DIR/tls/` (`ca.crt`, `ca.key`, `ca.id`), where
//! the CLI finds `ca.crt`.

use std::path::Path;

use anyhow::{Context, Result};
use cleave_control::ca::Ca;
use cleave_control::config::PutMode;
use cleave_split::keys::{MasterKey, WrappedKey};
use serde::{Deserialize, Serialize};
use tracing::warn;
use zeroize::Zeroizing;

use crate::data_dir::{random_hex, write_private, DataDir};

/// Key of the shared CA in the configuration database.
const KEY: &str = "ca";
/// What the master key seals the CA's private key for.
const PURPOSE: &str = "cleave client CA key";

#[derive(Serialize, Deserialize)]
struct SharedCa {
    id: String,
    cert_pem: String,
    key: WrappedKey,
}

/// The CA in the configuration database; the first gateway stores its own there (made now
/// if it has none).
pub(crate) fn load(data: &DataDir, master: &MasterKey) -> Result<Ca> {
    let tls = data.root.join("tls");
    std::fs::create_dir_all(&tls)?;
    if let Some(raw) = data.config.get_value(KEY)? {
        return adopt(&tls, master, &raw);
    }
    let (id, cert_pem, key_pem) = local_or_new(&tls)?;
    let key = master.seal_bytes(PURPOSE, key_pem.as_bytes()).context("sealing the CA key")?;
    let raw = serde_json::to_vec(&SharedCa { id, cert_pem, key })?;
    match data.config.put_opts(KEY, &raw, PutMode::Create) {
        Ok(_) => adopt(&tls, master, &raw),
        // Another gateway stored its CA first: that one is the appliance's.
        Err(e) if e.is_conflict() => {
            let theirs = data.config.get_value(KEY)?.context("the shared CA vanished")?;
            adopt(&tls, master, &theirs)
        }
        Err(e) => Err(e.into()),
    }
}

/// Loads the stored CA and keeps its copy in `tls`.
fn adopt(tls: &Path, master: &MasterKey, raw: &[u8]) -> Result<Ca> {
    let shared: SharedCa = serde_json::from_slice(raw).context("reading the shared CA")?;
    let key_pem = master.open_bytes(PURPOSE, &shared.key).context("opening the CA key (another master key?)")?;
    let key_pem = Zeroizing::new(String::from_utf8(key_pem.to_vec()).context("the CA key")?);
    let ca = Ca::load(&shared.id, &shared.cert_pem, &key_pem).context("loading the CA")?;
    let cert = tls.join("ca.crt");
    match std::fs::read_to_string(&cert) {
        // The copy is current: nothing to write (a start rewrites no key file).
        Ok(had) if had == shared.cert_pem => return Ok(ca),
        Ok(_) => warn!(
            "this gateway's own CA gives way to the appliance's: certificates it issued before no longer open anything"
        ),
        Err(_) => {}
    }
    write_private(&tls.join("ca.key"), key_pem.as_bytes())?;
    std::fs::write(tls.join("ca.id"), format!("{}\n", shared.id))?;
    std::fs::write(cert, &shared.cert_pem)?;
    Ok(ca)
}

/// The CA in `tls` (id, certificate, private key), made on first run.
fn local_or_new(tls: &Path) -> Result<(String, String, Zeroizing<String>)> {
    let (cert, key, id) = (tls.join("ca.crt"), tls.join("ca.key"), tls.join("ca.id"));
    if cert.exists() {
        let id = std::fs::read_to_string(&id).context("reading tls/ca.id")?.trim().to_string();
        let key_pem = Zeroizing::new(std::fs::read_to_string(&key).context("reading tls/ca.key")?);
        return Ok((id, std::fs::read_to_string(&cert)?, key_pem));
    }
    let id = random_hex(8)?;
    let (ca, key_pem) = Ca::generate(&id)?;
    Ok((id, ca.cert_pem().to_string(), key_pem))
}
