//! `cleave serve`: the embedded default. Gateway (volumes over NBD) and the admin
//! API in one process, with directory targets under the data directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use cleave_control::access::{Grant, Identity, Mode, LOCAL_GROUP};
use cleave_nbd::{BlockDevice, BlockError, ExportProvider, Peer, Refusal, Server, ServerConfig};
use cleave_split::keys::MasterKey;
use cleave_volume::meta::names;
use cleave_volume::{Durability, Health, Superblock, Volume, VolumeConfig, VolumeError, VolumeOptions};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::access::{AccessControl, Guarded};
use crate::size::ByteSize;
use crate::state::DataDir;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Where keys, volume metadata, caches and the default targets live.
    #[arg(long, default_value = "./cleave-data")]
    pub data_dir: PathBuf,
    /// NBD listen address.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub nbd: SocketAddr,
    /// Admin API listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Local cache size per volume.
    #[arg(long, default_value = "1GiB")]
    pub cache_size: ByteSize,
    /// Extra DNS names or IP addresses for the NBD TLS certificate (localhost, loopback
    /// addresses, the host name and the NBD address are always in it).
    #[arg(long = "tls-name")]
    pub tls_names: Vec<String>,
    #[command(flatten)]
    pub control: ControlFlags,
}

/// What `cleave control` and `cleave serve` share.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlFlags {
    /// UDP address where storage nodes register (auto-configuration protocol).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub autoconfig: SocketAddr,
    /// A node (or child control) silent for this long is marked down.
    #[arg(long, default_value_t = 5.0)]
    pub heartbeat_timeout_secs: f64,
    /// TLS on the admin API and console (certificate from control's CA, DIR/tls/ca.crt):
    /// auto is on unless --http is a loopback address.
    #[arg(long, value_enum, default_value_t = crate::https::HttpTls::Auto)]
    pub http_tls: crate::https::HttpTls,
    #[command(flatten)]
    pub hierarchy: crate::hierarchy::HierarchyFlags,
}

#[derive(clap::Args, Debug)]
pub struct ControlArgs {
    #[arg(long, default_value = "./cleave-data")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    #[command(flatten)]
    pub control: ControlFlags,
}

/// Adapts a volume to the NBD front end.
struct VolumeDevice(Volume);

fn block_error(e: VolumeError) -> BlockError {
    match e {
        VolumeError::OutOfRange { .. } => BlockError::Invalid(e.to_string()),
        VolumeError::Cache(ref io) if io.raw_os_error() == Some(libc::ENOSPC) => BlockError::NoSpace(e.to_string()),
        e => {
            warn!(error = %e, "I/O error returned to the client");
            BlockError::Io(e.to_string())
        }
    }
}

#[async_trait::async_trait]
impl BlockDevice for VolumeDevice {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn can_multi_conn(&self) -> bool {
        // Every connection goes through the same cache, and FLUSH covers the whole volume.
        true
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        self.0.read(offset, len).await.map_err(block_error)
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.0.write(offset, data, fua).await.map_err(block_error)
    }
    async fn flush(&self) -> Result<(), BlockError> {
        self.0.flush().await.map_err(block_error)
    }
    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.0.trim(offset, len as u64).await.map_err(block_error)
    }
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        self.0.write_zeroes(offset, len as u64, fua).await.map_err(block_error)
    }
}

/// The running gateway: volumes by name.
pub struct Gateway {
    pub(crate) data: DataDir,
    pub(crate) master: MasterKey,
    pub(crate) access: Arc<AccessControl>,
    pub(crate) users: crate::users::UserStore,
    pub(crate) token: String,
    cache_bytes: u64,
    nbd_addr: SocketAddr,
    /// The Unix socket of local administrators, when NBD is served.
    nbd_socket: Option<PathBuf>,
    volumes: RwLock<BTreeMap<String, Volume>>,
    /// Stored volumes that could not be opened; retried in the background.
    unopened: RwLock<BTreeMap<String, Unopened>>,
    pool: Arc<cleave_control::pool::Pool>,
    pub(crate) hierarchy: Arc<cleave_control::hierarchy::Hierarchy>,
    tasks: Mutex<BTreeMap<u64, TaskView>>,
    /// Long work runs one task at a time; the rest wait as `queued`.
    task_slot: Arc<tokio::sync::Semaphore>,
    /// Serializes create, delete and key-slot changes.
    pub(crate) admin: tokio::sync::Mutex<()>,
    /// What targets are opened with (the node plane's TLS credentials), passed explicitly.
    targets: cleave_target::Credentials,
}

