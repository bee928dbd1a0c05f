//! Several gateways on one configuration database in etcd are one appliance
//! (docs/appliance.md). Each volume is served by one of them, its primary: the gateway named
//! under `owner/VOLUME`, a key tied to that gateway's etcd lease.
//!
//! - A gateway that has not renewed its lease for three quarters of its time to live stops
//!   serving (its volumes are fenced: every request fails), before etcd can expire the lease.
//! - When the lease expires the keys go with it; another gateway claims each volume, takes it
//!   over on its targets (a higher epoch, which fences the old owner there as well) and
//!   serves it.
//! - Each gateway is listed under `members/GATEWAY` while its lease holds. A volume's order
//!   (primary first, then its secondaries) is [`placement::gateway_order`] of the members,
//!   led by the gateways an administrator named under `order/VOLUME`. When a volume has no
//!   primary, the first gateway of its order claims it at once and each next one a turn later:
//!   one that cannot open it (it reaches too few targets) releases it, passing it on.
//! - Each gateway publishes how many of each volume's targets it reaches (`crate::paths`): a
//!   primary that reaches too few passes the volume to a gateway that reaches enough, and a
//!   planned switchover goes only to such a gateway.
//! - Every gateway exports every volume: requests to a gateway that is not the primary are
//!   forwarded to it (`crate::forward`), to the NBD listener each advertises under
//!   `endpoints/GATEWAY`.
//! - Without etcd (redb, one process) there is no appliance and every volume is served here.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cleave_control::config::{ConfigError, ConfigStore, Guard, Lease, Version};
use cleave_control::placement;
use cleave_volume::Health;
use tracing::{info, warn};

const OWNER: &str = "owner/";
const MEMBERS: &str = "members/";
const ORDER: &str = "order/";
/// Per gateway, how many of each volume's targets it reaches (`crate::paths`).
const PATHS: &str = "paths/";
/// Per gateway, where other gateways forward requests to it (`crate::forward`).
const ENDPOINTS: &str = "endpoints/";
/// Per volume, the gateway keeping its primary's changes (`crate::standby`).
const STANDBY: &str = "standby/";
/// Per volume, its health as its primary last saw it change.
const HEALTH: &str = "health/";

/// How long each gateway further down a volume's order waits, after the one before it, to
/// claim a volume that has no primary.
const TURN: Duration = Duration::from_secs(2);
/// A gateway that passed a volume on leaves it to the others this long.
const PASSED_FOR: Duration = Duration::from_secs(10);
/// How long the members, orders and path reports read from the store serve placement
/// decisions: listing many volumes reads them once, not once per volume.
const DIRECTORY_FOR: Duration = Duration::from_secs(1);

fn owner_key(volume: &str) -> String {
    format!("{OWNER}{volume}")
}

/// Who serves a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Primary {
    Me,
    Other(String),
}

/// This gateway's membership of the appliance: its name and its lease.
pub struct Appliance {
    store: Arc<dyn ConfigStore>,
    me: String,
    ttl: Duration,
    lease: Mutex<Held>,
    turns: Mutex<Turns>,
    directory: Mutex<Option<Arc<Directory>>>,
    /// What this gateway advertises under `endpoints/`, kept to advertise it again under a
    /// new lease.
    endpoint: Mutex<Option<Endpoint>>,
    /// The version of each owner key this gateway created: the guard of every write that
    /// depends on owning the volume, which lands only while that claim stands.
    claims: Mutex<HashMap<String, Version>>,
    /// Whether this gateway's NBD listener answers where it is advertised (`crate::paths`):
    /// one that hosts cannot reach claims nothing while other gateways can.
    front_end: AtomicBool,
}

/// Where a gateway takes forwarded requests: its NBD listener, and the fingerprint of the
/// client certificate it forwards with (a peer with that certificate is a gateway).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    pub nbd: String,
    pub fingerprint: String,
}

