//! `/api/v1/webhook`: where every event is POSTed, signed (docs/events.md). Admins
//! only, reading included: the URL may carry the receiver's token.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use cleave_control::users::Role;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{role, Shared};
use crate::error::ApiResult;
#[allow(unused_imports)] // The documentation of the routes names these.
use crate::model::{ErrorBody, SetWebhook, WebhookSecret, WebhookView};

/// The webhook, and its deliveries since the gateway started.
#[utoipa::path(get, path = "/api/v1/webhook", tag = "webhook",
    responses((status = 200, description = "The webhook (no `url` when none is set).", body = WebhookView)))]
async fn show_webhook(State(gw): State<Shared>) -> Json<WebhookView> {
    Json(gw.webhook())
}

/// Sends every event from now on to `url`, signed with a new secret: the answer's `secret`,
/// shown this once. Setting it again replaces the URL and the secret.
#[utoipa::path(put, path = "/api/v1/webhook", tag = "webhook", request_body = SetWebhook,
    responses(
        (status = 200, description = "Set; the secret is in this answer only.", body = WebhookSecret),
        (status = 400, description = "Not an http:// or https:// URL with a host.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn set_webhook(State(gw): State<Shared>, Json(req): Json<SetWebhook>) -> ApiResult<Json<WebhookSecret>> {
    Ok(Json(gw.set_webhook(&req.url)?))
}

/// Sends events to no webhook; those waiting are dropped.
#[utoipa::path(delete, path = "/api/v1/webhook", tag = "webhook",
    responses(
        (status = 204, description = "Removed (or there was none)."),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn remove_webhook(State(gw): State<Shared>) -> ApiResult<StatusCode> {
    gw.remove_webhook()?;
    Ok(StatusCode::NO_CONTENT)
}

/// Admins only; one handler a line.
pub(crate) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::default()
        .routes(role(Role::Admin, routes!(show_webhook)))
        .routes(role(Role::Admin, routes!(set_webhook)))
        .routes(role(Role::Admin, routes!(remove_webhook)))
}
