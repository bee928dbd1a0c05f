//! What each side keeps of a mirror (`DIR/mirror/volumes/NAME/record.json`), and what it shows.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// When the host is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = MirrorMode)]
pub enum Mode {
    /// After the mirror has the change (and, for FLUSH and FUA, has made it durable).
    Sync,
    /// After the primary has it; the mirror follows in order, with a bounded lag.
    Async,
}

/// What a sync write does when the mirror cannot take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// The host gets an I/O error (the change is still kept for the mirror).
    Fail,
    /// The host is answered; the change is journaled and the volume shows degraded.
    #[default]
    Degrade,
}

/// Which side of the mirror this gateway is for a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = MirrorRole)]
pub enum Role {
    /// Serves hosts and sends every change to the peer.
    Primary,
    /// Takes the primary's changes; hosts may only read.
    Secondary,
}

/// A mirror as one side keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub volume: String,
    pub size: u64,
    pub role: Role,
    /// The peer's mirror listener, `HOST:PORT`.
    pub peer: String,
    pub mode: Mode,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// The generation: a random id, new at each forced promotion.
    pub generation: String,
    /// Earlier generations of this side, oldest first.
    #[serde(default)]
    pub history: Vec<String>,
    /// A secondary's image is a crash-consistent disk (false while regions are copied).
    pub consistent: bool,
    #[serde(default)]
    pub paused: bool,
    /// Set by `resolve` on the side whose changes are discarded: the regions it wrote
    /// since the split, for the survivor to copy over.
    #[serde(default)]
    pub discarding: Option<Vec<u64>>,
    /// Where the initial full copy stands, in regions (a primary's; resumed after a restart).
    #[serde(default)]
    pub sweep: Option<u64>,
    /// This side created the mirror. It never changes, so the two sides can name themselves
    /// apart for hosts (the iSCSI front end's target port groups 1 and 2).
    #[serde(default)]
    pub origin: bool,
}

impl Record {
    pub fn new_generation() -> String {
        hex::encode(fastrand::u128(..).to_be_bytes())
    }

    pub fn load(path: &Path) -> std::io::Result<Record> {
        let b = std::fs::read(path)?;
        serde_json::from_slice(&b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Writes the record atomically (temporary file, fsync, rename).
    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        let b = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::files::write_atomic(path, &b)
    }
}

/// A mirror's state, as shown to the administrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MirrorState {
    /// Every change acknowledged is on the mirror (sync) or on its way in order (async).
    InSync,
    /// Journal replay or region copy in progress.
    Resyncing,
    /// The peer is unreachable; changes are journaled.
    Disconnected,
    /// Heartbeats are back; waiting for the probationary interval before reconnecting.
    Probation,
    /// Both sides wrote while apart; `mirror resolve` decides.
    SplitBrain,
    /// Paused by an administrator; changes are journaled.
    Paused,
}

/// What `mirror show` reports.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MirrorView {
    pub volume: String,
    pub role: Role,
    pub peer: String,
    pub mode: Mode,
    pub on_failure: OnFailure,
    pub state: MirrorState,
    /// Bytes and changes acknowledged to hosts but not yet on the mirror.
    pub lag_bytes: u64,
    pub lag_changes: u64,
    /// Resync progress, in regions (1 MiB): done of total.
    pub resync_done: u64,
    pub resync_total: u64,
    pub journal_bytes: u64,
    pub journal_records: u64,
    /// Regions to copy whole (the dirty-region bitmap).
    pub bitmap_regions: u64,
    /// The journal outgrew its bound and was replaced by the bitmap.
    pub journal_overflowed: bool,
    pub generation: String,
    pub consistent: bool,
    /// Why the state is what it is, when it is not in sync.
    pub detail: String,
}
