//! The running gateway: its parts, the registry of volumes (served, and stored but not
//! opened), the targets it opens, and the NBD front end's view of it ([`ExportProvider`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use cleave_control::access::Identity;
use cleave_control::access::LOCAL_GROUP;
use cleave_control::hierarchy::{Hierarchy, HierarchyConfig};
use cleave_control::pool::{Event, NodeInfo, Pool};
use cleave_nbd::{BlockDevice, ExportProvider, Peer, Refusal};
use cleave_split::keys::MasterKey;
use cleave_volume::{Superblock, Volume, VolumeConfig, VolumeOptions};
use tracing::{error, info};

use crate::access::{AccessControl, Guarded};
use crate::appliance::Appliance;
use crate::data_dir::DataDir;
use crate::device::VolumeDevice;
use crate::error::{GatewayError, Result};
use crate::forward::{Forwarding, Served};
use crate::history::TaskHistory;
use crate::users::UserStore;
use crate::webhook::Notifier;

/// Where the NBD front end listens, when there is one.
#[derive(Clone, Debug)]
pub struct NbdExport {
    /// NBD over TLS, for clients with a certificate.
    pub addr: SocketAddr,
    /// The local administrators' Unix socket (`DIR/nbd.sock`).
    pub socket: PathBuf,
    /// How hosts and the other gateways reach the listener (`HOST:PORT`), when not at `addr`
    /// (a name, an address in front of it). The front-end path check asks it there.
    pub advertise: Option<String>,
}

impl NbdExport {
    /// Where clients reach NBD over TLS: the address advertised, else the address listened on or, when that is every
    /// address (`0.0.0.0`, `::`), this host's name, which the NBD certificate names. A
    /// wildcard address in a URI would send a client to its own machine.
    pub fn reachable(&self) -> String {
        if let Some(a) = &self.advertise {
            return a.clone();
        }
        if !self.addr.ip().is_unspecified() {
            return self.addr.to_string();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string());
        match host {
            Ok(h) if !h.is_empty() => format!("{h}:{}", self.addr.port()),
            _ => SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), self.addr.port()).to_string(),
        }
    }
}

/// What a gateway keeps in its data directory, opened (and made on a first run): the
/// directory, the master key, the access registry and CA, the admin token, the users.
pub struct Stores {
    pub data: DataDir,
    pub master: MasterKey,
    pub access: Arc<AccessControl>,
    /// The admin bearer token (`DIR/admin.token`).
    pub token: String,
    pub users: UserStore,
    pub(crate) tasks: TaskHistory,
    pub(crate) webhook: Arc<Notifier>,
}

impl Stores {
    /// The stores of the data directory `root`, its configuration database included (redb).
    pub fn open(root: PathBuf) -> Result<Self> {
        Self::load(DataDir::new(root)?)
    }

    /// The stores of an opened data directory, whatever its configuration database.
    pub fn load(data: DataDir) -> Result<Self> {
        let master = data.master_key()?;
        data.group_key(&master, LOCAL_GROUP)?;
        let access = Arc::new(AccessControl::load(&data, &master)?);
        let token = data.admin_token()?;
        let users = UserStore::load(&data)?;
        let tasks = TaskHistory::load(data.config.clone())?;
        let webhook = Notifier::load(&data, &master)?;
        Ok(Stores { data, master, access, token, users, tasks, webhook })
    }
}

/// What a gateway is made of. The caller opens the data directory's [`Stores`], starts the
/// node pool and the hierarchy, and binds the front ends; the gateway runs on them.
pub struct GatewayConfig {
    pub stores: Stores,
    pub pool: Arc<Pool>,
    pub hierarchy: Arc<Hierarchy>,
    /// What targets are opened with (the node plane's TLS credentials), passed explicitly.
    pub targets: cleave_target::Credentials,
    /// Local cache size per volume.
    pub cache_bytes: u64,
    pub nbd: Option<NbdExport>,
    /// Membership of an appliance of gateways on one etcd (None: every volume is served here).
    pub appliance: Option<Arc<Appliance>>,
}

