//! The gateway's life: start-up (the stored volumes opened, each on its own), the volumes
//! that could not be opened retried in the background, and the health watcher that records
//! every change as an event and starts re-replication once missing targets answer again; in
//! an appliance, the lease that lets this gateway serve.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_control::access::{Grant, Mode, LOCAL_GROUP};
use cleave_control::config::ConfigError;
use cleave_volume::{Health, Superblock, Volume};
use tracing::{info, warn};

use crate::appliance::{blocking, Appliance, Primary};
use crate::error::{GatewayError, Result};
use crate::events::EventKind;
use crate::gateway::{Gateway, Unopened};
use crate::health::{targets_down, HealthState};
use crate::tasks::{NewTask, TaskKind};
use crate::volumes::CreateVolume;

/// What became of a stored volume at this gateway.
pub(crate) enum Opened {
    Served(Volume),
    /// Another gateway of the appliance serves it.
    Elsewhere(String),
    Failed(anyhow::Error),
}

fn served_by(primary: &str) -> String {
    if primary.is_empty() {
        "another gateway of the appliance is taking it over".into()
    } else {
        format!("served by gateway {primary}")
    }
}

/// How often volumes that could not be opened are tried again.
pub const REOPEN_EVERY: Duration = Duration::from_secs(3);

/// How long a planned switchover may take to destage a volume before it is called off.
const HAND_OVER_WITHIN: Duration = Duration::from_secs(120);

/// How long start-up waits for one volume to open before it serves the others and leaves
/// that one to the background retries (targets that hang must not hold the gateway).
const OPEN_AT_START: Duration = Duration::from_secs(30);

impl Gateway {
    /// Opens the stored volumes (on a first run with `demo`, after creating the volume `demo`),
    /// then starts the background work: retrying the volumes that could not be opened, and
    /// watching health.
    pub async fn start(self: &Arc<Self>, demo: bool) -> Result<()> {
        if let Some(a) = &self.appliance {
            tokio::spawn(self.clone().keep_lease(a.clone()));
            tokio::spawn(self.clone().check_paths(a.clone()));
            // Administering any gateway is administering them all.
            self.access.follow();
            self.users.follow();
            self.webhook.follow(self.master.clone());
        }
        let stored = self.data.stored_volumes(&self.master)?;
        if stored.is_empty() && demo {
            info!("first run: creating volume demo (1 GiB, 3-of-5 on five directory targets)");
            self.create(CreateVolume::new("demo", 1 << 30, 3, 5), true).await?;
        }
        self.open_stored(stored).await?;
        tokio::spawn(self.clone().reopen_unavailable());
        tokio::spawn(self.clone().watch_health());
        Ok(())
    }

    /// Opens the stored volumes, each on its own: one that cannot open does not keep the
    /// others from being served. It is listed as unavailable, with the reason, and retried.
    async fn open_stored(&self, stored: Vec<(String, anyhow::Result<Superblock>)>) -> anyhow::Result<()> {
        for sb in stored.iter().filter_map(|(_, sb)| sb.as_ref().ok()) {
            // Data directories from before access control: the admin slot means local access.
            let name = &sb.config.name;
            if sb.has_group(LOCAL_GROUP) && self.access.snapshot().groups_of_volume(name).is_empty() {
                let full = Grant { mode: Mode::ReadWrite, regions: Vec::new() };
                self.access.update(|r| Ok(r.grant(LOCAL_GROUP, name, full.clone())?))?;
            }
        }
        let opens = stored.into_iter().map(|(name, sb)| async move {
            match sb {
                Ok(sb) => {
                    let opened = match tokio::time::timeout(OPEN_AT_START, self.open_here(&sb)).await {
                        Ok(opened) => opened,
                        Err(_) => {
                            Opened::Failed(anyhow::anyhow!("its targets did not answer within {OPEN_AT_START:?}"))
                        }
                    };
                    (name, Some(sb), opened)
                }
                Err(e) => (name, None, Opened::Failed(e)),
            }
        });
        for (name, sb, opened) in futures::future::join_all(opens).await {
            match opened {
                Opened::Served(v) => {
                    self.volumes.write().expect("not poisoned").insert(name, v);
                }
                Opened::Elsewhere(primary) => {
                    let u = Unopened { sb, reason: served_by(&primary), primary: Some(primary) };
                    self.unopened.write().expect("not poisoned").insert(name, u);
                }
                Opened::Failed(e) => {
                    let reason = format!("{e:#}");
                    warn!(volume = %name, error = %reason, "cannot open volume; serving the others and retrying it");
                    self.record(
                        EventKind::VolumeHealth(HealthState::Unavailable),
                        format!("{name}: cannot open: {reason}"),
                    );
                    self.unopened.write().expect("not poisoned").insert(name, Unopened { sb, reason, primary: None });
                }
            }
        }
        Ok(())
    }

