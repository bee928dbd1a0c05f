//! Users of the admin API and the console: the store (key `users` of the configuration
//! database), login sessions
//! (in memory, by cookie), API tokens, the authentication middleware and the API under
//! `/api/v1/users`, `/api/v1/me`, `/api/v1/login` and `/api/v1/logout`.
//!
//! Who may do what is decided in one place: [`cleave_control::users::required_role`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use cleave_control::users::{hash_password, token_hash, verify_password, Role, Users, TOKEN_PREFIX};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use crate::server::{ApiError, Shared};
use crate::state::{random_hex, write_private, DataDir, Stored};

/// Name of the session cookie.
pub const COOKIE: &str = "cleave_session";
/// Header that must repeat the session's CSRF token on every call that changes something.
pub const CSRF_HEADER: &str = "x-cleave-csrf";
/// A login lasts this long.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// First administrator, created on first run with the password in `DIR/admin.password`.
pub const FIRST_ADMIN: &str = "admin";

/// Who is calling, and how they proved it.
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub via: Via,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// `DIR/admin.token`.
    AdminToken,
    /// A parent control's derived token (docs/control.md).
    Parent,
    /// A user's API token.
    ApiToken,
    /// A console login; the value is the session's CSRF token.
    Session(String),
}

struct Session {
    user: String,
    csrf: String,
    expires: Instant,
}

/// Key of the users in the configuration database.
const KEY: &str = "users";

pub struct UserStore {
    users: Stored<Users>,
    /// Keyed by the hash of the session id: a memory dump gives no usable cookie.
    sessions: Mutex<HashMap<String, Session>>,
    /// Failed logins by user name: (count, first failure), over [`FAILURE_WINDOW`].
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

/// This many failed logins for one name within [`FAILURE_WINDOW`] close that name's login
/// until the window ends, whatever the password.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

fn new_hash(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    cleave_split::keys::fill_random(&mut salt)?;
    Ok(hash_password(password, &salt)?)
}

impl UserStore {
    /// Loads the users. On first run, creates the user `admin` with a random password
    /// written to `DIR/admin.password` (mode 0600).
    pub fn load(data: &DataDir) -> Result<Self> {
        let users = Stored::load(data, KEY, || {
            let password = random_hex(12)?;
            let mut u = Users::default();
            u.add(FIRST_ADMIN, Role::Admin, new_hash(&password)?)?;
            write_private(&data.root.join("admin.password"), format!("{password}\n").as_bytes())?;
            Ok(u)
        })?;
        Ok(UserStore { users, sessions: Mutex::new(HashMap::new()), failures: Mutex::new(HashMap::new()) })
    }

    fn snapshot(&self) -> Users {
        self.users.snapshot()
    }

    fn update<T>(&self, f: impl FnOnce(&mut Users) -> Result<T>) -> Result<T> {
        let out = self.users.update(f)?;
        // Sessions of removed users end now.
        let users = self.users.read();
        self.sessions.lock().expect("not poisoned").retain(|_, s| users.users.contains_key(&s.user));
        Ok(out)
    }

    /// The holder of an API token.
    pub fn by_token(&self, token: &str) -> Option<Principal> {
        let users = self.users.read();
        users.by_token(token).map(|u| Principal { name: u.name.clone(), role: u.role, via: Via::ApiToken })
    }

    /// The user of a live session, with the user's current role.
    pub fn by_session(&self, id: &str) -> Option<Principal> {
        let mut sessions = self.sessions.lock().expect("not poisoned");
        let key = token_hash(id);
        let s = sessions.get(&key)?;
        if s.expires < Instant::now() {
            sessions.remove(&key);
            return None;
        }
        let users = self.users.read();
        let u = users.users.get(&s.user)?;
        Some(Principal { name: u.name.clone(), role: u.role, via: Via::Session(s.csrf.clone()) })
    }

