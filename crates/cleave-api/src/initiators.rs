//! `/api/v1/clients/{client}/chap` and `/api/v1/clients/{client}/initiators`: how a client
//! logs in over iSCSI. Changed by admins; read through `GET /api/v1/clients`.

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
use crate::model::{ChapSecrets, ErrorBody, InitiatorBody, NewChap};

/// Makes new CHAP secrets for a client; they are in this answer only, and the old ones stop
/// working at the next login.
#[utoipa::path(post, path = "/api/v1/clients/{client}/chap", tag = "access", request_body = NewChap,
    params(("client" = String, Path, description = "The client.")),
    responses(
        (status = 201, description = "The new secrets.", body = ChapSecrets),
        (status = 404, description = "No such client.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn new_chap(
    State(gw): State<Shared>,
    Path(client): Path<String>,
    Json(req): Json<NewChap>,
) -> ApiResult<Response> {
    let secrets = gw.set_chap(&client, req.mutual)?;
    Ok((StatusCode::CREATED, Json(secrets)).into_response())
}

/// Lets an iSCSI initiator log in as a client: with the client's CHAP secret, or on its name
/// alone when `chap` is false.
#[utoipa::path(put, path = "/api/v1/clients/{client}/initiators/{initiator}", tag = "access",
    request_body = InitiatorBody,
    params(("client" = String, Path, description = "The client."),
        ("initiator" = String, Path, description = "The initiator's iSCSI name (iqn., eui. or naa.).")),
    responses(
        (status = 204, description = "Allowed."),
        (status = 400, description = "Not an iSCSI name, or CHAP asked of a client without a secret.", body = ErrorBody),
        (status = 404, description = "No such client.", body = ErrorBody),
        (status = 409, description = "The initiator belongs to another client.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn allow_initiator(
    State(gw): State<Shared>,
    Path((client, initiator)): Path<(String, String)>,
    Json(req): Json<InitiatorBody>,
) -> ApiResult<StatusCode> {
    gw.allow_initiator(&client, &initiator, req.chap)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stops an initiator logging in as a client (sessions already open go on until they end).
#[utoipa::path(delete, path = "/api/v1/clients/{client}/initiators/{initiator}", tag = "access",
    params(("client" = String, Path, description = "The client."),
        ("initiator" = String, Path, description = "The initiator's iSCSI name.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 404, description = "The client has no such initiator.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn remove_initiator(
    State(gw): State<Shared>,
    Path((client, initiator)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    gw.remove_initiator(&client, &initiator)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::default()
        .routes(role(Role::Admin, routes!(new_chap)))
        .routes(role(Role::Admin, routes!(allow_initiator)))
        .routes(role(Role::Admin, routes!(remove_initiator)))
}
