//! The mirroring engine's errors.

/// A frame that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Why a mirror operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MirrorError {
    /// The link to the peer is down; the change is journaled.
    #[error("mirror link down: {0}")]
    LinkDown(String),
    /// The peer answered with an error.
    #[error("the mirror refused: {0}")]
    Refused(String),
    /// Both sides wrote while apart; an administrator must choose which side's changes go.
    #[error("split brain: {0}")]
    SplitBrain(String),
    /// A request the state of the mirror does not allow.
    #[error("{0}")]
    Invalid(String),
    #[error("no mirror for volume {0:?}")]
    NotFound(String),
    /// The local volume or the engine's files failed.
    #[error("local: {0}")]
    Local(String),
}

impl From<std::io::Error> for MirrorError {
    fn from(e: std::io::Error) -> Self {
        MirrorError::Local(e.to_string())
    }
}

pub type Result<T, E = MirrorError> = std::result::Result<T, E>;
