//! Volume health as the administrator sees it: the volume's own view, plus the node targets
//! the pool has marked down; a watcher that records every change as an event and starts
//! re-replication once missing targets answer again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_control::pool::NodeStatus;
use cleave_volume::{Health, Volume};
use tracing::{info, warn};

use crate::events::EventKind;
use crate::gateway::Gateway;
use crate::tasks::{NewTask, TaskKind};

/// The state of a [`Health`], without its details.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HealthState {
    #[default]
    Clean,
    Degraded,
    Unavailable,
}

impl HealthState {
    pub fn of(h: &Health) -> Self {
        match h {
            Health::Clean => HealthState::Clean,
            Health::Degraded { .. } => HealthState::Degraded,
            Health::Unavailable { .. } => HealthState::Unavailable,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Clean => "clean",
            HealthState::Degraded => "degraded",
            HealthState::Unavailable => "unavailable",
        }
    }
}

/// The targets a health names as down.
fn targets_down(h: &Health) -> Vec<String> {
    match h {
        Health::Clean => Vec::new(),
        Health::Degraded { targets_down, .. } | Health::Unavailable { targets_down } => targets_down.clone(),
    }
}

impl Gateway {
    /// A volume's health, also counting the node targets that the pool has marked down: a
    /// volume without I/O would not notice a node that stopped.
    pub fn health(&self, s: &cleave_volume::VolumeStatus) -> Health {
        let nodes = self.pool.nodes();
        let pool_down = |uri: &str| {
            uri.strip_prefix("node://")
                .is_some_and(|a| nodes.iter().any(|n| n.address == a && n.status != NodeStatus::Up))
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
                let was = last.get(&name).copied().unwrap_or_default();
                if was != state {
                    self.health_changed(&name, state, was, &targets_down(&health));
                }
                seen.insert(name, state);
            }
            last = seen;
        }
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
        let req = NewTask { kind: TaskKind::Rereplicate.as_str().into(), volume: name.clone(), ..Default::default() };
        match self.start_task(req) {
            Ok(t) => info!(volume = %name, task = t.id, "targets are back: re-replicating what degraded writes missed"),
            Err(e) => warn!(volume = %name, error = %e, "could not start re-replication"),
        }
    }
}
