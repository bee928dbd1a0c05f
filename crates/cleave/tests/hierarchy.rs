//! The control hierarchy with real processes: a parent `cleave control`, a child
//! `cleave control --parent`, and a storage node registering with the child. The
//! parent lists the child with its pool summary and sees the child's node; a
//! SIGKILLed child is marked down within the heartbeat timeout, with an event;
//! forged, spoofed and replayed packets claiming to be a control change nothing.
//! Every wait polls against a generous deadline.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cleave_control::autoconfig::packet::{decode, encode, MessageType, Packet};
use common::*;
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(20);

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `cleave control` process.
struct Control {
    child: Option<Child>,
    data: PathBuf,
    http: u16,
    autoconfig: u16,
    extra: Vec<String>,
}

impl Control {
    fn start(data: &Path, extra: &[&str]) -> Control {
        let mut c = Control {
            child: None,
            data: data.to_path_buf(),
            http: free_port(),
            autoconfig: free_udp_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let mut child = Command::new(CLEAVE)
            .arg("control")
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--http", &format!("127.0.0.1:{}", self.http)])
            .args(["--autoconfig", &format!("127.0.0.1:{}", self.autoconfig)])
            .args(["--heartbeat-timeout-secs", "2"])
            .args(&self.extra)
            .env("CLEAVE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn cleave control");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("API:") => break,
                Some(Ok(_)) => continue,
                _ => panic!("cleave control exited before it started: {:?}", child.wait()),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token")).unwrap().trim().to_string()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn term(&mut self) {
        if let Some(mut c) = self.child.take() {
            run(Command::new("kill").args(["-TERM", &c.id().to_string()]));
            assert!(c.wait().unwrap().success());
        }
    }

    /// GET with a token: (HTTP status, response headers, body).
    fn call(&self, method: &str, token: &str, path: &str) -> (u16, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let (headers, body) = (dir.path().join("h"), dir.path().join("b"));
        let code = run(Command::new("curl")
            .args(["-s", "-X", method, "-H", &format!("Authorization: Bearer {token}"), "-D"])
            .arg(&headers)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}", &format!("http://127.0.0.1:{}/api/v1{path}", self.http)]));
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        (code.trim().parse().unwrap(), read(&headers), read(&body))
    }

    fn api(&self, path: &str) -> Value {
        let (code, _, body) = self.call("GET", &self.token(), path);
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn cli(&self, args: &[&str]) -> String {
        run(Command::new(CLEAVE)
            .args(args)
            .args(["--server", &format!("http://127.0.0.1:{}", self.http), "--token-file"])
            .arg(self.data.join("admin.token"))
            .env("CLEAVE_LOG", "warn"))
    }

    fn controls(&self) -> Vec<Value> {
        self.api("/controls").as_array().unwrap().clone()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_node(data: &Path, port: u16, control: &Control) -> Node {
    Node(
        Command::new(CLEAVE)
            .args(["node", "--data"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--control", &format!("127.0.0.1:{}", control.autoconfig)])
            .arg("--secret-file")
            .arg(control.data.join("cluster.secret"))
            .args(["--capacity", "1GiB", "--site", "east", "--heartbeat-secs", "0.3"])
            .env("CLEAVE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn wait_for(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out after {PATIENCE:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_secret(path: &Path) -> [u8; 32] {
    let mut s = [0u8; 32];
    hex::decode_to_slice(std::fs::read_to_string(path).unwrap().trim(), &mut s).unwrap();
    s
}

/// The parts of a control entry that only a registration (INFO) can change.
fn identity(c: &Value) -> (String, String, String, String) {
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("id"), s("name"), s("api"), s("site"))
}

/// A parent control `hq`, and a child's data directory holding the parent's cluster secret
/// (shared: the child's data directory starts with the parent's); the parent's UDP address.
fn parent_and_child_data(dir: &Path) -> (Control, PathBuf, String) {
    let parent = Control::start(&dir.join("parent"), &["--name", "hq"]);
    let child_data = dir.join("child");
    std::fs::create_dir_all(&child_data).unwrap();
    std::fs::copy(parent.data.join("cluster.secret"), child_data.join("cluster.secret")).unwrap();
    let parent_at = format!("127.0.0.1:{}", parent.autoconfig);
    (parent, child_data, parent_at)
}

#[test]
fn parent_lists_child_controls_and_their_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (parent, child_data, parent_at) = parent_and_child_data(dir.path());
    let mut child = Control::start(
        &child_data,
        &["--parent", &parent_at, "--parent-heartbeat-secs", "0.3", "--name", "east-1", "--site", "east"],
    );
    let node_port = free_port();
    let _node = start_node(&dir.path().join("node"), node_port, &child);
    let node_address = format!("127.0.0.1:{node_port}");

    // The parent lists the child as up, with a summary that counts the child's node.
    wait_for("the child, up at the parent, with its node counted", || {
        parent.controls().iter().any(|c| c["status"] == "up" && c["summary"]["nodes_up"] == 1)
    });
    let entry = parent.controls().into_iter().next().unwrap();
    let child_id = std::fs::read_to_string(child_data.join("control.id")).unwrap().trim().to_string();
    assert_eq!(entry["id"], child_id.as_str(), "{entry}");
    assert_eq!((entry["name"].as_str(), entry["site"].as_str()), (Some("east-1"), Some("east")), "{entry}");
    assert_eq!(entry["api"], format!("http://127.0.0.1:{}", child.http), "{entry}");
    assert_eq!(entry["summary"]["capacity_bytes"].as_u64(), Some(1 << 30), "{entry}");
    assert!(entry["summary"]["free_bytes"].as_u64().unwrap() > 0, "{entry}");
    assert_eq!(entry["summary"]["nodes_down"].as_u64(), Some(0), "{entry}");
    let events = parent.api("/events");
    assert!(events.as_array().unwrap().iter().any(|e| e["kind"] == "control_up"), "{events}");

    // The parent's own pool has no node; the whole tree has the child's, naming the child.
    assert_eq!(parent.api("/nodes"), json!([]));
    let all = parent.api("/nodes?all=true");
    let nodes = all.as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{all}");
    assert_eq!(nodes[0]["address"], node_address.as_str(), "{all}");
    assert_eq!(nodes[0]["status"], "up", "{all}");
    assert_eq!(nodes[0]["control"], child_id.as_str(), "{all}");
    assert_eq!(nodes[0]["capacity_bytes"].as_u64(), Some(1 << 30), "{all}");
    // The same through the CLI.
    let listed = parent.cli(&["control", "list"]);
    let row: Vec<&str> = listed.lines().find(|l| l.contains("east-1")).unwrap_or_default().split_whitespace().collect();
    // ID NAME SITE STATUS API NODES-UP NODES-DOWN ...
    assert_eq!((row.get(3), row.get(5), row.get(6)), (Some(&"up"), Some(&"1"), Some(&"0")), "{listed}");
    let listed = parent.cli(&["node", "list", "--all"]);
    // Each node named by its control's name, as the console does.
    assert!(listed.lines().any(|l| l.starts_with("east-1 ") && l.contains(&node_address)), "{listed}");
    let listed: Value = serde_json::from_str(&parent.cli(&["node", "list", "--all", "--json"])).unwrap();
    assert_eq!(
        (listed[0]["control"].as_str(), listed[0]["control_name"].as_str()),
        (Some(child_id.as_str()), Some("east-1"))
    );
    // The parent's console shows the child control and the child's node, named by its control.
    let browser = common::browser::Browser::start(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hierarchy"));
    let password = std::fs::read_to_string(parent.data.join("admin.password")).unwrap();
    browser.login(&format!("http://127.0.0.1:{}/", parent.http), "admin", password.trim());
    browser.click("a[href='#/nodes']");
    browser.wait("the child control, up", "document.querySelector('#controls-table tr[data-status=up]')");
    assert!(browser.text("#controls-table").contains("east-1"));
    let row = browser.text(&format!("#nodes-table tr[data-node='{}']", nodes[0]["id"].as_str().unwrap()));
    assert!(row.contains(&node_address) && row.contains("east-1") && row.contains("up"), "{row}");
    browser.screenshot("parent-nodes");
    drop(browser);

    // The child acts only on its own pool: it knows nothing of the parent's controls.
    assert_eq!(child.api("/controls"), json!([]));
    assert_eq!(child.api("/nodes").as_array().unwrap().len(), 1);

    // Tokens at the child: its parent's own admin token is nothing there, and neither is anything
    // derived from the cluster secret (the_cluster_secret_alone_is_nothing_at_a_child_control).
    let parent_token =
        derived(&read_secret(&parent.data.join("cluster.secret")), "cleave parent access v1\0", &child_id);
    assert_eq!(child.call("GET", &parent_token, "/nodes").0, 401);
    assert_eq!(child.call("DELETE", &parent_token, "/volumes/x").0, 401);
    assert_eq!(child.call("POST", &parent_token, "/tasks").0, 401);
    assert_eq!(child.call("GET", &parent.token(), "/nodes").0, 401);

    // The parent acts on its child through the child's own API: it creates a volume on the
    // child's node, reads it back, starts a task there and deletes the volume.
    let via = |method: &str, path: &str, body: Option<Value>| -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-X", method, "-H", &format!("Authorization: Bearer {}", parent.token())]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
        }
        let out = run(cmd.args([
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{}/api/v1/controls/{child_id}/api{path}", parent.http),
        ]));
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap();
        (code.parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::Null))
    };
    let (code, created) =
        via("POST", "/volumes", Some(json!({ "name": "far", "size_bytes": 8 << 20, "m": 1, "n": 1 })));
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["targets"], json!([format!("node://{node_address}")]), "{created}");
    assert_eq!(child.api("/volumes/far")["size_bytes"].as_u64(), Some(8 << 20));
    let (code, shown) = via("GET", "/volumes/far", None);
    assert_eq!((code, shown["name"].as_str()), (200, Some("far")), "{shown}");
    let (code, task) = via("POST", "/tasks", Some(json!({ "kind": "scrub", "volume": "far" })));
    assert_eq!(code, 202, "{task}");
    let task_path = format!("/tasks/{}", task["id"]);
    wait_for("the scrub started by the parent to finish", || via("GET", &task_path, None).1["state"] == "succeeded");
    // The child's refusals come back as they are.
    let (code, refused) =
        via("POST", "/volumes", Some(json!({ "name": "far", "size_bytes": 1 << 20, "m": 1, "n": 1 })));
    assert_eq!(code, 400, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("already exists"), "{refused}");
    assert_eq!(via("DELETE", "/volumes/far", None).0, 204);
    assert_eq!(child.call("GET", &child.token(), "/volumes/far").0, 404);
    // Only the parent's act token acts; an unknown child is named as such; a child cannot
    // act on its parent (it has no controls below it).
    assert_eq!(child.call("POST", &parent_token, "/volumes").0, 401);
    let (code, _, body) = parent.call("GET", &parent.token(), "/controls/nosuch/api/volumes");
    assert_eq!(code, 404, "{body}");
    assert_eq!(parent.call("GET", "wrong", &format!("/controls/{child_id}/api/volumes")).0, 401);
    let parent_id = std::fs::read_to_string(parent.data.join("control.id")).unwrap_or_default();
    assert_eq!(child.call("GET", &child.token(), &format!("/controls/{}/api/volumes", parent_id.trim())).0, 404);

    // Forged, spoofed and replayed packets that claim to be a control change nothing.
    let before: Vec<_> = parent.controls().iter().map(identity).collect();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let me = sock.local_addr().unwrap();
    let to: SocketAddr = parent_at.parse().unwrap();
    let secret = read_secret(&parent.data.join("cluster.secret"));
    let send = |kind, seq, src, body: Value, key: &[u8; 32]| {
        let p = Packet { kind, seq, src, dst: to, data: body.to_string().into_bytes() };
        sock.send_to(&encode(&p, key).unwrap(), to).unwrap();
    };
    let fake_info = |id: &str| {
        json!({
            "id": id, "kind": "control", "name": "evil", "site": "x", "api": "http://127.0.0.1:1",
            "summary": { "nodes_up": 99, "nodes_down": 0, "capacity_bytes": 1, "free_bytes": 1 },
        })
    };
    let wrong_key = [0x66u8; 32];
    let now_us = 1u64 << 62;
    // Without the cluster secret: a new control, and a takeover of the child's record.
    send(MessageType::Startup, now_us, me, json!({ "id": "evil", "kind": "control" }), &wrong_key);
    send(MessageType::Info, now_us + 1, me, fake_info("evil"), &wrong_key);
    send(MessageType::Info, now_us + 2, me, fake_info(&child_id), &wrong_key);
    send(MessageType::Heartbeat, now_us + 3, me, fake_info(&child_id), &wrong_key);
    send(MessageType::Shutdown, now_us + 4, me, json!({ "id": child_id, "kind": "control" }), &wrong_key);
    // With the secret, but claiming to come from elsewhere (spoofed source).
    let elsewhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
    send(MessageType::Info, now_us + 5, elsewhere, fake_info(&child_id), &secret);
    send(MessageType::Shutdown, now_us + 6, elsewhere, json!({ "id": child_id, "kind": "control" }), &secret);
    // With the secret but an old sequence number (a replay of the child's first packets).
    send(MessageType::Info, 1, me, fake_info(&child_id), &secret);
    send(MessageType::Shutdown, 2, me, json!({ "id": child_id, "kind": "control" }), &secret);
    sock.send_to(b"garbage", to).unwrap();
    // A genuine STARTUP last: once it is answered, everything before it was handled.
    send(MessageType::Startup, now_us + 7, me, json!({ "id": "probe", "kind": "control" }), &secret);
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).expect("an answer to the genuine STARTUP");
    assert_eq!(decode(&buf[..n], &secret).unwrap().kind, MessageType::NeedInfo);
    let after = parent.controls();
    let child_entry = after.iter().find(|c| c["id"] == child_id.as_str()).unwrap();
    assert_eq!(child_entry["status"], "up", "{child_entry}");
    assert_eq!(child_entry["summary"]["nodes_up"], 1, "{child_entry}");
    let probe = after.iter().find(|c| c["id"] == "probe").expect("the genuine STARTUP is recorded");
    assert_eq!(probe["status"], "down", "a STARTUP alone does not make a control up: {probe}");
    let after: Vec<_> = after.iter().filter(|c| c["id"] != "probe").map(identity).collect();
    assert_eq!(after, before);
    assert!(!parent.controls().iter().any(|c| c["id"] == "evil"));

    // SIGKILL: down at the parent within the heartbeat timeout, with an event; its nodes
    // are then missing from the tree, and the answer says so.
    child.kill9();
    wait_for("the killed child down at the parent", || {
        parent.controls().iter().any(|c| c["id"] == child_id.as_str() && c["status"] == "down")
    });
    let events = parent.api("/events");
    assert!(
        events.as_array().unwrap().iter().any(|e| e["kind"] == "control_down"
            && e["detail"].as_str().unwrap().contains(&child_id)
            && e["detail"].as_str().unwrap().contains("heartbeat timeout")),
        "{events}"
    );
    // Acting on a child that is down is refused as such (502), not as an unknown child.
    let (code, _, body) = parent.call("GET", &parent.token(), &format!("/controls/{child_id}/api/volumes"));
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("is down"), "{body}");
    let (code, headers, body) = parent.call("GET", &parent.token(), "/nodes?all=true");
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!([]));
    let incomplete = headers.lines().find(|l| l.to_ascii_lowercase().starts_with("cleave-incomplete:"));
    assert!(incomplete.is_some_and(|l| l.contains(&child_id)), "{headers}");

