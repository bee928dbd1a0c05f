//! Who is calling, and whether their role suffices. [`authenticate`] runs on every private
//! route; each route states the role it needs where it is defined, with [`viewer`],
//! [`operator`], [`admin`], or [`as_child_allows`] for calls forwarded to a child control.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Extension;
use cleave_control::hierarchy::ParentRole;
use cleave_control::users::Role;
use cleave_gateway::users::{Principal, Via};
use cleave_gateway::{Gateway, GatewayError};

use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa_axum::router::UtoipaMethodRouter;

use crate::error::ApiError;

/// The state every handler gets: the running gateway.
pub type Shared = std::sync::Arc<Gateway>;

/// Name of the session cookie.
pub const COOKIE: &str = "cleave_session";
/// Header that must repeat the session's CSRF token on every call that changes something.
pub const CSRF_HEADER: &str = "x-cleave-csrf";

/// The session id from the `Cookie` header.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

fn unauthorized(why: &str) -> ApiError {
    ApiError::Unauthorized(why.to_string())
}

/// Who a bearer token belongs to: the admin token, a parent control's read or act token
/// (acting for one of its users, with that user's role and no more), or a user's API token.
fn by_bearer(gw: &Gateway, given: &str, req: &Request, read: bool) -> Result<Principal, ApiError> {
    let who = |name: &str, role, via| Principal { name: name.to_string(), role, via };
    // A parent control reads with one signed token and acts with another; see docs/control.md.
    if gw.is_admin_token(given) {
        Ok(who("admin-token", Role::Admin, Via::AdminToken))
    } else if read && gw.hierarchy().accepts_parent_token(given, ParentRole::Read) {
        Ok(who("parent", Role::Viewer, Via::Parent))
    } else if gw.hierarchy().accepts_parent_token(given, ParentRole::Act) {
        let role = req
            .headers()
            .get(cleave_control::hierarchy::ROLE_HEADER)
            .and_then(|h| h.to_str().ok())
            .and_then(|r| r.parse().ok())
            .unwrap_or(Role::Viewer);
        Ok(who("parent", role, Via::Parent))
    } else {
        gw.users().by_token(given).ok_or_else(|| unauthorized("wrong bearer token"))
    }
}

/// Who is calling: the admin token, a parent's token, a user's API token, or a session.
/// `Err` is the refusal to send.
pub fn identify(gw: &Gateway, req: &Request) -> Result<Principal, ApiError> {
    let bearer =
        req.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer "));
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if let Some(given) = bearer {
        return by_bearer(gw, given, req, read);
    }
    let Some(id) = session_cookie(req.headers()) else {
        return Err(unauthorized("log in, or send Authorization: Bearer <token>"));
    };
    let p = gw.users().by_session(id).ok_or_else(|| unauthorized("the session has ended; log in again"))?;
    if !read {
        // A cross-site form can carry the cookie but cannot set this header.
        let given = req.headers().get(CSRF_HEADER).and_then(|h| h.to_str().ok()).unwrap_or("");
        if !p.csrf_matches(given) {
            return Err(GatewayError::Forbidden(format!("missing or wrong {CSRF_HEADER} header")).into());
        }
    }
    Ok(p)
}

/// Middleware on every private route: who is calling (the [`Principal`] goes into the
/// request's extensions for the role check and the handler).
pub async fn authenticate(State(gw): State<Shared>, mut req: Request, next: Next) -> Response {
    match identify(&gw, &req) {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Refuses a caller below `need`. A path spelled with anything but plain segments (escapes
/// that decode to `/`, `..`, odd characters) needs an admin whatever the route.
fn check(p: &Principal, need: Role, req: &Request) -> Result<(), ApiError> {
    let need = if cleave_control::users::plain_path(req.uri().path()) { need } else { Role::Admin };
    if p.role < need {
        return Err(GatewayError::Forbidden(format!(
            "{} has the role {}; {} {} needs {need}",
            p.name,
            p.role,
            req.method(),
            req.uri().path()
        ))
        .into());
    }
    Ok(())
}

async fn require(State(need): State<Role>, Extension(p): Extension<Principal>, req: Request, next: Next) -> Response {
    match check(&p, need, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// A route for `need` and above.
fn needs(need: Role, route: MethodRouter<Shared>) -> MethodRouter<Shared> {
    route.route_layer(middleware::from_fn_with_state(need, require))
}

/// Routes for `need` and above, as `utoipa_axum::routes!` gives them: the role is checked by
/// the router and stated in the document (in each operation's description and as
/// `x-cleave-role`).
pub fn role(need: Role, (schemas, mut paths, route): UtoipaMethodRouter<Shared>) -> UtoipaMethodRouter<Shared> {
    for item in paths.paths.values_mut() {
        for op in operations(item) {
            let text = format!("Needs the role {need} or above.");
            op.description = Some(match op.description.take() {
                Some(d) if !d.is_empty() => format!("{d}\n\n{text}"),
                _ => text,
            });
            let ext = op.extensions.get_or_insert_with(Default::default);
            ext.merge(ExtensionsBuilder::new().add("x-cleave-role", need.to_string()).build());
        }
    }
    (schemas, paths, needs(need, route))
}

/// The operations of one path of the document.
pub(crate) fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(|o| o.as_mut())
}

/// A route any signed-in user may call.
pub fn viewer(route: MethodRouter<Shared>) -> MethodRouter<Shared> {
    needs(Role::Viewer, route)
}

/// A route for operators and admins.
pub fn operator(route: MethodRouter<Shared>) -> MethodRouter<Shared> {
    needs(Role::Operator, route)
}

/// A route for admins.
pub fn admin(route: MethodRouter<Shared>) -> MethodRouter<Shared> {
    needs(Role::Admin, route)
}

async fn require_child_policy(Extension(p): Extension<Principal>, req: Request, next: Next) -> Response {
    // The child applies the same policy: the caller needs what the forwarded call needs there,
    // and at least what reading the tree needs.
    let need = cleave_control::users::required_role(req.method().as_str(), req.uri().path());
    match check(&p, need, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// A route that forwards to a child control (any method): the role the child's route needs.
pub fn as_child_allows(route: MethodRouter<Shared>) -> MethodRouter<Shared> {
    // `layer`, not `route_layer`: a route for any method has no per-method endpoints.
    route.layer(middleware::from_fn(require_child_policy))
}
