//! The mirroring engine of one gateway: its listener and heartbeats, the mirrors it keeps
//! (primary or secondary side of each volume), and the administrator's operations.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};

use tracing::warn;

use crate::backlog::REGION;
use crate::control::{Control, PeerCredentials, Welcome};
use crate::error::{MirrorError, Result};
use crate::heartbeat::{Heartbeats, Liveness, PeerId, Timing};
use crate::link::Link;
use crate::peers::Peers;
use crate::primary::{Primary, Settings};
use crate::replica::{EventKind, Events, Replica};
use crate::secondary::Secondary;
use crate::state::{MirrorState, MirrorView, Mode, OnFailure, Record, Role};

/// What the gateway gives the engine.
#[async_trait::async_trait]
pub trait Host: Events {
    /// A volume served here.
    fn replica(&self, volume: &str) -> Option<Arc<dyn Replica>>;
    /// Makes (or takes, if it exists with this size and no mirror) the mirror's volume.
    async fn create_replica(&self, volume: &str, size: u64) -> std::result::Result<Arc<dyn Replica>, String>;
    /// The registered client a peer's certificate (DER) names, if it may mirror here.
    fn admit(&self, certificate: &[u8]) -> Option<String>;
    /// Issues credentials for a peer to reach this gateway's listener, as client `name`.
    fn issue_credentials(&self, name: &str) -> std::result::Result<PeerCredentials, String>;
}

/// How the engine runs.
pub struct EngineConfig {
    /// `DIR/mirror`.
    pub dir: PathBuf,
    /// TCP for data, UDP for heartbeats, on the same port.
    pub listen: SocketAddr,
    /// How peers reach this listener (`HOST:PORT`).
    pub advertise: String,
    /// The listener's TLS: a certificate for `advertise`, client certificates required.
    pub server_tls: Arc<rustls::ServerConfig>,
    pub connections: usize,
    pub timing: Timing,
    pub settings: Settings,
}

/// One volume's side.
#[derive(Clone)]
pub enum Side {
    Primary(Arc<Primary>),
    Secondary(Arc<Secondary>),
}

/// Counters of what was refused, for `/metrics` and the tests.
#[derive(Debug, Default)]
pub struct Refusals {
    pub connections: AtomicU64,
    pub malformed: AtomicU64,
    pub forbidden: AtomicU64,
}

/// A mirrored volume as hosts should see it from this gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostView {
    /// This side created the mirror (see `Record::origin`).
    pub origin: bool,
    /// Hosts may write here (the primary, not handing over).
    pub serving: bool,
}

pub struct Engine {
    pub(crate) cfg: EngineConfig,
    pub(crate) me: PeerId,
    pub(crate) host: Arc<dyn Host>,
    pub heartbeats: Arc<Heartbeats>,
    pub(crate) volumes: RwLock<HashMap<String, Side>>,
    pub(crate) peers: Peers,
    /// Attached volumes by handle: the client allowed to send, and the volume.
    pub(crate) handles: Mutex<HashMap<u32, (String, Arc<Secondary>)>>,
    pub(crate) next_handle: AtomicU32,
    /// Volumes being handed over (planned switchover): hosts may not write.
    pub(crate) demoting: Mutex<HashSet<String>>,
    pub refusals: Refusals,
}

impl Engine {
    pub fn listen(&self) -> SocketAddr {
        self.cfg.listen
    }

    fn volume_dir(&self, volume: &str) -> PathBuf {
        self.cfg.dir.join("volumes").join(volume)
    }

