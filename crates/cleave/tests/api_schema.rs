//! The OpenAPI document against a real `cleave serve`: `schemathesis` (a schema-driven API
//! tester; .ci/run installs it) generates requests from the document, a bounded number per
//! operation with a fixed seed, and no answer may be a 5xx or a status the document does not
//! name for its route.

mod common;

use std::process::Command;

use common::*;

#[test]
fn schemathesis_finds_no_server_error_and_no_undocumented_status() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    let token = std::fs::read_to_string(dir.path().join("data").join("admin.token")).unwrap();
    let base = format!("http://127.0.0.1:{}", s.http_port);
    let out = Command::new("schemathesis")
        .arg("run")
        .arg(format!("{base}/api/v1/openapi.json"))
        .args(["--url", &base])
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
        .args(["--max-examples", "5", "--seed", "20261202"])
        .args(["--checks", "not_a_server_error,status_code_conformance"])
        .args(["--no-color"])
        .output()
        .expect("schemathesis (pip install schemathesis; .ci/run installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("passed"), "{text}");
}