    /// Tries the volumes that could not be opened again, every [`REOPEN_EVERY`].
    /// In an appliance, also every second: the volumes other gateways serve, to take them over
    /// once their primary's claim is gone, and the volumes other gateways created.
    async fn reopen_unavailable(self: Arc<Self>) {
        let every = if self.appliance.is_some() { Duration::from_secs(1) } else { REOPEN_EVERY };
        let mut tick = tokio::time::interval(every);
        for round in 0u64.. {
            tick.tick().await;
            if let Some(a) = &self.appliance {
                self.discover_volumes().await;
                self.hand_over_to_preferred(a).await;
                self.keep_standbys(round % 10 == 0).await;
            }
            let names: Vec<String> = self.unopened.read().expect("not poisoned").keys().cloned().collect();
            for name in names {
                self.try_reopen(&name).await;
            }
        }
    }

    async fn try_reopen(self: &Arc<Self>, name: &str) {
        // The stored superblock is read again: a grant may have changed it since.
        let n = name.to_string();
        let sb = match self.off_workers(move |g| g.data.load_volume(&g.master, &n)).await {
            Ok(Some(sb)) => sb,
            // Deleted (through another gateway of the appliance).
            Ok(None) => {
                self.unopened.write().expect("not poisoned").remove(name);
                return;
            }
            Err(e) => return self.still_unopened(name, format!("{e:#}")),
        };
        let v = match self.open_here(&sb).await {
            Opened::Served(v) => v,
            Opened::Elsewhere(primary) => {
                if let Some(u) = self.unopened.write().expect("not poisoned").get_mut(name) {
                    (u.reason, u.primary, u.sb) = (served_by(&primary), Some(primary), Some(sb));
                }
                return;
            }
            Opened::Failed(e) => return self.still_unopened(name, format!("{e:#}")),
        };
        let uuid = sb.config.uuid;
        let _admin = self.admin.lock().await;
        // Still unopened under the admin lock, which a deletion takes too: it stays so.
        let was = self.unopened.read().expect("not poisoned").get(name).map(|u| u.primary.clone());
        if let Some(primary) = was {
            // Recorded before the volume shows as served here: whoever sees it served can
            // see why (asking etcd who is a member may take a while).
            let (kind, detail) = self.opened_event(name, primary).await;
            self.record(kind, detail);
            self.unopened.write().expect("not poisoned").remove(name);
            self.volumes.write().expect("not poisoned").insert(name.to_string(), v);
            return;
        }
        // Deleted while it was being opened.
        v.close().await;
        if let Err(e) = cleave_volume::cache::Cache::remove(&self.data.cache_dir(), &uuid) {
            warn!(volume = name, error = %e, "cannot remove the cache of a deleted volume");
        }
    }

    /// Why a volume that could not be opened is served here now, the last primary named
    /// in its superblock being `primary`.
    async fn opened_event(&self, name: &str, primary: Option<String>) -> (EventKind, String) {
        let Some(from) = primary.filter(|p| !p.is_empty()) else {
            info!(volume = name, "volume opened: its targets answer again");
            return (EventKind::VolumeOpened, format!("{name}: opened, its targets answer again"));
        };
        // A primary still among the members handed the volume over (planned).
        if self.is_member(&from).await {
            info!(volume = name, from = %from, "volume taken over: handed over by its primary");
            (EventKind::GatewayHandover, format!("{name}: handed over by gateway {from}"))
        } else {
            warn!(volume = name, from = %from, "volume taken over: its primary gateway is gone");
            (EventKind::GatewayFailover, format!("{name}: taken over from gateway {from}"))
        }
    }

    async fn is_member(&self, gateway: &str) -> bool {
        let Some(a) = self.appliance.clone() else { return false };
        blocking(move || a.members()).await.is_ok_and(|m| m.iter().any(|g| g == gateway))
    }