impl ExportProvider for Gateway {
    fn list(&self) -> Vec<String> {
        self.volumes.read().expect("not poisoned").keys().cloned().collect()
    }
    fn open(&self, name: &str) -> Option<Arc<dyn BlockDevice>> {
        let v = self.volumes.read().expect("not poisoned").get(name).cloned()?;
        Some(Arc::new(VolumeDevice(v)))
    }
    fn list_for(&self, peer: &Peer) -> Vec<String> {
        let Ok(who) = self.access.identify(peer) else { return Vec::new() };
        self.list().into_iter().filter(|v| !self.access.rights(&who, v).is_none()).collect()
    }
    fn open_for(&self, name: &str, peer: &Peer) -> Result<Arc<dyn BlockDevice>, Refusal> {
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

/// A stored volume that could not be opened, and why. Listed as unavailable, retried every
/// [`REOPEN_EVERY`], and deletable.
struct Unopened {
    /// None when even the stored superblock could not be read.
    sb: Option<Superblock>,
    reason: String,
}

/// How often volumes that could not be opened are tried again.
const REOPEN_EVERY: Duration = Duration::from_secs(3);

/// How long start-up waits for one volume to open before it serves the others and leaves
/// that one to the background retries (targets that hang must not hold the gateway).
const OPEN_AT_START: Duration = Duration::from_secs(30);

/// What a create may have stored before it failed, so that all of it can be undone.
struct CreateUndo {
    name: String,
    uuid: String,
    targets: Vec<String>,
    /// Groups whose keys this create made.
    new_group_keys: Vec<String>,
    new_client: Option<String>,
    new_group: Option<String>,
}

/// Body of `POST /api/v1/volumes`.
#[derive(Debug, Deserialize, Serialize)]
pub struct CreateVolume {
    pub name: String,
    pub size_bytes: u64,
    #[serde(default = "default_m")]
    pub m: u8,
    #[serde(default = "default_n")]
    pub n: u8,
    #[serde(default)]
    pub chunk_size: Option<u32>,
    #[serde(default)]
    pub durability: Option<Durability>,
    /// Shares a write needs before it counts (M..=N); default max(M, min(N-1, M+1)).
    #[serde(default)]
    pub write_quorum: Option<u8>,
    /// Store all-zero chunks too (default: they store nothing, and a target can count them).
    #[serde(default)]
    pub store_zero_chunks: bool,
    #[serde(default)]
    pub targets: Vec<String>,
    /// Groups that get read-write access (and a key slot). Default: the local `admin` group,
    /// unless `client` is given.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Storage on demand for one host: a group named after the volume, with this client in it
    /// (issued a certificate if it is new; the response then carries its credentials).
    #[serde(default)]
    pub client: Option<String>,
}
fn default_m() -> u8 {
    3
}
fn default_n() -> u8 {
    5
}

#[derive(Debug, Serialize)]
struct VolumeView {
    name: String,
    uuid: String,
    size_bytes: u64,
    m: u8,
    n: u8,
    chunk_size: u32,
    durability: Durability,
    /// Shares a write needs before it is acknowledged; below N the volume may run with
    /// reduced redundancy until re-replication catches up.
    write_quorum: usize,
    targets: Vec<String>,
    /// For the local administrator: the Unix socket in the data directory.
    nbd_uri: String,
    /// For clients with a certificate: NBD over TLS.
    nbds_uri: String,
    health: cleave_volume::Health,
    dirty_bytes: u64,
    cache_bytes: u64,
    cache_limit_bytes: u64,
    mapped_chunks: usize,
    last_destage_unix: Option<String>,
    last_destage_error: Option<String>,
    journal_seq: u64,
    groups: Vec<String>,
    /// Why the volume could not be opened (it is then `unavailable` and retried).
    open_error: Option<String>,
}

impl Gateway {
    /// A volume's health, also counting the node targets that the pool has marked down: a
    /// volume without I/O would not notice a node that stopped.
    pub(crate) fn health(&self, s: &cleave_volume::VolumeStatus) -> Health {
        let nodes = self.pool.nodes();
        let pool_down = |uri: &str| {
            uri.strip_prefix("node://").is_some_and(|a| {
                nodes.iter().any(|n| n.address == a && n.status != cleave_control::pool::NodeStatus::Up)
            })
        };
        let (mut down, chunks, missing, journal_degraded) = match s.health.clone() {
            Health::Clean => (Vec::new(), 0, Vec::new(), false),
            Health::Degraded { targets_down, chunks_missing_shares, missing, journal_degraded } => {
                (targets_down, chunks_missing_shares, missing, journal_degraded)
            }
            Health::Unavailable { targets_down } => (targets_down, 0, Vec::new(), false),
        };
        let before = down.len();
        for t in s.config.targets.iter().filter(|t| pool_down(t)) {
            if !down.contains(t) {
                down.push(t.clone());
            }
        }
        if down.len() == before {
            return s.health.clone();
        }
        if s.config.targets.len() - down.len().min(s.config.targets.len()) < s.config.m as usize {
            Health::Unavailable { targets_down: down }
        } else {
            Health::Degraded { targets_down: down, chunks_missing_shares: chunks, missing, journal_degraded }
        }
    }

    /// Watches every volume's health and records an event when it changes: degraded,
    /// unavailable, or clean again.
    async fn watch_health(self: Arc<Self>) {
        let mut last: BTreeMap<String, &'static str> = BTreeMap::new();
        let mut tried: BTreeMap<String, std::time::Instant> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let volumes: Vec<Volume> = self.volumes.read().expect("not poisoned").values().cloned().collect();
            let mut seen = BTreeMap::new();
            for v in volumes {
                let s = v.status();
                let health = self.health(&s);
                self.rereplicate_when_due(&v, &health, &mut tried);
                let (state, down) = match &health {
                    Health::Clean => ("clean", Vec::new()),
                    Health::Degraded { targets_down, .. } => ("degraded", targets_down.clone()),
                    Health::Unavailable { targets_down } => ("unavailable", targets_down.clone()),
                };
                let name = s.config.name;
                let was = last.get(&name).copied().unwrap_or("clean");
                if was != state {
                    let detail = if down.is_empty() {
                        format!("{name}: {state} (was {was})")
                    } else {
                        format!("{name}: {state} (was {was}); targets down: {}", down.join(", "))
                    };
                    warn!(volume = %name, state, was, "volume health changed");
                    self.pool.push_event(&format!("volume_{state}"), detail);
                }
                seen.insert(name, state);
            }
            last = seen;
        }
    }

    /// Starts a re-replication task for a volume that lacks shares or journal copies once
    /// all its targets answer again (at most one attempt per volume every 10 s).
    fn rereplicate_when_due(
        self: &Arc<Self>,
        v: &Volume,
        health: &Health,
        tried: &mut BTreeMap<String, std::time::Instant>,
    ) {
        let all_up = matches!(health, Health::Degraded { targets_down, .. } if targets_down.is_empty());
        let name = &v.config().name;
        if !all_up || !v.needs_rereplication() || tried.get(name).is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        let busy = self
            .tasks
            .lock()
            .expect("not poisoned")
            .values()
            .any(|t| t.volume == *name && t.kind == "rereplicate" && (t.state == "queued" || t.state == "running"));
        if busy {
            return;
        }
        tried.insert(name.clone(), std::time::Instant::now());
        let req = NewTask { kind: "rereplicate".into(), volume: name.clone(), ..Default::default() };
        match self.start_task_with(req) {
            Ok(t) => info!(volume = %name, task = t.id, "targets are back: re-replicating what degraded writes missed"),
            Err(e) => warn!(volume = %name, error = %e, "could not start re-replication"),
        }
    }

    fn view(&self, v: &Volume) -> VolumeView {
        let s = v.status();
        let health = self.health(&s);
        let c = s.config;
        let name = c.name.clone();
        let write_quorum = c.write_quorum();
        let (nbd_uri, nbds_uri) = self.export_uris(&c.name);
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
        }
    }