/// Which gateway keeps the changes a volume's primary acknowledged from its cache: a FLUSH
/// there was acknowledged once this gateway's log held it, so the next primary applies that
/// log, if it is the one the primary of `epoch` (the one before it) named.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StandbyRecord {
    pub gateway: String,
    pub session: String,
    pub epoch: u64,
}

/// The members, the administrators' orders and the members' reach, as read at one moment.
struct Directory {
    read: Instant,
    members: Vec<String>,
    orders: HashMap<String, Vec<String>>,
    /// Per member: per volume, how many of its targets that member reaches.
    reach: HashMap<String, HashMap<String, usize>>,
    /// Per member: where it takes forwarded requests.
    endpoints: HashMap<String, Endpoint>,
    /// Per volume: the standby its last primary named.
    standbys: HashMap<String, StandbyRecord>,
    /// Per volume: its health as its primary published it.
    health: HashMap<String, Health>,
}

/// Per volume without a primary: since when it has none, and when this gateway passed it on.
#[derive(Default)]
struct Turns {
    unclaimed_since: HashMap<String, Instant>,
    passed: HashMap<String, Instant>,
}

struct Held {
    /// None when the store has no leases (redb): this gateway then always holds.
    lease: Option<Lease>,
    /// A new lease replaced one that lapsed: what was served under the old one is fenced.
    lapsed: bool,
    /// When the last successful renewal was sent: the lease lasts at least `ttl` from then.
    renewed: Instant,
}

impl Directory {
    /// The live gateways in the order they serve `volume`.
    fn order_of(&self, volume: &str) -> Vec<String> {
        let preferred = self.orders.get(volume).map(Vec::as_slice).unwrap_or_default();
        placement::gateway_order(volume, &self.members, preferred)
    }

    fn reaches(&self, gateway: &str, volume: &str, needed: usize) -> bool {
        self.reach.get(gateway).and_then(|r| r.get(volume)).is_some_and(|n| *n >= needed)
    }
}

impl std::fmt::Debug for Appliance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Appliance({} ttl {:?})", self.me, self.ttl)
    }
}

