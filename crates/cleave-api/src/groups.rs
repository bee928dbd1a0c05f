//! `/api/v1/clients` and `/api/v1/groups`: read by viewers, changed by admins.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use cleave_control::access::Grant;

use crate::auth::Shared;
use crate::auth::{admin, viewer};
use crate::error::ApiResult;
use crate::model::{ClientView, Erase, GrantBody, GroupView, NewName};

async fn list_clients(State(gw): State<Shared>) -> Json<Vec<ClientView>> {
    Json(gw.clients())
}

async fn add_client(State(gw): State<Shared>, Json(req): Json<NewName>) -> ApiResult<Response> {
    let c = gw.add_client(&req.name)?;
    Ok((StatusCode::CREATED, Json(c)).into_response())
}

async fn remove_client(State(gw): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    gw.remove_client(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_groups(State(gw): State<Shared>) -> Json<Vec<GroupView>> {
    Json(gw.groups())
}

async fn add_group(State(gw): State<Shared>, Json(req): Json<NewName>) -> ApiResult<StatusCode> {
    gw.add_group(&req.name)?;
    Ok(StatusCode::CREATED)
}

async fn delete_group(
    State(gw): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<Erase>,
) -> ApiResult<Json<serde_json::Value>> {
    let erased = gw.delete_group(&name, q.erase).await?;
    Ok(Json(serde_json::json!({ "erased_volumes": erased })))
}

async fn join(State(gw): State<Shared>, Path((group, client)): Path<(String, String)>) -> ApiResult<StatusCode> {
    gw.join(&group, &client)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn leave(State(gw): State<Shared>, Path((group, client)): Path<(String, String)>) -> ApiResult<StatusCode> {
    gw.leave(&group, &client)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn grant(
    State(gw): State<Shared>,
    Path((group, volume)): Path<(String, String)>,
    Json(body): Json<GrantBody>,
) -> ApiResult<StatusCode> {
    gw.grant(&group, &volume, Grant { mode: body.mode, regions: body.regions }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke(
    State(gw): State<Shared>,
    Path((group, volume)): Path<(String, String)>,
    Query(q): Query<Erase>,
) -> ApiResult<Json<serde_json::Value>> {
    let erased = gw.revoke(&group, &volume, q.erase).await?;
    Ok(Json(serde_json::json!({ "erased": erased })))
}

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/clients", viewer(get(list_clients)).merge(admin(post(add_client))))
        .route("/api/v1/clients/{name}", admin(delete(remove_client)))
        .route("/api/v1/groups", viewer(get(list_groups)).merge(admin(post(add_group))))
        .route("/api/v1/groups/{name}", admin(delete(delete_group)))
        .route("/api/v1/groups/{group}/clients/{client}", admin(put(join).delete(leave)))
        .route("/api/v1/groups/{group}/volumes/{volume}", admin(put(grant).delete(revoke)))
}
