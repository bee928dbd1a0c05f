//! The NBD front end's view of a volume: [`VolumeDevice`], where volume errors become NBD
//! errors, once.

use bytes::Bytes;
use cleave_nbd::{BlockDevice, BlockError};
use cleave_volume::{Volume, VolumeError};
use tracing::warn;

/// Adapts a volume to the NBD front end.
pub(crate) struct VolumeDevice(pub(crate) Volume);

fn block_error(e: VolumeError) -> BlockError {
    match e {
        VolumeError::OutOfRange { .. } => BlockError::Invalid(e.to_string()),
        VolumeError::Cache(ref io) if io.raw_os_error() == Some(libc::ENOSPC) => BlockError::NoSpace(e.to_string()),
        e => {
            warn!(error = %e, "I/O error returned to the client");
            BlockError::Io(e.to_string())
        }
    }
}

#[async_trait::async_trait]
impl BlockDevice for VolumeDevice {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn can_multi_conn(&self) -> bool {
        // Every connection goes through the same cache, and FLUSH covers the whole volume.
        true
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        self.0.read(offset, len).await.map_err(block_error)
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.0.write(offset, data, fua).await.map_err(block_error)
    }
    async fn flush(&self) -> Result<(), BlockError> {
        self.0.flush().await.map_err(block_error)
    }
    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.0.trim(offset, len as u64).await.map_err(block_error)
    }
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        self.0.write_zeroes(offset, len as u64, fua).await.map_err(block_error)
    }
}
