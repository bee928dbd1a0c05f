//! Logins with names that cannot be users: refused like any wrong login, without being
//! remembered (the per-name failure count would otherwise keep every name an attacker sends,
//! of any length, for a minute) and without the name flooding the log.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cleave_gateway::Gateway;
use tower::ServiceExt;

async fn login(app: &axum::Router, name: &str) -> StatusCode {
    let body = serde_json::json!({ "name": name, "password": "not the password" }).to_string();
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/login")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    app.clone().oneshot(req).await.unwrap().status()
}

#[tokio::test]
async fn names_that_cannot_be_users_are_refused_without_being_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Arc::new(Gateway::open_local(dir.path().join("data"), 64 << 20).unwrap());
    let app = cleave_api::router(gw);
    let huge = "x".repeat(1 << 20);
    for name in [huge.as_str(), "../../etc/passwd", ""] {
        for attempt in 0..8 {
            // A name that is remembered is refused with 429 from its sixth failure on.
            assert_eq!(login(&app, name).await, StatusCode::UNAUTHORIZED, "attempt {attempt} of {:.20}", name);
        }
    }
    // A name that could be a user is still limited.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(login(&app, "mallory").await);
    }
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
}
