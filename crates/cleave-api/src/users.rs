//! `/api/v1/login`, `/api/v1/logout`, `/api/v1/me` (every signed-in user, for themselves) and
//! `/api/v1/users` (admins).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use cleave_gateway::users::{Principal, Via, SESSION_LIFETIME};
use cleave_gateway::GatewayError;
use serde_json::json;
use tracing::{info, warn};

use crate::auth::Shared;
use crate::auth::{admin, session_cookie, viewer, COOKIE};
use crate::error::{ApiError, ApiResult};
use crate::model::{ChangeUser, Login, NewPassword, NewToken, NewUser, UserView};

fn cookie(value: &str, max_age: u64) -> HeaderValue {
    // Not `Secure`: the console is served over plain HTTP on loopback by default.
    HeaderValue::from_str(&format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"))
        .expect("a valid header")
}

/// `POST /api/v1/login` (public): a session cookie, and the CSRF token the console sends back.
pub(crate) async fn login(State(gw): State<Shared>, Json(req): Json<Login>) -> ApiResult<Response> {
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
        // Slows down guessing, on top of Argon2id.
        tokio::time::sleep(Duration::from_millis(300)).await;
        return Err(ApiError::Unauthorized("wrong user name or password".into()));
    };
    info!(user = %req.name, "login");
    let mut resp = Json(json!({ "name": req.name, "role": role, "csrf": csrf })).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie(&id, SESSION_LIFETIME.as_secs()));
    Ok(resp)
}

async fn logout(State(gw): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        gw.users().logout(id);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie("", 0));
    resp
}

async fn me(Extension(p): Extension<Principal>) -> Json<serde_json::Value> {
    let csrf = match &p.via {
        Via::Session(c) => Some(c.clone()),
        _ => None,
    };
    Json(json!({ "name": p.name, "role": p.role, "csrf": csrf }))
}

async fn list_users(State(gw): State<Shared>) -> Json<Vec<UserView>> {
    Json(gw.users().list())
}

async fn add_user(State(gw): State<Shared>, Json(req): Json<NewUser>) -> ApiResult<Response> {
    let user = gw.users().add(&req.name, req.role, &req.password)?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

async fn change_user(
    State(gw): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<ChangeUser>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(gw.users().change(&name, req.role, req.password.as_deref())?))
}

async fn remove_user(State(gw): State<Shared>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    gw.users().remove(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new API token for `name`; its secret is in this answer only.
fn issue(gw: &Shared, name: &str, label: &str) -> ApiResult<Response> {
    let (t, secret) = gw.users().issue_token(name, label)?;
    let body = json!({ "id": t.id, "label": t.label, "user": name, "token": secret });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn add_token(
    State(gw): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<NewToken>,
) -> ApiResult<Response> {
    issue(&gw, &name, &req.label)
}

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

async fn add_own_token(
    State(gw): State<Shared>,
    Extension(p): Extension<Principal>,
    Json(req): Json<NewToken>,
) -> ApiResult<Response> {
    issue(&gw, &own_name(&p)?, &req.label)
}

async fn revoke_own_token(
    State(gw): State<Shared>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    gw.users().revoke_token(&own_name(&p)?, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn change_own_password(
    State(gw): State<Shared>,
    Extension(p): Extension<Principal>,
    Json(req): Json<NewPassword>,
) -> ApiResult<StatusCode> {
    gw.users().change_own_password(&own_name(&p)?, &req.current, &req.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Routes behind authentication (`POST /api/v1/login` is public, routed in [`crate::router`]):
/// one's own session, password and tokens for every user; the users for admins.
pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/logout", viewer(post(logout)))
        .route("/api/v1/me", viewer(get(me)))
        .route("/api/v1/me/password", viewer(put(change_own_password)))
        .route("/api/v1/me/tokens", viewer(post(add_own_token)))
        .route("/api/v1/me/tokens/{id}", viewer(delete(revoke_own_token)))
        .route("/api/v1/users", admin(get(list_users).post(add_user)))
        .route("/api/v1/users/{name}", admin(put(change_user).delete(remove_user)))
        .route("/api/v1/users/{name}/tokens", admin(post(add_token)))
        .route("/api/v1/users/{name}/tokens/{id}", admin(delete(revoke_token)))
}