    /// Where clients attach a volume: the local socket, and NBD over TLS (empty without NBD).
    fn export_uris(&self, name: &str) -> (String, String) {
        match &self.nbd_socket {
            Some(path) => (unix_uri(name, path), format!("nbds://{}/{name}", self.nbd_addr)),
            None => (String::new(), String::new()),
        }
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
            write_quorum: c.map_or(0, |c| c.write_quorum()),
            targets: c.map(|c| c.targets.clone()).unwrap_or_default(),
            health: Health::Unavailable { targets_down: Vec::new() },
            dirty_bytes: 0,
            cache_bytes: 0,
            cache_limit_bytes: self.cache_bytes,
            mapped_chunks: 0,
            last_destage_unix: None,
            last_destage_error: None,
            journal_seq: 0,
            groups: self.access.snapshot().groups_of_volume(name),
            open_error: Some(u.reason.clone()),
        }
    }

    /// Every volume, served or not, by name.
    fn views(&self) -> Vec<VolumeView> {
        let vols: Vec<Volume> = self.volumes.read().expect("not poisoned").values().cloned().collect();
        let mut out: Vec<VolumeView> = vols.iter().map(|v| self.view(v)).collect();
        out.extend(self.unopened.read().expect("not poisoned").iter().map(|(n, u)| self.unopened_view(n, u)));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn show(&self, name: &str) -> Option<VolumeView> {
        if let Some(v) = self.get(name) {
            return Some(self.view(&v));
        }
        self.unopened.read().expect("not poisoned").get(name).map(|u| self.unopened_view(name, u))
    }

    /// Whether `name` is a volume here, served or not.
    pub(crate) fn exists(&self, name: &str) -> bool {
        self.get(name).is_some() || self.unopened.read().expect("not poisoned").contains_key(name)
    }

    /// A served volume, or why not: 404 if there is no such volume, 503 if it cannot open.
    fn served(&self, name: &str) -> Result<Volume, ApiError> {
        if let Some(v) = self.get(name) {
            return Ok(v);
        }
        match self.unopened.read().expect("not poisoned").get(name) {
            Some(u) => {
                Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("volume {name:?} is unavailable: {}", u.reason)))
            }
            None => Err(ApiError(StatusCode::NOT_FOUND, format!("no volume {name:?}"))),
        }
    }

    fn options(&self) -> Result<VolumeOptions> {
        let mut o = VolumeOptions::new(self.data.cache_dir());
        o.cache_bytes = self.cache_bytes;
        o.owner = self.data.gateway_id()?;
        Ok(o)
    }

    /// Opens the stored volumes, each on its own: one that cannot open does not keep the
    /// others from being served. It is listed as unavailable, with the reason, and retried.
    async fn open_stored(&self, stored: Vec<(String, Result<Superblock>)>) -> Result<()> {
        for sb in stored.iter().filter_map(|(_, sb)| sb.as_ref().ok()) {
            // Data directories from before access control: the admin slot means local access.
            let name = &sb.config.name;
            if sb.has_group(LOCAL_GROUP) && self.access.snapshot().groups_of_volume(name).is_empty() {
                let full = Grant { mode: Mode::ReadWrite, regions: Vec::new() };
                self.access.update(|r| Ok(r.grant(LOCAL_GROUP, name, full)?))?;
            }
        }
        let opens = stored.into_iter().map(|(name, sb)| async move {
            match sb {
                Ok(sb) => {
                    let opened = match tokio::time::timeout(OPEN_AT_START, self.open_volume(&sb)).await {
                        Ok(opened) => opened,
                        Err(_) => Err(anyhow::anyhow!("its targets did not answer within {OPEN_AT_START:?}")),
                    };
                    (name, Some(sb), opened)
                }
                Err(e) => (name, None, Err(e)),
            }
        });
        for (name, sb, opened) in futures::future::join_all(opens).await {
            match opened {
                Ok(v) => {
                    self.volumes.write().expect("not poisoned").insert(name, v);
                }
                Err(e) => {
                    let reason = format!("{e:#}");
                    warn!(volume = %name, error = %reason, "cannot open volume; serving the others and retrying it");
                    self.pool.push_event("volume_unavailable", format!("{name}: cannot open: {reason}"));
                    self.unopened.write().expect("not poisoned").insert(name, Unopened { sb, reason });
                }
            }
        }
        Ok(())
    }

    /// Tries the volumes that could not be opened again, every [`REOPEN_EVERY`].
    async fn reopen_unavailable(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REOPEN_EVERY);
        loop {
            tick.tick().await;
            let names: Vec<String> = self.unopened.read().expect("not poisoned").keys().cloned().collect();
            for name in names {
                self.try_reopen(&name).await;
            }
        }
    }

    async fn try_reopen(&self, name: &str) {
        // The stored superblock is read again: a grant may have changed it since.
        let opened = match self.data.load_volume(&self.master, name) {
            Ok(Some(sb)) => self.open_volume(&sb).await.map(|v| (v, sb.config.uuid)),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let (v, uuid) = match opened {
            Ok(done) => done,
            Err(e) => {
                if let Some(u) = self.unopened.write().expect("not poisoned").get_mut(name) {
                    u.reason = format!("{e:#}");
                }
                return;
            }
        };
        let _admin = self.admin.lock().await;
        if self.unopened.write().expect("not poisoned").remove(name).is_some() {
            self.volumes.write().expect("not poisoned").insert(name.to_string(), v);
            info!(volume = name, "volume opened: its targets answer again");
            self.pool.push_event("volume_opened", format!("{name}: opened, its targets answer again"));
        } else {
            // Deleted while it was being opened.
            v.close().await;
            if let Err(e) = cleave_volume::cache::Cache::remove(&self.data.cache_dir(), &uuid) {
                warn!(volume = name, error = %e, "cannot remove the cache of a deleted volume");
            }
        }
    }

    /// A target by URI, with the gateway's credentials.
    fn open_target(&self, u: &str) -> Result<cleave_target::DynTarget> {
        cleave_target::open_with(u, &self.targets).with_context(|| format!("target {u}"))
    }

    /// [`Gateway::open_target`] for a new volume's target (a directory target's folder is made).
    fn create_target(&self, u: &str) -> Result<cleave_target::DynTarget> {
        cleave_target::create_with(u, &self.targets).with_context(|| format!("target {u}"))
    }

    /// A `node://` target named in a request must be a registered node: no other address is
    /// ever sent anything (docs/security.md, "Nodes and controls").
    fn check_named_target(&self, u: &str) -> Result<()> {
        if let Some(addr) = u.strip_prefix("node://") {
            if self.pool.node_at(addr.trim_end_matches('/')).is_none() {
                bail!("target {u}: not a registered node");
            }
        }
        Ok(())
    }

    async fn open_volume(&self, sb: &Superblock) -> Result<Volume> {
        self.open_volume_with(sb, false).await
    }

    /// Opens a volume; `takeover` serves it even if another gateway claims it.
    async fn open_volume_with(&self, sb: &Superblock, takeover: bool) -> Result<Volume> {
        let keys = sb.unlock(&self.master)?;
        let targets = sb.config.targets.iter().map(|u| self.open_target(u)).collect::<Result<Vec<_>>>()?;
        let mut options = self.options()?;
        options.takeover = takeover;
        Ok(Volume::open(sb.config.clone(), keys, targets, options).await?)
    }

    /// Creates a volume, all or nothing: everything is checked first, then the superblock is
    /// stored on its targets and locally, the volume opened and access granted. If any step
    /// fails, everything stored is removed again. Returns new client credentials when
    /// `req.client` named a client that did not exist yet. `may_grant` (admins) lets the
    /// request give existing groups and clients access.
    pub async fn create(
        &self,
        req: CreateVolume,
        may_grant: bool,
    ) -> Result<(Volume, Option<crate::groups::Credentials>)> {
        let _admin = self.admin.lock().await;
        let (config, groups) = self.plan_create(&req, may_grant)?;
        let registry = self.access.snapshot();
        let mut new_group_keys = Vec::new();
        for g in &groups {
            if !self.data.has_group_key(g)? {
                new_group_keys.push(g.clone());
            }
        }
        let undo = CreateUndo {
            name: req.name.clone(),
            uuid: config.uuid.clone(),
            targets: config.targets.clone(),
            new_group_keys,
            new_client: req.client.clone().filter(|c| !registry.clients.contains_key(c)),
            new_group: req.client.as_ref().map(|_| req.name.clone()).filter(|g| !registry.groups.contains_key(g)),
        };
        match self.create_steps(&req, config, &groups).await {
            Ok(done) => Ok(done),
            Err(e) => {
                self.undo_create(undo).await;
                Err(e.context(format!("volume {:?} not created (nothing of it was kept)", req.name)))
            }
        }
    }

    /// Checks a create request and makes the new volume's configuration; stores nothing.
    fn plan_create(&self, req: &CreateVolume, may_grant: bool) -> Result<(VolumeConfig, Vec<String>)> {
        if self.exists(&req.name) {
            bail!("volume {:?} already exists", req.name);
        }
        cleave_control::access::check_name(&req.name)?;
        let groups = self.groups_for(req, may_grant)?;
        let mut config = VolumeConfig {
            name: req.name.clone(),
            uuid: uuid::Uuid::new_v4().simple().to_string(),
            size: req.size_bytes,
            chunk_size: req.chunk_size.unwrap_or(1 << 20),
            m: req.m,
            n: req.n,
            durability: req.durability.unwrap_or_default(),
            targets: req.targets.clone(),
            write_quorum: req.write_quorum,
            store_zero_chunks: req.store_zero_chunks,
        };
        if config.targets.is_empty() {
            // Placeholders, so that the checks below run before any directory is made.
            config.targets = vec![String::new(); req.n as usize];
            config.validate()?;
            config.targets = if self.pool.nodes().is_empty() {
                self.data.default_targets(req.n as usize)?
            } else {
                self.place(req)?
            };
        }
        config.validate()?;
        for u in &req.targets {
            self.check_named_target(u)?;
        }
        for u in &config.targets {
            self.open_target(u)?;
        }
        Ok((config, groups))
    }

    /// The steps of [`Gateway::create`] that store something.
    async fn create_steps(
        &self,
        req: &CreateVolume,
        config: VolumeConfig,
        groups: &[String],
    ) -> Result<(Volume, Option<crate::groups::Credentials>)> {
        let first = self.data.group_key(&self.master, &groups[0])?;
        let (mut sb, keys) = Superblock::create(config, &self.master, &groups[0], &first)?;
        for g in &groups[1..] {
            let gk = self.data.group_key(&self.master, g)?;
            sb.grant_group(&self.master, g, &gk)?;
        }
        self.label_new_targets(&sb, &keys).await?;
        self.publish(&sb).await?;
        let v = self.open_volume(&sb).await?;
        let credentials = match self.grant_created(req, groups) {
            Ok(c) => c,
            Err(e) => {
                v.close().await;
                return Err(e);
            }
        };
        self.volumes.write().expect("not poisoned").insert(sb.config.name.clone(), v.clone());
        let c = &sb.config;
        info!(volume = %c.name, size = c.size, m = c.m, n = c.n, groups = ?groups, "volume created");
        Ok((v, credentials))
    }

    /// The client group of a storage-on-demand create, then the grants of a new volume.
    fn grant_created(&self, req: &CreateVolume, groups: &[String]) -> Result<Option<crate::groups::Credentials>> {
        let credentials = match &req.client {
            Some(client) => self.ensure_client_group(client, &req.name)?,
            None => None,
        };
        self.access.update(|r| {
            for g in groups {
                r.grant(g, &req.name, Grant { mode: Mode::ReadWrite, regions: Vec::new() })?;
            }
            Ok(())
        })?;
        Ok(credentials)
    }

    /// Removes whatever a failed create stored. Each step is done even if another fails.
    async fn undo_create(&self, u: CreateUndo) {
        self.remove_objects(&u.uuid, &u.targets).await;
        let steps = [
            self.data.discard_volume(&u.name),
            cleave_volume::cache::Cache::remove(&self.data.cache_dir(), &u.uuid).map_err(Into::into),
            self.access.update(|r| {
                r.forget_volume(&u.name);
                if let Some(g) = &u.new_group {
                    r.groups.remove(g);
                }
                // Only if it got that far.
                if let Some(c) = u.new_client.as_ref().filter(|c| r.clients.contains_key(*c)) {
                    r.remove_client(c)?;
                }
                Ok(())
            }),
        ];
        let keys = u.new_group_keys.iter().map(|g| self.data.remove_group_key(g));
        for e in steps.into_iter().chain(keys).filter_map(Result::err) {
            error!(volume = %u.name, error = %format!("{e:#}"), "undoing a failed create");
        }
    }

    /// Re-replication, then the superblock put back on every target that lacks it (a
    /// replaced target starts empty), so that any M targets hold one for `cleave recover`.
    async fn rereplicate(&self, v: &Volume, progress: impl Fn(u64, u64)) -> Result<serde_json::Value> {
        let report = v.rereplicate(progress).await?;
        let sb = self.superblock(&v.config().name)?;
        let key = names::superblock(&sb.config.uuid, sb.version);
        let sealed = Bytes::from(sb.seal(&self.master)?);
        for uri in &v.status().config.targets {
            let target = self.open_target(uri)?;
            match target.put(&key, sealed.clone()).await {
                Ok(()) => {
                    info!(volume = %sb.config.name, target = %uri, "superblock restored on a target that lacked it")
                }
                Err(cleave_target::TargetError::AlreadyExists(_)) => {}
                Err(e) => bail!("restoring the superblock on {uri}: {e}"),
            }
        }
        Ok(serde_json::to_value(&report)?)
    }

    /// Creates a new volume's targets (a directory target's folder only now) and labels them.
    async fn label_new_targets(&self, sb: &Superblock, keys: &cleave_split::Keyring) -> Result<()> {
        let handles = sb.config.targets.iter().map(|u| self.create_target(u)).collect::<Result<Vec<_>>>()?;
        let volume = sb.config.uuid_bytes().context("volume uuid")?;
        cleave_volume::label::write_all(&handles, keys, &sb.config.uuid, volume, sb.config.write_quorum()).await?;
        Ok(())
    }

    /// The groups a new volume is granted to, after the rules on who may grant what: a
    /// volume for a client gets a new group of its name, never an existing one (a volume named
    /// `admin` would otherwise put the client among the local administrators); only admins
    /// name existing groups, or put an existing client in the new group.
    fn groups_for(&self, req: &CreateVolume, may_grant: bool) -> Result<Vec<String>> {
        let registry = self.access.snapshot();
        let mut groups = req.groups.clone();
        if !may_grant && groups.iter().any(|g| g != LOCAL_GROUP) {
            return Err(Refused::Forbidden("only an admin gives existing groups access to a volume".into()).into());
        }
        if let Some(client) = &req.client {
            cleave_control::access::check_name(client)?;
            if registry.groups.contains_key(&req.name) {
                return Err(Refused::Conflict(format!(
                    "a group {:?} exists already: a volume for a client needs a new group of its name",
                    req.name
                ))
                .into());
            }
            if !may_grant && registry.clients.contains_key(client) {
                return Err(Refused::Conflict(format!(
                    "client {client:?} exists already: only an admin gives it access to another volume"
                ))
                .into());
            }
            groups.push(req.name.clone());
        }
        if groups.is_empty() {
            groups.push(LOCAL_GROUP.to_string());
        }
        groups.sort();
        groups.dedup();
        for g in &groups {
            if !registry.groups.contains_key(g) && Some(g) != req.client.as_ref().map(|_| &req.name) {
                bail!("no group {g:?}");
            }
        }
        Ok(groups)
    }

    /// Stores a superblock version on the volume's targets (a write quorum must take it) and
    /// locally, then removes the older versions from the targets.
    pub(crate) async fn publish(&self, sb: &Superblock) -> Result<()> {
        let sealed = sb.seal(&self.master)?;
        let handles = sb.config.targets.iter().map(|u| self.open_target(u)).collect::<Result<Vec<_>>>()?;
        let key = names::superblock(&sb.config.uuid, sb.version);
        let puts = futures::future::join_all(handles.iter().map(|t| t.put(&key, Bytes::from(sealed.clone())))).await;
        let stored = puts.iter().filter(|r| r.is_ok()).count();
        if stored < sb.config.write_quorum() {
            let errors: Vec<String> = puts.iter().filter_map(|r| r.as_ref().err().map(|e| e.to_string())).collect();
            bail!("only {stored} targets took the superblock: {}", errors.join("; "));
        }
        self.data.save_volume(&sealed, &sb.config.name)?;
        let prefix = names::superblock_prefix(&sb.config.uuid);
        for t in &handles {
            let Ok(keys) = t.list(&prefix).await else { continue };
            for k in keys.iter().filter(|k| names::trailing_number(k).is_some_and(|v| v < sb.version)) {
                if let Err(e) = t.delete(k).await {
                    warn!(target = %t.name(), key = %k, error = %e, "cannot remove an old superblock version");
                }
            }
        }
        Ok(())
    }

    /// Deletes a volume: every object on its targets (superblock and key slots included,
    /// which crypto-erases anything left behind), its cache and local metadata.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let _admin = self.admin.lock().await;
        self.delete_locked(name).await
    }

    /// [`Gateway::delete`] with `self.admin` already held. A volume that could not be opened
    /// is deleted too: its objects on the targets that answer, and everything local.
    pub(crate) async fn delete_locked(&self, name: &str) -> Result<()> {
        let served = self.volumes.write().expect("not poisoned").remove(name);
        let config = match served {
            Some(v) => {
                v.close().await;
                // The current targets: a move may have changed them since the volume was opened.
                Some(v.status().config)
            }
            None => {
                let u = self.unopened.write().expect("not poisoned").remove(name).context("no such volume")?;
                u.sb.map(|sb| sb.config)
            }
        };
        self.data.remove_volume(name)?;
        if let Some(config) = config {
            self.remove_objects(&config.uuid, &config.targets).await;
            cleave_volume::cache::Cache::remove(&self.data.cache_dir(), &config.uuid)?;
        }
        self.access.update(|r| {
            r.forget_volume(name);
            Ok(())
        })?;
        info!(volume = %name, "volume deleted");
        Ok(())
    }

    /// Deletes every object of volume `uuid` from the targets that answer.
    async fn remove_objects(&self, uuid: &str, targets: &[String]) {
        for u in targets {
            let t = match self.open_target(u) {
                Ok(t) => t,
                Err(e) => {
                    warn!(target = %u, error = %e, "cannot open target to delete volume objects");
                    continue;
                }
            };
            match t.list(&format!("{uuid}/")).await {
                Ok(keys) => {
                    // Superblock last, so a partial delete can be resumed.
                    let (sb, rest): (Vec<_>, Vec<_>) = keys.into_iter().partition(|k| k.contains("/superblock/"));
                    for k in rest.into_iter().chain(sb) {
                        if let Err(e) = t.delete(&k).await {
                            warn!(target = %t.name(), key = %k, error = %e, "delete failed");
                        }
                    }
                }
                Err(e) => warn!(target = %t.name(), error = %e, "cannot list target to delete volume objects"),
            }
        }
    }

    /// Storage on demand: N nodes that are up and have room for their share of the
    /// volume, on distinct sites where there are enough of them, most free space first.
    fn place(&self, req: &CreateVolume) -> Result<Vec<String>> {
        let want = cleave_control::placement::Request { m: req.m, n: req.n, size_bytes: req.size_bytes };
        let placed = cleave_control::placement::choose(&self.pool.nodes(), &self.promised_on_nodes(), want)?;
        Ok(placed.into_iter().map(|a| format!("node://{a}")).collect())
    }

    /// Bytes each node (by address) may still have to store for the volumes placed on it.
    fn promised_on_nodes(&self) -> std::collections::HashMap<String, u64> {
        let mut promised = std::collections::HashMap::new();
        let configs: Vec<VolumeConfig> =
            self.volumes.read().expect("not poisoned").values().map(|v| v.status().config).collect();
        for c in configs {
            let share = c.size.div_ceil(u64::from(c.m.max(1)));
            for addr in c.targets.iter().filter_map(|t| t.strip_prefix("node://")) {
                *promised.entry(addr.trim_end_matches('/').to_string()).or_insert(0) += share;
            }
        }
        promised
    }

    pub(crate) fn get(&self, name: &str) -> Option<Volume> {
        self.volumes.read().expect("not poisoned").get(name).cloned()
    }

    /// SIGTERM: destage every volume and record a clean shutdown.
    pub async fn shutdown(&self) {
        let volumes: Vec<Volume> = self.volumes.read().expect("not poisoned").values().cloned().collect();
        for v in volumes {
            match v.shutdown(Duration::from_secs(300)).await {
                Ok(()) => info!(volume = %v.config().name, "destaged and closed"),
                Err(e) => {
                    error!(volume = %v.config().name, error = %e, "shutdown left dirty data in the cache; it is destaged at next start")
                }
            }
        }
    }
}