    /// Runs `call` off the async workers: it reads the configuration database, which in an
    /// appliance is etcd, where a call may wait out its timeout; host I/O must not wait too.
    async fn off_workers<T: Send + 'static>(
        self: &Arc<Self>,
        call: impl FnOnce(&Gateway) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let g = self.clone();
        tokio::task::spawn_blocking(move || call(&g)).await?
    }

    fn still_unopened(&self, name: &str, reason: String) {
        if let Some(u) = self.unopened.write().expect("not poisoned").get_mut(name) {
            u.reason = reason;
        }
    }

    /// Opens a volume if this gateway is to serve it: always alone, and in an appliance once
    /// it has claimed the volume (then over any claim on the targets, which fences the
    /// gateway that served it before).
    pub(crate) async fn open_here(&self, sb: &Superblock) -> Opened {
        let takeover = match &self.appliance {
            None => false,
            Some(a) => match blocking({
                let (a, name) = (a.clone(), sb.config.name.clone());
                move || a.claim(&name)
            })
            .await
            {
                Ok(Primary::Me) => true,
                Ok(Primary::Other(primary)) => return Opened::Elsewhere(primary),
                Err(e) => return Opened::Failed(e.into()),
            },
        };
        match self.open_volume_with(sb, takeover).await {
            Ok(v) => {
                if takeover {
                    self.apply_standby_log(&v).await;
                }
                Opened::Served(v)
            }
            Err(e) => {
                // It reaches too few targets, say: the next gateway in the order may do better.
                if let Some(a) = self.appliance.as_ref().filter(|_| takeover) {
                    warn!(volume = %sb.config.name, error = %format!("{e:#}"), "cannot open a claimed volume; passing it on");
                    pass(a, &sb.config.name).await;
                }
                Opened::Failed(e)
            }
        }
    }

    /// The stored volumes this gateway does not know yet (another gateway created them).
    async fn discover_volumes(self: &Arc<Self>) {
        // A create here stores the volume before it is served: not then.
        let Ok(_admin) = self.admin.try_lock() else { return };
        let Ok(names) = self.off_workers(|g| g.data.volume_names()).await else { return };
        for name in names {
            if self.exists(&name) {
                continue;
            }
            let u = Unopened { sb: None, reason: "not opened here yet".into(), primary: None };
            self.unopened.write().expect("not poisoned").entry(name).or_insert(u);
        }
    }

    /// Watches every volume's health and records an event when it changes: degraded,
    /// unavailable, or clean again.
    pub async fn watch_health(self: Arc<Self>) {
        let mut last: BTreeMap<String, HealthState> = BTreeMap::new();
        let mut tried: BTreeMap<String, Instant> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let mut seen = BTreeMap::new();
            for v in self.served_volumes() {
                let s = v.status();
                let health = self.health(&s);
                self.rereplicate_when_due(&v, &health, &mut tried);
                let state = HealthState::of(&health);
                let name = s.config.name;
                let was = last.get(&name).copied();
                if was != Some(state) {
                    self.publish_health(&name, &health);
                }
                let was = was.unwrap_or_default();
                if was != state {
                    self.health_changed(&name, state, was, &targets_down(&health));
                }
                seen.insert(name, state);
            }
            last = seen;
        }
    }

    /// In an appliance, tells the other gateways (which export the volume too) its health.
    fn publish_health(&self, name: &str, health: &Health) {
        let Some(a) = self.appliance.clone() else { return };
        let (name, health) = (name.to_string(), health.clone());
        tokio::spawn(async move {
            let volume = name.clone();
            if let Err(e) = blocking(move || a.publish_health(&volume, &health)).await {
                warn!(volume = %name, error = %e, "cannot publish the volume's health");
            }
        });
    }

    fn health_changed(&self, name: &str, state: HealthState, was: HealthState, down: &[String]) {
        let (state_s, was_s) = (state.as_str(), was.as_str());
        let detail = if down.is_empty() {
            format!("{name}: {state_s} (was {was_s})")
        } else {
            format!("{name}: {state_s} (was {was_s}); targets down: {}", down.join(", "))
        };
        warn!(volume = %name, state = state_s, was = was_s, "volume health changed");
        self.record(EventKind::VolumeHealth(state), detail);
    }

    /// Starts a re-replication task for a volume that lacks shares or journal copies once
    /// all its targets answer again (at most one attempt per volume every 10 s).
    fn rereplicate_when_due(self: &Arc<Self>, v: &Volume, health: &Health, tried: &mut BTreeMap<String, Instant>) {
        let all_up = matches!(health, Health::Degraded { targets_down, .. } if targets_down.is_empty());
        let name = &v.config().name;
        if !all_up || !v.needs_rereplication() || tried.get(name).is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        if self.task_active(name, TaskKind::Rereplicate) {
            return;
        }
        tried.insert(name.clone(), Instant::now());
        let req = NewTask::new(TaskKind::Rereplicate, name);
        match self.start_task(req) {
            Ok(t) => info!(volume = %name, task = t.id, "targets are back: re-replicating what degraded writes missed"),
            Err(e) => warn!(volume = %name, error = %e, "could not start re-replication"),
        }
    }
}

/// Body of `PUT /api/v1/volumes/{name}/order`.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct VolumeOrder {
    /// Gateways to put first, in this order; the others follow as placement says. Empty:
    /// placement alone decides.
    pub gateways: Vec<String>,
}

