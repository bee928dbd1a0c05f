//! The mirror routes over gateways in this process: who may call them, what a gateway without
//! a mirror listener answers, and two gateways mirroring a volume through the API alone (the
//! credentials one gateway issues are what the other's create takes, as they come).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cleave_control::users::Role;
use cleave_gateway::mirror::MirrorConfig;
use cleave_gateway::volumes::CreateVolume;
use cleave_gateway::Gateway;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

/// A gateway in `dir`, its router, and an API token for each of `users`.
fn gateway(dir: &std::path::Path, users: &[(&str, Role)]) -> (Arc<Gateway>, axum::Router, Vec<String>) {
    let gw = Arc::new(Gateway::open_local(dir.join("data"), 64 << 20).unwrap());
    let tokens = users
        .iter()
        .map(|&(name, role)| {
            gw.users().add(name, role, "a long enough password").unwrap();
            gw.users().issue_token(name, "test").unwrap().1
        })
        .collect();
    (gw.clone(), cleave_api::router(gw), tokens)
}

/// One call; the answer's status and JSON body (`null` when empty or not JSON).
async fn call(app: &axum::Router, token: &str, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Every call that changes a mirror, with a body the route takes.
fn changes() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("POST", "/api/v1/mirrors", json!({ "volume": "v", "peer": "127.0.0.1:1", "mode": "sync" })),
        ("DELETE", "/api/v1/mirrors/v", json!({})),
        ("POST", "/api/v1/mirrors/v/pause", json!({})),
        ("POST", "/api/v1/mirrors/v/resume", json!({})),
        ("POST", "/api/v1/mirrors/v/promote", json!({ "force": true })),
        ("POST", "/api/v1/mirrors/v/resolve", json!({ "discard": "local" })),
        ("POST", "/api/v1/mirror-credentials", json!({ "name": "gw-b" })),
    ]
}

#[tokio::test]
async fn only_admins_change_mirrors_and_viewers_read_them() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, app, tokens) =
        gateway(dir.path(), &[("vera", Role::Viewer), ("otto", Role::Operator), ("ada", Role::Admin)]);
    gw.create(CreateVolume::sized("v", 4 << 20), true).await.unwrap();
    let (vera, otto, ada) = (&tokens[0], &tokens[1], &tokens[2]);
    for (method, path, body) in changes() {
        for (who, token) in [("vera", vera), ("otto", otto)] {
            let (status, answer) = call(&app, token, method, path, body.clone()).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path} as {who}: {answer}");
            assert!(answer["error"].as_str().unwrap().contains("needs admin"), "{method} {path} as {who}: {answer}");
        }
    }
    // Refused before the handler ran: no peer was issued a certificate.
    let (_, clients) = call(&app, ada, "GET", "/api/v1/clients", Value::Null).await;
    assert!(!clients.to_string().contains("gw-b"), "{clients}");
    // Reading is for every role: what stops a viewer here is the missing listener, not the role.
    for path in ["/api/v1/mirrors", "/api/v1/mirrors/v"] {
        let (status, answer) = call(&app, vera, "GET", path, Value::Null).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "GET {path}: {answer}");
    }
    // The same changes by an admin get past the role check (whatever they then answer).
    for (method, path, body) in changes() {
        let (status, answer) = call(&app, ada, method, path, body).await;
        assert_ne!(status, StatusCode::FORBIDDEN, "{method} {path} as ada: {answer}");
    }
}

