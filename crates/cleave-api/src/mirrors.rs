//! `/api/v1/mirrors` and `/api/v1/mirror-credentials`: volumes mirrored to and from a peer
//! gateway. Read by viewers, changed by admins. Without a mirror listener (`--mirror-listen`)
//! every call but the credentials is refused with 400.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cleave_control::users::Role;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{role, Shared};
use crate::error::ApiResult;
#[allow(unused_imports)] // The documentation of the routes names these.
use crate::model::{CreateMirror, Discard, ErrorBody, MirrorCredentials, MirrorView, NewName, Promote, Resolve};

/// Every mirror of this gateway's volumes, either side, by volume.
#[utoipa::path(get, path = "/api/v1/mirrors", tag = "mirrors",
    responses(
        (status = 200, description = "The mirrors.", body = Vec<MirrorView>),
        (status = 400, description = "This gateway has no mirror listener.", body = ErrorBody),
    ))]
async fn list_mirrors(State(gw): State<Shared>) -> ApiResult<Json<Vec<MirrorView>>> {
    Ok(Json(gw.mirrors()?))
}

/// Mirrors a volume to a peer gateway: the peer creates its side, then the initial copy starts.
#[utoipa::path(post, path = "/api/v1/mirrors", tag = "mirrors", request_body = CreateMirror,
    responses(
        (status = 201, description = "Created; the initial copy runs in the background.", body = MirrorView),
        (status = 400, description = "No mirror listener; bad credentials; the volume is mirrored already.", body = ErrorBody),
        (status = 404, description = "No such volume.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
        (status = 503, description = "The volume cannot be opened; the peer cannot be reached, or refused (it mirrors the volume already, or cannot create it).", body = ErrorBody),
    ))]
async fn create_mirror(State(gw): State<Shared>, Json(req): Json<CreateMirror>) -> ApiResult<Response> {
    let view = gw.mirror_create(req).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// One volume's mirror: state, lag, resync progress, journal and bitmap.
#[utoipa::path(get, path = "/api/v1/mirrors/{volume}", tag = "mirrors",
    params(("volume" = String, Path, description = "The mirrored volume.")),
    responses(
        (status = 200, description = "The mirror.", body = MirrorView),
        (status = 400, description = "This gateway has no mirror listener.", body = ErrorBody),
        (status = 404, description = "The volume has no mirror.", body = ErrorBody),
    ))]
async fn show_mirror(State(gw): State<Shared>, Path(volume): Path<String>) -> ApiResult<Json<MirrorView>> {
    Ok(Json(gw.mirror_show(&volume)?))
}