/// Long work (scrub, repair) as a task: queued, then running with progress, then
/// succeeded with its result or failed with its reason.
#[derive(Clone, Debug, Serialize)]
pub struct TaskView {
    pub id: u64,
    pub kind: String,
    pub volume: String,
    pub state: &'static str,
    pub progress: f64,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_unix_ms: u64,
}

#[derive(Deserialize, Default)]
struct NewTask {
    kind: String,
    volume: String,
    /// For `recover`: the volume's targets.
    #[serde(default)]
    targets: Vec<String>,
    /// For `move`: the node (id or address) or target URI to move off.
    #[serde(default)]
    from: Option<String>,
    /// For `move`: where to (default: a node chosen like a new placement).
    #[serde(default)]
    to: Option<String>,
    /// For `recover`: serve it even though another gateway claims it (that one is fenced).
    #[serde(default)]
    takeover: bool,
}

impl Gateway {
    fn update_task(&self, id: u64, f: impl FnOnce(&mut TaskView)) {
        if let Some(t) = self.tasks.lock().expect("not poisoned").get_mut(&id) {
            f(t);
        }
    }

    /// Queues a task. `targets` is for `recover`: where to find the volume.
    fn start_task_with(self: &Arc<Self>, req: NewTask) -> Result<TaskView> {
        let NewTask { kind, volume, targets, from, to, takeover } = req;
        let (kind, volume) = (kind.as_str(), volume.as_str());
        let job = match kind {
            "scrub" | "repair" => {
                let v = self.served(volume).map_err(|e| anyhow::anyhow!(e.1))?;
                Job::Scrub { volume: v, repair: kind == "repair" }
            }
            "delete" => {
                if !self.exists(volume) {
                    bail!("no volume {volume:?}");
                }
                Job::Delete
            }
            "recover" => {
                if self.exists(volume) {
                    bail!("volume {volume:?} is already served here, or known and unavailable");
                }
                if targets.is_empty() {
                    bail!("recover needs the volume's targets (at least M of them)");
                }
                let handles =
                    targets.iter().map(|u| Ok((u.clone(), self.open_target(u)?))).collect::<Result<Vec<_>>>()?;
                Job::Recover { targets: handles, takeover }
            }
            "rereplicate" => {
                let v = self.get(volume).with_context(|| format!("no volume {volume:?}"))?;
                Job::Rereplicate { volume: v }
            }
            "move" => {
                let v = self.served(volume).map_err(|e| anyhow::anyhow!(e.1))?;
                let from = from.context("move needs `from`: the node or target to move off")?;
                let (index, to) = self.plan_move(&v, &from, to)?;
                Job::Move { volume: v, index, to }
            }
            other => bail!("unknown task kind {other:?}: use scrub, repair, rereplicate, delete, recover or move"),
        };
        let task = {
            let mut tasks = self.tasks.lock().expect("not poisoned");
            let id = tasks.keys().next_back().map_or(1, |k| k + 1);
            let t = TaskView {
                id,
                kind: kind.to_string(),
                volume: volume.to_string(),
                state: "queued",
                progress: 0.0,
                result: None,
                error: None,
                created_unix_ms: cleave_control::pool::now_ms(),
            };
            tasks.insert(id, t.clone());
            t
        };
        let gw = self.clone();
        let id = task.id;
        let (kind, volume) = (kind.to_string(), volume.to_string());
        tokio::spawn(async move {
            let Ok(_slot) = gw.task_slot.clone().acquire_owned().await else { return };
            gw.update_task(id, |t| t.state = "running");
            let progress = |done: u64, total: u64| {
                let p = if total == 0 { 1.0 } else { done as f64 / total as f64 };
                gw.update_task(id, |t| t.progress = p);
            };
            let outcome: Result<serde_json::Value> = match job {
                Job::Scrub { volume, repair } => cleave_volume::scrub::scrub(&volume, repair, progress)
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| Ok(serde_json::to_value(&r)?)),
                Job::Delete => gw.delete(&volume).await.map(|()| serde_json::json!({ "deleted": volume })),
                Job::Recover { targets, takeover } => gw.recover(&volume, targets, takeover, progress).await,
                Job::Move { volume, index, to } => gw.move_share(&volume, index, to, progress).await,
                Job::Rereplicate { volume } => gw.rereplicate(&volume, progress).await,
            };
            match outcome {
                Ok(result) => gw.update_task(id, |t| {
                    t.state = "succeeded";
                    t.progress = 1.0;
                    t.result = Some(result);
                }),
                Err(e) => gw.update_task(id, |t| {
                    t.state = "failed";
                    t.error = Some(format!("{e:#}"));
                }),
            }
            gw.pool.push_event(&format!("{kind}_done"), format!("task {id} on {volume}"));
        });
        Ok(task)
    }

    /// Serves a volume found on its targets: the newest superblock this master key opens,
    /// then the journal replayed from the targets (for a gateway that lost its data directory).
    async fn recover(
        &self,
        name: &str,
        given: Vec<(String, cleave_target::DynTarget)>,
        takeover: bool,
        progress: impl Fn(u64, u64),
    ) -> Result<serde_json::Value> {
        let _admin = self.admin.lock().await;
        if self.exists(name) {
            bail!("volume {name:?} is already exists here");
        }
        let handles: Vec<_> = given.iter().map(|(_, t)| t.clone()).collect();
        let mut sb = cleave_volume::recover::find_superblock(&handles, &self.master, name).await?;
        progress(1, 4);
        let keys = sb.unlock(&self.master).context("no key slot this master key opens (crypto-erased?)")?;
        // Serve from the targets given, each at the share index its label names.
        let placed =
            cleave_volume::label::place(&given, &keys, &sb.config.uuid, sb.config.uuid_bytes().context("uuid")?)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        if placed.iter().any(|(i, uri)| sb.config.targets.get(*i) != Some(uri)) {
            for (i, uri) in placed {
                *sb.config.targets.get_mut(i).context("label names a share index past N")? = uri;
            }
            sb.version += 1;
            self.publish(&sb).await?;
        } else {
            self.data.save_volume(&sb.seal(&self.master)?, name)?;
        }
        progress(2, 4);
        let v = match self.open_volume_with(&sb, takeover).await {
            Ok(v) => v,
            Err(e) => {
                let _ = self.data.discard_volume(name);
                return Err(e);
            }
        };
        progress(3, 4);
        if let Err(e) = cleave_volume::recover::check_against_journal(&v, &handles).await {
            v.close().await;
            let _ = self.data.discard_volume(name);
            return Err(anyhow::anyhow!("{e}"));
        }
        // Grants are control's records, not the volume's: the admin group gets its access back if
        // it holds a slot; other groups are granted again by the administrator.
        if sb.has_group(LOCAL_GROUP) {
            let full = Grant { mode: Mode::ReadWrite, regions: Vec::new() };
            self.access.update(|r| Ok(r.grant(LOCAL_GROUP, name, full)?))?;
        }
        let status = v.status();
        self.volumes.write().expect("not poisoned").insert(name.to_string(), v);
        info!(volume = name, version = sb.version, "volume recovered from its targets");
        Ok(serde_json::json!({
            "volume": name,
            "superblock_version": sb.version,
            "journal_seq": status.journal_seq,
            "mapped_chunks": status.mapped_chunks,
            "key_slots": sb.slots.groups().collect::<Vec<_>>(),
        }))
    }
}

