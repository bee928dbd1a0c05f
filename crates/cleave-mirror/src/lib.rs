//! The mirroring engine between Cleave gateways (docs/mirroring.md): a volume's primary sends
//! every change to a mirror gateway, synchronously or asynchronously, in an order that keeps
//! the mirror a crash-consistent disk; heartbeats tell when the peer is gone and when it is
//! back; a journal and a dirty-region log keep track of every change it missed; generations
//! tell who is newer, and split brain waits for an administrator.
//!
//! It knows nothing of targets, the codec or NBD: the gateway gives it a [`Replica`] per
//! volume and a [`Host`] for creating volumes, admitting peers and recording events.

/// Extents log, journal and copy set: what a primary's mirror may lack.
pub mod backlog;
/// Control requests and their answers.
pub mod control;
/// The dispatcher: sends in order, replays, copies, journals.
mod dispatch;
/// The engine: listener, heartbeats, mirrors, administration.
pub mod engine;
pub mod error;
/// Private files.
mod files;
/// UDP heartbeats: packets, authentication, liveness and probation.
pub mod heartbeat;
/// The primary's TLS link to a peer.
pub mod link;
/// Byte-range locks.
mod locks;
/// What is kept per peer.
pub mod peers;
/// The primary side of a volume's mirror.
pub mod primary;
/// The local volume, and the event sink.
pub mod replica;
/// The mirror side of a volume.
pub mod secondary;
/// The listener's connections.
mod serve;
/// Starting an engine.
mod startup;
/// Records and views.
pub mod state;
/// Keeping links up and volumes attached.
mod tend;
#[cfg(test)]
mod testing;
/// Frames on the wire.
pub mod wire;

pub use control::PeerCredentials;
pub use engine::{Engine, EngineConfig, Host, HostView, Side};
pub use error::{MirrorError, Result};
pub use heartbeat::Timing;
pub use primary::Settings;
pub use replica::{EventKind, Events, Replica};
pub use state::{MirrorState, MirrorView, Mode, OnFailure, Role};
pub use wire::Op;
