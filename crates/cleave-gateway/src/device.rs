//! The NBD front end's view of a volume: [`VolumeDevice`], where volume and mirror errors
//! become NBD errors, once. A mirrored volume's changes go through the mirroring engine: on
//! the primary they are sent to the mirror as its mode says; on the mirror side hosts may
//! only read.

use std::sync::Arc;

use bytes::Bytes;
use cleave_mirror::{Engine, Op, Side};
use cleave_nbd::{BlockDevice, BlockError};
use cleave_volume::Volume;
use tracing::warn;

use crate::appliance::Appliance;
use crate::standby::Standby;
use crate::volume_io::{block_error, change};

/// Adapts a volume to the NBD front end.
pub(crate) struct VolumeDevice {
    volume: Volume,
    mirror: Option<Arc<Engine>>,
    appliance: Option<Arc<Appliance>>,
    /// In an appliance: the other gateway that keeps this volume's changes too.
    standby: Option<Arc<Standby>>,
}

impl VolumeDevice {
    pub(crate) fn new(
        volume: Volume,
        mirror: Option<Arc<Engine>>,
        appliance: Option<Arc<Appliance>>,
        standby: Option<Arc<Standby>>,
    ) -> Self {
        VolumeDevice { volume, mirror, appliance, standby }
    }

    /// In an appliance, nothing is served once the lease may have lapsed: another gateway
    /// may be serving the volume already (the lease watcher fences it soon after).
    fn check_lease(&self) -> Result<(), BlockError> {
        match &self.appliance {
            Some(a) if !a.holds() => Err(BlockError::Unavailable(format!(
                "volume {}: this gateway lost its lease in the configuration database",
                self.volume.config().name
            ))),
            _ => Ok(()),
        }
    }

    /// A change of this gateway's volume (and of its standby's log, when it has one).
    async fn local(&self, op: Op) -> Result<(), BlockError> {
        match &self.standby {
            Some(s) => s.apply(op).await,
            None => change(&self.volume, op).await,
        }
    }

    /// A change, acknowledged only if the lease held from before it to after it.
    async fn change(&self, op: Op) -> Result<(), BlockError> {
        self.check_lease()?;
        self.apply(op).await?;
        self.check_lease()
    }

    /// A change: local, and to the mirror when the volume has one.
    async fn apply(&self, op: Op) -> Result<(), BlockError> {
        let Some(engine) = &self.mirror else { return self.local(op).await };
        let name = &self.volume.config().name;
        if engine.read_only(name) {
            return Err(BlockError::ReadOnly);
        }
        match engine.side(name) {
            Some(Side::Primary(p)) => match p.apply(op, |op| self.local(op)).await {
                Ok(local) => local,
                Err(e) => {
                    warn!(volume = %name, error = %e, "the mirror did not take a change (policy: fail)");
                    Err(BlockError::Io(e.to_string()))
                }
            },
            _ => self.local(op).await,
        }
    }
}

#[async_trait::async_trait]
impl BlockDevice for VolumeDevice {
    fn size(&self) -> u64 {
        self.volume.size()
    }
    fn read_only(&self) -> bool {
        self.mirror.as_ref().is_some_and(|e| e.read_only(&self.volume.config().name))
    }
    fn can_multi_conn(&self) -> bool {
        // Every connection goes through the same cache, and FLUSH covers the whole volume.
        true
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        self.check_lease()?;
        self.volume.read(offset, len).await.map_err(block_error)
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.change(Op::Write { offset, data, fua }).await
    }
    async fn flush(&self) -> Result<(), BlockError> {
        self.change(Op::Flush).await
    }
    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.change(Op::Trim { offset, len }).await
    }
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        self.change(Op::Zero { offset, len, fua }).await
    }
}
