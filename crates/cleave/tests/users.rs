//! Users, roles, logins and API tokens against a real `cleave serve`: anonymous calls are
//! refused, viewers change nothing, operators run volumes and tasks but not access control,
//! sessions need their CSRF header, and nothing secret is stored in clear.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// One HTTP call with curl: (status, JSON body or Null).
fn call(
    s: &Serve,
    method: &str,
    path: &str,
    headers: &[String],
    body: Option<Value>,
    jar: Option<&Path>,
) -> (u16, Value) {
    let mut c = Command::new("curl");
    c.args(["-s", "-X", method]);
    for h in headers {
        c.args(["-H", h]);
    }
    if let Some(j) = jar {
        c.arg("-b").arg(j).arg("-c").arg(j);
    }
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
    }
    let out = run(c.args(["-w", "\n%{http_code}", &format!("http://127.0.0.1:{}{path}", s.http_port)]));
    let (text, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.parse().unwrap(), serde_json::from_str(text).unwrap_or(Value::Null))
}

fn bearer(token: &str) -> Vec<String> {
    vec![format!("Authorization: Bearer {token}")]
}

#[test]
fn roles_sessions_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serve::start(&dir.path().join("data"), &[]);
    let admin = std::fs::read_to_string(s.data.join("admin.token")).unwrap().trim().to_string();

    // Anonymous: refused, except the OpenAPI document, the console page and the login.
    assert_eq!(call(&s, "GET", "/api/v1/volumes", &[], None, None).0, 401);
    assert_eq!(call(&s, "POST", "/api/v1/volumes", &[], Some(json!({})), None).0, 401);
    assert_eq!(call(&s, "GET", "/api/v1/users", &bearer("cleave_0000"), None, None).0, 401);
    assert_eq!(call(&s, "GET", "/api/v1/openapi.json", &[], None, None).0, 200);
    let page = run(Command::new("curl").args(["-s", &format!("http://127.0.0.1:{}/console/", s.http_port)]));
    assert!(page.contains("/console/app.js"), "{page}");

    // Users from the CLI, with tokens.
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "viewer password\n").unwrap();
    let pw_arg = pw.to_str().unwrap();
    s.cli_ok(&["user", "add", "vera", "--role", "viewer", "--password-file", pw_arg]);
    s.cli_ok(&["user", "add", "otto", "--role", "operator", "--password-file", pw_arg]);
    let generated = s.cli_ok(&["user", "add", "gen", "--role", "viewer"]);
    assert!(generated.contains("password: "), "{generated}");
    let vera = s.cli_ok(&["user", "token", "vera", "--label", "dashboards"]).trim().to_string();
    let otto = s.cli_ok(&["user", "token", "otto"]).trim().to_string();
    assert!(vera.starts_with("cleave_") && otto.starts_with("cleave_"));
    let bad = s.cli(&[
        "user",
        "add",
        "weak",
        "--role",
        "viewer",
        "--password-file",
        dir.path().join("nope").to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    std::fs::write(dir.path().join("short"), "short").unwrap();
    let bad = s.cli(&["user", "add", "weak", "--password-file", dir.path().join("short").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("at least 8"), "{bad:?}");

    // A viewer reads everything but the user list, and changes nothing.
    let v = bearer(&vera);
    assert_eq!(call(&s, "GET", "/api/v1/volumes", &v, None, None).0, 200);
    assert_eq!(call(&s, "GET", "/api/v1/nodes", &v, None, None).0, 200);
    assert_eq!(call(&s, "GET", "/api/v1/volumes/demo", &v, None, None).0, 200);
    let (code, err) =
        call(&s, "POST", "/api/v1/volumes", &v, Some(json!({ "name": "x", "size_bytes": 1 << 20 })), None);
    assert_eq!(code, 403);
    assert!(err["error"].as_str().unwrap().contains("viewer"), "{err}");
    for (m, p) in [
        ("DELETE", "/api/v1/volumes/demo"),
        ("POST", "/api/v1/tasks"),
        ("POST", "/api/v1/volumes/demo/scrub"),
        ("POST", "/api/v1/clients"),
        ("POST", "/api/v1/groups"),
        ("GET", "/api/v1/users"),
        ("POST", "/api/v1/users"),
        ("DELETE", "/api/v1/users/otto"),
    ] {
        assert_eq!(call(&s, m, p, &v, Some(json!({})), None).0, 403, "{m} {p}");
    }
    assert_eq!(call(&s, "GET", "/api/v1/volumes/demo", &v, None, None).1["name"], "demo");

    // An operator runs volumes and tasks, but not access control or users.
    let o = bearer(&otto);
    let (code, vol) = call(
        &s,
        "POST",
        "/api/v1/volumes",
        &o,
        Some(json!({ "name": "ops", "size_bytes": 4 << 20, "m": 2, "n": 3 })),
        None,
    );
    assert_eq!(code, 201, "{vol}");
    let (code, task) = call(&s, "POST", "/api/v1/tasks", &o, Some(json!({ "kind": "scrub", "volume": "ops" })), None);
    assert_eq!(code, 202, "{task}");
    assert_eq!(call(&s, "POST", "/api/v1/clients", &o, Some(json!({ "name": "h" })), None).0, 403);
    assert_eq!(call(&s, "PUT", "/api/v1/groups/admin/volumes/ops", &o, Some(json!({})), None).0, 403);
    assert_eq!(call(&s, "PUT", "/api/v1/users/vera", &o, Some(json!({ "role": "admin" })), None).0, 403);
    assert_eq!(call(&s, "DELETE", "/api/v1/volumes/ops", &o, None, None).0, 204);

    // The admin sees users and token ids, never the tokens or passwords.
    let (code, users) = call(&s, "GET", "/api/v1/users", &bearer(&admin), None, None);
    assert_eq!(code, 200);
    let names: Vec<&str> = users.as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["admin", "gen", "otto", "vera"]);
    let listed = s.cli_ok(&["user", "list"]);
    assert!(listed.contains("vera") && listed.contains("dashboards") && listed.contains("operator"), "{listed}");
    // The configuration database stores values as they are: a secret in clear would show.
    let stored = String::from_utf8_lossy(&std::fs::read(s.data.join("config.redb")).unwrap()).into_owned();
    let admin_password = std::fs::read_to_string(s.data.join("admin.password")).unwrap().trim().to_string();
    for secret in [vera.as_str(), otto.as_str(), "viewer password", admin_password.as_str()] {
        assert!(!stored.contains(secret), "the configuration database holds a secret in clear");
        assert!(!users.to_string().contains(secret));
    }
    assert!(stored.contains("$argon2id$"));

    // Login: a wrong password is refused; a session needs its CSRF header to change anything.
    let jar = dir.path().join("jar");
    let login = |name: &str, password: &str| {
        call(&s, "POST", "/api/v1/login", &[], Some(json!({ "name": name, "password": password })), Some(&jar))
    };
    assert_eq!(login("vera", "wrong password").0, 401);
    assert_eq!(login("nobody", "viewer password").0, 401);
    let (code, me) = login("admin", &admin_password);
    assert_eq!(code, 200, "{me}");
    let csrf = format!("X-Cleave-CSRF: {}", me["csrf"].as_str().unwrap());
    let (code, me) = call(&s, "GET", "/api/v1/me", &[], None, Some(&jar));
    assert_eq!((code, me["role"].as_str()), (200, Some("admin")));
    let new_user = json!({ "name": "ada", "role": "operator", "password": "another password" });
    assert_eq!(call(&s, "POST", "/api/v1/users", &[], Some(new_user.clone()), Some(&jar)).0, 403);
    assert_eq!(
        call(&s, "POST", "/api/v1/users", &["X-Cleave-CSRF: forged".into()], Some(new_user.clone()), Some(&jar)).0,
        403
    );
    assert_eq!(call(&s, "POST", "/api/v1/users", std::slice::from_ref(&csrf), Some(new_user), Some(&jar)).0, 201);
    // The last admin stays.
    let (code, err) = call(&s, "DELETE", "/api/v1/users/admin", std::slice::from_ref(&csrf), None, Some(&jar));
    assert_eq!(code, 409, "{err}");
    // Logging out ends the session.
    assert_eq!(call(&s, "POST", "/api/v1/logout", std::slice::from_ref(&csrf), None, Some(&jar)).0, 204);
    assert_eq!(call(&s, "GET", "/api/v1/me", &[], None, Some(&jar)).0, 401);

    // A viewer's session: reads, cannot write even with its CSRF header; a role change applies at once.
    let (code, me) = login("vera", "viewer password");
    assert_eq!(code, 200);
    let csrf = format!("X-Cleave-CSRF: {}", me["csrf"].as_str().unwrap());
    let create = json!({ "name": "mine", "size_bytes": 1 << 20, "m": 1, "n": 1 });
    assert_eq!(
        call(&s, "POST", "/api/v1/volumes", std::slice::from_ref(&csrf), Some(create.clone()), Some(&jar)).0,
        403
    );
    s.cli_ok(&["user", "set", "vera", "--role", "operator"]);
    assert_eq!(call(&s, "POST", "/api/v1/volumes", std::slice::from_ref(&csrf), Some(create), Some(&jar)).0, 201);
    // Removing a user ends its sessions and tokens.
    s.cli_ok(&["user", "remove", "vera"]);
    assert_eq!(call(&s, "GET", "/api/v1/me", &[], None, Some(&jar)).0, 401);
    assert_eq!(call(&s, "GET", "/api/v1/volumes", &v, None, None).0, 401);

    // Guessing: five failures close the name's login for a minute, even to the right password.
    s.cli_ok(&["user", "add", "tim", "--role", "viewer", "--password-file", pw_arg]);
    for _ in 0..5 {
        assert_eq!(login("tim", "guess guess").0, 401);
    }
    let (code, err) = login("tim", "viewer password");
    assert_eq!(code, 429, "{err}");
    assert!(err["error"].as_str().unwrap().contains("too many failed logins"), "{err}");
    assert_eq!(login("otto", "viewer password").0, 200, "other names are not affected");

    // A revoked token opens nothing; the others still work, across a restart.
    let id = users.as_array().unwrap().iter().find(|u| u["name"] == "otto").unwrap()["tokens"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let otto2 = s.cli_ok(&["user", "token", "otto"]).trim().to_string();
    s.cli_ok(&["user", "revoke", "otto", &id]);
    assert_eq!(call(&s, "GET", "/api/v1/volumes", &o, None, None).0, 401);
    s.term();
    s.restart();
    assert_eq!(call(&s, "GET", "/api/v1/volumes", &bearer(&otto2), None, None).0, 200);
    let again = json!({ "name": "otto", "password": "viewer password" });
    assert_eq!(call(&s, "POST", "/api/v1/login", &[], Some(again), None).0, 200);
}

/// A user with a role and an API token for it.
fn user_token(s: &Serve, dir: &Path, name: &str, role: &str) -> Vec<String> {
    let pw = dir.join("pw");
    std::fs::write(&pw, "a long enough password\n").unwrap();
    s.cli_ok(&["user", "add", name, "--role", role, "--password-file", pw.to_str().unwrap()]);
    bearer(s.cli_ok(&["user", "token", name]).trim())
}

#[test]
fn an_operator_cannot_grant_itself_rights() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    let admin = bearer(std::fs::read_to_string(s.data.join("admin.token")).unwrap().trim());
    let o = user_token(&s, dir.path(), "otto", "operator");
    s.cli_ok(&["group", "add", "tenant"]);
    s.cli_ok(&["client", "add", "web1", "--out", dir.path().join("web1").to_str().unwrap()]);
    let create = |who: &[String], body: Value| call(&s, "POST", "/api/v1/volumes", who, Some(body), None);
    let base = |name: &str| json!({ "name": name, "size_bytes": 1 << 20, "m": 1, "n": 1 });
    let with = |name: &str, key: &str, value: Value| {
        let mut b = base(name);
        b[key] = value;
        b
    };

    // A volume named after an existing group, for a new client: that would put the client
    // into the group, and the admin group reaches every default volume.
    let (code, body) = create(&o, with("admin", "client", json!("x")));
    assert_eq!(code, 409, "{body}");
    let (code, body) = create(&admin, with("tenant", "client", json!("y")));
    assert_eq!(code, 409, "not even an admin joins an existing group by naming a volume: {body}");
    // An existing client would gain access to a new volume: an admin's decision.
    let (code, body) = create(&o, with("fresh", "client", json!("web1")));
    assert_eq!(code, 409, "{body}");
    // Granting existing groups access is an admin's decision too.
    let (code, body) = create(&o, with("shared", "groups", json!(["tenant"])));
    assert_eq!(code, 403, "{body}");
    let groups = s.api("/groups").to_string();
    for leaked in ["\"x\"", "\"y\""] {
        assert!(!groups.contains(leaked), "a refused create changed the groups: {groups}");
    }
    let clients = s.api("/clients").to_string();
    assert!(!clients.contains("\"x\"") && !clients.contains("\"y\""), "{clients}");
    assert!(s.cli(&["volume", "show", "admin"]).status.success().eq(&false), "the refused volume exists");

    // A fresh group and client pair is storage on demand, and stays an operator's right.
    let (code, body) = create(&o, with("fresh", "client", json!("h1")));
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["groups"], json!(["fresh"]), "{body}");
    assert!(body["credentials"]["cert_pem"].is_string(), "{body}");
    // And the admin may still give an existing client a new volume.
    let (code, body) = create(&admin, with("more", "client", json!("web1")));
    assert_eq!(code, 201, "{body}");
    assert!(body.get("credentials").is_none(), "{body}");
}

