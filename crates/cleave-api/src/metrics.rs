//! `GET /metrics`: the gateway's metrics for Prometheus. Like every other read, it needs an
//! authenticated caller of at least the viewer role (docs/security.md, "Metrics"): a scraper
//! sends a viewer's API token as its bearer token.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::auth::{viewer, Shared};

/// OpenMetrics for a client that asks for it (Prometheus does), the Prometheus text format
/// for the others.
async fn metrics(State(gw): State<Shared>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|h| h.to_str().ok()).unwrap_or("");
    let (content_type, body) = gw.metrics(accept.contains("application/openmetrics-text"));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

pub(crate) fn routes() -> Router<Shared> {
    Router::new().route("/metrics", viewer(get(metrics)))
}
