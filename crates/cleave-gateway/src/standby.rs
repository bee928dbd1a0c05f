//! The standby cache of an appliance (docs/appliance.md): a primary sends every change of a
//! volume it serves to the next gateway of the volume's order too, into a log there
//! ([`log`]), so that a FLUSH is acknowledged once both caches hold it, not once the targets
//! do. When the primary dies, that gateway, taking the volume over, applies the log to what
//! the targets hold.
//!
//! A log is valid only from the moment everything acknowledged before it began is on the
//! targets: a session starts sending, waits for the volume to be destaged, and only then
//! is named in etcd ([`crate::appliance::StandbyRecord`]) and trusted with a FLUSH. Until
//! then, and whenever the standby fails, a FLUSH waits for the targets; and the record is
//! withdrawn, after the targets hold every change, before anything more is made durable
//! without it.

pub(crate) mod log;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use cleave_mirror::Op;
use cleave_nbd::{BlockError, Client};
use cleave_volume::Volume;
use tracing::{info, warn};

use crate::appliance::{blocking, Appliance, StandbyRecord};
use crate::volume_io::{block_error, change};

/// How NBD export names address a standby log: `.standby/SESSION/EPOCH/VOLUME`.
pub(crate) const EXPORT_PREFIX: &str = ".standby/";
/// A log longer than this is replaced by a new one (after a destage of the volume).
const ROTATE_AFTER: u64 = 256 << 20;
const TEND_EVERY: Duration = Duration::from_secs(1);
/// How long a new session waits for the volume to be destaged before it is trusted.
const BARRIER_WITHIN: Duration = Duration::from_secs(120);
const CONNECT_WITHIN: Duration = Duration::from_secs(5);
/// How long the standby may take to answer a change or a FLUSH before it is given up (a
/// standby that hangs must not hang its primary).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// What a standby tells the administrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Happened {
    /// FLUSHes are acknowledged from two caches.
    Ready,
    /// The standby missed a change: FLUSHes reach the targets.
    Lost,
}

/// What the standby asks of the gateway.
pub(crate) trait Host: Send + Sync {
    /// Whether `volume` is still served here, opened at `epoch`.
    fn serves(&self, volume: &str, epoch: u64) -> bool;
    /// Whether `gateway` answers this one's heartbeats.
    fn reaches(&self, gateway: &str) -> bool;
    fn event(&self, happened: Happened, message: String);
}

/// Whether the host, while it runs, hears `gateway`'s heartbeats.
fn host_reaches(host: &Weak<dyn Host>, gateway: &str) -> bool {
    host.upgrade().is_some_and(|h| h.reaches(gateway))
}

/// A gateway's standbys and standby logs (in an appliance with forwarding only).
#[derive(Default)]
pub(crate) struct Standbys {
    pub(crate) logs: OnceLock<Arc<log::Logs>>,
    pub(crate) host: OnceLock<Weak<dyn Host>>,
    pub(crate) of_volume: Mutex<HashMap<String, Arc<Standby>>>,
}

/// One connection to a standby, and the log it writes there.
struct Session {
    id: String,
    gateway: String,
    client: Client,
    /// Named in etcd: a FLUSH may be acknowledged from the two caches.
    ready: AtomicBool,
    /// A change did not reach it: never trusted again.
    broken: AtomicBool,
    bytes: AtomicU64,
}

impl Session {
    fn usable(&self) -> bool {
        !self.broken.load(Ordering::Acquire) && !self.client.is_closed()
    }
}

/// The standby of one volume served here.
pub(crate) struct Standby {
    volume: Volume,
    name: String,
    appliance: Arc<Appliance>,
    tls: Arc<rustls::ClientConfig>,
    host: Weak<dyn Host>,
    session: RwLock<Option<Arc<Session>>>,
    /// Changes hold it shared; a session is put in place holding it alone, so that each
    /// change either went to it or was done before it began.
    gate: tokio::sync::RwLock<()>,
    /// The session etcd names, until withdrawn.
    recorded: tokio::sync::Mutex<Option<String>>,
}