#[test]
fn parallel_wrong_logins_are_limited_to_five_guesses() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    user_token(&s, dir.path(), "tim", "viewer");
    let codes: Vec<u16> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..60)
            .map(|i| {
                let s = &s;
                scope.spawn(move || {
                    let body = json!({ "name": "tim", "password": format!("guess number {i}") });
                    call(s, "POST", "/api/v1/login", &[], Some(body), None).0
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let checked = codes.iter().filter(|&&c| c != 429).count();
    assert!(codes.iter().all(|&c| c == 401 || c == 429), "{codes:?}");
    assert!(checked <= 5, "{checked} of 60 parallel guesses were checked: {codes:?}");
}

#[test]
fn encoded_paths_get_the_same_policy() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    let v = user_token(&s, dir.path(), "vera", "viewer");
    // The router matches paths as they are sent: spelled differently, there is no such route.
    for path in ["/api/v1/user%73", "/api/v1/%75sers"] {
        let (code, body) = call(&s, "GET", path, &v, None, None);
        assert!(code == 403 || code == 404, "GET {path} as a viewer: {code} {body}");
    }
    // Forwarded to a child control, the path is decoded: the policy must see what the child will.
    for path in [
        "/api/v1/users",
        "/api/v1/controls/east/api/users",
        "/api/v1/controls/east/api/user%73",
        "/api/v1/controls/east/api/user%2573",
        "/api/v1/controls/east/api/users%3Fx=1",
        "/api/v1/controls/east/api/volumes/..%2Fusers",
    ] {
        let (code, body) = call(&s, "GET", path, &v, None, None);
        assert_eq!(code, 403, "GET {path} as a viewer: {body}");
    }
    assert_eq!(call(&s, "GET", "/api/v1/volumes/demo", &v, None, None).0, 200);
    assert_eq!(call(&s, "GET", "/api/v1/volumes/dem%6F", &v, None, None).0, 200);
}
