//! `cleave-nbd`: an NBD server (fixed newstyle, simple replies) for anything that
//! implements [`BlockDevice`], and a client of it. It knows nothing of targets or volumes.
//!
//! - [`proto`]: wire constants and pure parse/serialize functions (fuzzed).
//! - [`device`]: the [`BlockDevice`] and [`ExportProvider`] traits, [`BlockError`], and [`MemDevice`].
//! - [`server`]: [`Server`]: handshake, then pipelined transmission with out-of-order replies.
//! - [`client`]: [`Client`]: what a gateway forwards requests with (TLS, pipelined).

pub mod client;
pub mod device;
pub mod proto;
pub mod server;

pub use client::{Client, ClientError};
pub use device::{BlockDevice, BlockError, ExportProvider, MemDevice, Peer, PeerAddr, Refusal};
pub use proto::ProtoError;
pub use server::{ProtocolError, Server, ServerConfig};
