//! `/api/v1/clients` and `/api/v1/groups`: read by viewers, changed by admins.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cleave_control::access::Grant;
use cleave_control::users::Role;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{role, Shared};
use crate::error::ApiResult;
#[allow(unused_imports)] // The documentation of the routes names these.
use crate::model::{ClientView, Credentials, Erase, ErrorBody, GrantBody, GroupDeleted, GroupView, NewName, Revoked};

/// Every client, with its groups.
#[utoipa::path(get, path = "/api/v1/clients", tag = "access",
    responses((status = 200, description = "The clients.", body = Vec<ClientView>)))]
async fn list_clients(State(gw): State<Shared>) -> Json<Vec<ClientView>> {
    Json(gw.clients())
}

/// Issues a client certificate from control's CA; the key is in this answer only.
#[utoipa::path(post, path = "/api/v1/clients", tag = "access", request_body = NewName,
    responses(
        (status = 201, description = "The client's credentials.", body = Credentials),
        (status = 400, description = "A bad name.", body = ErrorBody),
        (status = 409, description = "The client exists.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn add_client(State(gw): State<Shared>, Json(req): Json<NewName>) -> ApiResult<Response> {
    let c = gw.add_client(&req.name)?;
    Ok((StatusCode::CREATED, Json(c)).into_response())
}

/// Removes a client: its certificate stops opening anything, on open connections too.
#[utoipa::path(delete, path = "/api/v1/clients/{name}", tag = "access",
    params(("name" = String, Path, description = "The client.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 404, description = "No such client.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn remove_client(State(gw): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    gw.remove_client(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every group, with its clients and grants.
#[utoipa::path(get, path = "/api/v1/groups", tag = "access",
    responses((status = 200, description = "The groups.", body = Vec<GroupView>)))]
async fn list_groups(State(gw): State<Shared>) -> Json<Vec<GroupView>> {
    Json(gw.groups())
}

/// Creates a group and its key.
#[utoipa::path(post, path = "/api/v1/groups", tag = "access", request_body = NewName,
    responses(
        (status = 201, description = "Created."),
        (status = 400, description = "A bad name.", body = ErrorBody),
        (status = 409, description = "The group exists.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn add_group(State(gw): State<Shared>, Json(req): Json<NewName>) -> ApiResult<StatusCode> {
    gw.add_group(&req.name)?;
    Ok(StatusCode::CREATED)
}

/// Deletes a group and its key; a volume that no other group reaches is crypto-erased, which
/// needs `erase=true`.
#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "access",
    params(("name" = String, Path, description = "The group."), Erase),
    responses(
        (status = 200, description = "Deleted.", body = GroupDeleted),
        (status = 400, description = "Volumes would be erased and `erase` is not set.", body = ErrorBody),
        (status = 404, description = "No such group.", body = ErrorBody),
        (status = 409, description = "The group cannot go (the local admin group).", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
        (status = 503, description = "The targets of a volume do not answer.", body = ErrorBody),
    ))]
async fn delete_group(
    State(gw): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<Erase>,
) -> ApiResult<Json<GroupDeleted>> {
    let erased_volumes = gw.delete_group(&name, q.erase).await?;
    Ok(Json(GroupDeleted { erased_volumes }))
}

/// Puts a client in a group.
#[utoipa::path(put, path = "/api/v1/groups/{group}/clients/{client}", tag = "access",
    params(("group" = String, Path, description = "The group."), ("client" = String, Path, description = "The client.")),
    responses(
        (status = 204, description = "Joined."),
        (status = 404, description = "No such group or client.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn join(State(gw): State<Shared>, Path((group, client)): Path<(String, String)>) -> ApiResult<StatusCode> {
    gw.join(&group, &client)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Takes a client out of a group.
#[utoipa::path(delete, path = "/api/v1/groups/{group}/clients/{client}", tag = "access",
    params(("group" = String, Path, description = "The group."), ("client" = String, Path, description = "The client.")),
    responses(
        (status = 204, description = "Left."),
        (status = 404, description = "No such group or client.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn leave(State(gw): State<Shared>, Path((group, client)): Path<(String, String)>) -> ApiResult<StatusCode> {
    gw.leave(&group, &client)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Gives a group access to a volume: a key slot plus the grant.
#[utoipa::path(put, path = "/api/v1/groups/{group}/volumes/{volume}", tag = "access", request_body = GrantBody,
    params(("group" = String, Path, description = "The group."), ("volume" = String, Path, description = "The volume.")),
    responses(
        (status = 204, description = "Granted."),
        (status = 400, description = "A region outside the volume.", body = ErrorBody),
        (status = 404, description = "No such group or volume.", body = ErrorBody),
        (status = 409, description = "Another gateway claims the volume.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
        (status = 503, description = "The volume's targets do not answer.", body = ErrorBody),
    ))]
async fn grant(
    State(gw): State<Shared>,
    Path((group, volume)): Path<(String, String)>,
    Json(body): Json<GrantBody>,
) -> ApiResult<StatusCode> {
    gw.grant(&group, &volume, Grant { mode: body.mode, regions: body.regions }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Takes a volume from a group; revoking the last group crypto-erases the volume, which needs
/// `erase=true`.
#[utoipa::path(delete, path = "/api/v1/groups/{group}/volumes/{volume}", tag = "access",
    params(("group" = String, Path, description = "The group."), ("volume" = String, Path, description = "The volume."), Erase),
    responses(
        (status = 200, description = "Revoked.", body = Revoked),
        (status = 400, description = "The volume would be erased and `erase` is not set.", body = ErrorBody),
        (status = 404, description = "No such group, volume or grant.", body = ErrorBody),
        (status = 409, description = "Another gateway claims the volume.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
        (status = 503, description = "The volume's targets do not answer.", body = ErrorBody),
    ))]
async fn revoke(
    State(gw): State<Shared>,
    Path((group, volume)): Path<(String, String)>,
    Query(q): Query<Erase>,
) -> ApiResult<Json<Revoked>> {
    let erased = gw.revoke(&group, &volume, q.erase).await?;
    Ok(Json(Revoked { erased }))
}

/// Read by viewers, changed by admins; one handler a line.
pub(crate) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::default()
        .routes(role(Role::Viewer, routes!(list_clients)))
        .routes(role(Role::Admin, routes!(add_client)))
        .routes(role(Role::Admin, routes!(remove_client)))
        .routes(role(Role::Viewer, routes!(list_groups)))
        .routes(role(Role::Admin, routes!(add_group)))
        .routes(role(Role::Admin, routes!(delete_group)))
        .routes(role(Role::Admin, routes!(join)))
        .routes(role(Role::Admin, routes!(leave)))
        .routes(role(Role::Admin, routes!(grant)))
        .routes(role(Role::Admin, routes!(revoke)))
}
