//! A volume's changes as the NBD front end sees them: each [`Op`] on the volume, and volume
//! errors as NBD errors, mapped here once.

use cleave_mirror::Op;
use cleave_nbd::BlockError;
use cleave_volume::{Volume, VolumeError};
use tracing::warn;

/// A volume error as the host hears it.
pub(crate) fn block_error(e: VolumeError) -> BlockError {
    match e {
        VolumeError::OutOfRange { .. } => BlockError::Invalid(e.to_string()),
        VolumeError::Cache(ref io) if io.raw_os_error() == Some(libc::ENOSPC) => BlockError::NoSpace(e.to_string()),
        // Another gateway serves it now (or will): a forwarding gateway looks for it there.
        VolumeError::Fenced(_) => BlockError::Unavailable(e.to_string()),
        e => {
            warn!(error = %e, "I/O error returned to the client");
            BlockError::Io(e.to_string())
        }
    }
}

/// A change of the volume here.
pub(crate) async fn change(v: &Volume, op: Op) -> Result<(), BlockError> {
    match op {
        Op::Write { offset, data, fua } => v.write(offset, data, fua).await,
        Op::Zero { offset, len, fua } => v.write_zeroes(offset, len as u64, fua).await,
        Op::Trim { offset, len } => v.trim(offset, len as u64).await,
        Op::Flush => v.flush().await,
    }
    .map_err(block_error)
}
