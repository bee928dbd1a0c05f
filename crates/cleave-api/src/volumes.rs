//! `/api/v1/volumes` and `/api/v1/tasks`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use cleave_control::users::Role;
use cleave_gateway::users::Principal;
use cleave_gateway::volumes::check_may_name;
use cleave_gateway::GatewayError;

use crate::auth::Shared;
use crate::auth::{operator, viewer};
use crate::error::ApiResult;
use crate::model::{CreateVolume, NewTask, ScrubQuery, ScrubReport, TaskView, VolumeView};

async fn list(State(gw): State<Shared>) -> Json<Vec<VolumeView>> {
    Json(gw.views())
}

fn internal(e: serde_json::Error) -> GatewayError {
    GatewayError::Internal(e.to_string())
}

async fn create(
    State(gw): State<Shared>,
    Extension(who): Extension<Principal>,
    Json(req): Json<CreateVolume>,
) -> ApiResult<Response> {
    check_may_name(&who, &req.targets)?;
    let may_grant = who.role >= Role::Admin;
    let created = gw.create(req, may_grant).await?;
    let mut body = serde_json::to_value(created.volume).map_err(internal)?;
    if let Some(c) = created.credentials {
        body["credentials"] = serde_json::to_value(c).map_err(internal)?;
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn show(State(gw): State<Shared>, Path(name): Path<String>) -> ApiResult<Json<VolumeView>> {
    Ok(Json(gw.show(&name)?))
}

async fn delete(State(gw): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    gw.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn scrub(
    State(gw): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<ScrubQuery>,
) -> ApiResult<Json<ScrubReport>> {
    Ok(Json(gw.scrub(&name, q.repair).await?))
}

async fn destage(State(gw): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    gw.destage(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start_task(
    State(gw): State<Shared>,
    Extension(who): Extension<Principal>,
    Json(req): Json<NewTask>,
) -> ApiResult<Response> {
    check_may_name(&who, req.targets.iter().chain(req.to.iter()))?;
    let t = gw.start_task(req)?;
    Ok((StatusCode::ACCEPTED, Json(t)).into_response())
}

async fn list_tasks(State(gw): State<Shared>) -> Json<Vec<TaskView>> {
    Json(gw.tasks())
}

async fn show_task(State(gw): State<Shared>, Path(id): Path<u64>) -> ApiResult<Json<TaskView>> {
    Ok(Json(gw.task(id)?))
}

/// Volumes are read by viewers and changed by operators; so are tasks.
pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/volumes", viewer(get(list)).merge(operator(post(create))))
        .route("/api/v1/volumes/{name}", viewer(get(show)).merge(operator(axum::routing::delete(delete))))
        .route("/api/v1/volumes/{name}/scrub", operator(post(scrub)))
        .route("/api/v1/volumes/{name}/destage", operator(post(destage)))
        .route("/api/v1/tasks", viewer(get(list_tasks)).merge(operator(post(start_task))))
        .route("/api/v1/tasks/{id}", viewer(get(show_task)))
}
