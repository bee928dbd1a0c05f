//! Volume health as the administrator sees it: the volume's own view, plus the node targets
//! the pool has marked down.

use cleave_control::pool::NodeStatus;
use cleave_volume::Health;

use crate::gateway::Gateway;

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
pub fn targets_down(h: &Health) -> Vec<String> {
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
}
