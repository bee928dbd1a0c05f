//! Events for the administrator (kept by the node pool, listed by `GET /api/v1/events`):
//! the closed set of kinds the gateway records, and the webhook they are sent to.

use std::sync::Arc;

use crate::error::Result;
use crate::gateway::Gateway;
use crate::health::HealthState;
use crate::tasks::TaskKind;
use crate::webhook::{origin, Poster, WebhookSecret, WebhookView};

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
    /// This gateway took a volume over from another one of the appliance.
    GatewayFailover,
    /// This gateway stopped serving a volume: it could not keep its lease.
    GatewayFenced,
    /// This gateway handed a volume over to the gateway its order names first (planned).
    GatewayHandover,
    /// This gateway reached too few of a volume's targets and passed it on to one that
    /// reaches enough.
    PathLost,
    /// A volume served here has a standby cache on another gateway: a FLUSH is acknowledged
    /// from the two caches.
    StandbyReady,
    /// The standby missed a change: FLUSHes reach the targets until a new one is ready.
    StandbyLost,
    /// A volume taken over here: the changes its last primary kept on this gateway applied.
    StandbyApplied,
    /// Another gateway stopped answering this one's heartbeats.
    PeerLost,
    /// A gateway that had stopped answering heartbeats answers again.
    PeerBack,
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
            EventKind::GatewayFailover => "gateway_failover".into(),
            EventKind::GatewayFenced => "gateway_fenced".into(),
            EventKind::GatewayHandover => "gateway_handover".into(),
            EventKind::PathLost => "path_lost".into(),
            EventKind::StandbyReady => "standby_ready".into(),
            EventKind::StandbyLost => "standby_lost".into(),
            EventKind::StandbyApplied => "standby_applied".into(),
            EventKind::PeerLost => "peer_lost".into(),
            EventKind::PeerBack => "peer_back".into(),
        }
    }
}

impl Gateway {
    /// Records an event for the administrator.
    pub(crate) fn record(&self, kind: EventKind, detail: String) {
        self.pool.push_event(&kind.name(), detail);
    }
}

impl Gateway {
    /// Starts sending the events to the webhook, with `poster`; until then they wait.
    pub fn start_webhook(&self, poster: Arc<dyn Poster>) {
        tokio::spawn(self.webhook.clone().deliver(poster));
    }

    /// The webhook and its deliveries.
    pub fn webhook(&self) -> WebhookView {
        self.webhook.view()
    }

    /// Sends every event to `url` from now on, signed with a new secret (returned, once).
    pub fn set_webhook(&self, url: &str) -> Result<WebhookSecret> {
        let secret = self.webhook.set(&self.master, url)?;
        self.record(EventKind::WebhookSet, format!("events are sent to {}", origin(url)));
        Ok(secret)
    }

    /// Sends events to nobody; the queue is emptied.
    pub fn remove_webhook(&self) -> Result<()> {
        self.webhook.remove()?;
        self.record(EventKind::WebhookRemoved, "events are no longer sent".into());
        Ok(())
    }
}