impl Standby {
    /// The standby of `volume`, kept by a task for as long as the volume is served here.
    pub(crate) fn start(
        volume: Volume,
        appliance: Arc<Appliance>,
        tls: Arc<rustls::ClientConfig>,
        host: Weak<dyn Host>,
    ) -> Arc<Standby> {
        let name = volume.config().name.clone();
        let s = Arc::new(Standby {
            volume,
            name,
            appliance,
            tls,
            host,
            session: RwLock::default(),
            gate: tokio::sync::RwLock::new(()),
            recorded: tokio::sync::Mutex::new(None),
        });
        tokio::spawn(s.clone().tend());
        s
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.volume.epoch()
    }

    /// The gateway whose log a FLUSH is acknowledged from now, if any.
    pub(crate) fn ready_on(&self) -> Option<String> {
        self.live().filter(|s| s.ready.load(Ordering::Acquire)).map(|s| s.gateway.clone())
    }

    fn live(&self) -> Option<Arc<Session>> {
        self.session.read().expect("not poisoned").clone().filter(|s| s.usable())
    }

    /// A change of the volume: here, and to the standby while there is one.
    pub(crate) async fn apply(&self, op: Op) -> Result<(), BlockError> {
        let _gate = self.gate.read().await;
        let Some(s) = self.live() else { return self.alone(op).await };
        let ready = s.ready.load(Ordering::Acquire);
        if op == Op::Flush {
            if !ready {
                return self.alone(op).await;
            }
            let (here, there) = tokio::join!(self.volume.sync_cache(), bounded(s.client.flush()));
            here.map_err(block_error)?;
            return match there {
                Ok(()) => Ok(()),
                Err(e) => {
                    self.broke(&s, &e);
                    self.alone(Op::Flush).await
                }
            };
        }
        let fua = matches!(op, Op::Write { fua: true, .. } | Op::Zero { fua: true, .. });
        // With a trusted standby, FUA is the two caches; without, the targets.
        let (here_op, there_op) = if ready { (with_fua(op.clone(), false), op) } else { (op.clone(), op) };
        let bytes = there_op.payload();
        let (here, there) = tokio::join!(change(&self.volume, here_op), bounded(send(&s.client, there_op)));
        here?;
        match there {
            Ok(()) => {
                s.bytes.fetch_add(bytes.max(1), Ordering::Relaxed);
                if fua && ready {
                    self.volume.sync_cache().await.map_err(block_error)?;
                }
                Ok(())
            }
            Err(e) => {
                self.broke(&s, &e);
                if fua {
                    self.alone(Op::Flush).await?;
                }
                Ok(())
            }
        }
    }

    /// A change without the standby: a FLUSH or FUA reaches the targets, and then no log
    /// that lacks later changes may stay named.
    async fn alone(&self, op: Op) -> Result<(), BlockError> {
        let durable = matches!(op, Op::Flush | Op::Write { fua: true, .. } | Op::Zero { fua: true, .. });
        change(&self.volume, op).await?;
        if durable {
            self.withdraw().await?;
        }
        Ok(())
    }

    /// Removes the record of a session that is no longer trusted (the targets hold every
    /// change it kept: the caller made sure).
    async fn withdraw(&self) -> Result<(), BlockError> {
        let mut recorded = self.recorded.lock().await;
        let Some(id) = recorded.clone() else { return Ok(()) };
        if self.live().is_some_and(|s| s.id == id) {
            return Ok(());
        }
        let (a, name) = (self.appliance.clone(), self.name.clone());
        blocking(move || a.clear_standby(&name, &id))
            .await
            .map_err(|e| BlockError::Io(format!("volume {}: cannot withdraw its standby: {e}", self.name)))?;
        *recorded = None;
        Ok(())
    }

    fn broke(&self, s: &Session, why: &str) {
        // Requests still waiting on it fail now rather than at their own time limit.
        s.client.close();
        if !s.broken.swap(true, Ordering::AcqRel) {
            warn!(volume = %self.name, standby = %s.gateway, error = why, "the standby missed a change; flushes reach the targets until a new one is ready");
            if s.ready.load(Ordering::Acquire) {
                self.event(Happened::Lost, format!("{}: standby on gateway {} lost: {why}", self.name, s.gateway));
            }
        }
    }

