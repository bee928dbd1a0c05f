//! `cleave-control`: what control knows about the storage pool.
//!
//! - [`autoconfig`]: the UDP protocol by which nodes (and child controls) register, report and leave.
//! - [`pool`]: nodes with their status, capacity, site and last-seen time; child controls; events.
//! - [`hierarchy`]: a control server as the child of another, and a parent's view of its children.

pub mod autoconfig;
pub mod hierarchy;
pub mod pool;
