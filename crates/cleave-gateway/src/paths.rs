//! Path checks in an appliance (docs/appliance.md). Back end: every gateway asks each
//! volume's targets, served here or not, whether they answer, and publishes how many do.
//! Front end: every gateway asks its own NBD listener, where it advertises it to hosts and
//! to the other gateways, for an NBD greeting; one that does not answer publishes that it
//! reaches nothing, since nobody can reach it.
//!
//! A primary that reaches too few of a volume's targets to destage (fewer than its write
//! quorum), or whose listener does not answer, for [`LOST_FOR`], while another gateway of
//! its order reaches enough, gives the volume up to it: fenced here, released and passed on,
//! like an inquiry along the order.
//!
//! What was written here and not yet flushed is lost here with the path, as with a crash: in
//! an appliance every FLUSH reaches the targets or a standby's log before it is acknowledged,
//! and the hosts' gateways send what they wrote since their last FLUSH again to the next
//! primary (`crate::forward`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_target::DynTarget;
use tracing::warn;

use crate::appliance::{blocking, Appliance};
use crate::events::EventKind;
use crate::gateway::Gateway;

/// How often the targets are asked.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long one target may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// How long a primary tolerates reaching too few targets before it gives the volume up.
const LOST_FOR: Duration = Duration::from_secs(3);

/// Targets opened for the checks, per volume; and since when each volume served here
/// reaches too few of them.
#[derive(Default)]
struct Checks {
    targets: HashMap<String, (Vec<String>, Vec<DynTarget>)>,
    lost_since: HashMap<String, Instant>,
}

impl Gateway {
    /// Checks the back-end paths every [`CHECK_EVERY`], publishes what it found, and gives up
    /// the volumes served here that another gateway can serve better.
    pub(crate) async fn check_paths(self: Arc<Self>, a: Arc<Appliance>) {
        let mut checks = Checks::default();
        let mut published = None;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tick.tick().await;
            let mut reach = self.reach(&mut checks).await;
            let front_end = self.front_end_down().await;
            if front_end.is_some() {
                // Nobody reaches this gateway: it can serve no volume.
                reach.values_mut().for_each(|n| *n = 0);
            }
            a.set_front_end(front_end.is_none());
            // Also keeps what the NBD handshake reads of the other gateways fresh.
            let a2 = a.clone();
            if let Err(e) = blocking(move || a2.refresh()).await {
                warn!(error = %e, "cannot read the appliance's members");
            }
            // Only changes are written: etcd keeps every revision until it is compacted.
            if published.as_ref() != Some(&reach) {
                let (a2, r) = (a.clone(), reach.clone());
                match blocking(move || a2.report_reach(&r)).await {
                    Ok(()) => published = Some(reach.clone()),
                    Err(e) => warn!(error = %e, "cannot publish which targets this gateway reaches"),
                }
            }
            self.leave_unreachable(&a, &reach, front_end.as_deref(), &mut checks.lost_since).await;
        }
    }

    /// Why this gateway's NBD listener does not answer where it is advertised, if it does not.
    async fn front_end_down(&self) -> Option<String> {
        let addr = self.nbd.as_ref()?.reachable();
        match tokio::time::timeout(ANSWER_WITHIN, cleave_nbd::client::probe(&addr)).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("its NBD listener does not answer at {addr}: {e}")),
            Err(_) => Some(format!("its NBD listener does not answer at {addr} in time")),
        }
    }

    /// Every known volume's target URIs: served ones' from the volume, others' from their
    /// superblock once read.
    fn known_targets(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> =
            self.served_volumes().iter().map(|v| (v.config().name.clone(), v.config().targets.clone())).collect();
        for (name, u) in self.unopened.read().expect("not poisoned").iter() {
            if let Some(sb) = &u.sb {
                out.entry(name.clone()).or_insert_with(|| sb.config.targets.clone());
            }
        }
        out
    }

    /// How many of each volume's targets answer a health check from here.
    async fn reach(&self, checks: &mut Checks) -> BTreeMap<String, usize> {
        let known = self.known_targets();
        checks.targets.retain(|name, _| known.contains_key(name));
        let mut asks = Vec::new();
        for (name, uris) in known {
            let opened = checks.targets.get(&name).filter(|(had, _)| *had == uris);
            let targets = match opened {
                Some((_, t)) => t.clone(),
                None => {
                    // A target that cannot even be opened (a bad URI) counts as not reached.
                    let t: Vec<DynTarget> = uris.iter().filter_map(|u| self.open_target(u).ok()).collect();
                    checks.targets.insert(name.clone(), (uris, t.clone()));
                    t
                }
            };
            asks.push(async move { (name, answering(&targets).await) });
        }
        futures::future::join_all(asks).await.into_iter().collect()
    }

    /// Gives up each volume served here that has reached fewer targets than its write
    /// quorum for [`LOST_FOR`] (all of them while `front_end` says why hosts cannot reach
    /// this gateway), to the first gateway of its order that reaches enough.
    async fn leave_unreachable(
        &self,
        a: &Arc<Appliance>,
        reach: &BTreeMap<String, usize>,
        front_end: Option<&str>,
        lost_since: &mut HashMap<String, Instant>,
    ) {
        let served = self.served_volumes();
        lost_since.retain(|name, _| served.iter().any(|v| v.config().name == *name));
        for v in served {
            let (name, needed) = (v.config().name.clone(), v.config().write_quorum());
            let here = reach.get(&name).copied().unwrap_or(0);
            if here >= needed {
                lost_since.remove(&name);
                continue;
            }
            if lost_since.entry(name.clone()).or_insert_with(Instant::now).elapsed() < LOST_FOR {
                continue;
            }
            let (a2, volume) = (a.clone(), name.clone());
            let Ok(Some(to)) = blocking(move || a2.able_successor(&volume, needed)).await else { continue };
            let why = match front_end {
                Some(down) => format!("{down}; gateway {to} serves it"),
                None => format!(
                    "{here} of its {} targets answer here, {needed} needed to store; gateway {to} reaches enough",
                    v.config().n
                ),
            };
            self.give_up(a, &v, &to, &why).await;
            lost_since.remove(&name);
        }
    }

    /// Stops serving `v` here at once (no destage: its targets are out of reach) and passes
    /// it on; `to` is expected to claim it.
    async fn give_up(&self, a: &Arc<Appliance>, v: &cleave_volume::Volume, to: &str, why: &str) {
        let name = v.config().name.clone();
        let _admin = self.admin.lock().await;
        v.fence(why);
        v.close().await;
        self.passed_on(a, &name, why.to_string(), to).await;
        warn!(volume = %name, to, "{why}: the volume is passed on");
        self.record(EventKind::PathLost, format!("{name}: {why}; passed on"));
    }
}

/// How many of `targets` answer a health check in time.
async fn answering(targets: &[DynTarget]) -> usize {
    let asks = targets.iter().map(|t| async move { tokio::time::timeout(ANSWER_WITHIN, t.health()).await });
    futures::future::join_all(asks).await.into_iter().filter(|r| matches!(r, Ok(Ok(())))).count()
}