    // Restarted, it registers again; a clean stop shows it down at once, with an event.
    child.spawn();
    wait_for("the restarted child up again", || {
        parent.controls().iter().any(|c| c["id"] == child_id.as_str() && c["status"] == "up")
    });
    wait_for("the child's node in the tree again", || {
        parent.api("/nodes?all=true").as_array().unwrap().iter().any(|n| n["address"] == node_address.as_str())
    });
    child.term();
    wait_for("the cleanly stopped child down", || {
        parent.controls().iter().any(|c| c["id"] == child_id.as_str() && c["status"] == "down")
    });
    let events = parent.api("/events");
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "control_down" && e["detail"].as_str().unwrap().contains("clean stop")),
        "{events}"
    );
}

/// Users of the parent keep their role at a child: a viewer reads the child's volumes through
/// the parent, but not its users, however the path is spelled (the parent's role policy sees the
/// path the child will act on), and an operator acts there as an operator.
#[test]
fn parent_users_keep_their_role_at_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let (parent, child_data, parent_at) = parent_and_child_data(dir.path());
    let child =
        Control::start(&child_data, &["--parent", &parent_at, "--parent-heartbeat-secs", "0.3", "--name", "east"]);
    wait_for("the child, up at the parent", || parent.controls().iter().any(|c| c["status"] == "up"));
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "viewer password\n").unwrap();
    parent.cli(&["user", "add", "vera", "--role", "viewer", "--password-file", pw.to_str().unwrap()]);
    let vera = parent.cli(&["user", "token", "vera"]).trim().to_string();

    assert_eq!(parent.call("GET", &vera, "/controls/east/api/volumes").0, 200);
    for path in
        ["users", "user%73", "%75ser%73", "user%2573", "users%3Fx=1", "volumes%2F..%2Fusers", "me/..%2F..%2Fusers"]
    {
        let (code, _, body) = parent.call("GET", &vera, &format!("/controls/east/api/{path}"));
        assert_eq!(code, 403, "a viewer read the child's {path}: {body}");
        assert!(!body.contains("argon2") && !body.contains("\"admin\""), "{body}");
    }

    // An operator of the parent acts at the child as an operator, not as the admin the
    // parent's token would make it: it cannot give the child's groups access.
    parent.cli(&["user", "add", "otto", "--role", "operator", "--password-file", pw.to_str().unwrap()]);
    let otto = parent.cli(&["user", "token", "otto"]).trim().to_string();
    child.cli(&["group", "add", "tenant"]);
    let body = json!({ "name": "shared", "size_bytes": 1 << 20, "m": 1, "n": 1, "groups": ["tenant"] });
    let out = run(Command::new("curl")
        .args(["-s", "-X", "POST", "-H", &format!("Authorization: Bearer {otto}")])
        .args(["-H", "Content-Type: application/json", "-d", &body.to_string(), "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{}/api/v1/controls/east/api/volumes", parent.http)));
    let (text, code) = out.trim_end().rsplit_once('\n').unwrap();
    assert_eq!(code, "403", "an operator granted a group through the parent: {text}");
}