/// The lease of an appliance member (`crate::appliance`), and the order of its volumes.
impl Gateway {
    /// Puts the named gateways first in a volume's order: the next to take it over, in turn.
    /// The primary stays until it goes.
    pub fn set_order(&self, volume: &str, order: &VolumeOrder) -> Result<crate::views::VolumeView> {
        let a = self.appliance.as_ref().ok_or_else(|| {
            GatewayError::Invalid("this gateway is not part of an appliance (start it with --etcd)".into())
        })?;
        self.show(volume)?;
        if let Some(g) = order.gateways.iter().find(|g| !crate::data_dir::is_gateway_id(g)) {
            return Err(GatewayError::Invalid(format!("{g:?} is not a gateway name (see `volume show`)")));
        }
        a.set_preferred(volume, &order.gateways).map_err(anyhow::Error::from)?;
        self.show(volume)
    }

    /// Keeps the lease, and fences every volume served here as soon as it may have lapsed.
    pub(crate) async fn keep_lease(self: Arc<Self>, a: Arc<Appliance>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut next_renewal = Instant::now();
        let mut renewing: Option<tokio::task::JoinHandle<std::result::Result<(), ConfigError>>> = None;
        loop {
            tick.tick().await;
            if renewing.as_ref().is_some_and(|r| r.is_finished()) {
                if let Some(Ok(Err(e))) = renewing.take().and_then(futures::FutureExt::now_or_never) {
                    warn!(error = %e, "cannot renew this gateway's lease");
                }
            }
            if renewing.is_none() && Instant::now() >= next_renewal {
                let a2 = a.clone();
                renewing = Some(tokio::task::spawn_blocking(move || a2.renew()));
                next_renewal = Instant::now() + a.ttl() / 4;
            }
            let lapsed = a.take_lapsed();
            if lapsed || !a.holds() {
                self.fence_all("this gateway could not renew its lease in the configuration database in time");
            }
        }
    }

    /// Planned switchover: a volume served here goes to the first live gateway its
    /// administrator-set order names, when that is another one (a gateway that came back
    /// takes its volumes back; `volume order` moves a volume).
    async fn hand_over_to_preferred(&self, a: &Arc<Appliance>) {
        for v in self.served_volumes() {
            let (a2, name, needed) = (a.clone(), v.config().name.clone(), v.config().write_quorum());
            match crate::appliance::blocking(move || a2.preferred_live(&name, needed)).await {
                Ok(Some(to)) if to != a.me() => self.hand_over(a, &v, &to).await,
                _ => {}
            }
        }
    }

    /// Hands `v` over to gateway `to` with nothing lost (`Volume::hand_over`), or keeps it.
    async fn hand_over(&self, a: &Arc<Appliance>, v: &Volume, to: &str) {
        let name = v.config().name.clone();
        let _admin = self.admin.lock().await;
        if let Err(e) = v.hand_over(&format!("handed over to gateway {to}"), HAND_OVER_WITHIN).await {
            warn!(volume = %name, to, error = %e, "cannot hand the volume over; it stays here");
            return;
        }
        self.passed_on(a, &name, served_by(to), to).await;
        info!(volume = %name, to, "volume handed over");
        self.record(EventKind::GatewayHandover, format!("{name}: handed over to gateway {to}"));
    }

    /// Bookkeeping once `name` is no longer served here and goes to gateway `to`: listed as
    /// not opened here, naming `to`, and left to the others for a while.
    pub(crate) async fn passed_on(&self, a: &Arc<Appliance>, name: &str, reason: String, to: &str) {
        self.volumes.write().expect("not poisoned").remove(name);
        let u = Unopened { sb: None, reason, primary: Some(to.to_string()) };
        self.unopened.write().expect("not poisoned").insert(name.to_string(), u);
        pass(a, name).await;
    }

    /// Stops serving every volume here: another gateway may take them over now.
    /// Every volume is fenced first; the bookkeeping after may wait on an unreachable store.
    fn fence_all(&self, why: &str) {
        let served = std::mem::take(&mut *self.volumes.write().expect("not poisoned"));
        for v in served.values() {
            v.fence(why);
        }
        for name in served.into_keys() {
            warn!(volume = %name, "{why}: no longer served here");
            self.record(EventKind::GatewayFenced, format!("{name}: {why}"));
            let u = Unopened { sb: None, reason: why.to_string(), primary: None };
            self.unopened.write().expect("not poisoned").insert(name, u);
        }
    }
}

/// Gives up this gateway's claim on `volume` ([`Appliance::pass`]) off the async workers.
async fn pass(a: &Arc<Appliance>, volume: &str) {
    let (a, volume) = (a.clone(), volume.to_string());
    let _ = blocking(move || {
        a.pass(&volume);
        Ok(())
    })
    .await;
}

#[cfg(test)]
mod tests;