    /// Checks a password (Argon2id, off the async threads) and opens a session: (id, csrf, role).
    /// The caller has counted the attempt with [`UserStore::reserve_attempt`]; a success clears
    /// the count.
    async fn login(&self, name: &str, password: &str) -> Result<Option<(String, String, Role)>> {
        let user = self.snapshot().users.get(name).cloned();
        // An unknown name costs the same as a wrong password.
        let phc = match &user {
            Some(u) => u.password_hash.clone(),
            None => dummy_hash()?,
        };
        let password = zeroize::Zeroizing::new(password.to_string());
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc)).await?;
        let Some(user) = user.filter(|_| ok) else { return Ok(None) };
        self.failures.lock().expect("not poisoned").remove(name);
        let (id, csrf) = (random_hex(32)?, random_hex(16)?);
        let mut sessions = self.sessions.lock().expect("not poisoned");
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            token_hash(&id),
            Session { user: user.name.clone(), csrf: csrf.clone(), expires: now + SESSION_LIFETIME },
        );
        Ok(Some((id, csrf, user.role)))
    }

    /// Counts a login attempt for `name` as a failure before its password is checked, so that
    /// parallel guesses cannot all pass while the first ones are still being checked: at most
    /// [`MAX_FAILURES`] checks per name and window. `Err`: how long until `name` may try again.
    fn reserve_attempt(&self, name: &str) -> Result<(), Duration> {
        let mut failures = self.failures.lock().expect("not poisoned");
        if failures.len() > 10_000 {
            failures.retain(|_, (_, first)| first.elapsed() < FAILURE_WINDOW);
        }
        let entry = failures.entry(name.to_string()).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        if entry.0 >= MAX_FAILURES {
            return Err(FAILURE_WINDOW.saturating_sub(entry.1.elapsed()));
        }
        entry.0 += 1;
        Ok(())
    }

    fn logout(&self, id: &str) {
        self.sessions.lock().expect("not poisoned").remove(&token_hash(id));
    }

    fn issue_token(&self, name: &str, label: &str) -> Result<(cleave_control::users::ApiToken, String)> {
        let secret = format!("{TOKEN_PREFIX}{}", random_hex(32)?);
        let t = self.update(|u| Ok(u.add_token(name, label, &secret, cleave_control::pool::now_ms())?))?;
        Ok((t, secret))
    }
}

/// An Argon2id hash of a random password nobody knows, verified for unknown names.
fn dummy_hash() -> Result<String> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(h) = DUMMY.get() {
        return Ok(h.clone());
    }
    let h = new_hash(&random_hex(16)?)?;
    Ok(DUMMY.get_or_init(|| h).clone())
}

/// The session id from the `Cookie` header.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// Who is calling: the admin token, a parent's token, a user's API token, or a session.
/// `Err` is the refusal to send.
pub fn authenticate(gw: &crate::server::Gateway, req: &Request) -> Result<Principal, ApiError> {
    let bearer =
        req.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer "));
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if let Some(given) = bearer {
        let who = |name: &str, role, via| Principal { name: name.to_string(), role, via };
        // A parent control reads with one signed token and acts with another; see docs/control.md.
        use cleave_control::hierarchy::ParentRole;
        return if cleave_split::constant_time_eq(given.as_bytes(), gw.token.as_bytes()) {
            Ok(who("admin-token", Role::Admin, Via::AdminToken))
        } else if read && gw.hierarchy.accepts_parent_token(given, ParentRole::Read) {
            Ok(who("parent", Role::Viewer, Via::Parent))
        } else if gw.hierarchy.accepts_parent_token(given, ParentRole::Act) {
            // The parent acts for one of its users, with that user's role and no more.
            let role = req
                .headers()
                .get(cleave_control::hierarchy::ROLE_HEADER)
                .and_then(|h| h.to_str().ok())
                .and_then(|r| r.parse().ok())
                .unwrap_or(Role::Viewer);
            Ok(who("parent", role, Via::Parent))
        } else {
            gw.users.by_token(given).ok_or_else(|| unauthorized("wrong bearer token"))
        };
    }
    let Some(id) = session_cookie(req.headers()) else {
        return Err(unauthorized("log in, or send Authorization: Bearer <token>"));
    };
    let p = gw.users.by_session(id).ok_or_else(|| unauthorized("the session has ended; log in again"))?;
    if !read {
        // A cross-site form can carry the cookie but cannot set this header.
        let Via::Session(csrf) = &p.via else { unreachable!("a session principal") };
        let given = req.headers().get(CSRF_HEADER).and_then(|h| h.to_str().ok()).unwrap_or("");
        if !cleave_split::constant_time_eq(given.as_bytes(), csrf.as_bytes()) {
            return Err(ApiError(StatusCode::FORBIDDEN, format!("missing or wrong {CSRF_HEADER} header")));
        }
    }
    Ok(p)
}