/// A volume served by a child control names the child's own NBD address, as the parent shows
/// it: with NBD on every address, the child's host name (which its NBD certificate names), not
/// the wildcard address.
#[test]
fn a_child_reports_its_own_nbd_address() {
    let dir = tempfile::tempdir().unwrap();
    let (parent, child_data, parent_at) = parent_and_child_data(dir.path());
    let nbd = free_port();
    let listen = format!("0.0.0.0:{nbd}");
    let child = Serve::start(
        &child_data,
        &["--nbd", &listen, "--parent", &parent_at, "--parent-heartbeat-secs", "0.3", "--name", "east"],
    );
    wait_for("the child, up at the parent", || parent.controls().iter().any(|c| c["status"] == "up"));
    let (code, _, body) = parent.call("GET", &parent.token(), "/controls/east/api/volumes/demo");
    assert_eq!(code, 200, "{body}");
    let demo: Value = serde_json::from_str(&body).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    assert_eq!(demo["nbds_uri"], format!("nbds://{host}:{nbd}/demo"), "{demo}");
    assert_eq!(demo["nbd_uri"], child.uri("demo"), "{demo}");
    // The same in the list, and the address is where the child's NBD server answers.
    let (_, _, listed) = parent.call("GET", &parent.token(), "/controls/east/api/volumes");
    assert!(listed.contains(&format!("nbds://{host}:{nbd}/demo")) && !listed.contains("0.0.0.0"), "{listed}");
    std::net::TcpStream::connect((host.as_str(), nbd)).expect("the child's NBD server at the reported address");
}

