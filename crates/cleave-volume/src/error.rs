use cleave_target::TargetError;

/// What can go wrong in the volume engine.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("I/O range {offset}+{len} is outside the volume ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("chunk {chunk} is unavailable: {reason}")]
    Unavailable { chunk: u64, reason: String },
    #[error("fewer than the write quorum of targets accepted the write: {0}")]
    Quorum(String),
    #[error("local cache: {0}")]
    Cache(#[from] std::io::Error),
    #[error("target: {0}")]
    Target(#[from] TargetError),
    #[error("keys: {0}")]
    Key(#[from] cleave_split::KeyError),
    #[error("invalid volume configuration: {0}")]
    Config(String),
    /// Metadata exists on the targets but cannot be read from those that answer.
    #[error("metadata unavailable: {0}")]
    MetadataUnavailable(String),
    /// Another gateway owns the volume.
    #[error("volume is claimed by {owner} (epoch {epoch}); take it over explicitly to serve it here")]
    Claimed { owner: String, epoch: u64 },
    /// A newer owner took the volume over: this gateway stopped serving it.
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("metadata: {0}")]
    Metadata(String),
    #[error("timed out: {0}")]
    Timeout(String),
}

impl From<cleave_split::EncodeError> for VolumeError {
    fn from(e: cleave_split::EncodeError) -> Self {
        VolumeError::Metadata(e.to_string())
    }
}
