//! What a volume looks like from outside: [`VolumeView`], for served volumes and for those
//! that could not be opened.

use cleave_volume::{Durability, Health, Volume};
use serde::{Deserialize, Serialize};

use crate::error::{GatewayError, Result};
use crate::gateway::{Gateway, Unopened};

/// A volume as `GET /api/v1/volumes/{name}` shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeView {
    pub name: String,
    pub uuid: String,
    pub size_bytes: u64,
    pub m: u8,
    pub n: u8,
    pub chunk_size: u32,
    pub durability: Durability,
    /// Whether a FLUSH waits for the targets: in `dispersed` mode, and in an appliance
    /// whatever the mode (another gateway serves the volume next from what they hold),
    /// unless a standby keeps the primary's changes too.
    #[serde(default)]
    pub flush_reaches_targets: bool,
    /// In an appliance, on the primary: the gateway that keeps the volume's changes too, so
    /// that a FLUSH is acknowledged once both caches hold it (docs/appliance.md).
    #[serde(default)]
    pub standby: Option<String>,
    /// Shares a write needs before it is acknowledged; below N the volume may run with
    /// reduced redundancy until re-replication catches up.
    pub write_quorum: usize,
    pub targets: Vec<String>,
    /// For the local administrator: the Unix socket in the data directory.
    pub nbd_uri: String,
    /// For clients with a certificate: NBD over TLS, at the address NBD listens on (this
    /// host's name when it listens on every address). Both are empty where this server runs
    /// no NBD (`cleave control`).
    pub nbds_uri: String,
    pub health: Health,
    pub dirty_bytes: u64,
    pub cache_bytes: u64,
    pub cache_limit_bytes: u64,
    pub mapped_chunks: usize,
    pub last_destage_unix: Option<String>,
    pub last_destage_error: Option<String>,
    pub journal_seq: u64,
    pub groups: Vec<String>,
    /// Why the volume could not be opened (it is then `unavailable` and retried).
    pub open_error: Option<String>,
    /// In an appliance of gateways: the one that serves the volume (this one, or where to
    /// attach it), and the epoch of its claim on the targets (here only).
    #[serde(default)]
    pub primary: Option<String>,
    #[serde(default)]
    pub epoch: Option<u64>,
    /// In an appliance: the live gateways that take the volume over, in turn, if its
    /// primary goes (docs/appliance.md, "Who serves a volume").
    #[serde(default)]
    pub secondaries: Vec<String>,
    /// Its mirror to or from a peer gateway, if it has one.
    #[serde(default)]
    pub mirror: Option<cleave_mirror::MirrorView>,
}

impl Gateway {
    /// A served volume's view.
    pub fn view(&self, v: &Volume) -> VolumeView {
        let s = v.status();
        let health = self.health(&s);
        let c = s.config;
        let name = c.name.clone();
        let write_quorum = c.write_quorum();
        let (nbd_uri, nbds_uri) = self.export_uris(&c.name);
        let standby = self.standby_of(v).and_then(|s| s.ready_on());
        VolumeView {
            nbd_uri,
            nbds_uri,
            name: c.name,
            uuid: c.uuid,
            size_bytes: c.size,
            m: c.m,
            n: c.n,
            chunk_size: c.chunk_size,
            durability: c.durability,
            flush_reaches_targets: v.flushes_to_targets() && standby.is_none(),
            standby,
            write_quorum,
            targets: c.targets,
            health,
            dirty_bytes: s.dirty_bytes,
            cache_bytes: s.cache_bytes,
            cache_limit_bytes: s.cache_limit_bytes,
            mapped_chunks: s.mapped_chunks,
            last_destage_unix: s.last_destage,
            last_destage_error: s.last_destage_error,
            journal_seq: s.journal_seq,
            groups: self.access.snapshot().groups_of_volume(&name),
            open_error: None,
            primary: self.appliance.as_ref().map(|a| a.me().to_string()),
            epoch: self.appliance.as_ref().map(|_| v.epoch()),
            secondaries: self.secondaries(&name, self.appliance.as_ref().map(|a| a.me())),
            mirror: self.mirror_of(&name),
        }
    }

    /// A volume not served here: its health as its primary published it, when another
    /// gateway serves it; unavailable otherwise.
    fn health_elsewhere(&self, name: &str, u: &Unopened) -> Health {
        let served_elsewhere = u.primary.as_deref().is_some_and(|p| !p.is_empty());
        let published = self.appliance.as_ref().filter(|_| served_elsewhere).and_then(|a| a.published_health(name));
        published.unwrap_or(Health::Unavailable { targets_down: Vec::new() })
    }

    fn unopened_view(&self, name: &str, u: &Unopened) -> VolumeView {
        let c = u.sb.as_ref().map(|sb| &sb.config);
        let (nbd_uri, nbds_uri) = self.export_uris(name);
        VolumeView {
            nbd_uri,
            nbds_uri,
            name: name.to_string(),
            uuid: c.map(|c| c.uuid.clone()).unwrap_or_default(),
            size_bytes: c.map_or(0, |c| c.size),
            m: c.map_or(0, |c| c.m),
            n: c.map_or(0, |c| c.n),
            chunk_size: c.map_or(0, |c| c.chunk_size),
            durability: c.map(|c| c.durability).unwrap_or_default(),
            flush_reaches_targets: self.appliance.is_some() || c.is_some_and(|c| c.durability == Durability::Dispersed),
            standby: None,
            write_quorum: c.map_or(0, |c| c.write_quorum()),
            targets: c.map(|c| c.targets.clone()).unwrap_or_default(),
            health: self.health_elsewhere(name, u),
            dirty_bytes: 0,
            cache_bytes: 0,
            cache_limit_bytes: self.cache_bytes,
            mapped_chunks: 0,
            last_destage_unix: None,
            last_destage_error: None,
            journal_seq: 0,
            groups: self.access.snapshot().groups_of_volume(name),
            open_error: Some(u.reason.clone()),
            primary: u.primary.clone().filter(|p| !p.is_empty()),
            epoch: None,
            secondaries: self.secondaries(name, u.primary.as_deref()),
            mirror: None,
        }
    }

    /// The gateways after `primary` in the volume's order, as last read (none outside an
    /// appliance, or before etcd was first read).
    fn secondaries(&self, volume: &str, primary: Option<&str>) -> Vec<String> {
        let Some(a) = &self.appliance else { return Vec::new() };
        let order = a.known_order_of(volume);
        order.into_iter().filter(|g| Some(g.as_str()) != primary).collect()
    }

    /// Every volume, served or not, by name.
    pub fn views(&self) -> Vec<VolumeView> {
        let mut out: Vec<VolumeView> = self.served_volumes().iter().map(|v| self.view(v)).collect();
        out.extend(self.unopened.read().expect("not poisoned").iter().map(|(n, u)| self.unopened_view(n, u)));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One volume, served or not.
    pub fn show(&self, name: &str) -> Result<VolumeView> {
        if let Some(v) = self.get(name) {
            return Ok(self.view(&v));
        }
        let unopened = self.unopened.read().expect("not poisoned");
        let u = unopened.get(name).ok_or_else(|| GatewayError::NotFound(format!("no volume {name:?}")))?;
        Ok(self.unopened_view(name, u))
    }
}