/// The running gateway: volumes by name, and everything needed to serve and manage them.
pub struct Gateway {
    pub(crate) data: DataDir,
    pub(crate) master: MasterKey,
    pub(crate) access: Arc<AccessControl>,
    pub(crate) users: UserStore,
    token: String,
    pub(crate) cache_bytes: u64,
    pub(crate) nbd: Option<NbdExport>,
    pub(crate) volumes: RwLock<BTreeMap<String, Volume>>,
    /// Stored volumes that could not be opened; retried in the background.
    pub(crate) unopened: RwLock<BTreeMap<String, Unopened>>,
    pub(crate) pool: Arc<Pool>,
    hierarchy: Arc<Hierarchy>,
    /// Tasks, kept in the configuration database.
    pub(crate) tasks: TaskHistory,
    /// Long work runs one task at a time; the rest wait as `queued`.
    pub(crate) task_slot: Arc<tokio::sync::Semaphore>,
    /// Serializes create, delete and key-slot changes.
    pub(crate) admin: tokio::sync::Mutex<()>,
    targets: cleave_target::Credentials,
    /// The mirroring engine, once `--mirror-listen` started it.
    pub(crate) mirror: std::sync::OnceLock<Arc<cleave_mirror::Engine>>,
    /// Where events are sent, besides the pool's list.
    pub(crate) webhook: Arc<Notifier>,
    pub(crate) appliance: Option<Arc<Appliance>>,
    /// In an appliance with an NBD listener: every volume exported, requests forwarded to
    /// its primary.
    pub(crate) forwarding: std::sync::OnceLock<Forwarding>,
    /// In an appliance with forwarding: the standby caches of the volumes served here, the
    /// logs this gateway keeps for other primaries, and itself as their host.
    pub(crate) standbys: crate::standby::Standbys,
    /// In an appliance with forwarding: which other gateways answer heartbeats.
    pub(crate) peers: crate::peers::Peers,
}

/// A stored volume that could not be opened, and why. Listed as unavailable, retried every
/// [`crate::lifecycle::REOPEN_EVERY`], and deletable.
pub(crate) struct Unopened {
    /// None when even the stored superblock could not be read.
    pub(crate) sb: Option<Superblock>,
    pub(crate) reason: String,
    /// The gateway of the appliance that serves it, when that is another one.
    pub(crate) primary: Option<String>,
}

impl Gateway {
    pub fn new(c: GatewayConfig) -> Self {
        let Stores { data, master, access, token, users, tasks, webhook } = c.stores;
        c.pool.set_event_sink(webhook.clone());
        Gateway {
            data,
            master,
            access,
            users,
            token,
            cache_bytes: c.cache_bytes,
            nbd: c.nbd,
            volumes: RwLock::new(BTreeMap::new()),
            unopened: RwLock::new(BTreeMap::new()),
            pool: c.pool,
            hierarchy: c.hierarchy,
            tasks,
            task_slot: Arc::new(tokio::sync::Semaphore::new(1)),
            admin: tokio::sync::Mutex::new(()),
            targets: c.targets,
            mirror: std::sync::OnceLock::new(),
            webhook,
            appliance: c.appliance,
            forwarding: std::sync::OnceLock::new(),
            standbys: Default::default(),
            peers: Default::default(),
        }
    }

    /// A gateway on the data directory `root` alone, as `cleave control` makes one but without
    /// a node plane or a parent: no NBD, no nodes, targets by URI. For tests and embedding.
    pub fn open_local(root: PathBuf, cache_bytes: u64) -> Result<Self> {
        Ok(Gateway::new(local_config(Stores::open(root)?, cache_bytes, None)?))
    }

    pub fn data(&self) -> &DataDir {
        &self.data
    }

    pub fn access(&self) -> &Arc<AccessControl> {
        &self.access
    }

    pub fn users(&self) -> &UserStore {
        &self.users
    }

    pub fn hierarchy(&self) -> &Arc<Hierarchy> {
        &self.hierarchy
    }

    /// Whether `given` is the admin bearer token (compared in constant time).
    pub fn is_admin_token(&self, given: &str) -> bool {
        cleave_split::constant_time_eq(given.as_bytes(), self.token.as_bytes())
    }