#[tokio::test]
async fn without_a_mirror_listener_the_mirror_calls_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, app, tokens) = gateway(dir.path(), &[("ada", Role::Admin)]);
    gw.create(CreateVolume::sized("v", 4 << 20), true).await.unwrap();
    let ada = &tokens[0];
    for (method, path, body) in [("GET", "/api/v1/mirrors", Value::Null), ("GET", "/api/v1/mirrors/v", Value::Null)]
        .into_iter()
        .chain(changes().into_iter().filter(|(_, p, _)| *p != "/api/v1/mirror-credentials"))
    {
        let (status, answer) = call(&app, ada, method, path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains("no mirror listener"), "{method} {path}: {answer}");
    }
    // A volume that does not exist is that, listener or not.
    let create = json!({ "volume": "nosuch", "peer": "127.0.0.1:1", "mode": "async" });
    let (status, answer) = call(&app, ada, "POST", "/api/v1/mirrors", create).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    // The volume shows no mirror.
    let (_, v) = call(&app, ada, "GET", "/api/v1/volumes/v", Value::Null).await;
    assert_eq!(v["mirror"], Value::Null, "{v}");
    assert_eq!(v["name"], "v", "{v}");
}

#[tokio::test]
async fn bodies_are_checked_against_their_types() {
    let dir = tempfile::tempdir().unwrap();
    let (_gw, app, tokens) = gateway(dir.path(), &[("ada", Role::Admin)]);
    let ada = &tokens[0];
    // `local` is the only side a resolve may discard, and it must be said.
    for body in [json!({}), json!({ "discard": "remote" }), json!({ "discard": "LOCAL" })] {
        let (status, _) = call(&app, ada, "POST", "/api/v1/mirrors/v/resolve", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    // A mode is sync or async.
    let bad = json!({ "volume": "v", "peer": "127.0.0.1:1", "mode": "eventually" });
    let (status, _) = call(&app, ada, "POST", "/api/v1/mirrors", bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // `force` may be left out (false): the call gets as far as the missing listener.
    let (status, answer) = call(&app, ada, "POST", "/api/v1/mirrors/v/promote", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
}

#[tokio::test]
async fn credentials_are_issued_to_a_peer_in_the_mirror_group() {
    let dir = tempfile::tempdir().unwrap();
    let (_gw, app, tokens) = gateway(dir.path(), &[("ada", Role::Admin)]);
    let ada = &tokens[0];
    let (status, c) = call(&app, ada, "POST", "/api/v1/mirror-credentials", json!({ "name": "gw-b" })).await;
    assert_eq!(status, StatusCode::CREATED, "{c}");
    assert_eq!(c["name"], "gw-b");
    assert!(c["ca_pem"].as_str().unwrap().contains("BEGIN CERTIFICATE"), "{c}");
    assert!(c["cert_pem"].as_str().unwrap().contains("BEGIN CERTIFICATE"), "{c}");
    assert!(c["key_pem"].as_str().unwrap().contains("PRIVATE KEY"), "{c}");
    assert_ne!(c["ca_pem"], c["cert_pem"]);
    let (_, groups) = call(&app, ada, "GET", "/api/v1/groups", Value::Null).await;
    let group = groups.as_array().unwrap().iter().find(|g| g["name"] == "mirror-peers").expect("the mirror group");
    assert_eq!(group["clients"], json!(["gw-b"]), "{group}");
    // A name that cannot be a client's is refused.
    let (status, _) = call(&app, ada, "POST", "/api/v1/mirror-credentials", json!({ "name": "../gw" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// A port nobody listens on now (TCP, and UDP for the heartbeats, on the same number).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

async fn with_listener(gw: &Arc<Gateway>) -> u16 {
    let port = free_port();
    let timing = cleave_mirror::Timing {
        interval: Duration::from_millis(100),
        down_after: Duration::from_secs(2),
        probation: None,
    };
    let config = MirrorConfig {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        advertise: None,
        connections: 2,
        timing,
        settings: cleave_mirror::Settings::default(),
    };
    gw.start_mirror(config, &[]).await.unwrap();
    port
}

/// Polls `GET path` until `done` holds of the answer.
async fn until(app: &axum::Router, token: &str, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = call(app, token, "GET", path, Value::Null).await;
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_mirror_a_volume_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (gw_a, a, tokens_a) = gateway(&dir.path().join("a"), &[("ada", Role::Admin)]);
    let (gw_b, b, tokens_b) = gateway(&dir.path().join("b"), &[("bob", Role::Admin)]);
    let (ada, bob) = (&tokens_a[0], &tokens_b[0]);
    with_listener(&gw_a).await;
    let port_b = with_listener(&gw_b).await;
    gw_a.create(CreateVolume::sized("v", 4 << 20), true).await.unwrap();

    // With a listener and no mirror: an empty list, and a volume without one is not found.
    let (status, list) = call(&a, ada, "GET", "/api/v1/mirrors", Value::Null).await;
    assert_eq!((status, list), (StatusCode::OK, json!([])));
    let (status, answer) = call(&a, ada, "GET", "/api/v1/mirrors/v", Value::Null).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");

    // B issues credentials for A; A's create takes them as they came.
    let (status, creds) = call(&b, bob, "POST", "/api/v1/mirror-credentials", json!({ "name": "gw-a" })).await;
    assert_eq!(status, StatusCode::CREATED, "{creds}");
    let peer = format!("127.0.0.1:{port_b}");
    let create = json!({ "volume": "v", "peer": peer, "mode": "sync", "on_failure": "fail", "credentials": creds });
    let (status, view) = call(&a, ada, "POST", "/api/v1/mirrors", create.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!((&view["volume"], &view["role"], &view["mode"]), (&json!("v"), &json!("primary"), &json!("sync")));
    assert_eq!((&view["peer"], &view["on_failure"]), (&json!(peer), &json!("fail")), "{view}");
    let (status, again) = call(&a, ada, "POST", "/api/v1/mirrors", create).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{again}");

    // Each side shows its role; the volume view carries the mirror.
    until(&a, ada, "/api/v1/mirrors/v", "A in sync", |v| v["state"] == "in-sync").await;
    let (_, list) = call(&a, ada, "GET", "/api/v1/mirrors", Value::Null).await;
    assert_eq!(list.as_array().map(|l| l.len()), Some(1), "{list}");
    let (_, volume) = call(&a, ada, "GET", "/api/v1/volumes/v", Value::Null).await;
    assert_eq!(volume["mirror"]["role"], "primary", "{volume}");
    let (status, mirror) = call(&b, bob, "GET", "/api/v1/mirrors/v", Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{mirror}");
    assert_eq!(mirror["role"], "secondary", "{mirror}");
    let (_, volumes) = call(&b, bob, "GET", "/api/v1/volumes", Value::Null).await;
    assert!(
        volumes.as_array().unwrap().iter().any(|v| v["name"] == "v" && v["mirror"]["role"] == "secondary"),
        "{volumes}"
    );

    // Pause and resume, on the primary.
    let (status, paused) = call(&a, ada, "POST", "/api/v1/mirrors/v/pause", json!({})).await;
    assert_eq!((status, &paused["state"]), (StatusCode::OK, &json!("paused")), "{paused}");
    let (status, resumed) = call(&a, ada, "POST", "/api/v1/mirrors/v/resume", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    until(&a, ada, "/api/v1/mirrors/v", "A resumed", |v| v["state"] != "paused").await;
    // Each side refuses what is for the other: a resolve runs on a primary, a promote on the mirror.
    let (status, answer) = call(&b, bob, "POST", "/api/v1/mirrors/v/resolve", json!({ "discard": "local" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = call(&a, ada, "POST", "/api/v1/mirrors/v/promote", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = call(&b, bob, "POST", "/api/v1/mirrors/v/pause", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // Removed: A has no mirror of v any more.
    let (status, answer) = call(&a, ada, "DELETE", "/api/v1/mirrors/v", Value::Null).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{answer}");
    let (status, answer) = call(&a, ada, "GET", "/api/v1/mirrors/v", Value::Null).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (_, volume) = call(&a, ada, "GET", "/api/v1/volumes/v", Value::Null).await;
    assert_eq!(volume["mirror"], Value::Null, "{volume}");
}
