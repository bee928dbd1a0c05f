//! The REST API and the web console over a running `cleave_gateway::Gateway`: an axum
//! router. Each route states the role it needs where it is defined; gateway errors become
//! statuses in one place ([`error`]).

/// Authentication, and the role each route needs.
pub mod auth;
/// The web console: static files.
mod console;
/// `ApiError`: errors to HTTP statuses, once.
pub mod error;
/// Clients and groups.
mod groups;
/// Nodes, child controls, events, and calls forwarded to a child control.
mod hierarchy;
/// The admin API over TLS: a listener whose handshakes run in their own tasks.
pub mod https;
/// How clients log in over iSCSI: CHAP secrets and initiator names.
mod initiators;
/// `GET /metrics`, for Prometheus.
mod metrics;
/// Mirrors of volumes to and from a peer gateway.
mod mirrors;
/// Request and response bodies, shared with clients.
pub mod model;
/// The OpenAPI document, generated from the routes and the types.
mod openapi;
/// The router: public and private routes.
mod routes;
/// Login, one's own account, and users.
mod users;
/// Volumes and tasks.
mod volumes;
/// The webhook that events are sent to.
mod webhook;

pub use auth::Shared;
pub use routes::{document, router};
