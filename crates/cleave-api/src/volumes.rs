//! `/api/v1/volumes` and `/api/v1/tasks`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cleave_control::users::Role;
use cleave_gateway::users::Principal;
use cleave_gateway::volumes::check_may_name;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{role, Shared};
use crate::error::ApiResult;
#[allow(unused_imports)] // The documentation of the routes names these.
use crate::model::{
    CreateVolume, CreatedVolume, ErrorBody, NewTask, ScrubQuery, ScrubReport, TaskView, VolumeOrder, VolumeView,
};

/// Every volume, served or not, by name.
#[utoipa::path(get, path = "/api/v1/volumes", tag = "volumes",
    responses((status = 200, description = "The volumes.", body = Vec<VolumeView>)))]
async fn list(State(gw): State<Shared>) -> Json<Vec<VolumeView>> {
    Json(gw.views())
}

/// Creates a volume, all or nothing.
#[utoipa::path(post, path = "/api/v1/volumes", tag = "volumes", request_body = CreateVolume,
    responses(
        (status = 201, description = "Created.", body = CreatedVolume),
        (status = 400, description = "A bad name, size, layout or target; the volume exists already.", body = ErrorBody),
        (status = 403, description = "The role may not name `file://` targets or give groups access.", body = ErrorBody),
        (status = 404, description = "A named group does not exist.", body = ErrorBody),
        (status = 409, description = "Another gateway claims the volume; a client's group exists.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
        (status = 503, description = "The targets do not answer, or too few nodes are up.", body = ErrorBody),
    ))]
async fn create(
    State(gw): State<Shared>,
    Extension(who): Extension<Principal>,
    Json(req): Json<CreateVolume>,
) -> ApiResult<Response> {
    check_may_name(&who, &req.targets)?;
    let may_grant = who.role >= Role::Admin;
    let created = gw.create(req, may_grant).await?;
    let body = CreatedVolume { volume: created.volume, credentials: created.credentials };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// One volume: health, dirty bytes, cache use, last destage.
#[utoipa::path(get, path = "/api/v1/volumes/{name}", tag = "volumes",
    params(("name" = String, Path, description = "The volume.")),
    responses(
        (status = 200, description = "The volume.", body = VolumeView),
        (status = 404, description = "No such volume.", body = ErrorBody),
    ))]
async fn show(State(gw): State<Shared>, Path(name): Path<String>) -> ApiResult<Json<VolumeView>> {
    Ok(Json(gw.show(&name)?))
}

/// Deletes a volume and everything it stored.
#[utoipa::path(delete, path = "/api/v1/volumes/{name}", tag = "volumes",
    params(("name" = String, Path, description = "The volume.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such volume.", body = ErrorBody),
        (status = 409, description = "Another gateway claims the volume.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
        (status = 503, description = "The targets do not answer.", body = ErrorBody),
    ))]
async fn delete(State(gw): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    gw.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Verifies every share of a volume, and with `repair` rebuilds the missing and bad ones.
#[utoipa::path(post, path = "/api/v1/volumes/{name}/scrub", tag = "volumes",
    params(("name" = String, Path, description = "The volume."), ScrubQuery),
    responses(
        (status = 200, description = "What the scrub found (and repaired).", body = ScrubReport),
        (status = 404, description = "No such volume.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
        (status = 503, description = "The targets do not answer.", body = ErrorBody),
    ))]
async fn scrub(
    State(gw): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<ScrubQuery>,
) -> ApiResult<Json<ScrubReport>> {
    Ok(Json(gw.scrub(&name, q.repair).await?))
}

/// Writes every dirty chunk of a volume to its targets now.
#[utoipa::path(post, path = "/api/v1/volumes/{name}/destage", tag = "volumes",
    params(("name" = String, Path, description = "The volume.")),
    responses(
        (status = 204, description = "Destaged."),
        (status = 404, description = "No such volume.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
        (status = 503, description = "The targets do not answer.", body = ErrorBody),
    ))]
async fn destage(State(gw): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    gw.destage(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// In an appliance: puts gateways first in the order that takes a volume over when its
/// primary goes (its secondaries); the primary stays until then.
#[utoipa::path(put, path = "/api/v1/volumes/{name}/order", tag = "volumes", request_body = VolumeOrder,
    params(("name" = String, Path, description = "The volume.")),
    responses(
        (status = 200, description = "The volume, with its secondaries in their new order.", body = VolumeView),
        (status = 400, description = "Not an appliance, or not a gateway name.", body = ErrorBody),
        (status = 404, description = "No such volume.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn set_order(
    State(gw): State<Shared>,
    Path(name): Path<String>,
    Json(order): Json<VolumeOrder>,
) -> ApiResult<Json<VolumeView>> {
    Ok(Json(gw.set_order(&name, &order)?))
}

/// Starts a task; it runs in the background.
#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks", request_body = NewTask,
    responses(
        (status = 202, description = "Started.", body = TaskView),
        (status = 400, description = "What the kind needs is missing.", body = ErrorBody),
        (status = 403, description = "The role may not name `file://` targets.", body = ErrorBody),
        (status = 404, description = "No such volume.", body = ErrorBody),
        (status = 409, description = "The volume is served already, or claimed by another gateway.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
        (status = 503, description = "The targets do not answer.", body = ErrorBody),
    ))]
async fn start_task(
    State(gw): State<Shared>,
    Extension(who): Extension<Principal>,
    Json(req): Json<NewTask>,
) -> ApiResult<Response> {
    check_may_name(&who, req.targets.iter().chain(req.to.iter()))?;
    let t = gw.start_task(req)?;
    Ok((StatusCode::ACCEPTED, Json(t)).into_response())
}

/// Every task, running or ended.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks",
    responses((status = 200, description = "The tasks.", body = Vec<TaskView>)))]
async fn list_tasks(State(gw): State<Shared>) -> Json<Vec<TaskView>> {
    Json(gw.tasks())
}

/// One task.
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks",
    params(("id" = u64, Path, description = "The task's id.")),
    responses(
        (status = 200, description = "The task.", body = TaskView),
        (status = 404, description = "No such task.", body = ErrorBody),
    ))]
async fn show_task(State(gw): State<Shared>, Path(id): Path<u64>) -> ApiResult<Json<TaskView>> {
    Ok(Json(gw.task(id)?))
}

/// Volumes are read by viewers and changed by operators; so are tasks. One handler a line, each
/// with its role (`routes!` with several handlers would route them all on every path).
pub(crate) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::default()
        .routes(role(Role::Viewer, routes!(list)))
        .routes(role(Role::Operator, routes!(create)))
        .routes(role(Role::Viewer, routes!(show)))
        .routes(role(Role::Operator, routes!(delete)))
        .routes(role(Role::Operator, routes!(scrub)))
        .routes(role(Role::Operator, routes!(destage)))
        .routes(role(Role::Admin, routes!(set_order)))
        .routes(role(Role::Viewer, routes!(list_tasks)))
        .routes(role(Role::Operator, routes!(start_task)))
        .routes(role(Role::Viewer, routes!(show_task)))
}
