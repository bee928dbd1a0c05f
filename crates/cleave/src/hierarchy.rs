//! Wiring of the control hierarchy (`cleave control --parent`, `cleave serve --parent`):
//! flags and start-up. The logic is in `cleave_control::hierarchy`, the API handlers in
//! `cleave_api`; docs/control.md describes the design.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cleave_control::hierarchy::{Hierarchy, HierarchyConfig, ParentConfig};
use cleave_control::pool::Pool;
use cleave_gateway::data_dir::{read_secret, stable_id, write_private, DataDir};

#[derive(clap::Args, Debug, Clone)]
pub struct HierarchyFlags {
    /// Register this control server with a parent control server (its auto-configuration
    /// address, HOST:PORT); the parent then lists this pool and its nodes.
    #[arg(long)]
    pub parent: Option<SocketAddr>,
    /// The cluster secret shared with the parent (default: this server's DATA_DIR/cluster.secret,
    /// which then must be a copy of the parent's).
    #[arg(long, requires = "parent")]
    pub parent_secret_file: Option<PathBuf>,
    /// Heartbeat interval towards the parent.
    #[arg(long, value_parser = crate::config::seconds, default_value_t = 1.0)]
    pub parent_heartbeat_secs: f64,
    /// The API base URL to report to the parent (default: http://<this API's address>, with
    /// 0.0.0.0 replaced by the address used to reach the parent).
    #[arg(long, requires = "parent")]
    pub advertise_api: Option<String>,
    /// This control server's name, as its parent shows it (default: its id).
    #[arg(long)]
    pub name: Option<String>,
    /// This control server's site, as its parent shows it.
    #[arg(long, default_value = "default")]
    pub site: String,
}

/// Sets up this control's place in the hierarchy and, with `--parent`, starts
/// registering with the parent. `api` is where this server's REST API listens.
pub fn start(
    flags: &HierarchyFlags,
    data: &DataDir,
    secret: [u8; 32],
    ca: Arc<cleave_control::ca::Ca>,
    pool: Arc<Pool>,
    api: SocketAddr,
) -> Result<Arc<Hierarchy>> {
    let id = stable_id(&data.root.join("control.id"))?;
    let name = flags.name.clone().unwrap_or_else(|| id.clone());
    let h = Hierarchy::new(HierarchyConfig { id, name, site: flags.site.clone(), ca }, pool);
    if let Some(parent) = flags.parent {
        let parent_secret = match &flags.parent_secret_file {
            Some(f) => read_secret(f)?,
            None => secret,
        };
        if let Some(a) = &flags.advertise_api {
            if !cleave_control::hierarchy::valid_api(a) {
                bail!("--advertise-api {a:?}: expected http://host:port");
            }
        }
        // The parent's signing key, kept from the first registration (trust on first use).
        let key_file = data.root.join("parent.key");
        let parent_key = match std::fs::read_to_string(&key_file) {
            Ok(text) => Some(hex::decode(text.trim()).with_context(|| format!("{}", key_file.display()))?),
            Err(_) => None,
        };
        h.join_parent(ParentConfig {
            parent,
            secret: parent_secret,
            heartbeat: Duration::from_secs_f64(flags.parent_heartbeat_secs.max(0.05)),
            api,
            advertise: flags.advertise_api.clone(),
            parent_key,
            keep_parent_key: Box::new(move |key| {
                if let Err(e) = write_private(&key_file, hex::encode(key).as_bytes()) {
                    tracing::warn!(error = %format!("{e:#}"), "cannot keep the parent's signing key");
                }
            }),
        });
        println!("parent: udp://{parent} (this control: {})", h.id());
    }
    Ok(h)
}