    fn reaches(&self, gateway: &str) -> bool {
        host_reaches(&self.host, gateway)
    }

    fn event(&self, kind: Happened, message: String) {
        if let Some(h) = self.host.upgrade() {
            h.event(kind, message);
        }
    }

    /// Keeps a session going while the volume is served here.
    async fn tend(self: Arc<Self>) {
        let epoch = self.volume.epoch();
        loop {
            tokio::time::sleep(TEND_EVERY).await;
            if !self.host.upgrade().is_some_and(|h| h.serves(&self.name, epoch)) {
                self.stop().await;
                return;
            }
            let current = self.session.read().expect("not poisoned").clone();
            match current {
                Some(s) if s.usable() && !self.reaches(&s.gateway) => {
                    self.broke(&s, &format!("gateway {} does not answer heartbeats", s.gateway));
                }
                Some(s) if s.usable() && s.bytes.load(Ordering::Relaxed) < ROTATE_AFTER => {
                    // A gateway now ahead in the order (one that came back, say) takes over
                    // as the standby: the one the inquiry would ask first after this one.
                    if self.next_in_order().await.is_ok_and(|g| g != s.gateway) {
                        info!(volume = %self.name, standby = %s.gateway, "another gateway comes first in the order now; moving the standby there");
                        self.end(&s).await;
                    }
                }
                Some(s) => self.end(&s).await,
                None => {
                    if let Err(why) = self.begin().await {
                        tracing::debug!(volume = %self.name, reason = %why, "no standby yet");
                    }
                }
            }
        }
    }

    /// Ends a session once the targets hold every change: its log is not needed then.
    async fn end(&self, s: &Arc<Session>) {
        s.broken.store(true, Ordering::Release);
        if let Err(e) = self.volume.destage_all(BARRIER_WITHIN).await {
            warn!(volume = %self.name, error = %e, "cannot destage to end a standby session; trying again");
            return;
        }
        if self.withdraw().await.is_err() {
            return;
        }
        s.client.close();
        let mut current = self.session.write().expect("not poisoned");
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, s)) {
            *current = None;
        }
    }

    /// The volume leaves this gateway: its standby is no longer needed.
    pub(crate) async fn stop(&self) {
        let s = self.session.write().expect("not poisoned").take();
        if let Some(s) = s {
            s.broken.store(true, Ordering::Release);
            s.client.close();
        }
    }

    /// The first other gateway in the volume's order that advertises its NBD listener and
    /// answers heartbeats: where the standby belongs.
    async fn next_in_order(&self) -> Result<String, String> {
        let (a, name, host) = (self.appliance.clone(), self.name.clone(), self.host.clone());
        let found = blocking(move || {
            let order = a.order_of(&name)?;
            for g in order.into_iter().filter(|g| g != a.me() && host_reaches(&host, g)) {
                if a.endpoint_of(&g)?.is_some() {
                    return Ok(Some(g));
                }
            }
            Ok(None)
        });
        found
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no other gateway that answers advertises its listener".to_string())
    }

    /// Starts a session with the next gateway of the volume's order, trusted once the
    /// volume has been destaged.
    async fn begin(&self) -> Result<(), String> {
        let gateway = self.next_in_order().await?;
        let (a, g) = (self.appliance.clone(), gateway.clone());
        let endpoint = blocking(move || a.endpoint_of(&g))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("gateway {gateway} advertises no endpoint"))?;
        let id = random_session().map_err(|e| e.to_string())?;
        let epoch = self.volume.epoch();
        let export = format!("{EXPORT_PREFIX}{id}/{epoch}/{}", self.name);
        let client =
            tokio::time::timeout(CONNECT_WITHIN, crate::forward::connect(&endpoint.nbd, self.tls.clone(), &export))
                .await
                .map_err(|_| format!("gateway {gateway}: no answer in time"))?
                .map_err(|e| format!("gateway {gateway}: {e}"))?;
        let s = Arc::new(Session {
            id: id.clone(),
            gateway: gateway.clone(),
            client,
            ready: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            bytes: AtomicU64::new(0),
        });
        {
            let _alone = self.gate.write().await;
            *self.session.write().expect("not poisoned") = Some(s.clone());
        }
        // Every change acknowledged before the session began is to reach the targets first.
        let recorded = async {
            self.volume.destage_all(BARRIER_WITHIN).await.map_err(|e| e.to_string())?;
            bounded(s.client.flush()).await?;
            // Named and trusted under the lock `withdraw` takes: a break from here on is
            // seen by the next FLUSH, which withdraws the record.
            let mut recorded = self.recorded.lock().await;
            if !s.usable() {
                return Err("the standby missed a change".to_string());
            }
            let record = StandbyRecord { gateway: gateway.clone(), session: id.clone(), epoch };
            let (a, name) = (self.appliance.clone(), self.name.clone());
            blocking(move || a.set_standby(&name, &record)).await.map_err(|e| e.to_string())?;
            *recorded = Some(id);
            s.ready.store(true, Ordering::Release);
            Ok(())
        };
        if let Err(e) = recorded.await {
            self.broke(&s, &e);
            return Err(e);
        }
        info!(volume = %self.name, standby = %gateway, "standby cache ready: flushes are acknowledged from two caches");
        self.event(Happened::Ready, format!("{}: standby cache on gateway {gateway}", self.name));
        Ok(())
    }
}

