//! `cleave-nbd`: an NBD server (fixed newstyle, simple replies) for anything that
//! implements [`BlockDevice`]. It knows nothing of targets or volumes.
//!
//! - [`proto`]: wire constants and pure parse/serialize functions (fuzzed).
//! - [`device`]: the [`BlockDevice`] and [`ExportProvider`] traits, [`BlockError`], and [`MemDevice`].
//! - [`server`]: [`Server`]: handshake, then pipelined transmission with out-of-order replies.

pub mod device;
pub mod proto;
pub mod server;

pub use device::{BlockDevice, BlockError, ExportProvider, MemDevice, Peer, PeerAddr, Refusal};
pub use proto::ProtoError;
pub use server::{ProtocolError, Server, ServerConfig};