    /// The storage nodes registered with this control.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.pool.nodes()
    }

    /// Events for the administrator, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.pool.events()
    }

    /// Where the NBD front end listens, if it does.
    pub fn nbd(&self) -> Option<&NbdExport> {
        self.nbd.as_ref()
    }

    /// A served volume.
    pub fn get(&self, name: &str) -> Option<Volume> {
        self.volumes.read().expect("not poisoned").get(name).cloned()
    }

    /// Whether `name` is a volume here, served or not.
    pub fn exists(&self, name: &str) -> bool {
        self.get(name).is_some() || self.unopened.read().expect("not poisoned").contains_key(name)
    }

    /// A served volume, or why not: `NotFound` if there is no such volume, `Unavailable` if
    /// it cannot open.
    pub fn served(&self, name: &str) -> Result<Volume> {
        if let Some(v) = self.get(name) {
            return Ok(v);
        }
        match self.unopened.read().expect("not poisoned").get(name) {
            Some(u) => Err(GatewayError::Unavailable(format!("volume {name:?} is unavailable: {}", u.reason))),
            None => Err(GatewayError::NotFound(format!("no volume {name:?}"))),
        }
    }

    pub(crate) fn served_volumes(&self) -> Vec<Volume> {
        self.volumes.read().expect("not poisoned").values().cloned().collect()
    }

    pub(crate) fn options(&self) -> anyhow::Result<VolumeOptions> {
        let mut o = VolumeOptions::new(self.data.cache_dir());
        o.cache_bytes = self.cache_bytes;
        o.owner = self.data.gateway_id()?;
        // A failover serves what the targets hold, and a standby's log: a FLUSH acknowledged
        // from this cache alone would be lost (docs/appliance.md). With a standby ready, a
        // FLUSH goes to the two caches instead (`crate::standby`).
        o.flush_to_targets = self.appliance.is_some();
        Ok(o)
    }

    /// A target by URI, with the gateway's credentials.
    pub(crate) fn open_target(&self, u: &str) -> anyhow::Result<cleave_target::DynTarget> {
        cleave_target::open_with(u, &self.targets).with_context(|| format!("target {u}"))
    }

    /// [`Gateway::open_target`] for a new volume's target (a directory target's folder is made).
    pub(crate) fn create_target(&self, u: &str) -> anyhow::Result<cleave_target::DynTarget> {
        cleave_target::create_with(u, &self.targets).with_context(|| format!("target {u}"))
    }

    /// A `node://` target named in a request must be a registered node: no other address is
    /// ever sent anything (docs/security.md, "Nodes and controls").
    pub(crate) fn check_named_target(&self, u: &str) -> anyhow::Result<()> {
        if let Some(addr) = u.strip_prefix("node://") {
            if self.pool.node_at(addr.trim_end_matches('/')).is_none() {
                bail!("target {u}: not a registered node");
            }
        }
        Ok(())
    }

    pub(crate) async fn open_volume(&self, sb: &Superblock) -> anyhow::Result<Volume> {
        self.open_volume_with(sb, false).await
    }

    /// Opens a volume; `takeover` serves it even if another gateway claims it.
    pub(crate) async fn open_volume_with(&self, sb: &Superblock, takeover: bool) -> anyhow::Result<Volume> {
        let keys = sb.unlock(&self.master)?;
        let targets = sb.config.targets.iter().map(|u| self.open_target(u)).collect::<anyhow::Result<Vec<_>>>()?;
        let mut options = self.options()?;
        options.takeover = takeover;
        Ok(Volume::open(sb.config.clone(), keys, targets, options).await?)
    }

    /// In an appliance, exports every volume (requests go to its primary, wherever it is)
    /// and advertises this gateway's NBD listener to the others for their forwarding.
    pub fn start_forwarding(self: &Arc<Self>) -> Result<()> {
        let (Some(a), Some(nbd)) = (&self.appliance, &self.nbd) else { return Ok(()) };
        let here: Arc<dyn Served> = self.clone();
        let f = Forwarding::start(Arc::downgrade(&here), &self.access.ca, a.clone(), nbd.reachable())
            .map_err(|e| GatewayError::Internal(format!("forwarding: {e:#}")))?;
        let _ = self.forwarding.set(f);
        tokio::spawn(self.clone().beat(a.clone()));
        self.start_standbys().map_err(|e| GatewayError::Internal(format!("standby logs: {e}")))?;
        Ok(())
    }

    /// What `f` reads of a known volume's configuration, served here or not.
    pub(crate) fn config_of<T>(&self, name: &str, f: impl FnOnce(&VolumeConfig) -> T) -> Option<T> {
        if let Some(v) = self.get(name) {
            return Some(f(v.config()));
        }
        self.unopened.read().expect("not poisoned").get(name)?.sb.as_ref().map(|sb| f(&sb.config))
    }

    /// A peer that presents the forwarding certificate of a live gateway of the appliance.
    fn peer_gateway(&self, peer: &Peer) -> Option<String> {
        let a = self.appliance.as_ref()?;
        let fingerprint = cleave_control::ca::fingerprint(peer.certificate.as_ref()?);
        a.gateway_with_certificate(&fingerprint)
    }

    /// Where clients attach a volume: the local socket, and NBD over TLS (empty without NBD).
    pub(crate) fn export_uris(&self, name: &str) -> (String, String) {
        match &self.nbd {
            Some(nbd) => (unix_uri(name, &nbd.socket), format!("nbds://{}/{name}", nbd.reachable())),
            None => (String::new(), String::new()),
        }
    }

    /// SIGTERM: destage every volume and record a clean shutdown.
    pub async fn shutdown(&self) {
        for v in self.served_volumes() {
            match v.shutdown(Duration::from_secs(300)).await {
                Ok(()) => {
                    info!(volume = %v.config().name, "destaged and closed");
                    // Handed back cleanly: another gateway of the appliance may serve it now.
                    if let Some(a) = &self.appliance {
                        a.release(&v.config().name);
                    }
                }
                Err(e) => {
                    error!(volume = %v.config().name, error = %e, "shutdown left dirty data in the cache; it is destaged at next start")
                }
            }
        }
    }
}

