//! Storage nodes as separate processes, registering with control over UDP; volumes
//! placed on them by size and used through NBD.

mod common;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Node {
    child: Option<Child>,
    data: std::path::PathBuf,
    port: u16,
    site: String,
}

impl Node {
    fn start(s: &Serve, autoconfig: u16, data: std::path::PathBuf, site: &str) -> Node {
        let mut n = Node { child: None, data, port: free_port(), site: site.into() };
        n.spawn(s, autoconfig);
        n
    }
    fn spawn(&mut self, s: &Serve, autoconfig: u16) {
        let child = Command::new(CLEAVE)
            .args(["node", "--data"])
            .arg(&self.data)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--control", &format!("127.0.0.1:{autoconfig}")])
            .arg("--secret-file")
            .arg(s.data.join("cluster.secret"))
            .args(["--capacity", "1GiB", "--site", &self.site, "--heartbeat-secs", "0.3"])
            .env("CLEAVE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }
    fn term(&mut self) {
        if let Some(mut c) = self.child.take() {
            run(Command::new("kill").args(["-TERM", &c.id().to_string()]));
            c.wait().unwrap();
        }
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn api(s: &Serve, path: &str) -> serde_json::Value {
    s.api(path)
}

fn statuses(s: &Serve) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = api(s, "/nodes")
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["address"].as_str().unwrap().to_string(), n["status"].as_str().unwrap().to_string()))
        .collect();
    v.sort();
    v
}

/// Polls until `pred` holds, failing after `limit`.
fn wait_for(what: &str, limit: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status_of(s: &Serve, port: u16) -> String {
    statuses(s)
        .into_iter()
        .find(|(a, _)| a.ends_with(&format!(":{port}")))
        .map(|(_, st)| st)
        .unwrap_or_else(|| "absent".into())
}

/// `cleave serve` (nodes silent for 2 s are down) and three nodes of 1 GiB on three sites, up
/// within 5 seconds; the auto-configuration port.
fn three_nodes(dir: &std::path::Path) -> (Serve, Vec<Node>, u16) {
    let ac = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s =
        Serve::start(&dir.join("data"), &["--autoconfig", &format!("127.0.0.1:{ac}"), "--heartbeat-timeout-secs", "2"]);
    let nodes: Vec<Node> =
        (0..3).map(|i| Node::start(&s, ac, dir.join(format!("node{i}")), &format!("site{i}"))).collect();
    wait_for("three nodes up", Duration::from_secs(5), || {
        statuses(&s).iter().filter(|(_, st)| st == "up").count() == 3
    });
    (s, nodes, ac)
}

/// Without `--m` and `--n`, a volume gets a layout the pool can hold: 2-of-3 on three nodes.
/// A layout given that does not fit, and a pool too small to choose one, are refused with the
/// number of nodes up and what to pass.
#[test]
fn the_layout_fits_the_pool_when_none_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut nodes, _) = three_nodes(dir.path());
    let created: serde_json::Value =
        serde_json::from_str(&s.cli_ok(&["--json", "volume", "create", "auto", "--size", "32MiB"])).unwrap();
    assert_eq!((created["m"].as_u64(), created["n"].as_u64()), (Some(2), Some(3)), "{created}");
    let mut targets: Vec<&str> = created["targets"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    targets.sort();
    targets.dedup();
    assert!(targets.len() == 3 && targets.iter().all(|t| t.starts_with("node://")), "{targets:?}");
    qemu_io(&s.uri("auto"), &["write -P 0x3c 0 1M".to_string(), "flush".to_string()]);
    // N alone: M follows it.
    let created: serde_json::Value =
        serde_json::from_str(&s.cli_ok(&["--json", "volume", "create", "three", "--size", "8MiB", "--n", "3"]))
            .unwrap();
    assert_eq!((created["m"].as_u64(), created["n"].as_u64()), (Some(2), Some(3)), "{created}");

    // 3-of-5 asked for on three nodes: refused, naming the nodes up and a layout that fits.
    let out = s.cli(&["volume", "create", "wide", "--size", "32MiB", "--m", "3", "--n", "5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot place 3-of-5: 3 nodes are up") && err.contains("pass --m 2 --n 3"), "{err}");

    // Two nodes left: too few to choose a layout; the refusal says what to pass.
    let port = nodes[2].port;
    nodes[2].term();
    wait_for("the stopped node down", Duration::from_secs(5), || status_of(&s, port) == "down");
    let out = s.cli(&["volume", "create", "two", "--size", "32MiB"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("2 nodes are up, 2 with room for a share") && err.contains("pass --m 1 --n 2"), "{err}");
    assert!(api(&s, "/volumes").as_array().unwrap().iter().all(|v| v["name"] != "two"));
}

#[test]
fn nodes_register_fail_return_and_hold_volumes() {
    let dir = tempfile::tempdir().unwrap();
    // All three appear, up, with their capacity, within 5 seconds and with no manual step.
    let (s, mut nodes, ac) = three_nodes(dir.path());
    for n in api(&s, "/nodes").as_array().unwrap() {
        assert_eq!(n["capacity_bytes"].as_u64().unwrap(), 1 << 30, "{n}");
        assert!(n["free_bytes"].as_u64().unwrap() > 0);
    }

    // Garbage, oversized and wrongly keyed packets change nothing.
    let before = statuses(&s);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(b"garbage", ("127.0.0.1", ac)).unwrap();
    sock.send_to(&[1u8; 1500], ("127.0.0.1", ac)).unwrap();
    let mut forged = vec![1u8, 4];
    forged.extend_from_slice(&[0u8; 100]);
    sock.send_to(&forged, ("127.0.0.1", ac)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(statuses(&s), before);

    // Storage on demand: placed on the nodes, used through NBD.
    // Asked for by size for one host, which gets a client certificate and attaches over TLS.
    let creds = dir.path().join("host-tls");
    let created: serde_json::Value = serde_json::from_str(&s.cli_ok(&[
        "--json",
        "volume",
        "create",
        "v",
        "--size",
        "32MiB",
        "--m",
        "2",
        "--n",
        "3",
        "--client",
        "host",
        "--out",
        creds.to_str().unwrap(),
    ]))
    .unwrap();
    let targets: Vec<String> =
        created["targets"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    assert_eq!(targets.len(), 3);
    assert!(targets.iter().all(|t| t.starts_with("node://")), "{targets:?}");
    let mut w = Writes::new(32 << 20);
    let mut cmds = w.commands(&[(0, 65536, 0x5a), (5 << 20, 4096, 0x5b), ((32 << 20) - 4096, 4096, 0x5c)]);
    cmds.push("flush".into());
    qemu_io_tls(s.nbd_port, "v", &creds, &cmds);
    let tls = tls_uri(s.nbd_port, "v", &creds);
    let got = nbdcopy_image(&tls, dir.path());
    assert!(got == w.image, "image read back through nodes differs");
    // A volume too large for the pool is refused, with the reason.
    let out = s.cli(&["volume", "create", "huge", "--size", "100GiB", "--m", "2", "--n", "3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot place"), "{out:?}");

    // A clean stop shows the node down at once.
    let port0 = nodes[0].port;
    nodes[0].term();
    wait_for("cleanly stopped node down", Duration::from_secs(1), || status_of(&s, port0) == "down");

    // SIGKILL: down within the heartbeat timeout (2 s), with an event.
    let port1 = nodes[1].port;
    nodes[1].kill9();
    wait_for("killed node down", Duration::from_secs(4), || status_of(&s, port1) == "down");
    let events = api(&s, "/events");
    assert!(events.as_array().unwrap().iter().filter(|e| e["kind"] == "node_down").count() >= 2, "{events}");
    // The volume on them shows it at once, without any I/O, and the administrator is told.
    let has_event = |kind: &str| {
        api(&s, "/events")
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == kind && e["detail"].as_str().unwrap().starts_with("v: "))
    };
    assert_eq!(api(&s, "/volumes/v")["health"]["state"], "unavailable", "two of three nodes down, M = 2");
    wait_for("volume degraded event", Duration::from_secs(5), || has_event("volume_degraded"));
    wait_for("volume unavailable event", Duration::from_secs(5), || has_event("volume_unavailable"));

    // Restarting brings them back.
    nodes[0].spawn(&s, ac);
    nodes[1].spawn(&s, ac);
    wait_for("restarted nodes up", Duration::from_secs(5), || {
        statuses(&s).iter().filter(|(_, st)| st == "up").count() == 3
    });
    let got = nbdcopy_image(&tls, dir.path());
    assert!(got == w.image);
    wait_for("volume clean again, with an event", Duration::from_secs(10), || {
        api(&s, "/volumes/v")["health"]["state"] == "clean" && has_event("volume_clean")
    });

    // Moving the volume off a node (a task): a fourth node takes its share, every chunk is
    // rewritten, and the old node keeps nothing of the volume.
    nodes.push(Node::start(&s, ac, dir.path().join("node3"), "site3"));
    wait_for("fourth node up", Duration::from_secs(5), || {
        statuses(&s).iter().filter(|(_, st)| st == "up").count() == 4
    });
    // Destaged first, so that the shares to move are on the nodes and not only in the cache.
    let token = std::fs::read_to_string(s.data.join("admin.token")).unwrap();
    run(Command::new("curl")
        .args(["-sf", "-X", "POST", "-H"])
        .arg(format!("Authorization: Bearer {}", token.trim()))
        .arg(format!("http://127.0.0.1:{}/api/v1/volumes/v/destage", s.http_port)));
    let leaving = targets[0].trim_start_matches("node://").to_string();
    let started: serde_json::Value =
        serde_json::from_str(&s.cli_ok(&["task", "start", "move", "v", "--from", &leaving, "--json"])).unwrap();
    let id = started["id"].as_u64().unwrap().to_string();
    let done: serde_json::Value = serde_json::from_str(&s.cli_ok(&["task", "wait", &id, "--json"])).unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(done["result"]["chunks_rewritten"].as_u64().unwrap() > 0, "{done}");
    let now: Vec<String> =
        s.show("v")["targets"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let newcomer = format!("node://127.0.0.1:{}", nodes[3].port);
    assert_eq!(now[0], newcomer, "share 0 moved to the new node: {now:?}");
    assert_eq!(&now[1..], &targets[1..]);
    // Every share of every chunk is now on the current targets, and intact.
    let report: serde_json::Value = serde_json::from_str(&s.cli_ok(&["scrub", "v", "--json"])).unwrap();
    assert_eq!(report["chunks_checked"], report["chunks_healthy"], "{report}");
    assert!(report["problems"].as_array().unwrap().is_empty(), "{report}");
    let uuid = s.show("v")["uuid"].as_str().unwrap().to_string();
    let old_node = nodes.iter().find(|n| leaving.ends_with(&format!(":{}", n.port))).unwrap();
    let left: Vec<_> =
        files_under(&old_node.data).into_iter().filter(|p| p.to_string_lossy().contains(&uuid)).collect();
    assert!(left.is_empty(), "the old node still holds objects of v: {left:?}");
    let got = nbdcopy_image(&tls, dir.path());
    assert!(got == w.image, "image differs after the move");
    // Moving off a target the volume does not use is refused with the reason.
    let out = s.cli(&["task", "start", "move", "v", "--from", &leaving]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no target"), "{out:?}");
}

/// Issue 10, item 16: placement counts the space promised to volumes already placed on a node,
/// not only what its disk has free today (a volume that has not written yet takes none).
#[test]
fn placement_does_not_promise_the_same_space_twice() {
    let dir = tempfile::tempdir().unwrap();
    let ac = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = Serve::start(&dir.path().join("data"), &["--autoconfig", &format!("127.0.0.1:{ac}")]);
    let _nodes: Vec<Node> =
        (0..3).map(|i| Node::start(&s, ac, dir.path().join(format!("node{i}")), &format!("site{i}"))).collect();
    wait_for("three nodes up", Duration::from_secs(10), || {
        statuses(&s).iter().filter(|(_, st)| st == "up").count() == 3
    });
    // 1 GiB nodes; a 1 GiB 2-of-3 volume promises 512 MiB on each.
    for name in ["a", "b"] {
        s.cli_ok(&["volume", "create", name, "--size", "1GiB", "--m", "2", "--n", "3"]);
    }
    let out = s.cli(&["volume", "create", "c", "--size", "1GiB", "--m", "2", "--n", "3"]);
    assert!(!out.status.success(), "a third 1 GiB volume was placed on three 1 GiB nodes");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot place"), "{}", String::from_utf8_lossy(&out.stderr));
    // Nothing is left for any other volume either.
    let out = s.cli(&["volume", "create", "d", "--size", "1GiB", "--m", "3", "--n", "3"]);
    assert!(!out.status.success(), "342 MiB shares do not fit in the 0 bytes left");
}

/// A plain TCP listener posing as a storage node: it records every byte it is sent and answers
/// nothing useful.
struct FakeNode {
    port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl FakeNode {
    fn start() -> FakeNode {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let sink = sink.clone();
                std::thread::spawn(move || {
                    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        sink.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        FakeNode { port, received }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

/// (HTTP status, body) of an API call with a bearer token.
fn call(s: &Serve, token: &str, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-X", method, "-H", &format!("Authorization: Bearer {token}")]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
    }
    let out = run(cmd.args(["-w", "\n%{http_code}", &format!("http://127.0.0.1:{}/api/v1{path}", s.http_port)]));
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.parse().unwrap(), body.to_string())
}

/// What any node can derive from the cluster secret it holds: the node access token of the
/// old design (keyed BLAKE3 under the secret).
fn token_derived_from_secret(s: &Serve) -> String {
    let mut secret = [0u8; 32];
    hex::decode_to_slice(std::fs::read_to_string(s.data.join("cluster.secret")).unwrap().trim(), &mut secret).unwrap();
    blake3::keyed_hash(&secret, b"cleave node access v1").to_hex().to_string()
}

#[test]
fn node_credentials_go_only_to_registered_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let ac = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = Serve::start(&dir.path().join("data"), &["--autoconfig", &format!("127.0.0.1:{ac}")]);
    let nodes: Vec<Node> = (0..2).map(|i| Node::start(&s, ac, dir.path().join(format!("n{i}")), "s")).collect();
    wait_for("two nodes up", Duration::from_secs(10), || statuses(&s).iter().filter(|(_, st)| st == "up").count() == 2);
    let admin = std::fs::read_to_string(s.data.join("admin.token")).unwrap().trim().to_string();

    // An address nobody registered, named in a create: refused, and it is sent no credential.
    let fake = FakeNode::start();
    let targets: Vec<String> = std::iter::once(format!("node://127.0.0.1:{}", fake.port))
        .chain(nodes.iter().map(|n| format!("node://127.0.0.1:{}", n.port)))
        .collect();
    let body = serde_json::json!({ "name": "stolen", "size_bytes": 1 << 20, "m": 2, "n": 3, "targets": targets });
    let (code, answer) = call(&s, &admin, "POST", "/volumes", Some(body));
    std::thread::sleep(Duration::from_millis(500));
    let seen = fake.received();
    assert!(!seen.to_ascii_lowercase().contains("authorization"), "the fake node was sent a credential:\n{seen}");
    assert!(!seen.contains(&token_derived_from_secret(&s)), "the fake node was sent the node token:\n{seen}");
    assert_eq!(code, 400, "a create naming an unregistered node is refused: {answer}");
    assert!(answer.contains("not a registered node"), "{answer}");
    assert_eq!(call(&s, &admin, "GET", "/volumes/stolen", None).0, 404);

    // What node 0 holds does not open node 1: neither a token derived from the cluster
    // secret, nor node 0's own key and certificate.
    let n1 = format!("127.0.0.1:{}", nodes[1].port);
    let derived = token_derived_from_secret(&s);
    let plain = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Authorization: Bearer {derived}")])
        .arg(format!("http://{n1}/v1/list?prefix="))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200", "node 1 accepts a token derived from the secret");
    let (key, cert, ca) =
        (nodes[0].data.join("node.key"), nodes[0].data.join("node.crt"), nodes[0].data.join("node-ca.crt"));
    for f in [&key, &cert, &ca] {
        assert!(f.exists(), "node 0 has its own credential: {}", f.display());
    }
    let with_cert = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["--resolve", &format!("node.cleave:{}:127.0.0.1", nodes[1].port)])
        .arg(format!("https://node.cleave:{}/v1/list?prefix=", nodes[1].port))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&with_cert.stdout), "200", "node 1 accepts node 0's certificate");

    // An operator may not name file:// (or s3://) targets, in a create or in a move.
    s.cli_ok(&["user", "add", "otto", "--role", "operator"]);
    let otto = s.cli_ok(&["user", "token", "otto"]).trim().to_string();
    let far = dir.path().join("anywhere");
    let body = serde_json::json!({
        "name": "x", "size_bytes": 1 << 20, "m": 1, "n": 1,
        "targets": [format!("file://{}", far.display())],
    });
    let (code, answer) = call(&s, &otto, "POST", "/volumes", Some(body));
    assert_eq!(code, 403, "{answer}");
    assert!(!far.exists(), "a refused create made a folder");
    let body = serde_json::json!({ "name": "x", "size_bytes": 1 << 20, "m": 1, "n": 1, "targets": ["s3://b/p"] });
    assert_eq!(call(&s, &otto, "POST", "/volumes", Some(body)).0, 403);
    let body = serde_json::json!({
        "kind": "move", "volume": "demo", "from": "file:///nowhere", "to": format!("file://{}", far.display()),
    });
    assert_eq!(call(&s, &otto, "POST", "/tasks", Some(body)).0, 403);
    // Placed from the pool, or on registered nodes, an operator's create works.
    let body = serde_json::json!({ "name": "ok", "size_bytes": 1 << 20, "m": 1, "n": 2 });
    let (code, answer) = call(&s, &otto, "POST", "/volumes", Some(body));
    assert_eq!(code, 201, "{answer}");
    let body = serde_json::json!({
        "name": "named", "size_bytes": 1 << 20, "m": 1, "n": 1, "targets": [format!("node://{n1}")],
    });
    let (code, answer) = call(&s, &otto, "POST", "/volumes", Some(body));
    assert_eq!(code, 201, "{answer}");
    assert!(!far.exists());
}
