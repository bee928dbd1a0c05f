//! Every route states its role where it is defined; a parent control applies
//! `cleave_control::users::required_role` to the calls it forwards. The two must agree: each
//! call below, made by a viewer, an operator and an admin, is refused (403) exactly when the
//! caller's role is below what `required_role` names.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cleave_control::users::{required_role, Role};
use cleave_gateway::Gateway;
use tower::ServiceExt;

const CALLS: &[(&str, &str)] = &[
    ("GET", "/api/v1/nodes"),
    ("GET", "/api/v1/controls"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/webhook"),
    ("PUT", "/api/v1/webhook"),
    ("DELETE", "/api/v1/webhook"),
    ("GET", "/api/v1/tasks"),
    ("POST", "/api/v1/tasks"),
    ("GET", "/api/v1/tasks/1"),
    ("GET", "/api/v1/volumes"),
    ("POST", "/api/v1/volumes"),
    ("GET", "/api/v1/volumes/nosuch"),
    ("DELETE", "/api/v1/volumes/nosuch"),
    ("POST", "/api/v1/volumes/nosuch/scrub"),
    ("POST", "/api/v1/volumes/nosuch/destage"),
    ("GET", "/api/v1/mirrors"),
    ("POST", "/api/v1/mirrors"),
    ("GET", "/api/v1/mirrors/nosuch"),
    ("DELETE", "/api/v1/mirrors/nosuch"),
    ("POST", "/api/v1/mirrors/nosuch/pause"),
    ("POST", "/api/v1/mirrors/nosuch/resume"),
    ("POST", "/api/v1/mirrors/nosuch/promote"),
    ("POST", "/api/v1/mirrors/nosuch/resolve"),
    ("POST", "/api/v1/mirror-credentials"),
    ("GET", "/api/v1/clients"),
    ("POST", "/api/v1/clients"),
    ("DELETE", "/api/v1/clients/nobody"),
    ("GET", "/api/v1/groups"),
    ("POST", "/api/v1/groups"),
    ("DELETE", "/api/v1/groups/nogroup"),
    ("PUT", "/api/v1/groups/nogroup/clients/nobody"),
    ("DELETE", "/api/v1/groups/nogroup/clients/nobody"),
    ("PUT", "/api/v1/groups/nogroup/volumes/nosuch"),
    ("DELETE", "/api/v1/groups/nogroup/volumes/nosuch"),
    ("GET", "/api/v1/me"),
    ("PUT", "/api/v1/me/password"),
    ("POST", "/api/v1/me/tokens"),
    ("DELETE", "/api/v1/me/tokens/nosuch"),
    ("GET", "/api/v1/users"),
    ("POST", "/api/v1/users"),
    ("PUT", "/api/v1/users/nobody"),
    ("DELETE", "/api/v1/users/nobody"),
    ("POST", "/api/v1/users/nobody/tokens"),
    ("DELETE", "/api/v1/users/nobody/tokens/nosuch"),
    ("GET", "/api/v1/volumes/dem%6F"),
    ("GET", "/api/v1/volumes/a%2F..%2Fb"),
    ("GET", "/api/v1/controls/east/api/volumes"),
    ("POST", "/api/v1/controls/east/api/volumes"),
    ("GET", "/api/v1/controls/east/api/users"),
    ("GET", "/api/v1/controls/east/api/user%73"),
    ("PUT", "/api/v1/controls/east/api/groups/g/volumes/v"),
    ("POST", "/api/v1/logout"),
    ("GET", "/metrics"),
];

#[tokio::test]
async fn routes_need_the_roles_the_forwarding_policy_names() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Arc::new(Gateway::open_local(dir.path().join("data"), 64 << 20).unwrap());
    let mut callers = Vec::new();
    for (name, role) in [("vera", Role::Viewer), ("otto", Role::Operator), ("ada", Role::Admin)] {
        gw.users().add(name, role, "a long enough password").unwrap();
        callers.push((role, gw.users().issue_token(name, "test").unwrap().1));
    }
    let app = cleave_api::router(gw);
    for &(method, path) in CALLS {
        for (role, token) in &callers {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let status = app.clone().oneshot(req).await.unwrap().status();
            let allowed = *role >= required_role(method, path);
            assert_eq!(status == StatusCode::FORBIDDEN, !allowed, "{method} {path} as {role}: {status}");
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path} as {role}");
        }
    }
}