    pub(crate) fn load_volumes(&self) -> Result<()> {
        let root = self.cfg.dir.join("volumes");
        crate::files::private_dir(&root)?;
        for e in std::fs::read_dir(&root)? {
            let dir = e?.path();
            let record = match Record::load(&dir.join("record.json")) {
                Ok(r) => r,
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "mirror record unreadable; skipped");
                    continue;
                }
            };
            let Some(local) = self.host.replica(&record.volume) else {
                warn!(volume = %record.volume, "mirrored volume is not served here; its mirror waits");
                continue;
            };
            let side = self.open_side(&dir, record, local)?;
            let name = side_volume(&side);
            self.volumes.write().expect("not poisoned").insert(name, side);
        }
        Ok(())
    }

    fn open_side(&self, dir: &Path, record: Record, local: Arc<dyn Replica>) -> Result<Side> {
        Ok(match record.role {
            Role::Primary => {
                let p = Primary::open(dir, record, local, self.host.clone_events(), self.cfg.settings)?;
                crate::dispatch::start(&p);
                Side::Primary(p)
            }
            Role::Secondary => Side::Secondary(Secondary::open(dir, record, local)?),
        })
    }

    /// A volume's side here, if it is mirrored.
    pub fn side(&self, volume: &str) -> Option<Side> {
        self.volumes.read().expect("not poisoned").get(volume).cloned()
    }

    /// Hosts may not write (a secondary, or a primary handing over).
    pub fn read_only(&self, volume: &str) -> bool {
        matches!(self.side(volume), Some(Side::Secondary(_)))
            || self.demoting.lock().expect("not poisoned").contains(volume)
    }

    /// How hosts should see this side of a mirrored volume: which side it is, and whether it
    /// takes I/O (a primary not handing over) or stands by.
    pub fn host_view(&self, volume: &str) -> Option<HostView> {
        let side = self.side(volume)?;
        let origin = match &side {
            Side::Primary(p) => p.record().origin,
            Side::Secondary(s) => s.record().origin,
        };
        Some(HostView { origin, serving: !self.read_only(volume) })
    }

    pub fn list(&self) -> Vec<MirrorView> {
        let sides: Vec<Side> = self.volumes.read().expect("not poisoned").values().cloned().collect();
        let mut out: Vec<MirrorView> = sides.iter().map(|s| self.view_of(s)).collect();
        out.sort_by(|a, b| a.volume.cmp(&b.volume));
        out
    }

    pub fn show(&self, volume: &str) -> Result<MirrorView> {
        let side = self.side(volume).ok_or_else(|| MirrorError::NotFound(volume.into()))?;
        Ok(self.view_of(&side))
    }

    fn view_of(&self, side: &Side) -> MirrorView {
        match side {
            Side::Primary(p) => p.view(),
            Side::Secondary(s) => s.view(self.peer_state(&s.record().peer)),
        }
    }

    /// The heartbeats' view of a peer, as a mirror state.
    pub(crate) fn peer_state(&self, addr: &str) -> MirrorState {
        let Some(id) = self.peers.get(addr).and_then(|p| p.id()) else { return MirrorState::Disconnected };
        match self.heartbeats.liveness(&id) {
            Liveness::Down => MirrorState::Disconnected,
            Liveness::Probation { .. } if self.peers.link(addr).is_none() => MirrorState::Probation,
            _ => MirrorState::InSync,
        }
    }

    /// `mirror create` on the primary: the peer makes its side, then the initial copy starts.
    pub async fn create(
        &self,
        volume: &str,
        peer: &str,
        mode: Mode,
        on_failure: OnFailure,
        credentials: Option<PeerCredentials>,
    ) -> Result<MirrorView> {
        if self.side(volume).is_some() {
            return Err(MirrorError::Invalid(format!("volume {volume:?} is mirrored already")));
        }
        let local = self.host.replica(volume).ok_or_else(|| MirrorError::NotFound(volume.into()))?;
        if let Some(c) = credentials {
            crate::link::client_config(&c)?;
            self.peers.update(peer, |f| f.credentials = Some(c))?;
        }
        let link = self.connect(peer).await?;
        let peer_id = self.peers.get(peer).and_then(|p| p.id).unwrap_or_default();
        let back = self
            .host
            .issue_credentials(&format!("mirror-{}", &peer_id[..peer_id.len().min(16)]))
            .map_err(MirrorError::Local)?;
        let generation = Record::new_generation();
        let size = local.size();
        let create = Control::Create {
            volume: volume.into(),
            size,
            mode,
            on_failure,
            generation: generation.clone(),
            credentials: back,
        };
        link.control(&create).await?;
        let record = Record {
            volume: volume.into(),
            size,
            role: Role::Primary,
            peer: peer.into(),
            mode,
            on_failure,
            generation,
            history: Vec::new(),
            consistent: true,
            paused: false,
            discarding: None,
            sweep: Some(0),
            origin: true,
        };
        let side = self.open_side(&self.volume_dir(volume), record, local)?;
        self.volumes.write().expect("not poisoned").insert(volume.into(), side.clone());
        self.host.event(
            volume,
            EventKind::Reconnected,
            format!("mirror to {peer} created ({mode:?}); initial copy started"),
        );
        Ok(self.view_of(&side))
    }

    /// The peer's `Create`: makes this side, a secondary of the asking client.
    pub(crate) async fn create_secondary(&self, client: &str, c: Control) -> Result<()> {
        let Control::Create { volume, size, mode, on_failure, generation, credentials } = c else {
            return Err(MirrorError::Invalid("not a create".into()));
        };
        if self.side(&volume).is_some() {
            return Err(MirrorError::Invalid(format!("volume {volume:?} is mirrored here already")));
        }
        let peer = self.peers.by_client(client).ok_or_else(|| MirrorError::Invalid("say hello first".into()))?;
        // Credentials an administrator gave for this peer stay; these are for when none were.
        self.peers.update(&peer.addr, |f| {
            f.credentials.get_or_insert(credentials);
        })?;
        let local = self.host.create_replica(&volume, size).await.map_err(MirrorError::Refused)?;
        let record = Record {
            volume: volume.clone(),
            size,
            role: Role::Secondary,
            peer: peer.addr.clone(),
            mode,
            on_failure,
            generation,
            history: Vec::new(),
            consistent: false,
            paused: false,
            discarding: None,
            sweep: None,
            origin: false,
        };
        let side = Side::Secondary(Secondary::open(&self.volume_dir(&volume), record, local)?);
        self.volumes.write().expect("not poisoned").insert(volume.clone(), side);
        self.host.event(&volume, EventKind::Reconnected, format!("mirror of {} created here", peer.addr));
        Ok(())
    }

    fn primary(&self, volume: &str) -> Result<Arc<Primary>> {
        match self.side(volume) {
            Some(Side::Primary(p)) => Ok(p),
            Some(Side::Secondary(_)) => {
                Err(MirrorError::Invalid(format!("this side is the mirror of {volume:?}, not its primary")))
            }
            None => Err(MirrorError::NotFound(volume.into())),
        }
    }

    pub fn pause(&self, volume: &str) -> Result<MirrorView> {
        let p = self.primary(volume)?;
        p.pause()?;
        Ok(p.view())
    }

    pub fn resume(&self, volume: &str) -> Result<MirrorView> {
        let p = self.primary(volume)?;
        p.resume()?;
        Ok(p.view())
    }

    /// Stops mirroring; both sides keep their volumes as plain volumes.
    pub async fn remove(&self, volume: &str) -> Result<()> {
        let side = self.side(volume).ok_or_else(|| MirrorError::NotFound(volume.into()))?;
        if let Side::Primary(p) = &side {
            let peer = p.record().peer;
            if let Some(link) = self.peers.link(&peer) {
                if let Err(e) = link.control(&Control::Remove { volume: volume.into() }).await {
                    warn!(volume, error = %e, "the peer did not hear of the removal; it keeps its side until told");
                }
            }
        }
        self.forget(volume)
    }

    pub(crate) fn forget(&self, volume: &str) -> Result<()> {
        self.volumes.write().expect("not poisoned").remove(volume);
        self.handles.lock().expect("not poisoned").retain(|_, (_, s)| s.record().volume != volume);
        let dir = self.volume_dir(volume);
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(())
    }

    /// Makes this side the primary: a planned switchover (the old primary drains and becomes
    /// the mirror) or, with `force`, a takeover with a new generation.
    pub async fn promote(&self, volume: &str, force: bool) -> Result<MirrorView> {
        let Some(Side::Secondary(s)) = self.side(volume) else {
            return Err(MirrorError::Invalid(format!("this side is not the mirror of {volume:?}")));
        };
        let mut record = s.record();
        if force {
            let old = std::mem::replace(&mut record.generation, Record::new_generation());
            record.history.push(old);
            if !record.consistent {
                warn!(volume, "promoted while its image was not consistent (a copy was under way)");
            }
        } else {
            if !record.consistent {
                return Err(MirrorError::Invalid(
                    "the mirror is still copying; wait for in-sync, or use --force".into(),
                ));
            }
            let link = self.connect(&record.peer).await.map_err(|e| {
                MirrorError::Invalid(format!(
                    "the primary at {} is unreachable ({e}); use --force to take over",
                    record.peer
                ))
            })?;
            link.control(&Control::Demote { volume: volume.into() }).await?;
        }
        record.role = Role::Primary;
        record.consistent = true;
        record.sweep = None;
        let dir = self.volume_dir(volume);
        remove_backlog(&dir);
        let side = self.open_side(&dir, record, s.local.clone())?;
        self.volumes.write().expect("not poisoned").insert(volume.into(), side.clone());
        let how = if force { "forced takeover, new generation" } else { "planned switchover" };
        self.host.event(volume, EventKind::Promoted, format!("this side is now the primary ({how})"));
        Ok(self.view_of(&side))
    }

    /// The peer's `Demote`: drain every change to it, then become its mirror.
    pub(crate) async fn demote(&self, client: &str, volume: &str) -> Result<()> {
        let p = self.primary(volume)?;
        let record = p.record();
        if !self.is_client_of(&record.peer, client) {
            return Err(MirrorError::Invalid(format!("{client} is not the mirror of {volume:?}")));
        }
        self.demoting.lock().expect("not poisoned").insert(volume.into());
        let drained = p.drain().await;
        if let Err(e) = drained {
            self.demoting.lock().expect("not poisoned").remove(volume);
            return Err(e);
        }
        let mut r = record;
        r.role = Role::Secondary;
        let dir = self.volume_dir(volume);
        remove_backlog(&dir);
        let side = Side::Secondary(Secondary::open(&dir, r, p.local.clone())?);
        self.volumes.write().expect("not poisoned").insert(volume.into(), side);
        self.demoting.lock().expect("not poisoned").remove(volume);
        self.host.event(volume, EventKind::Demoted, "planned switchover: this side is now the mirror".into());
        Ok(())
    }

    /// Ends a split brain on the side whose changes are discarded: it becomes the mirror,
    /// and the survivor copies over every region either side changed since the split.
    pub fn resolve_discarding_local(&self, volume: &str) -> Result<MirrorView> {
        let p = self.primary(volume)?;
        let changed = p.changed_regions();
        let mut r = p.record();
        r.role = Role::Secondary;
        r.consistent = false;
        r.discarding = Some(changed);
        let dir = self.volume_dir(volume);
        remove_backlog(&dir);
        let side = Side::Secondary(Secondary::open(&dir, r, p.local.clone())?);
        self.volumes.write().expect("not poisoned").insert(volume.into(), side.clone());
        self.host.event(volume, EventKind::Resolved, "split brain resolved: this side's changes are discarded".into());
        Ok(self.view_of(&side))
    }

    /// Whether `client` is the certificate the peer at `addr` last said hello with. A peer
    /// speaks for its volumes with whichever admitted certificate it uses now.
    pub(crate) fn is_client_of(&self, addr: &str, client: &str) -> bool {
        self.peers.get(addr).and_then(|f| f.client).as_deref() == Some(client)
    }

    /// Opens a link to `peer` now (no probation: an administrator asked, or first contact).
    pub(crate) async fn connect(&self, peer: &str) -> Result<Arc<Link>> {
        if let Some(l) = self.peers.link(peer) {
            return Ok(l);
        }
        let file = self.peers.get(peer).unwrap_or_default();
        let creds =
            file.credentials.ok_or_else(|| MirrorError::Invalid(format!("no credentials for the peer {peer}")))?;
        let tls = crate::link::client_config(&creds)?;
        let hello = Control::Hello { id: hex::encode(self.me), listen: self.cfg.advertise.clone() };
        let (link, answer, key) = Link::connect(peer, tls, self.cfg.connections, &hello).await?;
        let welcome: Welcome =
            serde_json::from_slice(&answer).map_err(|e| MirrorError::Refused(format!("hello: {e}")))?;
        let id = crate::peers::parse_id(&welcome.id).ok_or_else(|| MirrorError::Refused("hello: bad id".into()))?;
        self.peers.update(peer, |f| {
            f.id = Some(welcome.id.clone());
            f.heartbeat_key = Some(hex::encode(key));
        })?;
        if let Ok(addr) = peer.parse() {
            self.heartbeats.set_peer(id, key, addr);
        }
        self.peers.set_link(peer, link.clone());
        Ok(link)
    }

    /// The size of a region (the unit of copying and of the bitmap).
    pub fn region_bytes(&self) -> u64 {
        REGION
    }
}

/// Drops a side's journal and extents log (a new role starts with none).
fn remove_backlog(dir: &Path) {
    for f in ["journal", "extents"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

fn side_volume(s: &Side) -> String {
    match s {
        Side::Primary(p) => p.record().volume,
        Side::Secondary(s) => s.record().volume,
    }
}

/// The host as an event sink, shared.
trait CloneEvents {
    fn clone_events(&self) -> Arc<dyn Events>;
}

impl CloneEvents for Arc<dyn Host> {
    fn clone_events(&self) -> Arc<dyn Events> {
        Arc::new(HostEvents(self.clone()))
    }
}

struct HostEvents(Arc<dyn Host>);

impl Events for HostEvents {
    fn event(&self, volume: &str, kind: EventKind, message: String) {
        self.0.event(volume, kind, message)
    }
}
