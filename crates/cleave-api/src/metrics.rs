//! `GET /metrics`: the gateway's metrics for Prometheus. Like every other read, it needs an
//! authenticated caller of at least the viewer role (docs/security.md, "Metrics"): a scraper
//! sends a viewer's API token as its bearer token.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::auth::{viewer, Shared};

async fn metrics(State(gw): State<Shared>) -> Response {
    ([(header::CONTENT_TYPE, cleave_gateway::metrics::CONTENT_TYPE)], gw.metrics()).into_response()
}

pub(crate) fn routes() -> Router<Shared> {
    Router::new().route("/metrics", viewer(get(metrics)))
}