impl Gateway {
    /// Which share moves, and where to: `to`, or the up node with the most room that the
    /// volume does not use yet, on a site it does not use yet if there is one.
    fn plan_move(&self, v: &Volume, from: &str, to: Option<String>) -> Result<(usize, String)> {
        let config = v.status().config;
        let nodes = self.pool.nodes();
        let from_addr = nodes.iter().find(|n| n.id == from).map_or(from.to_string(), |n| n.address.to_string());
        let index = config
            .targets
            .iter()
            .position(|u| u == from || *u == format!("node://{from_addr}"))
            .with_context(|| format!("volume {:?} has no target {from:?}", config.name))?;
        if let Some(to) = to {
            if config.targets.contains(&to) {
                bail!("volume {:?} already uses {to}", config.name);
            }
            self.check_named_target(&to)?;
            return Ok((index, to));
        }
        let per_share = config.size.div_ceil(config.m.max(1) as u64);
        let used_sites: Vec<&str> = nodes
            .iter()
            .filter(|n| {
                config.targets.iter().enumerate().any(|(j, u)| j != index && *u == format!("node://{}", n.address))
            })
            .map(|n| n.site.as_str())
            .collect();
        let mut candidates: Vec<_> = nodes
            .iter()
            .filter(|n| n.status == cleave_control::pool::NodeStatus::Up && n.free_bytes >= per_share)
            .filter(|n| !config.targets.contains(&format!("node://{}", n.address)))
            .collect();
        candidates.sort_by_key(|n| (used_sites.contains(&n.site.as_str()), std::cmp::Reverse(n.free_bytes)));
        let best = candidates.first().with_context(|| {
            format!(
                "cannot move share {index} of {:?}: no other node is up with {} free",
                config.name,
                ByteSize(per_share)
            )
        })?;
        Ok((index, format!("node://{}", best.address)))
    }