fn unauthorized(why: &str) -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, why.to_string())
}

/// Middleware on every private route: authenticate, then apply the role policy.
pub async fn auth(State(gw): State<Shared>, mut req: Request, next: Next) -> Response {
    let p = match authenticate(&gw, &req) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let need = cleave_control::users::required_role(req.method().as_str(), req.uri().path());
    if p.role < need {
        return ApiError(
            StatusCode::FORBIDDEN,
            format!("{} has the role {}; {} {} needs {need}", p.name, p.role, req.method(), req.uri().path()),
        )
        .into_response();
    }
    req.extensions_mut().insert(p);
    next.run(req).await
}

#[derive(Deserialize)]
pub struct Login {
    name: String,
    password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("name", &self.name).field("password", &"<redacted>").finish()
    }
}

fn cookie(value: &str, max_age: u64) -> HeaderValue {
    // Not `Secure`: the console is served over plain HTTP on loopback by default.
    HeaderValue::from_str(&format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"))
        .expect("a valid header")
}

/// `POST /api/v1/login`: a session cookie, and the CSRF token the console sends back.
pub async fn login(State(gw): State<Shared>, Json(req): Json<Login>) -> Result<Response, ApiError> {
    if let Err(left) = gw.users.reserve_attempt(&req.name) {
        warn!(user = %req.name, "login refused: too many failures");
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed logins for {:?}; try again in {} s", req.name, left.as_secs() + 1),
        ));
    }
    let opened = gw
        .users
        .login(&req.name, &req.password)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let Some((id, csrf, role)) = opened else {
        warn!(user = %req.name, "failed login");
        // Slows down guessing, on top of Argon2id.
        tokio::time::sleep(Duration::from_millis(300)).await;
        return Err(unauthorized("wrong user name or password"));
    };
    info!(user = %req.name, "login");
    let mut resp = Json(json!({ "name": req.name, "role": role, "csrf": csrf })).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie(&id, SESSION_LIFETIME.as_secs()));
    Ok(resp)
}