impl Appliance {
    /// Joins with a new lease of `ttl`. Keys naming this gateway from an earlier run hang on a
    /// lease that is about to expire: they are dropped, and claimed again under the new one.
    pub fn join(store: Arc<dyn ConfigStore>, me: String, ttl: Duration) -> Result<Self, ConfigError> {
        let sent = Instant::now();
        let lease = store.grant_lease(ttl)?;
        for e in store.scan(OWNER)? {
            if e.value == me.as_bytes() {
                match store.delete_if(&e.key, e.version) {
                    Err(err) if !err.is_conflict() => return Err(err),
                    _ => {}
                }
            }
        }
        register(store.as_ref(), &me, lease)?;
        let held = Mutex::new(Held { lease, lapsed: false, renewed: sent });
        Ok(Appliance {
            store,
            me,
            ttl,
            lease: held,
            turns: Mutex::default(),
            directory: Mutex::default(),
            endpoint: Mutex::default(),
            front_end: AtomicBool::new(true),
            claims: Mutex::default(),
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// The gateway serving `volume`, if any has claimed it.
    pub fn primary_of(&self, volume: &str) -> Result<Option<String>, ConfigError> {
        Ok(self.store.get_value(&owner_key(volume))?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The gateways whose lease holds.
    pub fn members(&self) -> Result<Vec<String>, ConfigError> {
        Ok(self.store.scan(MEMBERS)?.into_iter().map(|e| String::from_utf8_lossy(&e.value).into_owned()).collect())
    }

    /// The members, orders and path reports, read again when older than [`DIRECTORY_FOR`].
    fn directory(&self) -> Result<Arc<Directory>, ConfigError> {
        if let Some(d) = self.directory.lock().expect("not poisoned").as_ref() {
            if d.read.elapsed() < DIRECTORY_FOR {
                return Ok(d.clone());
            }
        }
        let read = Instant::now();
        let members = self.members()?;
        let orders = self.scan_json(ORDER, "an order")?;
        // Reports and endpoints of gateways that are gone say nothing any more.
        let mut reach: HashMap<String, HashMap<String, usize>> = self.scan_json(PATHS, "a path report")?;
        reach.retain(|gateway, _| members.contains(gateway));
        let mut endpoints: HashMap<String, Endpoint> = self.scan_json(ENDPOINTS, "an endpoint")?;
        endpoints.retain(|gateway, _| members.contains(gateway));
        let standbys = self.scan_json(STANDBY, "a standby record")?;
        let health = self.scan_json(HEALTH, "a published health")?;
        let d = Arc::new(Directory { read, members, orders, reach, endpoints, standbys, health });
        *self.directory.lock().expect("not poisoned") = Some(d.clone());
        Ok(d)
    }

    /// Every entry under `prefix` that parses, by the rest of its key. One that does not is
    /// left out with a warning naming `what` it is: it must not stop the placement of every
    /// other volume.
    fn scan_json<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
        what: &str,
    ) -> Result<HashMap<String, T>, ConfigError> {
        let mut out = HashMap::new();
        for e in self.store.scan(prefix)? {
            match serde_json::from_slice(&e.value) {
                Ok(value) => {
                    out.insert(e.key.strip_prefix(prefix).unwrap_or(&e.key).to_string(), value);
                }
                Err(err) => warn!(key = %e.key, error = %err, "{what} that does not parse; ignored"),
            }
        }
        Ok(out)
    }

    /// The first live gateway of those an administrator put first for `volume`, if it
    /// reaches at least `needed` of the volume's targets (one that cannot serve it is skipped:
    /// handing it over there would only bounce it back).
    pub fn preferred_live(&self, volume: &str, needed: usize) -> Result<Option<String>, ConfigError> {
        let d = self.directory()?;
        let Some(order) = d.orders.get(volume) else { return Ok(None) };
        Ok(order.iter().find(|g| d.members.contains(g)).filter(|g| d.reaches(g, volume, needed)).cloned())
    }

    /// The first other live gateway in `volume`'s order that reaches at least `needed` of
    /// its targets, as the gateways last reported.
    pub fn able_successor(&self, volume: &str, needed: usize) -> Result<Option<String>, ConfigError> {
        let d = self.directory()?;
        let preferred = d.orders.get(volume).map(Vec::as_slice).unwrap_or_default();
        let order = placement::gateway_order(volume, &d.members, preferred);
        Ok(order.into_iter().find(|g| *g != self.me && d.reaches(g, volume, needed)))
    }

    /// Publishes how many of each volume's targets this gateway reaches.
    pub fn report_reach(&self, reach: &BTreeMap<String, usize>) -> Result<(), ConfigError> {
        let raw = serde_json::to_vec(reach).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.store.put(&format!("{PATHS}{}", self.me), &raw)?;
        Ok(())
    }

    /// Advertises where this gateway takes forwarded requests, under its lease.
    pub fn advertise(&self, endpoint: Endpoint) -> Result<(), ConfigError> {
        let lease = self.lease.lock().expect("not poisoned").lease;
        put_endpoint(self.store.as_ref(), &self.me, &endpoint, lease)?;
        *self.endpoint.lock().expect("not poisoned") = Some(endpoint);
        Ok(())
    }

    /// Where `gateway` takes forwarded requests, read afresh if the directory lacks it.
    pub fn endpoint_of(&self, gateway: &str) -> Result<Option<Endpoint>, ConfigError> {
        if let Some(e) = self.directory()?.endpoints.get(gateway) {
            return Ok(Some(e.clone()));
        }
        self.refresh()?;
        Ok(self.directory()?.endpoints.get(gateway).cloned())
    }

    /// Publishes the health of a volume served here, for the other gateways to show (the
    /// chunks that lack shares are counted, not listed).
    pub fn publish_health(&self, volume: &str, health: &Health) -> Result<(), ConfigError> {
        let mut h = health.clone();
        if let Health::Degraded { missing, .. } = &mut h {
            missing.clear();
        }
        let raw = serde_json::to_vec(&h).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.store.put_guarded(&format!("{HEALTH}{volume}"), &raw, &self.owned(volume)?)?;
        Ok(())
    }

    /// A volume's health as its primary last published it, as last read (never reads etcd).
    pub fn published_health(&self, volume: &str) -> Option<Health> {
        let d = self.directory.lock().expect("not poisoned").clone()?;
        d.health.get(volume).cloned()
    }

    /// The members as last read (never reads etcd: it is asked for every iSCSI command).
    pub fn known_members(&self) -> Vec<String> {
        let d = self.directory.lock().expect("not poisoned").clone();
        d.map(|d| d.members.clone()).unwrap_or_default()
    }

    /// The live gateway whose forwarding certificate has this fingerprint, as last read
    /// (never reads etcd: it is asked during an NBD handshake, on an async worker).
    pub fn gateway_with_certificate(&self, fingerprint: &str) -> Option<String> {
        let d = self.directory.lock().expect("not poisoned").clone()?;
        d.endpoints.iter().find(|(_, e)| e.fingerprint == fingerprint).map(|(g, _)| g.clone())
    }

    /// The live gateways in the order they serve `volume`, as last read (never reads etcd:
    /// it is asked for every volume an API call lists, on an async worker).
    pub fn known_order_of(&self, volume: &str) -> Vec<String> {
        let d = self.directory.lock().expect("not poisoned").clone();
        d.map(|d| d.order_of(volume)).unwrap_or_default()
    }

    /// Reads the members, orders, path reports and endpoints again.
    pub fn refresh(&self) -> Result<(), ConfigError> {
        *self.directory.lock().expect("not poisoned") = None;
        self.directory().map(drop)
    }

    /// Names the standby of `volume` (the primary, once the standby holds every change the
    /// targets may lack).
    pub fn set_standby(&self, volume: &str, record: &StandbyRecord) -> Result<(), ConfigError> {
        let raw = serde_json::to_vec(record).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.store.put_guarded(&format!("{STANDBY}{volume}"), &raw, &self.owned(volume)?)?;
        Ok(())
    }

    /// The standby `volume`'s last primary named, if any.
    pub fn standby_of(&self, volume: &str) -> Result<Option<StandbyRecord>, ConfigError> {
        let Some(raw) = self.store.get_value(&format!("{STANDBY}{volume}"))? else { return Ok(None) };
        Ok(serde_json::from_slice(&raw).ok())
    }

    /// Forgets `volume`'s standby if it is still `session`.
    pub fn clear_standby(&self, volume: &str, session: &str) -> Result<(), ConfigError> {
        let key = format!("{STANDBY}{volume}");
        let Some(e) = self.store.get(&key)? else { return Ok(()) };
        let named: Option<StandbyRecord> = serde_json::from_slice(&e.value).ok();
        if named.is_none_or(|r| r.session == session) {
            self.store.delete_guarded(&key, &self.owned(volume)?)?;
        }
        Ok(())
    }

    /// The sessions some primary names: the standby logs to keep.
    pub fn standby_sessions(&self) -> Result<std::collections::HashSet<String>, ConfigError> {
        Ok(self.directory()?.standbys.values().map(|r| r.session.clone()).collect())
    }

    /// Puts `gateways` first, in this order, for `volume` (empty: placement alone decides).
    pub fn set_preferred(&self, volume: &str, gateways: &[String]) -> Result<(), ConfigError> {
        let key = format!("{ORDER}{volume}");
        if gateways.is_empty() {
            self.store.delete(&key)?;
        } else {
            let raw = serde_json::to_vec(gateways).map_err(|e| ConfigError::Invalid(e.to_string()))?;
            self.store.put(&key, &raw)?;
        }
        *self.directory.lock().expect("not poisoned") = None;
        // Read again at once, so that listings show the new order; the order is stored
        // whatever this read does, and the paths loop reads it again within seconds.
        if let Err(e) = self.directory() {
            warn!(volume, error = %e, "cannot read the appliance's directory again after setting an order");
        }
        Ok(())
    }

    /// The live gateways in the order they serve `volume`.
    pub fn order_of(&self, volume: &str) -> Result<Vec<String>, ConfigError> {
        Ok(self.directory()?.order_of(volume))
    }

    /// Whether this gateway may claim `volume`, which has no primary: the first of its order
    /// at once, each next one [`TURN`] after the one before it (that one passed).
    fn my_turn(&self, volume: &str) -> Result<bool, ConfigError> {
        // The members as they are now: a gateway that just died must not keep its turn.
        let d = self.directory()?;
        let preferred = d.orders.get(volume).map(Vec::as_slice).unwrap_or_default();
        let mut order = placement::gateway_order(volume, &self.members()?, preferred);
        // The gateway keeping the last primary's standby log asks first: only it can serve
        // every FLUSH that primary acknowledged.
        if let Some(i) = d.standbys.get(volume).and_then(|r| order.iter().position(|g| *g == r.gateway)) {
            let keeper = order.remove(i);
            order.insert(0, keeper);
        }
        let rank = order.iter().position(|g| *g == self.me).unwrap_or(order.len());
        let others = order.iter().any(|g| *g != self.me);
        if others && !self.front_end.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let mut turns = self.turns.lock().expect("not poisoned");
        if others && turns.passed.get(volume).is_some_and(|t| t.elapsed() < PASSED_FOR) {
            return Ok(false);
        }
        let since = *turns.unclaimed_since.entry(volume.to_string()).or_insert_with(Instant::now);
        Ok(since.elapsed() >= TURN * rank as u32)
    }

    /// Records whether this gateway's NBD listener answers where it is advertised.
    pub(crate) fn set_front_end(&self, answers: bool) {
        self.front_end.store(answers, Ordering::Relaxed);
    }

    /// Gives up a volume this gateway claimed but cannot serve, so the next one may.
    pub fn pass(&self, volume: &str) {
        self.turns.lock().expect("not poisoned").passed.insert(volume.to_string(), Instant::now());
        self.release(volume);
    }

    /// Claims `volume` for this gateway unless another holds it or it is not yet this
    /// gateway's turn (then `Other("")`).
    pub fn claim(&self, volume: &str) -> Result<Primary, ConfigError> {
        let lease = self.current_lease().ok_or(ConfigError::LeaseExpired(0))?;
        match self.primary_of(volume)? {
            Some(owner) => {
                self.turns.lock().expect("not poisoned").unclaimed_since.remove(volume);
                if owner != self.me {
                    return Ok(Primary::Other(owner));
                }
            }
            None if !self.my_turn(volume)? => return Ok(Primary::Other(String::new())),
            None => {}
        }
        self.claim_under(volume, lease)
    }

    /// Claims a volume this gateway creates.
    pub fn claim_new(&self, volume: &str) -> Result<Primary, ConfigError> {
        let lease = self.current_lease().ok_or(ConfigError::LeaseExpired(0))?;
        self.claim_under(volume, lease)
    }

    fn claim_under(&self, volume: &str, lease: Option<Lease>) -> Result<Primary, ConfigError> {
        let key = owner_key(volume);
        let version = match self.store.create_leased(&key, self.me.as_bytes(), lease) {
            Ok(v) => v,
            Err(e) if e.is_conflict() => match self.store.get(&key)? {
                Some(e) if e.value == self.me.as_bytes() => e.version,
                Some(e) => return Ok(Primary::Other(String::from_utf8_lossy(&e.value).into_owned())),
                // Gone between the two calls: the next round claims it.
                None => return Ok(Primary::Other(String::new())),
            },
            Err(e) => return Err(e),
        };
        self.claims.lock().expect("not poisoned").insert(volume.to_string(), version);
        Ok(Primary::Me)
    }

    /// The guard of writes that depend on owning `volume`: this gateway's claim, as made.
    pub fn guard(&self, volume: &str) -> Option<Guard> {
        let version = *self.claims.lock().expect("not poisoned").get(volume)?;
        Some(Guard { key: owner_key(volume), version })
    }

    /// The guard, or why there is none.
    fn owned(&self, volume: &str) -> Result<Guard, ConfigError> {
        self.guard(volume).ok_or_else(|| ConfigError::Precondition { key: owner_key(volume) })
    }

    /// Gives `volume` up (deleted, or shut down here).
    pub fn release(&self, volume: &str) {
        self.claims.lock().expect("not poisoned").remove(volume);
        let key = owner_key(volume);
        if let Ok(Some(e)) = self.store.get(&key) {
            if e.value == self.me.as_bytes() {
                let _ = self.store.delete_if(&key, e.version);
            }
        }
    }

    /// Whether the lease surely still holds: renewed within three quarters of its time to
    /// live (a store without leases always holds).
    pub fn holds(&self) -> bool {
        let held = self.lease.lock().expect("not poisoned");
        held.lease.is_none() || held.renewed.elapsed() < self.ttl * 3 / 4
    }

    /// The lease to claim under: None inside when the store has none; None when it lapsed.
    fn current_lease(&self) -> Option<Option<Lease>> {
        let lease = self.lease.lock().expect("not poisoned").lease;
        self.holds().then_some(lease)
    }

    /// Renews the lease, or, once it has lapsed, takes a new one (the volumes are then
    /// claimed again one by one).
    pub(crate) fn renew(&self) -> Result<(), ConfigError> {
        let sent = Instant::now();
        let lease = self.lease.lock().expect("not poisoned").lease;
        let Some(lease) = lease else { return Ok(()) };
        let result = if self.holds() { self.store.renew_lease(lease) } else { Err(ConfigError::LeaseExpired(lease.0)) };
        let (lease, lapsed) = match result.map(|()| lease) {
            Ok(l) => (l, false),
            Err(ConfigError::LeaseExpired(_)) => {
                let _ = self.store.revoke_lease(lease);
                let fresh = self.store.grant_lease(self.ttl)?.ok_or(ConfigError::LeaseExpired(lease.0))?;
                register(self.store.as_ref(), &self.me, Some(fresh))?;
                if let Some(e) = self.endpoint.lock().expect("not poisoned").clone() {
                    put_endpoint(self.store.as_ref(), &self.me, &e, Some(fresh))?;
                }
                info!(gateway = %self.me, "a new lease in the configuration database");
                (fresh, true)
            }
            Err(e) => return Err(e),
        };
        let mut held = self.lease.lock().expect("not poisoned");
        *held = Held { lease: Some(lease), lapsed: held.lapsed || lapsed, renewed: sent };
        Ok(())
    }

    /// Whether a lease lapsed since the last call.
    pub(crate) fn take_lapsed(&self) -> bool {
        std::mem::take(&mut self.lease.lock().expect("not poisoned").lapsed)
    }
}

fn put_endpoint(store: &dyn ConfigStore, me: &str, e: &Endpoint, lease: Option<Lease>) -> Result<(), ConfigError> {
    let raw = serde_json::to_vec(e).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    put_leased(store, &format!("{ENDPOINTS}{me}"), &raw, lease)
}

/// Runs a call to the configuration database off the async workers: while etcd is out of
/// reach each call blocks for its timeout, and host I/O must not wait behind it.
pub(crate) async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, ConfigError> + Send + 'static,
) -> Result<T, ConfigError> {
    tokio::task::spawn_blocking(call).await.unwrap_or_else(|e| Err(ConfigError::Invalid(format!("{e}"))))
}

/// Lists `me` among the members under `lease` (replacing its entry from an earlier lease).
fn register(store: &dyn ConfigStore, me: &str, lease: Option<Lease>) -> Result<(), ConfigError> {
    put_leased(store, &format!("{MEMBERS}{me}"), me.as_bytes(), lease)
}

/// Puts `value` at `key` under `lease`, replacing what an earlier lease left there.
fn put_leased(store: &dyn ConfigStore, key: &str, value: &[u8], lease: Option<Lease>) -> Result<(), ConfigError> {
    store.delete(key)?;
    store.create_leased(key, value, lease)?;
    Ok(())
}