/// The NBD URI of a volume on the local administrators' socket, as qemu and libnbd take it.
pub fn unix_uri(volume: &str, socket: &Path) -> String {
    format!("nbd+unix:///{volume}?socket={}", socket.display())
}

impl Served for Gateway {
    fn served_device(&self, volume: &str) -> Option<Arc<dyn BlockDevice>> {
        let v = self.get(volume)?;
        let standby = self.standby_for(&v);
        Some(Arc::new(VolumeDevice::new(v, self.mirror.get().cloned(), self.appliance.clone(), standby)))
    }
}

impl ExportProvider for Gateway {
    fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = self.volumes.read().expect("not poisoned").keys().cloned().collect();
        if let Some(f) = self.forwarding.get() {
            let unopened = self.unopened.read().expect("not poisoned");
            let known = |(n, u): &(&String, &Unopened)| u.sb.is_some() || f.existing(n).is_some();
            names.extend(unopened.iter().filter(known).map(|(n, _)| n.clone()));
            names.sort();
        }
        names
    }
    fn open(&self, name: &str) -> Option<Arc<dyn BlockDevice>> {
        if let Some(f) = self.forwarding.get() {
            return match self.config_of(name, |c| c.size) {
                Some(size) => Some(f.device(name, size)),
                // A volume that has just left this gateway may lack its configuration for a
                // moment: the device hosts had stays.
                None => f.existing(name).filter(|_| self.exists(name)).map(|d| d as Arc<dyn BlockDevice>),
            };
        }
        self.served_device(name)
    }
    fn list_for(&self, peer: &Peer) -> Vec<String> {
        let Ok(who) = self.access.identify(peer) else { return Vec::new() };
        self.list().into_iter().filter(|v| !self.access.rights(&who, v).is_none()).collect()
    }
    fn open_for(&self, name: &str, peer: &Peer) -> Result<Arc<dyn BlockDevice>, Refusal> {
        // A gateway forwarding to this one gets only what is served here, never forwarded on
        // (no loops); a fenced volume answers "unavailable here" and it looks again.
        if self.peer_gateway(peer).is_some() {
            if name == crate::peers::EXPORT {
                return Ok(Arc::new(crate::peers::Heartbeat));
            }
            if let Some(log) = name.strip_prefix(crate::standby::EXPORT_PREFIX) {
                return self.standby_log(log).ok_or(Refusal::Unknown);
            }
            return self.served_device(name).ok_or(Refusal::Unknown);
        }
        let who = self.access.identify(peer)?;
        // A missing volume and one this identity may not open get the same answer, so that
        // nobody learns the names of volumes it cannot reach.
        match self.open(name) {
            Some(device) if !self.access.rights(&who, name).is_none() => {
                Ok(Arc::new(Guarded::new(device, self.access.clone(), who, name.to_string())))
            }
            _ => Err(Refusal::Denied(match who {
                Identity::Local => "the local administrator has no access to it, or it does not exist".into(),
                Identity::Client(c) => format!("client {c:?} has no access to it, or it does not exist"),
            })),
        }
    }
}

/// What a gateway on `stores` alone is made of: no NBD, no nodes, targets by URI.
pub(crate) fn local_config(
    stores: Stores,
    cache_bytes: u64,
    appliance: Option<Arc<Appliance>>,
) -> Result<GatewayConfig> {
    let pool = Pool::started_now();
    let ca = crate::nodetls::node_ca(&stores.data)?;
    let id = crate::data_dir::stable_id(&stores.data.root.join("control.id"))?;
    let config = HierarchyConfig { id: id.clone(), name: id, site: "default".into(), ca };
    let hierarchy = Hierarchy::new(config, pool.clone());
    let targets = cleave_target::Credentials::default();
    Ok(GatewayConfig { stores, pool, hierarchy, targets, cache_bytes, nbd: None, appliance })
}
