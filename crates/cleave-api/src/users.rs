//! `/api/v1/login`, `/api/v1/logout`, `/api/v1/me` (every signed-in user, for themselves) and
//! `/api/v1/users` (admins).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cleave_control::access::check_name;
use cleave_control::users::Role;
use cleave_gateway::users::{Principal, Via, SESSION_LIFETIME};
use cleave_gateway::GatewayError;
use tracing::{info, warn};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{role, session_cookie, Shared, COOKIE};
use crate::error::{ApiError, ApiResult};
#[allow(unused_imports)] // The documentation of the routes names these.
use crate::model::{ChangeUser, ErrorBody, IssuedToken, Login, Me, NewPassword, NewToken, NewUser, UserView};

fn cookie(value: &str, max_age: u64) -> HeaderValue {
    // Not `Secure`: the console is served over plain HTTP on loopback by default.
    HeaderValue::from_str(&format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"))
        .expect("a valid header")
}

/// `POST /api/v1/login` (public): a session cookie, and the CSRF token the console sends back.
#[utoipa::path(post, path = "/api/v1/login", tag = "users", request_body = Login,
    responses(
        (status = 200, description = "Logged in: the session cookie is set.", body = Me,
            headers(("set-cookie" = String, description = "The session cookie, `cleave_session`."))),
        (status = 401, description = "A wrong user name or password.", body = ErrorBody),
        (status = 429, description = "Too many failed logins for this name; try again later.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
pub(crate) async fn login(State(gw): State<Shared>, Json(req): Json<Login>) -> ApiResult<Response> {
    if check_name(&req.name).is_err() {
        // It cannot be a user: not remembered by the failure count, and cut short in the log.
        let shown: String = req.name.chars().take(64).collect();
        warn!(user = ?shown, length = req.name.len(), "failed login: not a user name");
        return Err(wrong_login().await);
    }
    if let Err(left) = gw.users().reserve_attempt(&req.name) {
        warn!(user = %req.name, "login refused: too many failures");
        return Err(ApiError::TooManyRequests(format!(
            "too many failed logins for {:?}; try again in {} s",
            req.name,
            left.as_secs() + 1
        )));
    }
    let Some((id, csrf, role)) = gw.users().login(&req.name, &req.password).await? else {
        warn!(user = %req.name, "failed login");
        return Err(wrong_login().await);
    };
    info!(user = %req.name, "login");
    let mut resp = Json(Me { csrf: Some(csrf), name: req.name, role }).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie(&id, SESSION_LIFETIME.as_secs()));
    Ok(resp)
}

/// The refusal of a failed login, after a pause that slows down guessing (on top of Argon2id).
async fn wrong_login() -> ApiError {
    tokio::time::sleep(Duration::from_millis(300)).await;
    ApiError::Unauthorized("wrong user name or password".into())
}

/// Ends the caller's session, if it is one.
#[utoipa::path(post, path = "/api/v1/logout", tag = "users",
    responses((status = 204, description = "Logged out: the cookie is cleared.")))]
async fn logout(State(gw): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        gw.users().logout(id);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie("", 0));
    resp
}

/// Who is calling, with which role.
#[utoipa::path(get, path = "/api/v1/me", tag = "users",
    responses((status = 200, description = "The caller.", body = Me)))]
async fn me(Extension(p): Extension<Principal>) -> Json<Me> {
    let csrf = match &p.via {
        Via::Session(c) => Some(c.clone()),
        _ => None,
    };
    Json(Me { csrf, name: p.name, role: p.role })
}

/// Every user, with their API tokens (never a secret).
#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, description = "The users.", body = Vec<UserView>)))]
async fn list_users(State(gw): State<Shared>) -> Json<Vec<UserView>> {
    Json(gw.users().list())
}

