//! The control hierarchy and the pool over the API: `/api/v1/nodes`, `/api/v1/controls`,
//! `/api/v1/events`, and calls forwarded to a child control. The logic is in
//! `cleave_control::hierarchy`; docs/control.md describes the design.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Extension, Json};
use bytes::Bytes;
use cleave_control::hierarchy::{ForwardError, INCOMPLETE_HEADER, MAX_DEPTH};
use cleave_control::users::Role;
use cleave_gateway::users::Principal;
use cleave_gateway::GatewayError;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{as_child_allows, role, Shared};
use crate::error::{ApiError, ApiResult};
#[allow(unused_imports)] // The documentation of the routes names these.
use crate::model::{ChildControl, ErrorBody, Event, NodeInfo, NodesQuery, TreeNode};

/// `GET /api/v1/nodes[?all=true]`: the storage nodes of this control, or with `all` those of
/// the whole tree below it (each then names its `control`).
#[utoipa::path(get, path = "/api/v1/nodes", tag = "hierarchy", params(NodesQuery),
    responses((status = 200, description = "The nodes (`TreeNode`s with `all`). With `all`, the header \
        `x-cleave-incomplete` names the child controls whose nodes are missing.", body = Vec<TreeNode>,
        headers(("x-cleave-incomplete" = String, description = "Child controls that did not answer.")))))]
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
#[utoipa::path(get, path = "/api/v1/controls", tag = "hierarchy",
    responses((status = 200, description = "The child controls.", body = Vec<ChildControl>)))]
async fn list_controls(State(gw): State<Shared>) -> Json<Vec<ChildControl>> {
    Json(gw.hierarchy().controls())
}

/// What happened in the pool and to volumes, oldest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "hierarchy",
    responses((status = 200, description = "The recent events.", body = Vec<Event>)))]
async fn list_events(State(gw): State<Shared>) -> Json<Vec<Event>> {
    Json(gw.events())
}

/// `ANY /api/v1/controls/{id}/api/{*path}`: acts on a child control through its own API
/// (`/api/v1/{path}` there), with this parent's act token. The child's answer is returned as it is.
#[utoipa::path(method(get, post, put, delete), path = "/api/v1/controls/{id}/api/{path}", tag = "hierarchy",
    description = "Calls `/api/v1/{path}` on the child control `id` with this parent's act token; the \
        caller needs the role that the child's route needs. The child's answer is returned as it is.",
    params(("id" = String, Path, description = "The child control's id."),
        ("path" = String, Path, description = "The path under `/api/v1/` on the child, with its query.")),
    responses(
        (status = 404, description = "No such child control.", body = ErrorBody),
        (status = 502, description = "The child control does not answer.", body = ErrorBody),
        (status = "default", description = "The child's answer: its status and body."),
    ))]
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

/// The path of [`forward`] for axum (the document spells the tail `{path}`).
const FORWARD: &str = "/api/v1/controls/{id}/api/{*path}";

/// Read by viewers; a forwarded call needs what the child's route needs. One handler a line.
pub(crate) fn routes() -> OpenApiRouter<Shared> {
    use utoipa::Path as _;
    let methods = MethodFilter::GET.or(MethodFilter::POST).or(MethodFilter::PUT).or(MethodFilter::DELETE);
    let mut r = OpenApiRouter::default()
        .routes(role(Role::Viewer, routes!(list_nodes)))
        .routes(role(Role::Viewer, routes!(list_controls)))
        .routes(role(Role::Viewer, routes!(list_events)))
        .route(FORWARD, as_child_allows(on(methods, forward)));
    let mut op = __path_forward::operation();
    op.extensions
        .get_or_insert_with(Default::default)
        .merge(ExtensionsBuilder::new().add("x-cleave-role", "as on the child").build());
    for method in __path_forward::methods() {
        // Operation ids are unique in a document: one per method.
        let mut op = op.clone();
        let name = serde_json::to_value(&method).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        op.operation_id = Some(format!("forward_{name}"));
        r.get_openapi_mut().paths.add_path_operation(__path_forward::path(), vec![method], op);
    }
    r
}
