//! The control hierarchy and the pool over the API: `/api/v1/nodes`, `/api/v1/controls`,
//! `/api/v1/events`, and calls forwarded to a child control. The logic is in
//! `cleave_control::hierarchy`; docs/control.md describes the design.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use cleave_control::hierarchy::{ForwardError, INCOMPLETE_HEADER, MAX_DEPTH};
use cleave_gateway::users::Principal;
use cleave_gateway::GatewayError;

use crate::auth::Shared;
use crate::auth::{as_child_allows, viewer};
use crate::error::{ApiError, ApiResult};
use crate::model::{ChildControl, Event, NodesQuery};

/// `GET /api/v1/nodes[?all=true]`.
async fn list_nodes(State(gw): State<Shared>, Query(q): Query<NodesQuery>) -> Response {
    if !q.all {
        return Json(gw.nodes()).into_response();
    }
    let tree = gw.hierarchy().all_nodes(q.depth.unwrap_or(MAX_DEPTH).min(MAX_DEPTH)).await;
    let mut resp = Json(tree.nodes).into_response();
    if !tree.incomplete.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&tree.incomplete.join(",")) {
            resp.headers_mut().insert(INCOMPLETE_HEADER, v);
        }
    }
    resp
}

/// `GET /api/v1/controls`: the child control servers.
async fn list_controls(State(gw): State<Shared>) -> Json<Vec<ChildControl>> {
    Json(gw.hierarchy().controls())
}

async fn list_events(State(gw): State<Shared>) -> Json<Vec<Event>> {
    Json(gw.events())
}

/// `ANY /api/v1/controls/{id}/api/{*path}`: acts on a child control through its own API
/// (`/api/v1/{path}` there), with this parent's act token. The child's answer is returned as it is.
async fn forward(
    State(gw): State<Shared>,
    Path((child, path)): Path<(String, String)>,
    Extension(who): Extension<Principal>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> ApiResult<Response> {
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let f = gw.hierarchy().forward(&child, method, &path_and_query, who.role, body).await.map_err(|e| match e {
        ForwardError::NoChild(_) => ApiError::Gateway(GatewayError::NotFound(e.to_string())),
        ForwardError::Unavailable(_) => ApiError::BadGateway(e.to_string()),
    })?;
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = (status, f.body).into_response();
    if let Some(ct) = f.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(axum::http::header::CONTENT_TYPE, ct);
    }
    Ok(resp)
}

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/nodes", viewer(get(list_nodes)))
        .route("/api/v1/controls", viewer(get(list_controls)))
        .route("/api/v1/controls/{id}/api/{*path}", as_child_allows(any(forward)))
        .route("/api/v1/events", viewer(get(list_events)))
}