/// Adds a user of the API and the console.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser,
    responses(
        (status = 201, description = "Added.", body = UserView),
        (status = 400, description = "A bad name, or a short password.", body = ErrorBody),
        (status = 409, description = "The user exists.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn add_user(State(gw): State<Shared>, Json(req): Json<NewUser>) -> ApiResult<Response> {
    let user = gw.users().add(&req.name, req.role, &req.password)?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

/// Changes a user's role and/or password.
#[utoipa::path(put, path = "/api/v1/users/{name}", tag = "users", request_body = ChangeUser,
    params(("name" = String, Path, description = "The user.")),
    responses(
        (status = 200, description = "Changed.", body = UserView),
        (status = 400, description = "A short password.", body = ErrorBody),
        (status = 404, description = "No such user.", body = ErrorBody),
        (status = 409, description = "It would leave no admin.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn change_user(
    State(gw): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<ChangeUser>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(gw.users().change(&name, req.role, req.password.as_deref())?))
}

/// Removes a user and its API tokens.
#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "The user.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 404, description = "No such user.", body = ErrorBody),
        (status = 409, description = "The last admin.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn remove_user(State(gw): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    gw.users().remove(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new API token for `name`; its secret is in this answer only.
fn issue(gw: &Shared, name: &str, label: &str) -> ApiResult<Response> {
    let (t, secret) = gw.users().issue_token(name, label)?;
    let body = IssuedToken { id: t.id, label: t.label, token: secret, user: name.to_string() };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Issues an API token for a user; its secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/users/{name}/tokens", tag = "users", request_body = NewToken,
    params(("name" = String, Path, description = "The user.")),
    responses(
        (status = 201, description = "Issued.", body = IssuedToken),
        (status = 400, description = "A bad label.", body = ErrorBody),
        (status = 404, description = "No such user.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn add_token(
    State(gw): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<NewToken>,
) -> ApiResult<Response> {
    issue(&gw, &name, &req.label)
}

/// Revokes one of a user's API tokens.
#[utoipa::path(delete, path = "/api/v1/users/{name}/tokens/{id}", tag = "users",
    params(("name" = String, Path, description = "The user."), ("id" = String, Path, description = "The token's id.")),
    responses(
        (status = 204, description = "Revoked."),
        (status = 404, description = "No such user or token.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn revoke_token(State(gw): State<Shared>, Path((name, id)): Path<(String, String)>) -> ApiResult<StatusCode> {
    gw.users().revoke_token(&name, &id)?;
    info!(user = %name, token = %id, "API token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// The caller as a user: the admin token and parents have no tokens or password of their own.
fn own_name(p: &Principal) -> ApiResult<String> {
    match p.via {
        Via::ApiToken | Via::Session(_) => Ok(p.name.clone()),
        _ => Err(GatewayError::Invalid("this call is for users; name one under /api/v1/users".into()).into()),
    }
}

/// Issues an API token for the caller (a user, not the admin token); its secret is in this
/// answer only.
#[utoipa::path(post, path = "/api/v1/me/tokens", tag = "users", request_body = NewToken,
    responses(
        (status = 201, description = "Issued.", body = IssuedToken),
        (status = 400, description = "The caller is not a user; a bad label.", body = ErrorBody),
        (status = 404, description = "The caller's user is gone.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn add_own_token(
    State(gw): State<Shared>,
    Extension(p): Extension<Principal>,
    Json(req): Json<NewToken>,
) -> ApiResult<Response> {
    issue(&gw, &own_name(&p)?, &req.label)
}

/// Revokes one of the caller's API tokens.
#[utoipa::path(delete, path = "/api/v1/me/tokens/{id}", tag = "users",
    params(("id" = String, Path, description = "The token's id.")),
    responses(
        (status = 204, description = "Revoked."),
        (status = 400, description = "The caller is not a user.", body = ErrorBody),
        (status = 404, description = "No such token.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn revoke_own_token(
    State(gw): State<Shared>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    gw.users().revoke_token(&own_name(&p)?, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Changes the caller's password, given the current one.
#[utoipa::path(put, path = "/api/v1/me/password", tag = "users", request_body = NewPassword,
    responses(
        (status = 204, description = "Changed."),
        (status = 400, description = "The caller is not a user; a short password.", body = ErrorBody),
        (status = 403, description = "A wrong current password.", body = ErrorBody),
        (status = 404, description = "The caller's user is gone.", body = ErrorBody),
        (status = 500, description = "A fault of the gateway.", body = ErrorBody),
    ))]
async fn change_own_password(
    State(gw): State<Shared>,
    Extension(p): Extension<Principal>,
    Json(req): Json<NewPassword>,
) -> ApiResult<StatusCode> {
    gw.users().change_own_password(&own_name(&p)?, &req.current, &req.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Routes behind authentication (`POST /api/v1/login` is public, routed in [`crate::router`]):
/// one's own session, password and tokens for every user; the users for admins. One handler a
/// line.
pub(crate) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::default()
        .routes(role(Role::Viewer, routes!(logout)))
        .routes(role(Role::Viewer, routes!(me)))
        .routes(role(Role::Viewer, routes!(change_own_password)))
        .routes(role(Role::Viewer, routes!(add_own_token)))
        .routes(role(Role::Viewer, routes!(revoke_own_token)))
        .routes(role(Role::Admin, routes!(list_users)))
        .routes(role(Role::Admin, routes!(add_user)))
        .routes(role(Role::Admin, routes!(change_user)))
        .routes(role(Role::Admin, routes!(remove_user)))
        .routes(role(Role::Admin, routes!(add_token)))
        .routes(role(Role::Admin, routes!(revoke_token)))
}
