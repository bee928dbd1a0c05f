//! The local volume as the engine sees it, and the sinks it reports to.

use bytes::Bytes;

use crate::wire::Op;

/// A volume on this gateway: what a primary reads to copy regions, and what a secondary
/// applies the primary's changes to. Errors are messages: the engine only reports them.
#[async_trait::async_trait]
pub trait Replica: Send + Sync {
    fn size(&self) -> u64;
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, String>;
    /// Applies one change (a flush makes every change before it durable).
    async fn apply(&self, op: Op) -> Result<(), String>;
}

/// What the engine tells the administrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The peer stopped answering; changes are journaled.
    Disconnected,
    /// Heartbeats are back; reconnecting after probation.
    Reconnected,
    /// Resync finished: the mirror has every change.
    InSync,
    /// A sync write was acknowledged without the mirror (policy `degrade`), or failed (`fail`).
    Degraded,
    /// Async: the mirror lags by more than its bound; changes go to the journal meanwhile.
    Lagging,
    /// The journal outgrew its bound; the dirty-region bitmap takes over.
    JournalOverflow,
    SplitBrain,
    Promoted,
    Demoted,
    Resolved,
    /// A peer or a message was refused (bad certificate, forged or malformed message).
    Refused,
}

/// Where events go (the gateway's event log).
pub trait Events: Send + Sync {
    fn event(&self, volume: &str, kind: EventKind, message: String);
}