/// `call`, or why the standby did not answer it in time.
async fn bounded<T>(call: impl std::future::Future<Output = Result<T, cleave_nbd::ClientError>>) -> Result<T, String> {
    match tokio::time::timeout(ANSWER_WITHIN, call).await {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {ANSWER_WITHIN:?}")),
    }
}

fn with_fua(op: Op, fua: bool) -> Op {
    match op {
        Op::Write { offset, data, .. } => Op::Write { offset, data, fua },
        Op::Zero { offset, len, .. } => Op::Zero { offset, len, fua },
        op => op,
    }
}

async fn send(c: &Client, op: Op) -> Result<(), cleave_nbd::ClientError> {
    match op {
        Op::Write { offset, data, fua } => c.write(offset, data, fua).await,
        Op::Zero { offset, len, fua } => c.write_zeroes(offset, len, fua).await,
        Op::Trim { offset, len } => c.trim(offset, len).await,
        Op::Flush => c.flush().await,
    }
}

fn random_session() -> Result<String, aws_lc_rs::error::Unspecified> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b)?;
    Ok(hex::encode(b))
}

/// A taken-over volume: applies the log its last primary kept on this gateway, if that
/// primary (the one of the epoch before this opening) named this gateway's log. Returns how
/// many changes were applied.
pub(crate) async fn apply_log(
    appliance: &Arc<Appliance>,
    logs: &log::Logs,
    volume: &Volume,
) -> Result<Option<usize>, String> {
    let (a, name) = (appliance.clone(), volume.config().name.clone());
    let Some(record) = blocking(move || a.standby_of(&name)).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    if record.gateway != appliance.me() || record.epoch.checked_add(1) != Some(volume.epoch()) {
        return Ok(None);
    }
    let session = record.session.clone();
    let mut log = logs.reader(&session).map_err(|e| format!("standby log {session}: {e}"))?;
    let mut applied = 0;
    while let Some(op) = log.next_change() {
        change(volume, op).await.map_err(|e| format!("applying the standby log: {e}"))?;
        applied += 1;
    }
    // The changes are this gateway's now; they stay in its cache until they reach the targets.
    volume.sync_cache().await.map_err(|e| e.to_string())?;
    if let Err(e) = volume.destage_all(BARRIER_WITHIN).await {
        warn!(volume = %volume.config().name, error = %e, "the standby log's changes are in the cache, not yet on the targets");
    }
    let (a, name) = (appliance.clone(), volume.config().name.clone());
    let _ = blocking(move || a.clear_standby(&name, &session)).await;
    logs.remove(&record.session);
    Ok(Some(applied))
}
