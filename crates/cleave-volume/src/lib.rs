//! `cleave-volume`: a virtual disk made of chunks, cached locally and dispersed to targets.
//!
//! - [`meta`]: volume configuration, the superblock stored on every target, object names.
//! - [`journal`]: the encrypted, dispersed log of chunk → generation updates, with checkpoints.
//! - [`map`]: the chunk map in copy-on-write pages, read on demand into a bounded cache.
//! - [`dispersal`]: writing N shares with a quorum; reading the fastest M with hedging.
//! - [`claim`]: one gateway serves a volume at a time: claims with an epoch, fencing.
//! - [`label`]: the authenticated label on each target: which volume, which share.
//! - [`naming`]: opaque object names: a target cannot tell which chunk an object holds.
//! - [`cache`]: the persistent local cache: a file of chunk slots and its index.
//! - [`volume`]: reads, writes, flush, trim, and the destage loop.
//! - [`recover`]: rebuilding a volume from any M targets and the master key alone.
//! - [`scrub`]: verifying every share and repairing what is missing or bad.
//! - [`stats`]: I/O counters and latency histograms, in atomics.
//! - [`fuzzing`]: the bodies of the fuzz targets (`fuzz/`), also run by a stable test.

pub mod cache;
pub mod claim;
pub mod dispersal;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod journal;
pub mod label;
pub mod map;
pub mod meta;
pub mod naming;
pub mod recover;
pub mod scrub;
pub mod stats;
pub mod volume;

pub use error::VolumeError;
pub use meta::{Durability, Superblock, VolumeConfig};
pub use volume::{Health, Volume, VolumeOptions, VolumeStatus};
