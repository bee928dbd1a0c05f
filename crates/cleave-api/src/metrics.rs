//! `GET /metrics`: the gateway's metrics for Prometheus. Like every other read, it needs an
//! authenticated caller of at least the viewer role (docs/security.md, "Metrics"): a scraper
//! sends a viewer's API token as its bearer token.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use cleave_control::users::Role;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{role, Shared};

/// Metrics for Prometheus. Per volume: I/O ops, bytes and latency histograms, cache hits and
/// misses, dirty and cache bytes, destage lag, health; per target: latency, requests, errors,
/// up; per node: capacity, free, up; tasks by kind and state. The Prometheus text format, or
/// OpenMetrics when the Accept header asks for `application/openmetrics-text` (Prometheus
/// does). Metric names: README, Observability.
#[utoipa::path(get, path = "/metrics", tag = "hierarchy",
    responses((status = 200, description = "The metrics.", content(
        (String = "text/plain; version=0.0.4"),
        (String = "application/openmetrics-text; version=1.0.0"),
    ))))]
async fn metrics(State(gw): State<Shared>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|h| h.to_str().ok()).unwrap_or("");
    let (content_type, body) = gw.metrics(accept.contains("application/openmetrics-text"));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

pub(crate) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::default().routes(role(Role::Viewer, routes!(metrics)))
}
