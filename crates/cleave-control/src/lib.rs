//! `cleave-control`: what control knows about the storage pool.
//!
//! - [`model`]: words the pool, the hierarchy and the protocol share (status, kinds, summaries).
//! - [`clock`]: wall-clock times as recorded and as packet numbers.
//! - [`autoconfig`]: the UDP protocol by which nodes (and child controls) register, report and leave.
//! - [`access`]: clients, groups and grants; the rights of an identity on a volume.
//! - [`initiators`]: iSCSI initiators as clients log in from, and the clients' CHAP secrets.
//! - [`ca`]: control's certificate authority for NBD over TLS.
//! - [`config`]: the configuration database behind the `ConfigStore` trait: embedded (redb) or
//!   shared by several gateways (etcd); its conformance suite (feature `testing`).
//! - [`placement`]: which nodes hold a new volume's shares (pure), counting promised space.
//! - [`sim`]: a large pool simulated with the real placement: balance, and losing a site.
//! - [`pool`]: nodes with their status, capacity, site and last-seen time; child controls; events.
//! - [`children`]: child controls as a parent records them, changed only by the listener.
//! - [`hierarchy`]: a control server as the child of another, and a parent's view of its children.
//! - [`users`]: users of the API and console, their roles, passwords and tokens; the access policy.

pub mod access;
pub mod autoconfig;
pub mod ca;
pub mod children;
pub mod clock;
pub mod config;
pub mod hierarchy;
pub mod initiators;
pub mod model;
pub mod placement;
pub mod pool;
pub mod sim;
pub mod users;
