//! Control requests on a mirror connection (JSON in [`crate::wire::Frame::Control`]).

use serde::{Deserialize, Serialize};

use crate::state::{Mode, OnFailure};

/// What a peer may ask.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Control {
    /// The first request of a link: who the sender is and where its listener is.
    Hello { id: String, listen: String },
    /// Make the mirror side of a new volume; `credentials` reach the asking gateway back
    /// (planned switchover, and split-brain resolution from this side).
    Create {
        volume: String,
        size: u64,
        mode: Mode,
        on_failure: OnFailure,
        generation: String,
        credentials: PeerCredentials,
    },
    /// Start sending a volume's changes: the primary's generation and its history.
    Attach { volume: String, generation: String, history: Vec<String>, keeps_order: bool },
    /// The mirror's image is (or is not) crash-consistent from now on.
    Consistent { handle: u32, consistent: bool },
    /// Planned switchover: the primary drains and becomes the mirror.
    Demote { volume: String },
    /// Stop mirroring the volume (the mirror keeps its volume, as a plain volume).
    Remove { volume: String },
}

/// The answer to `Hello`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Welcome {
    pub id: String,
}

/// The answer to `Attach`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum AttachReply {
    Attached(Attached),
    SplitBrain { reason: String },
}

/// An accepted attach.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attached {
    pub handle: u32,
    /// Regions the mirror changed on its own (a split brain's discarded side): copy them.
    pub discarded: Vec<u64>,
    /// The mirror is behind by more than the primary tracks: copy everything.
    pub full_copy: bool,
}

/// What one gateway needs to reach another's mirror listener: the peer's CA, a client
/// certificate it issued, and the key. Stored private (mode 0600).
#[derive(Clone, Serialize, Deserialize)]
pub struct PeerCredentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for PeerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCredentials").field("key_pem", &"<redacted>").finish()
    }
}
