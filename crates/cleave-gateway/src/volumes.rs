//! Volumes: create (all or nothing), delete, superblock versions, placement on the node
//! pool, and who may name which targets.

use anyhow::{bail, Context};
use bytes::Bytes;
use cleave_control::access::{Grant, Mode, LOCAL_GROUP};
use cleave_control::placement;
use cleave_control::users::Role;
use cleave_target::TargetUri;
use cleave_volume::meta::names;
use cleave_volume::{Durability, Superblock, Volume, VolumeConfig};
use serde::{Deserialize, Serialize};

use crate::appliance::Primary;
use tracing::{error, info, warn};

use crate::error::{GatewayError, Result};
use crate::gateway::Gateway;
use crate::groups::Credentials;
use crate::users::Principal;
use crate::views::VolumeView;

/// Body of `POST /api/v1/volumes`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct CreateVolume {
    /// 1-64 letters, digits, '-', '_' or '.'.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$", min_length = 1, max_length = 64)]
    pub name: String,
    /// A positive multiple of 512 bytes, at most 1 EiB.
    #[schema(minimum = 512, maximum = 1152921504606846976_u64, multiple_of = 512)]
    pub size_bytes: u64,
    /// Shares needed to read (M of N). Without it, M follows N: N-2 from 4 shares up, 2 of 3.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64)]
    pub m: Option<u8>,
    /// Shares written (N), one per target; M <= N. Without M and N: as many as there are
    /// targets named, or up to 5 nodes of the pool with room (3 at least), or 5 directory
    /// targets when no node has registered.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64)]
    pub n: Option<u8>,
    /// A power of two from 4 KiB to 64 MiB (default 1 MiB).
    #[serde(default)]
    #[schema(minimum = 4096, maximum = 67108864, multiple_of = 4096)]
    pub chunk_size: Option<u32>,
    #[serde(default)]
    pub durability: Option<Durability>,
    /// Shares a write needs before it counts (M..=N); default max(M, min(N-1, M+1)).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64)]
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
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$", min_length = 1, max_length = 64)]
    pub client: Option<String>,
}
impl CreateVolume {
    /// A request with the defaults: `m`-of-`n` on default targets, for the local admin group.
    pub fn new(name: &str, size_bytes: u64, m: u8, n: u8) -> Self {
        CreateVolume { m: Some(m), n: Some(n), ..CreateVolume::sized(name, size_bytes) }
    }

    /// A request with the defaults, the layout included (chosen when the volume is created).
    pub fn sized(name: &str, size_bytes: u64) -> Self {
        CreateVolume {
            name: name.to_string(),
            size_bytes,
            m: None,
            n: None,
            chunk_size: None,
            durability: None,
            write_quorum: None,
            store_zero_chunks: false,
            targets: Vec::new(),
            groups: Vec::new(),
            client: None,
        }
    }
}

/// A new volume, and the credentials of the client it made (storage on demand), if any.
#[derive(Debug)]
pub struct Created {
    pub volume: VolumeView,
    pub credentials: Option<Credentials>,
}

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

/// Only an admin may name a target other than a registered node: a `file://` URI makes folders
/// and reads files anywhere the gateway can, an `s3://` URI sends requests anywhere.
pub fn check_may_name<'a>(who: &Principal, targets: impl IntoIterator<Item = &'a String>) -> Result<()> {
    let other = targets.into_iter().find(|u| !u.starts_with("node://"));
    match other {
        Some(u) if who.role < Role::Admin => Err(GatewayError::Forbidden(format!(
            "{} has the role {}; only an admin may name the target {u} (operators may name registered nodes)",
            who.name, who.role
        ))),
        _ => Ok(()),
    }
}

impl Gateway {
    /// Creates a volume, all or nothing: everything is checked first, then the superblock is
    /// stored on its targets and locally, the volume opened and access granted. If any step
    /// fails, everything stored is removed again. Returns new client credentials when
    /// `req.client` named a client that did not exist yet. `may_grant` (admins) lets the
    /// request give existing groups and clients access.
    pub async fn create(&self, req: CreateVolume, may_grant: bool) -> Result<Created> {
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
        self.claim_new(&req.name)?;
        match self.create_steps(&req, config, &groups).await {
            Ok((v, credentials)) => Ok(Created { volume: self.view(&v), credentials }),
            Err(e) => {
                self.undo_create(undo).await;
                if let Some(a) = &self.appliance {
                    a.release(&req.name);
                }
                Err(GatewayError::from(e)
                    .context(format!("volume {:?} not created (nothing of it was kept)", req.name)))
            }
        }
    }

