//! The REST API and the web console over a running `cleave_gateway::Gateway`: an axum router. Each route
//! states the role it needs where it is defined; gateway errors become statuses in one place
//! ([`error`]).

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
/// Request and response bodies, shared with clients.
pub mod model;
/// Login, one's own account, and users.
mod users;
/// Volumes and tasks.
mod volumes;

use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use auth::Shared;

/// The OpenAPI document of this API, public so that tools can read it.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

/// The whole API: public routes (login, the OpenAPI document, the console) and the private
/// ones behind authentication.
pub fn router(gw: Shared) -> Router {
    let public = Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/login", post(users::login))
        .merge(console::routes())
        .with_state(gw.clone());
    let private = Router::new()
        .merge(hierarchy::routes())
        .merge(volumes::routes())
        .merge(groups::routes())
        .merge(users::routes())
        .layer(middleware::from_fn_with_state(gw.clone(), auth::authenticate))
        .with_state(gw);
    public.merge(private)
}
