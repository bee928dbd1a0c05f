//! The OpenAPI document is generated from the routes and the types. Here: the document is
//! valid OpenAPI (`openapi-spec-validator`), the router serves every route of the document
//! with exactly the methods it names (and answers 405 to the others), the public routes are
//! the only ones without credentials, every private operation names 401 and 403, and the
//! served document is the generated one.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cleave_control::users::Role;
use cleave_gateway::Gateway;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch"];

fn document() -> Value {
    serde_json::to_value(cleave_api::document()).unwrap()
}

/// A concrete path for a path template: `{id}` of a task is a number, the tail of a forwarded
/// call a path on the child.
fn concrete(template: &str) -> String {
    template
        .replace("/tasks/{id}", "/tasks/1")
        .replace("{path}", "volumes")
        .split('/')
        .map(|s| if s.starts_with('{') { "nosuch" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn the_document_is_valid_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&document()).unwrap()).unwrap();
    let out = std::process::Command::new("openapi-spec-validator")
        .arg(&file)
        .output()
        .expect("openapi-spec-validator (pip install openapi-spec-validator; .ci/run installs it)");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn private_operations_need_credentials_and_say_how_they_refuse() {
    let doc = document();
    let public = [
        "/",
        "/console",
        "/console/",
        "/console/app.js",
        "/console/style.css",
        "/api/v1/login",
        "/api/v1/openapi.json",
    ];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let secured = op.get("security").is_some();
            assert_eq!(!secured, public.contains(&path.as_str()), "{method} {path}: security");
            let responses = op["responses"].as_object().unwrap();
            if secured {
                for s in ["401", "403"] {
                    assert!(responses.contains_key(s), "{method} {path} lacks {s}");
                }
                assert!(op["x-cleave-role"].is_string(), "{method} {path} names no role");
            }
            if op.get("requestBody").is_some() {
                for s in ["400", "415", "422"] {
                    assert!(responses.contains_key(s), "{method} {path} lacks {s}");
                }
            }
        }
    }
}

#[test]
fn enums_and_name_rules_are_in_the_schemas() {
    let doc = document();
    let s = &doc["components"]["schemas"];
    let strings =
        |v: &Value| -> Vec<String> { v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect() };
    assert_eq!(strings(&s["Durability"]["enum"]), ["local", "dispersed"]);
    assert_eq!(strings(&s["Role"]["enum"]), ["viewer", "operator", "admin"]);
    assert_eq!(strings(&s["TaskState"]["enum"]), ["queued", "running", "succeeded", "failed", "interrupted"]);
    assert_eq!(strings(&s["TaskKind"]["enum"]), ["scrub", "repair", "rereplicate", "delete", "recover", "move"]);
    let create = &s["CreateVolume"]["properties"];
    assert_eq!(create["name"]["pattern"], cleave_api::model::VOLUME_NAME);
    assert_eq!(create["size_bytes"]["multipleOf"], 512);
    assert_eq!(create["m"]["maximum"], 64);
    assert_eq!(s["NewName"]["properties"]["name"]["pattern"], cleave_api::model::NAME);
    // The mirror's mode and role are not a grant's or a user's (their types share the names).
    assert_eq!(strings(&s["Mode"]["enum"]), ["read-write", "read-only"]);
    assert_eq!(strings(&s["MirrorMode"]["enum"]), ["sync", "async"]);
    assert_eq!(strings(&s["MirrorRole"]["enum"]), ["primary", "secondary"]);
    assert_eq!(s["MirrorView"]["properties"]["role"]["$ref"], "#/components/schemas/MirrorRole");
    assert_eq!(s["MirrorView"]["properties"]["mode"]["$ref"], "#/components/schemas/MirrorMode");
    assert_eq!(s["CreateMirror"]["properties"]["mode"]["$ref"], "#/components/schemas/MirrorMode");
    let grant_mode = s["GrantBody"]["properties"]["mode"].to_string();
    assert!(grant_mode.contains("\"#/components/schemas/Mode\""), "{grant_mode}");
    assert_eq!(s["NewUser"]["properties"]["role"]["$ref"], "#/components/schemas/Role");
    let states = ["in-sync", "resyncing", "disconnected", "probation", "split-brain", "paused"];
    assert_eq!(strings(&s["MirrorState"]["enum"]), states);
    assert_eq!(strings(&s["Discard"]["enum"]), ["local"]);
    let health = serde_json::to_string(&s["Health"]).unwrap();
    for state in ["clean", "degraded", "unavailable"] {
        assert!(health.contains(&format!("\"{state}\"")), "{health}");
    }
}

/// The router over a gateway in a temporary directory, and an admin's API token.
fn app_with_an_admin() -> (tempfile::TempDir, axum::Router, String) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Arc::new(Gateway::open_local(dir.path().join("data"), 64 << 20).unwrap());
    gw.users().add("ada", Role::Admin, "a long enough password").unwrap();
    let token = gw.users().issue_token("ada", "test").unwrap().1;
    (dir, cleave_api::router(gw), token)
}

async fn call(app: &axum::Router, method: &str, path: &str, token: &str) -> (StatusCode, Vec<u8>) {
    call_with(app, method, path, token, "{}").await
}

async fn call_with(app: &axum::Router, method: &str, path: &str, token: &str, body: &str) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method.to_uppercase().as_str())
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
}

#[tokio::test]
async fn the_router_serves_exactly_the_routes_of_the_document() {
    let (_dir, app, token) = app_with_an_admin();
    let doc = document();
    let mut seen = BTreeMap::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        let path = concrete(template);
        for &method in METHODS {
            let documented = item.get(method).is_some();
            let (status, body) = call(&app, method, &path, &token).await;
            if documented {
                // The router's own 404 (no route) has no body; the API's carries `{"error"}`.
                let unrouted =
                    status == StatusCode::METHOD_NOT_ALLOWED || (status == StatusCode::NOT_FOUND && body.is_empty());
                assert!(!unrouted, "{method} {template} is documented but not routed ({status})");
                let documented_statuses = item[method]["responses"].as_object().unwrap();
                assert!(
                    documented_statuses.contains_key(status.as_str()) || documented_statuses.contains_key("default"),
                    "{method} {path} answered {status}, which the document does not name"
                );
                *seen.entry(template.clone()).or_insert(0) += 1;
            } else {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {template} is routed but not documented");
            }
        }
    }
    assert!(seen.len() >= 30, "{seen:?}");
    // The served document is the generated one.
    let (status, body) = call(&app, "get", "/api/v1/openapi.json", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), doc);
}

/// A task kind is a `TaskKind` in the body's type: an unknown one does not deserialize, and is
/// refused with the 422 the document names, before any volume is looked up.
#[tokio::test]
async fn an_unknown_task_kind_is_refused_as_the_document_says() {
    let (_dir, app, token) = app_with_an_admin();
    let (status, body) =
        call_with(&app, "post", "/api/v1/tasks", &token, r#"{"kind":"polish","volume":"nosuch"}"#).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(text.contains("polish") && text.contains("scrub"), "{text}");
    let doc = document();
    assert!(doc["paths"]["/api/v1/tasks"]["post"]["responses"].get("422").is_some());
    let kind = &doc["components"]["schemas"]["NewTask"]["properties"]["kind"];
    assert_eq!(kind["$ref"], "#/components/schemas/TaskKind", "{kind}");
    // A known kind gets past the body: the volume is what is missing.
    let (status, _) = call_with(&app, "post", "/api/v1/tasks", &token, r#"{"kind":"scrub","volume":"nosuch"}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