    /// In an appliance, a new volume's name must be free on every gateway: this one claims it.
    fn claim_new(&self, name: &str) -> Result<()> {
        let Some(a) = &self.appliance else { return Ok(()) };
        match a.claim_new(name).map_err(anyhow::Error::from)? {
            Primary::Me => Ok(()),
            Primary::Other(primary) => {
                Err(GatewayError::Invalid(format!("volume {name:?} already exists (served by gateway {primary})")))
            }
        }
    }

    /// Checks a create request and makes the new volume's configuration; stores nothing.
    fn plan_create(&self, req: &CreateVolume, may_grant: bool) -> anyhow::Result<(VolumeConfig, Vec<String>)> {
        if self.exists(&req.name) {
            // 400 rather than 409: the API has always answered so, and clients rely on it.
            bail!(GatewayError::Invalid(format!("volume {:?} already exists", req.name)));
        }
        cleave_control::access::check_name(&req.name)?;
        let groups = self.groups_for(req, may_grant)?;
        let (m, n) = self.layout(req)?;
        let mut config = VolumeConfig {
            name: req.name.clone(),
            uuid: uuid::Uuid::new_v4().simple().to_string(),
            size: req.size_bytes,
            chunk_size: req.chunk_size.unwrap_or(1 << 20),
            m,
            n,
            durability: req.durability.unwrap_or_default(),
            targets: req.targets.clone(),
            write_quorum: req.write_quorum,
            store_zero_chunks: req.store_zero_chunks,
        };
        if config.targets.is_empty() {
            // Placeholders, so that the checks below run before any directory is made.
            config.targets = vec![String::new(); usize::from(n)];
            config.validate()?;
            config.targets = if self.pool.nodes().is_empty() {
                self.data.default_targets(usize::from(n))?
            } else {
                self.place(m, n, req.size_bytes)?
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
    ) -> anyhow::Result<(Volume, Option<Credentials>)> {
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
    fn grant_created(&self, req: &CreateVolume, groups: &[String]) -> anyhow::Result<Option<Credentials>> {
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

    /// Creates a new volume's targets (a directory target's folder only now) and labels them.
    async fn label_new_targets(&self, sb: &Superblock, keys: &cleave_split::Keyring) -> anyhow::Result<()> {
        let handles = sb.config.targets.iter().map(|u| self.create_target(u)).collect::<anyhow::Result<Vec<_>>>()?;
        let volume = sb.config.uuid_bytes().context("volume uuid")?;
        cleave_volume::label::write_all(&handles, keys, &sb.config.uuid, volume, sb.config.write_quorum()).await?;
        Ok(())
    }

    /// The groups a new volume is granted to, after the rules on who may grant what: a
    /// volume for a client gets a new group of its name, never an existing one (a volume named
    /// `admin` would otherwise put the client among the local administrators); only admins
    /// name existing groups, or put an existing client in the new group.
    fn groups_for(&self, req: &CreateVolume, may_grant: bool) -> anyhow::Result<Vec<String>> {
        let registry = self.access.snapshot();
        let mut groups = req.groups.clone();
        if !may_grant && groups.iter().any(|g| g != LOCAL_GROUP) {
            bail!(GatewayError::Forbidden("only an admin gives existing groups access to a volume".into()));
        }
        if let Some(client) = &req.client {
            cleave_control::access::check_name(client)?;
            if registry.groups.contains_key(&req.name) {
                bail!(GatewayError::Conflict(format!(
                    "a group {:?} exists already: a volume for a client needs a new group of its name",
                    req.name
                )));
            }
            if !may_grant && registry.clients.contains_key(client) {
                bail!(GatewayError::Conflict(format!(
                    "client {client:?} exists already: only an admin gives it access to another volume"
                )));
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
    pub(crate) async fn publish(&self, sb: &Superblock) -> anyhow::Result<()> {
        let sealed = sb.seal(&self.master)?;
        let handles = sb.config.targets.iter().map(|u| self.open_target(u)).collect::<anyhow::Result<Vec<_>>>()?;
        let key = names::superblock(&sb.config.uuid, sb.version);
        let puts = futures::future::join_all(handles.iter().map(|t| t.put(&key, Bytes::from(sealed.clone())))).await;
        let stored = puts.iter().filter(|r| r.is_ok()).count();
        if stored < sb.config.write_quorum() {
            let errors: Vec<String> = puts.iter().filter_map(|r| r.as_ref().err().map(|e| e.to_string())).collect();
            bail!(GatewayError::Unavailable(format!(
                "only {stored} targets took the superblock: {}",
                errors.join("; ")
            )));
        }
        match self.appliance.as_ref().and_then(|a| a.guard(&sb.config.name)) {
            Some(guard) => self.data.save_owned_volume(&sealed, &sb.config.name, &guard)?,
            None => self.data.save_volume(&sealed, &sb.config.name)?,
        }
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
        if !self.exists(name) {
            return Err(GatewayError::NotFound(format!("no volume {name:?}")));
        }
        if self.mirror_of(name).is_some() {
            return Err(GatewayError::Conflict(format!(
                "volume {name:?} has a mirror: remove it first (cleave mirror remove)"
            )));
        }
        if let Some(primary) = self.unopened.read().expect("not poisoned").get(name).and_then(|u| u.primary.clone()) {
            return Err(GatewayError::Conflict(format!(
                "volume {name:?} is served by gateway {primary}: delete it there"
            )));
        }
        let _admin = self.admin.lock().await;
        self.delete_locked(name).await?;
        if let Some(a) = &self.appliance {
            a.release(name);
            if let Err(e) = a.set_preferred(name, &[]) {
                warn!(volume = name, error = %e, "cannot drop the order of a deleted volume");
            }
        }
        Ok(())
    }

    /// [`Gateway::delete`] with `self.admin` already held. A volume that could not be opened
    /// is deleted too: its objects on the targets that answer, and everything local.
    pub(crate) async fn delete_locked(&self, name: &str) -> anyhow::Result<()> {
        let served = self.volumes.write().expect("not poisoned").remove(name);
        let config = match served {
            Some(v) => {
                v.close().await;
                // The current targets: a move may have changed them since the volume was opened.
                Some(v.status().config)
            }
            None => {
                let u = self.unopened.write().expect("not poisoned").remove(name);
                let u = u.ok_or_else(|| GatewayError::NotFound("no such volume".into()))?;
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
        self.forget_reservations(name);
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
    fn place(&self, m: u8, n: u8, size_bytes: u64) -> anyhow::Result<Vec<String>> {
        let want = cleave_control::placement::Request { m, n, size_bytes };
        let placed = cleave_control::placement::choose(&self.pool.nodes(), &self.promised_on_nodes(), want)?;
        Ok(placed.into_iter().map(|a| TargetUri::node(a).to_string()).collect())
    }

    /// M and N of a new volume: as asked, or chosen (README, "Storage nodes"). Without both, N is
    /// the number of targets named, else as many nodes of the pool as have room (at most 5,
    /// at least 3), else 5 directory targets; M follows N ([`placement::default_m`]).
    fn layout(&self, req: &CreateVolume) -> Result<(u8, u8)> {
        let targets = u8::try_from(req.targets.len()).ok().filter(|&t| t > 0);
        match (req.m, req.n.or(targets)) {
            (Some(m), Some(n)) => Ok((m, n)),
            (None, Some(n)) => Ok((placement::default_m(n), n)),
            (Some(_), None) => {
                Err(GatewayError::Invalid("m needs n: pass both, or neither to have them chosen".into()))
            }
            (None, None) if self.pool.nodes().is_empty() => Ok((3, placement::DEFAULT_N)),
            (None, None) => {
                Ok(placement::choose_layout(&self.pool.nodes(), &self.promised_on_nodes(), req.size_bytes)?)
            }
        }
    }

    /// Bytes each node (by address) may still have to store for the volumes placed on it.
    pub(crate) fn promised_on_nodes(&self) -> std::collections::HashMap<String, u64> {
        let mut promised = std::collections::HashMap::new();
        for c in self.served_volumes().iter().map(|v| v.status().config) {
            let share = c.size.div_ceil(u64::from(c.m.max(1)));
            for addr in c.targets.iter().filter_map(|t| t.strip_prefix("node://")) {
                *promised.entry(addr.trim_end_matches('/').to_string()).or_insert(0) += share;
            }
        }
        promised
    }

    /// Verifies every share of a volume; with `repair`, restores full redundancy.
    pub async fn scrub(&self, name: &str, repair: bool) -> Result<cleave_volume::scrub::ScrubReport> {
        let v = self.served(name)?;
        Ok(cleave_volume::scrub::scrub(&v, repair, |_, _| {}).await?)
    }

    /// Writes every dirty chunk of a volume to its targets.
    pub async fn destage(&self, name: &str) -> Result<()> {
        let v = self.served(name)?;
        Ok(v.destage_all(std::time::Duration::from_secs(300)).await?)
    }
}
