//! `cleave-control`: what control knows about the storage pool.
//!
//! - [`autoconfig`]: the UDP protocol by which nodes register, report and leave.
//! - [`pool`]: nodes with their status, capacity, site and last-seen time; events.

pub mod autoconfig;
pub mod pool;