/// keyed BLAKE3 under the cluster secret of `context || child id`: every token a holder of
/// the cluster secret (any storage node) could derive for a child control.
fn derived(secret: &[u8; 32], context: &str, child_id: &str) -> String {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(context.as_bytes());
    h.update(child_id.as_bytes());
    h.finalize().to_hex().to_string()
}

#[test]
fn the_cluster_secret_alone_is_nothing_at_a_child_control() {
    let dir = tempfile::tempdir().unwrap();
    let (parent, child_data, parent_at) = parent_and_child_data(dir.path());
    let child = Control::start(&child_data, &["--parent", &parent_at, "--parent-heartbeat-secs", "0.3"]);
    let child_id = std::fs::read_to_string(child_data.join("control.id")).unwrap().trim().to_string();
    wait_for("the child up at the parent", || {
        parent.controls().iter().any(|c| c["id"] == child_id.as_str() && c["status"] == "up")
    });

    // A node holds the cluster secret, and nothing else. Whatever it derives from it for this
    // child, the child's API refuses: for reading, for acting, and for the user list.
    let secret = read_secret(&child_data.join("cluster.secret"));
    for context in ["cleave parent access v1\0", "cleave parent admin v1\0"] {
        let token = derived(&secret, context, &child_id);
        for (method, path) in [("GET", "/nodes"), ("GET", "/volumes"), ("GET", "/users"), ("POST", "/groups")] {
            let (code, _, body) = child.call(method, &token, path);
            assert_eq!(code, 401, "{method} {path} with a token derived from the secret ({context:?}): {body}");
        }
    }
    let node_token = blake3::keyed_hash(&secret, b"cleave node access v1").to_hex().to_string();
    assert_eq!(child.call("GET", &node_token, "/volumes").0, 401);

    // The parent still reads the child's pool and acts on it.
    let (code, _, body) = parent.call("GET", &parent.token(), &format!("/controls/{child_id}/api/volumes"));
    assert_eq!(code, 200, "{body}");
    let (code, headers, body) = parent.call("GET", &parent.token(), "/nodes?all=true");
    assert_eq!(code, 200, "{body}");
    assert!(!headers.to_ascii_lowercase().contains("cleave-incomplete"), "the child's nodes were read: {headers}");
    let (code, _, body) = parent.call("POST", &parent.token(), &format!("/controls/{child_id}/api/groups"));
    assert_ne!(code, 401, "the parent acts on its child: {body}");
}
