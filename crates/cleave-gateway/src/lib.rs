//! The running Cleave service as a library: what `cleave serve` and `cleave control` run,
//! with no HTTP and no command line, so that any front end (the REST API, NBD, a test)
//! drives the same [`Gateway`]. Every call fails with a typed [`GatewayError`].

/// Clients' rights at the gateway: the registry, control's CA, NBD TLS, the checked device.
pub mod access;
/// Several gateways on one etcd: which one serves each volume, leases, fencing, takeover.
pub mod appliance;
/// The CA of client and listener certificates, one for the gateways of an appliance.
mod authority;
/// The data directory: keys, tokens, the configuration database, caches, default targets.
pub mod data_dir;
/// A volume as an NBD block device.
mod device;
/// `GatewayError`, and how the errors of the layers below sort into its kinds.
pub mod error;
/// Events for the administrator.
pub mod events;
/// I/O forwarding in an appliance: every gateway exports every volume, requests go to its primary.
mod forward;
/// The body of the fuzz target (`fuzz/`), also run by a stable test.
pub mod fuzzing;
/// The gateway: its parts, the registry of volumes, the NBD export provider.
pub mod gateway;
/// Clients, groups and grants (key slots).
pub mod groups;
/// Volume health, with the nodes the pool has marked down.
pub mod health;
/// Sending heartbeats to the other gateways of an appliance.
mod heartbeats;
/// The task history, kept in the configuration database.
pub mod history;
/// The iSCSI front end's view: initiators and CHAP as clients, volumes, reservations.
pub mod iscsi;
/// The work of recover, re-replicate and move tasks.
mod jobs;
/// Start-up, retries of volumes that could not be opened, the health watcher.
pub mod lifecycle;
/// Metrics in the OpenMetrics text format (for `GET /metrics`).
pub mod metrics;
/// Mirroring to a peer gateway: the engine on this gateway's volumes, peers, operations.
pub mod mirror;
/// The node plane's credentials: node CA, enrolment, the gateway's target credentials.
pub mod nodetls;
/// Back-end path checks: which targets each gateway reaches; giving up a volume it cannot store.
mod paths;
/// Heartbeats between the gateways of an appliance.
mod peers;
/// The task queue.
mod queue;
/// Byte sizes, parsed and shown (`1MiB`, `64 GiB`).
pub mod size;
/// The standby cache: a primary's changes kept by another gateway of the appliance too.
mod standby;
/// The standby caches of the volumes served here, the logs kept for other primaries.
mod standbys;
/// A record of the configuration database kept in memory, shared by the gateways of an appliance.
pub mod stored;
/// Tasks: kinds, states, views, requests.
pub mod tasks;
/// Users, sessions, API tokens, and who a caller is.
pub mod users;
/// Volume views: what the API shows of a volume.
pub mod views;
/// A volume's changes, and its errors as NBD errors.
mod volume_io;
/// Create, delete, publish and place volumes.
pub mod volumes;
/// Events POSTed to an administrator's URL, signed, queued and retried.
pub mod webhook;

pub use error::{GatewayError, Result};
pub use gateway::{Gateway, GatewayConfig, NbdExport, Stores};
pub use size::ByteSize;
