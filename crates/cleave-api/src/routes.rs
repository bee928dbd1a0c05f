//! The router: public routes (login, the OpenAPI document, the console) and the private ones
//! behind authentication, each module's routes stating their roles.

use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::auth::Shared;
use crate::{auth, console, groups, hierarchy, metrics, users, volumes};

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
        .merge(metrics::routes())
        .layer(middleware::from_fn_with_state(gw.clone(), auth::authenticate))
        .with_state(gw);
    public.merge(private)
}