    /// Moves share `index` of a volume to target `to`: a new superblock naming it, the volume
    /// switched over, every chunk rewritten (repair) and a checkpoint, then the old target's
    /// objects removed if it can still be reached.
    async fn move_share(
        &self,
        v: &Volume,
        index: usize,
        to: String,
        progress: impl Fn(u64, u64),
    ) -> Result<serde_json::Value> {
        let name = v.config().name.clone();
        let handle = self.create_target(&to)?;
        let old = {
            let _admin = self.admin.lock().await;
            let mut sb = self
                .data
                .load_volumes(&self.master)?
                .into_iter()
                .find(|sb| sb.config.name == name)
                .with_context(|| format!("no volume {name:?}"))?;
            let old = std::mem::replace(&mut sb.config.targets[index], to.clone());
            sb.version += 1;
            self.publish(&sb).await?;
            v.replace_target(index, to.clone(), handle).await?;
            old
        };
        info!(volume = %name, index, from = %old, to = %to, "share moved; rewriting chunks");
        let report = cleave_volume::scrub::scrub(v, true, |done, total| progress(done, total + 1)).await?;
        v.checkpoint_now().await?;
        let mut removed = 0usize;
        let mut cleanup_error = None;
        match self.open_target(&old) {
            Ok(t) => match t.list(&format!("{}/", v.config().uuid)).await {
                Ok(keys) => {
                    for k in keys {
                        if t.delete(&k).await.is_ok() {
                            removed += 1;
                        }
                    }
                }
                Err(e) => cleanup_error = Some(e.to_string()),
            },
            Err(e) => cleanup_error = Some(e.to_string()),
        }
        self.pool.push_event("volume_moved", format!("{name}: share {index} from {old} to {to}"));
        Ok(serde_json::json!({
            "volume": name, "share": index, "from": old, "to": to,
            "chunks_rewritten": report.chunks_repaired,
            "chunks_unrecoverable": report.chunks_unrecoverable,
            "old_objects_removed": removed,
            "old_target_error": cleanup_error,
        }))
    }
}