/// Stops mirroring a volume; both sides keep their volumes, as plain volumes.
#[utoipa::path(delete, path = "/api/v1/mirrors/{volume}", tag = "mirrors",
    params(("volume" = String, Path, description = "The mirrored volume.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, description = "This gateway has no mirror listener.", body = ErrorBody),
        (status = 404, description = "The volume has no mirror.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn remove_mirror(State(gw): State<Shared>, Path(volume): Path<String>) -> ApiResult<StatusCode> {
    gw.mirror_remove(&volume).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stops sending a volume's changes to its mirror (on the primary); they are journaled.
#[utoipa::path(post, path = "/api/v1/mirrors/{volume}/pause", tag = "mirrors",
    params(("volume" = String, Path, description = "The mirrored volume.")),
    responses(
        (status = 200, description = "Paused.", body = MirrorView),
        (status = 400, description = "No mirror listener; this side is not the primary.", body = ErrorBody),
        (status = 404, description = "The volume has no mirror.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn pause_mirror(State(gw): State<Shared>, Path(volume): Path<String>) -> ApiResult<Json<MirrorView>> {
    Ok(Json(gw.mirror_pause(&volume)?))
}

/// Sends a paused volume's changes again, the journaled ones first.
#[utoipa::path(post, path = "/api/v1/mirrors/{volume}/resume", tag = "mirrors",
    params(("volume" = String, Path, description = "The mirrored volume.")),
    responses(
        (status = 200, description = "Resumed.", body = MirrorView),
        (status = 400, description = "No mirror listener; this side is not the primary.", body = ErrorBody),
        (status = 404, description = "The volume has no mirror.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn resume_mirror(State(gw): State<Shared>, Path(volume): Path<String>) -> ApiResult<Json<MirrorView>> {
    Ok(Json(gw.mirror_resume(&volume)?))
}

/// Makes this side (the mirror) the primary: a planned switchover, or with `force` a takeover.
#[utoipa::path(post, path = "/api/v1/mirrors/{volume}/promote", tag = "mirrors", request_body = Promote,
    params(("volume" = String, Path, description = "The mirrored volume.")),
    responses(
        (status = 200, description = "This side is the primary.", body = MirrorView),
        (status = 400, description = "No mirror listener; this side is not the mirror; without `force`: still copying, or the primary cannot be reached.", body = ErrorBody),
        (status = 404, description = "The volume has no mirror.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
        (status = 503, description = "The primary did not complete the switchover (it is not in sync, or the link failed).", body = ErrorBody),
    ))]
async fn promote_mirror(
    State(gw): State<Shared>,
    Path(volume): Path<String>,
    Json(req): Json<Promote>,
) -> ApiResult<Json<MirrorView>> {
    Ok(Json(gw.mirror_promote(&volume, req.force).await?))
}

/// Ends a split brain on the side whose changes are discarded (the one called): it becomes the
/// mirror, and the peer copies over every region either side changed since the split.
#[utoipa::path(post, path = "/api/v1/mirrors/{volume}/resolve", tag = "mirrors", request_body = Resolve,
    params(("volume" = String, Path, description = "The mirrored volume.")),
    responses(
        (status = 200, description = "This side is the mirror again; the copy starts when the peer attaches.", body = MirrorView),
        (status = 400, description = "No mirror listener; this side is not a primary.", body = ErrorBody),
        (status = 404, description = "The volume has no mirror.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn resolve_mirror(
    State(gw): State<Shared>,
    Path(volume): Path<String>,
    Json(req): Json<Resolve>,
) -> ApiResult<Json<MirrorView>> {
    let Resolve { discard: Discard::Local } = req;
    Ok(Json(gw.mirror_resolve(&volume)?))
}

/// Issues credentials for a peer gateway to reach this one's mirror listener: a client
/// certificate in the group `mirror-peers` (issuing them again for a peer replaces its
/// certificate; the name of another client is refused). The key is in this answer only.
#[utoipa::path(post, path = "/api/v1/mirror-credentials", tag = "mirrors", request_body = NewName,
    responses(
        (status = 201, description = "Issued.", body = MirrorCredentials),
        (status = 400, description = "A bad name.", body = ErrorBody),
        (status = 409, description = "The name is a client of this gateway that is not a mirror peer.", body = ErrorBody),
    ))]
async fn issue_mirror_credentials(State(gw): State<Shared>, Json(req): Json<NewName>) -> ApiResult<Response> {
    let c = gw.mirror_credentials(&req.name)?;
    Ok((StatusCode::CREATED, Json(MirrorCredentials::new(req.name, c))).into_response())
}

/// Read by viewers, changed by admins; one handler a line.
pub(crate) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::default()
        .routes(role(Role::Viewer, routes!(list_mirrors)))
        .routes(role(Role::Admin, routes!(create_mirror)))
        .routes(role(Role::Viewer, routes!(show_mirror)))
        .routes(role(Role::Admin, routes!(remove_mirror)))
        .routes(role(Role::Admin, routes!(pause_mirror)))
        .routes(role(Role::Admin, routes!(resume_mirror)))
        .routes(role(Role::Admin, routes!(promote_mirror)))
        .routes(role(Role::Admin, routes!(resolve_mirror)))
        .routes(role(Role::Admin, routes!(issue_mirror_credentials)))
}
