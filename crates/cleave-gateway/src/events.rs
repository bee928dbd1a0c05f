//! Events for the administrator (kept by the node pool, listed by `GET /api/v1/events`):
//! the closed set of kinds the gateway records.

use crate::gateway::Gateway;
use crate::health::HealthState;
use crate::tasks::TaskKind;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A volume's health changed, or a stored volume could not be opened (`Unavailable`).
    VolumeHealth(HealthState),
    /// A volume that could not be opened is served now.
    VolumeOpened,
    /// A share of a volume moved to another target.
    VolumeMoved,
    /// A task ended.
    TaskDone(TaskKind),
    /// Events are sent to a (new) webhook URL.
    WebhookSet,
    /// Events are sent to no webhook any more.
    WebhookRemoved,
}

impl EventKind {
    /// The kind as events show it: `volume_degraded`, `scrub_done`, ...
    pub fn name(self) -> String {
        match self {
            EventKind::VolumeHealth(h) => format!("volume_{}", h.as_str()),
            EventKind::VolumeOpened => "volume_opened".into(),
            EventKind::VolumeMoved => "volume_moved".into(),
            EventKind::TaskDone(k) => format!("{}_done", k.as_str()),
            EventKind::WebhookSet => "webhook_set".into(),
            EventKind::WebhookRemoved => "webhook_removed".into(),
        }
    }
}

impl Gateway {
    /// Records an event for the administrator.
    pub(crate) fn record(&self, kind: EventKind, detail: String) {
        self.pool.push_event(&kind.name(), detail);
    }
}