/// What a task does.
enum Job {
    Scrub { volume: Volume, repair: bool },
    Delete,
    Recover { targets: Vec<(String, cleave_target::DynTarget)>, takeover: bool },
    Move { volume: Volume, index: usize, to: String },
    Rereplicate { volume: Volume },
}

/// Only an admin may name a target other than a registered node: a `file://` URI makes folders
/// and reads files anywhere the gateway can, an `s3://` URI sends requests anywhere.
fn check_may_name(who: &crate::users::Principal, targets: &[&String]) -> Result<(), ApiError> {
    let other = targets.iter().find(|u| !u.starts_with("node://"));
    match other {
        Some(u) if who.role < cleave_control::users::Role::Admin => Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "{} has the role {}; only an admin may name the target {u} (operators may name registered nodes)",
                who.name, who.role
            ),
        )),
        _ => Ok(()),
    }
}

async fn create_task(
    State(gw): State<Shared>,
    axum::Extension(who): axum::Extension<crate::users::Principal>,
    Json(req): Json<NewTask>,
) -> Result<Response, ApiError> {
    let named: Vec<&String> = req.targets.iter().chain(req.to.iter()).collect();
    check_may_name(&who, &named)?;
    let t = gw.start_task_with(req).map_err(bad_request)?;
    Ok((StatusCode::ACCEPTED, Json(t)).into_response())
}

async fn list_tasks(State(gw): State<Shared>) -> Json<Vec<TaskView>> {
    Json(gw.tasks.lock().expect("not poisoned").values().cloned().collect())
}

async fn show_task(State(gw): State<Shared>, Path(id): Path<u64>) -> Result<Json<TaskView>, ApiError> {
    gw.tasks
        .lock()
        .expect("not poisoned")
        .get(&id)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no task {id}")))
}

pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

pub(crate) fn bad_request(e: anyhow::Error) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, format!("{e:#}"))
}

pub(crate) type Shared = Arc<Gateway>;

async fn list_volumes(State(gw): State<Shared>) -> Json<Vec<VolumeView>> {
    Json(gw.views())
}

/// Refusals of a request that is well formed, with their own statuses.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
}

fn refused_or_bad(e: anyhow::Error) -> ApiError {
    match e.downcast_ref::<Refused>() {
        Some(Refused::Conflict(m)) => ApiError(StatusCode::CONFLICT, m.clone()),
        Some(Refused::Forbidden(m)) => ApiError(StatusCode::FORBIDDEN, m.clone()),
        None => bad_request(e),
    }
}

