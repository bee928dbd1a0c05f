//! `cleave-iscsi`: an iSCSI target (RFC 7143) presenting each volume as a SCSI disk (SPC-4,
//! SBC-3) with ALUA, for anything that implements [`cleave_nbd::BlockDevice`]. It knows nothing
//! of targets, volumes' internals or the gateway: the host supplies an [`Access`].
//!
//! - [`pdu`]: the wire format: BHS, AHS, padding, CRC32C digests (pure, fuzzed).
//! - [`text`], [`negotiate`], [`chap`], [`login`]: the login phase.
//! - [`session`], `command`, `task`, `tmf`, `conn`: full feature phase on one connection, its
//!   commands running concurrently.
//! - [`scsi`]: the disk command set over a [`cleave_nbd::BlockDevice`].
//! - [`access`]: the host-facing traits and types; [`server`]: the listener.
//! - [`fuzzing`]: the fuzz targets' bodies, also run by a stable test.

pub mod access;
pub mod chap;
mod command;
mod conn;
pub mod fuzzing;
pub mod login;
pub mod negotiate;
pub mod pdu;
mod reinstate;
pub mod scsi;
pub mod server;
pub mod session;
mod task;
/// A hand-written initiator for tests.
#[cfg(feature = "testing")]
pub mod testing;
pub mod text;
mod tmf;
mod write;

pub use access::{
    Access, Alua, AluaState, Identity, Opened, PortGroup, ReservationType, Reservations, ReservationsAt, Rights, Saved,
    StaticAccess,
};
pub use server::{Server, ServerConfig};

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The PDU's header comes along, for the Reject that answers it.
    #[error("malformed PDU: {0}")]
    Pdu(pdu::PduError, Box<[u8; pdu::BHS_LEN]>),
    #[error("login failed: {0}")]
    Login(#[from] login::LoginError),
    #[error("login did not finish in time")]
    LoginTimeout,
}