async fn logout(State(gw): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        gw.users.logout(id);
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

#[derive(Serialize)]
struct TokenView {
    id: String,
    label: String,
    created_unix_ms: u64,
}

#[derive(Serialize)]
struct UserView {
    name: String,
    role: Role,
    tokens: Vec<TokenView>,
}

fn view(u: &cleave_control::users::User) -> UserView {
    UserView {
        name: u.name.clone(),
        role: u.role,
        tokens: u
            .tokens
            .iter()
            .map(|t| TokenView { id: t.id.clone(), label: t.label.clone(), created_unix_ms: t.created_unix_ms })
            .collect(),
    }
}

fn user_error(e: anyhow::Error) -> ApiError {
    use cleave_control::users::UserError;
    let status = match e.downcast_ref::<UserError>() {
        Some(UserError::NoUser(_) | UserError::NoToken(..)) => StatusCode::NOT_FOUND,
        Some(UserError::Exists(_) | UserError::LastAdmin(_)) => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError(status, format!("{e:#}"))
}

async fn list_users(State(gw): State<Shared>) -> Json<Vec<UserView>> {
    Json(gw.users.snapshot().users.values().map(view).collect())
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    role: Role,
    password: String,
}

async fn add_user(State(gw): State<Shared>, Json(req): Json<NewUser>) -> Result<Response, ApiError> {
    let hash = new_hash(&req.password).map_err(user_error)?;
    gw.users.update(|u| Ok(u.add(&req.name, req.role, hash)?)).map_err(user_error)?;
    info!(user = %req.name, role = %req.role, "user added");
    let u = gw.users.snapshot();
    Ok((StatusCode::CREATED, Json(view(u.get(&req.name).map_err(|e| user_error(e.into()))?))).into_response())
}

#[derive(Deserialize)]
struct ChangeUser {
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    password: Option<String>,
}

async fn change_user(
    State(gw): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<ChangeUser>,
) -> Result<Json<UserView>, ApiError> {
    let hash = req.password.as_deref().map(new_hash).transpose().map_err(user_error)?;
    gw.users
        .update(|u| {
            if let Some(role) = req.role {
                u.set_role(&name, role)?;
            }
            if let Some(h) = hash {
                u.set_password_hash(&name, h)?;
            }
            u.get(&name)?;
            Ok(())
        })
        .map_err(user_error)?;
    info!(user = %name, role = ?req.role, password_changed = req.password.is_some(), "user changed");
    Ok(Json(view(gw.users.snapshot().get(&name).map_err(|e| user_error(e.into()))?)))
}

async fn remove_user(State(gw): State<Shared>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    gw.users.update(|u| Ok(u.remove(&name)?)).map_err(user_error)?;
    info!(user = %name, "user removed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
struct NewToken {
    #[serde(default)]
    label: String,
}

async fn issue(gw: &Shared, name: &str, label: &str) -> Result<Response, ApiError> {
    let (t, secret) = gw.users.issue_token(name, label).map_err(user_error)?;
    info!(user = %name, token = %t.id, "API token issued");
    let body = json!({ "id": t.id, "label": t.label, "user": name, "token": secret });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn add_token(
    State(gw): State<Shared>,
    Path(name): Path<String>,
    Json(req): Json<NewToken>,
) -> Result<Response, ApiError> {
    issue(&gw, &name, &req.label).await
}

async fn revoke_token(
    State(gw): State<Shared>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    gw.users.update(|u| Ok(u.revoke_token(&name, &id)?)).map_err(user_error)?;
    info!(user = %name, token = %id, "API token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// The caller as a user: the admin token and parents have no tokens or password of their own.
fn own_name(p: &Principal) -> Result<String, ApiError> {
    match p.via {
        Via::ApiToken | Via::Session(_) => Ok(p.name.clone()),
        _ => Err(ApiError(StatusCode::BAD_REQUEST, "this call is for users; name one under /api/v1/users".into())),
    }
}

async fn add_own_token(
    State(gw): State<Shared>,
    Extension(p): Extension<Principal>,
    Json(req): Json<NewToken>,
) -> Result<Response, ApiError> {
    issue(&gw, &own_name(&p)?, &req.label).await
}

async fn revoke_own_token(
    State(gw): State<Shared>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = own_name(&p)?;
    gw.users.update(|u| Ok(u.revoke_token(&name, &id)?)).map_err(user_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct NewPassword {
    current: String,
    password: String,
}

async fn change_own_password(
    State(gw): State<Shared>,
    Extension(p): Extension<Principal>,
    Json(req): Json<NewPassword>,
) -> Result<StatusCode, ApiError> {
    let name = own_name(&p)?;
    let phc = gw.users.snapshot().get(&name).map_err(|e| user_error(e.into()))?.password_hash.clone();
    let current = zeroize::Zeroizing::new(req.current);
    let ok = tokio::task::spawn_blocking(move || verify_password(&current, &phc))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if !ok {
        return Err(ApiError(StatusCode::FORBIDDEN, "the current password is wrong".into()));
    }
    let hash = new_hash(&req.password).map_err(user_error)?;
    gw.users.update(|u| Ok(u.set_password_hash(&name, hash)?)).map_err(user_error)?;
    info!(user = %name, "password changed");
    Ok(StatusCode::NO_CONTENT)
}

/// Routes behind [`auth`]. (`POST /api/v1/login` is public and routed by the server.)
pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/me", get(me))
        .route("/api/v1/me/password", put(change_own_password))
        .route("/api/v1/me/tokens", post(add_own_token))
        .route("/api/v1/me/tokens/{id}", delete(revoke_own_token))
        .route("/api/v1/users", get(list_users).post(add_user))
        .route("/api/v1/users/{name}", put(change_user).delete(remove_user))
        .route("/api/v1/users/{name}/tokens", post(add_token))
        .route("/api/v1/users/{name}/tokens/{id}", delete(revoke_token))
}