async fn create_volume(
    State(gw): State<Shared>,
    Extension(who): Extension<crate::users::Principal>,
    Json(req): Json<CreateVolume>,
) -> Result<Response, ApiError> {
    check_may_name(&who, &req.targets.iter().collect::<Vec<_>>())?;
    let may_grant = who.role >= cleave_control::users::Role::Admin;
    let (v, credentials) = gw.create(req, may_grant).await.map_err(refused_or_bad)?;
    let mut body = serde_json::to_value(gw.view(&v)).map_err(|e| bad_request(e.into()))?;
    if let Some(c) = credentials {
        body["credentials"] = serde_json::to_value(c).map_err(|e| bad_request(e.into()))?;
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn show_volume(State(gw): State<Shared>, Path(name): Path<String>) -> Result<Json<VolumeView>, ApiError> {
    gw.show(&name).map(Json).ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no volume {name:?}")))
}

async fn delete_volume(State(gw): State<Shared>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    if !gw.exists(&name) {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no volume {name:?}")));
    }
    gw.delete(&name).await.map_err(bad_request)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ScrubQuery {
    #[serde(default)]
    repair: bool,
}

async fn scrub_volume(
    State(gw): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<ScrubQuery>,
) -> Result<Json<cleave_volume::scrub::ScrubReport>, ApiError> {
    let v = gw.served(&name)?;
    let report = cleave_volume::scrub::scrub(&v, q.repair, |_, _| {})
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(report))
}

async fn flush_volume(State(gw): State<Shared>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    let v = gw.served(&name)?;
    v.destage_all(Duration::from_secs(300))
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn forward_to_child(
    State(gw): State<Shared>,
    Path((id, path)): Path<(String, String)>,
    Extension(who): Extension<crate::users::Principal>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    crate::hierarchy::forward(&gw.hierarchy, &id, method, &path, uri.query(), who.role, body).await
}

async fn list_nodes(State(gw): State<Shared>, Query(q): Query<crate::hierarchy::NodesQuery>) -> Response {
    crate::hierarchy::list_nodes(&gw.hierarchy, q).await
}

async fn list_controls(State(gw): State<Shared>) -> Response {
    crate::hierarchy::list_controls(&gw.hierarchy)
}

async fn list_events(State(gw): State<Shared>) -> Json<Vec<cleave_control::pool::Event>> {
    Json(gw.pool.events())
}

/// The OpenAPI document of this API, public so that tools can read it.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

pub fn router(gw: Shared) -> Router {
    let public = Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/login", post(crate::users::login))
        .merge(crate::console::routes())
        .with_state(gw.clone());
    let private = Router::new()
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/controls", get(list_controls))
        .route("/api/v1/controls/{id}/api/{*path}", any(forward_to_child))
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/tasks", get(list_tasks).post(create_task))
        .route("/api/v1/tasks/{id}", get(show_task))
        .route("/api/v1/volumes", get(list_volumes).post(create_volume))
        .route("/api/v1/volumes/{name}", get(show_volume).delete(delete_volume))
        .route("/api/v1/volumes/{name}/scrub", post(scrub_volume))
        .route("/api/v1/volumes/{name}/destage", post(flush_volume))
        .merge(crate::groups::routes())
        .merge(crate::users::routes())
        .layer(middleware::from_fn_with_state(gw.clone(), crate::users::auth))
        .with_state(gw);
    public.merge(private)
}

/// The NBD URI of a volume on the local administrators' socket, as qemu and libnbd take it.
fn unix_uri(volume: &str, socket: &std::path::Path) -> String {
    format!("nbd+unix:///{volume}?socket={}", socket.display())
}

/// Binds `DIR/nbd.sock` (mode 0600), the local administrators' way in: reaching it proves the
/// caller may enter the data directory. Returns the listener and the socket's absolute path.
fn bind_local_socket(root: &std::path::Path) -> Result<(tokio::net::UnixListener, PathBuf)> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = root.canonicalize().with_context(|| format!("resolving {}", root.display()))?.join("nbd.sock");
    // sun_path holds 108 bytes with the closing NUL.
    if path.as_os_str().len() > 107 {
        bail!("the NBD socket path {} is longer than a Unix socket allows: use a shorter --data-dir", path.display());
    }
    // The configuration database is open, so no other server uses this directory: a socket
    // left here is from a server that stopped.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(&path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(&path).with_context(|| format!("NBD on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, path))
}

/// `cleave control`: the API and the node pool, without an NBD front end.
pub async fn control(args: ControlArgs) -> Result<()> {
    run(args.data_dir, None, args.http, ByteSize(1 << 30), args.control, Vec::new()).await
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    run(args.data_dir, Some(args.nbd), args.http, args.cache_size, args.control, args.tls_names).await
}

async fn run(
    data_dir: PathBuf,
    nbd: Option<SocketAddr>,
    http: SocketAddr,
    cache_size: ByteSize,
    control: ControlFlags,
    tls_names: Vec<String>,
) -> Result<()> {
    let data = DataDir::new(data_dir)?;
    let master = data.master_key()?;
    data.group_key(&master, LOCAL_GROUP)?;
    let access = Arc::new(AccessControl::load(&data)?);
    let token = data.admin_token()?;
    let users = crate::users::UserStore::load(&data)?;
    let secret = data.cluster_secret()?;
    let pool = cleave_control::pool::Pool::started_now();
    let node_ca = crate::nodetls::node_ca(&data)?;
    pool.set_enroller(Arc::new(crate::nodetls::ControlEnroller::new(&data, node_ca.clone())?));
    let targets = crate::nodetls::target_credentials(&node_ca, pool.clone())?;
    let udp = tokio::net::UdpSocket::bind(control.autoconfig)
        .await
        .with_context(|| format!("auto-configuration on {}", control.autoconfig))?;
    let autoconfig_addr = udp.local_addr()?;
    tokio::spawn(cleave_control::autoconfig::listener::run_listener(
        udp,
        secret,
        pool.clone(),
        Duration::from_secs_f64(control.heartbeat_timeout_secs.max(0.1)),
    ));
    let nbd_listener = match nbd {
        Some(a) => Some(tokio::net::TcpListener::bind(a).await.with_context(|| format!("NBD on {a}"))?),
        None => None,
    };
    let local_socket = match nbd {
        Some(_) => Some(bind_local_socket(&data.root)?),
        None => None,
    };
    let nbd_socket = local_socket.as_ref().map(|(_, path)| path.clone());
    let args_http = http;
    let http_listener =
        tokio::net::TcpListener::bind(args_http).await.with_context(|| format!("admin API on {args_http}"))?;
    let nbd_addr = match &nbd_listener {
        Some(l) => l.local_addr()?,
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let http_addr = http_listener.local_addr()?;
    let hierarchy = crate::hierarchy::start(&control.hierarchy, &data, secret, node_ca, pool.clone(), http_addr)?;
    let gw = Arc::new(Gateway {
        data,
        master,
        access,
        users,
        token,
        cache_bytes: cache_size.0,
        nbd_addr,
        nbd_socket,
        volumes: RwLock::new(BTreeMap::new()),
        unopened: RwLock::new(BTreeMap::new()),
        pool,
        hierarchy,
        tasks: Mutex::new(BTreeMap::new()),
        task_slot: Arc::new(tokio::sync::Semaphore::new(1)),
        admin: tokio::sync::Mutex::new(()),
        targets,
    });
    let stored = gw.data.stored_volumes(&gw.master)?;
    if stored.is_empty() && nbd.is_some() {
        info!("first run: creating volume demo (1 GiB, 3-of-5 on five directory targets)");
        gw.create(
            CreateVolume {
                name: "demo".into(),
                size_bytes: 1 << 30,
                m: 3,
                n: 5,
                chunk_size: None,
                durability: None,
                write_quorum: None,
                store_zero_chunks: false,
                targets: Vec::new(),
                groups: Vec::new(),
                client: None,
            },
            true,
        )
        .await?;
    }
    gw.open_stored(stored).await?;
    tokio::spawn(gw.clone().reopen_unavailable());
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(h.trim().to_string());
    }
    if !nbd_addr.ip().is_unspecified() {
        names.push(nbd_addr.ip().to_string());
    }
    names.extend(tls_names);
    names.dedup();
    let tls = gw.access.tls_config(&names).context("NBD TLS configuration")?;
    let nbd_task = tokio::spawn({
        let gw = gw.clone();
        async move {
            match (nbd_listener, local_socket) {
                (Some(tcp), Some((unix, _))) => {
                    let server = Arc::new(Server::new(gw, ServerConfig { tls: Some(tls), ..Default::default() }));
                    tokio::select! {
                        r = server.clone().serve(tcp) => r,
                        r = server.serve_unix(unix) => r,
                    }
                }
                _ => std::future::pending().await,
            }
        }
    });
    tokio::spawn(gw.clone().watch_health());
    let app = router(gw.clone());
    let https = control.http_tls.enabled(http_addr);
    let http_task = if https {
        let mut names = names.clone();
        if !http_addr.ip().is_unspecified() {
            names.push(http_addr.ip().to_string());
        }
        let config = gw.access.https_config(&names).context("admin API TLS configuration")?;
        let listener = crate::https::TlsListener::new(http_listener, config)?;
        tokio::spawn(async move { axum::serve(listener, app).await })
    } else {
        tokio::spawn(async move { axum::serve(http_listener, app).await })
    };
    let scheme = if https { "https" } else { "http" };
    if let Some(path) = &gw.nbd_socket {
        for name in gw.list() {
            println!("NBD: {}", unix_uri(&name, path));
        }
        println!("NBD over TLS, for clients with a certificate: nbds://{nbd_addr}/VOLUME");
    }
    println!(
        "autoconfig: udp://{autoconfig_addr} (cluster secret in {})",
        gw.data.root.join("cluster.secret").display()
    );
    println!(
        "console: {scheme}://{http_addr}/ (user {}, password in {})",
        crate::users::FIRST_ADMIN,
        gw.data.root.join("admin.password").display()
    );
    println!("API: {scheme}://{http_addr}/api/v1 (token in {})", gw.data.root.join("admin.token").display());
    if https {
        println!("API certificate authority: {}", gw.data.root.join("tls").join("ca.crt").display());
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: destaging and shutting down"),
        _ = tokio::signal::ctrl_c() => info!("interrupt: destaging and shutting down"),
        r = nbd_task => error!(result = ?r, "NBD server stopped"),
        r = http_task => error!(result = ?r, "admin API stopped"),
    }
    gw.hierarchy.leave().await;
    gw.shutdown().await;
    Ok(())
}
