//! The web console in headless Chromium, driven through chromedriver (W3C WebDriver): log in,
//! see the three nodes, create a volume, start a scrub and watch it finish, refuse a delete
//! that is not confirmed, log out; a degraded volume's banner, until dismissed. Screenshots go
//! to `target/tmp/console/`.

mod common;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::Browser;
use common::*;
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(30);

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn api(s: &Serve, path: &str) -> Value {
    s.api(path)
}

#[test]
fn console_logs_in_shows_nodes_creates_a_volume_runs_a_scrub_and_logs_out() {
    let dir = tempfile::tempdir().unwrap();
    let ac = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = Serve::start(&dir.path().join("data"), &["--autoconfig", &format!("127.0.0.1:{ac}")]);
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let port = free_port();
            Node(
                Command::new(CLEAVE)
                    .args(["node", "--data"])
                    .arg(dir.path().join(format!("node{i}")))
                    .args(["--listen", &format!("127.0.0.1:{port}")])
                    .args(["--control", &format!("127.0.0.1:{ac}")])
                    .arg("--secret-file")
                    .arg(s.data.join("cluster.secret"))
                    .args(["--capacity", "2GiB", "--site", &format!("site{i}"), "--heartbeat-secs", "0.3"])
                    .env("CLEAVE_LOG", "warn")
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let deadline = Instant::now() + PATIENCE;
    while api(&s, "/nodes").as_array().unwrap().iter().filter(|n| n["status"] == "up").count() < 3 {
        assert!(Instant::now() < deadline, "three nodes up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let addresses: Vec<String> =
        api(&s, "/nodes").as_array().unwrap().iter().map(|n| n["address"].as_str().unwrap().to_string()).collect();

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    let b = Browser::start(&shots);
    let console = format!("http://127.0.0.1:{}/", s.http_port);

    // Without a session the console asks for a login; a wrong password is refused.
    b.goto(&console);
    b.element("#login-name");
    b.screenshot("01-login");
    b.fill("#login-name", "admin");
    b.fill("#login-password", "not the password");
    b.click("#login-submit");
    b.wait("the refusal", "document.querySelector('#login-error').textContent.includes('wrong')");
    let password = std::fs::read_to_string(s.data.join("admin.password")).unwrap();
    b.fill("#login-password", password.trim());
    b.click("#login-submit");

    // The dashboard: three nodes up, the pool's capacity.
    b.wait("the dashboard", "document.body.dataset.page === 'dashboard'");
    b.wait("three nodes up on the dashboard", "document.querySelector('#card-nodes').innerText.includes('3 up')");
    assert!(b.text("#card-capacity").contains("6.0 GiB"), "{}", b.text("#card-capacity"));
    assert_eq!(b.text("#whoami"), "admin (admin)");
    b.screenshot("02-dashboard");

    // The nodes page lists the three, up, with their addresses.
    b.click("a[href='#/nodes']");
    b.wait("three nodes listed up", "document.querySelectorAll('#nodes-table tr[data-status=up]').length === 3");
    let listed = b.text("#nodes-table");
    for a in &addresses {
        assert!(listed.contains(a.as_str()), "{a} missing from {listed}");
    }
    b.screenshot("03-nodes");

    // Create a volume by size and M-of-N: it lands on the three nodes.
    b.click("a[href='#/volumes']");
    b.fill("#vol-name", "web");
    b.fill("#vol-size", "64MiB");
    b.fill("#vol-m", "2");
    b.fill("#vol-n", "3");
    b.click("#vol-create");
    b.wait("the new volume listed", "document.querySelector('tr[data-volume=web]')");
    let web = api(&s, "/volumes/web");
    assert_eq!((web["size_bytes"].as_u64(), web["m"].as_u64(), web["n"].as_u64()), (Some(64 << 20), Some(2), Some(3)));
    let mut targets: Vec<String> =
        web["targets"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    targets.sort();
    let mut want: Vec<String> = addresses.iter().map(|a| format!("node://{a}")).collect();
    want.sort();
    assert_eq!(targets, want);
    let row = b.text("tr[data-volume=web]");
    assert!(row.contains("2-of-3") && row.contains("64 MiB"), "{row}");
    // A volume without a mirror says nothing of one; a mirrored one says its side, its state
    // (with a resync's progress) and its lag.
    assert!(b.text("#volumes-table thead").contains("Mirror"));
    assert_eq!(b.text("tr[data-volume=web] td.mirror"), "");
    let cell = |m: &str| {
        b.eval(&format!("const c = mirrorCell({m}); return [c.textContent, c.querySelector('.badge').className];"))
    };
    let resyncing = "{ role: 'secondary', state: 'resyncing', resync_done: 37, resync_total: 128, lag_bytes: 3145728, \
        lag_changes: 12, mode: 'async', peer: 'gw2:7000', detail: '' }";
    assert_eq!(cell(resyncing), json!(["mirror resyncing 28%lag 3.0 MiB, 12 changes", "badge resyncing"]));
    let split = "{ role: 'primary', state: 'split-brain', resync_done: 0, resync_total: 0, lag_bytes: 0, \
        lag_changes: 0, mode: 'sync', peer: 'gw2:7000', detail: 'both sides wrote' }";
    assert_eq!(cell(split), json!(["primary split-brainlag 0 B, 0 changes", "badge split-brain"]));
    b.screenshot("04-volumes");

    // Some data on it, destaged to the nodes, so the scrub has chunks to check.
    qemu_io(&s.uri("web"), &["write -P 0x5a 0 8M".to_string()]);
    let token = std::fs::read_to_string(s.data.join("admin.token")).unwrap();
    run(Command::new("curl").args([
        "-sf",
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {}", token.trim()),
        &format!("http://127.0.0.1:{}/api/v1/volumes/web/destage", s.http_port),
    ]));

    // A scrub task, followed live on the tasks page until it succeeds.
    b.click("tr[data-volume=web] button[data-action=scrub]");
    b.wait("the tasks page", "document.body.dataset.page === 'tasks'");
    b.wait("the scrub listed", "document.querySelector('#tasks-table tr[data-task]')");
    b.wait(
        "the scrub to succeed",
        "document.querySelector('#tasks-table tr[data-task]').dataset.state === 'succeeded'",
    );
    let row = b.text("#tasks-table tr[data-task]");
    assert!(row.contains("scrub") && row.contains("web") && row.contains("100%"), "{row}");
    let tasks = api(&s, "/tasks");
    let scrub = tasks.as_array().unwrap().iter().find(|t| t["kind"] == "scrub" && t["volume"] == "web").unwrap();
    assert_eq!(scrub["state"], "succeeded", "{scrub}");
    assert_eq!(scrub["result"]["chunks_checked"].as_u64(), Some(8), "{scrub}");
    assert_eq!(scrub["result"]["chunks_healthy"].as_u64(), Some(8), "{scrub}");
    b.screenshot("05-tasks");

    // Deleting asks for the volume's name; without it nothing is deleted.
    b.click("a[href='#/volumes']");
    b.click("tr[data-volume=web] button[data-action=delete]");
    b.wait("the confirmation", "!document.querySelector('#confirm').hidden");
    b.fill("#confirm-input", "wrong");
    assert_eq!(b.eval("return document.querySelector('#confirm-ok').disabled;"), Value::Bool(true));
    b.screenshot("06-confirm");
    b.click("#confirm-cancel");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(api(&s, "/volumes/web")["name"], "web");

    // A client for a host: its certificate is issued and shown once, with its key.
    b.click("a[href='#/clients']");
    b.fill("#client-name", "web1");
    b.click("#client-add");
    b.wait("the credentials", "document.querySelector('#credentials')");
    let shown = b.text("#credentials");
    assert!(shown.contains("BEGIN CERTIFICATE") && shown.contains("PRIVATE KEY"), "{shown}");
    assert!(b.text("#clients-table").contains("web1"));
    assert!(api(&s, "/clients").to_string().contains("web1"));

    // Log out: the session ends, and the console asks for a login again.
    b.click("#logout");
    b.element("#login-name");
    b.goto(&format!("{console}console/#/nodes"));
    b.element("#login-name");
    let status = b.call(
        "POST",
        "/execute/async",
        Some(json!({ "script": "const done = arguments[0]; fetch('/api/v1/nodes').then(r => done(r.status));", "args": [] })),
    );
    assert_eq!(status, json!(401));
    b.screenshot("07-logged-out");

    // A viewer sees the pool but is offered no action, and the API refuses one anyway.
    let pw = dir.path().join("vic.pw");
    std::fs::write(&pw, "vic's password").unwrap();
    s.cli_ok(&["user", "add", "vic", "--role", "viewer", "--password-file", pw.to_str().unwrap()]);
    b.fill("#login-name", "vic");
    b.fill("#login-password", "vic's password");
    b.click("#login-submit");
    b.wait("the viewer's dashboard", "document.querySelector('#card-nodes')");
    assert_eq!(b.text("#whoami"), "vic (viewer)");
    b.click("a[href='#/volumes']");
    b.wait("the volume list", "document.querySelector('tr[data-volume=web]')");
    assert_eq!(b.eval("return document.querySelectorAll('#volume-form, button[data-action]').length;"), json!(0));
    let status = b.call(
        "POST",
        "/execute/async",
        Some(json!({ "script": "const done = arguments[0];
            fetch('/api/v1/me').then(r => r.json()).then(me => fetch('/api/v1/volumes/web', {
                method: 'DELETE', headers: { 'X-Cleave-CSRF': me.csrf } })).then(r => done(r.status));", "args": [] })),
    );
    assert_eq!(status, json!(403));
    assert_eq!(api(&s, "/volumes/web")["name"], "web");
    drop(nodes);
}

/// Before a login, and after a logout, the console shows the login form alone: no navigation
/// links, no user, no logout button. Once logged in, the navigation is there.
#[test]
fn the_login_page_shows_no_navigation() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    let b = Browser::start(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console"));
    let console = format!("http://127.0.0.1:{}/", s.http_port);
    // What of the header a user can see: elements that take room on the page.
    let visible = "return [...document.querySelectorAll('header nav a, #whoami, #logout, header .brand')]
        .filter((e) => e.getClientRects().length > 0).length;";
    b.goto(&format!("{console}console/#/volumes"));
    b.element("#login-name");
    assert_eq!(b.eval(visible), json!(0), "navigation shown before login");
    b.screenshot("10-login-alone");
    let password = std::fs::read_to_string(s.data.join("admin.password")).unwrap();
    b.login(&console, "admin", password.trim());
    assert_eq!(b.eval(visible), json!(10), "the navigation, the user and the logout button once logged in");
    b.click("#logout");
    b.element("#login-name");
    assert_eq!(b.eval(visible), json!(0), "navigation shown after logout");
}

/// The dashboard charts throughput and latency per volume from /metrics while clients write
/// and read; the volume page lists the volume's health changes. The dashboard's screenshot
/// is `target/tmp/console/08-metrics.png` (docs/console-metrics.png is a copy).
#[test]
fn console_charts_live_io_per_volume_and_shows_health_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    s.cli_ok(&["volume", "create", "db", "--size", "64MiB", "--m", "2", "--n", "3"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Clients at work: a few MiB written and read twice on each volume, a few times a second.
    let load: Vec<_> = [("demo", 4u32), ("db", 2u32)]
        .into_iter()
        .map(|(v, mib)| {
            let (uri, stop) = (s.uri(v), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let off = (i % 8) << 20;
                    qemu_io(
                        &uri,
                        &[
                            format!("write -P {} {off} {mib}M", i % 250),
                            format!("read {off} {mib}M"),
                            format!("read {off} {mib}M"),
                        ],
                    );
                    i += 1;
                    std::thread::sleep(Duration::from_millis(150 + 100 * (i % 3)));
                }
            })
        })
        .collect();

    let b = Browser::start(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console"));
    let password = std::fs::read_to_string(s.data.join("admin.password")).unwrap();
    b.login(&format!("http://127.0.0.1:{}/", s.http_port), "admin", password.trim());
    for v in ["demo", "db"] {
        b.wait(
            &format!("a chart of {v} with a minute of points"),
            &format!("Number(document.querySelector('[data-chart-volume={v}]')?.dataset.points) >= 8"),
        );
    }
    let now = b.text("[data-chart-volume=demo] .now");
    assert!(now.contains("MiB/s") && now.contains("ms"), "{now}");
    b.screenshot("08-metrics");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }

    // A target of demo fails: the volume turns degraded, and its page says when.
    s.fail_target_under_writes(0, "demo");
    b.goto(&format!("http://127.0.0.1:{}/console/#/volumes/demo", s.http_port));
    b.wait(
        "the degraded state in the health history",
        "document.querySelector('#health-history')?.innerText.includes('degraded')",
    );
    b.screenshot("09-health-history");

    // It is a serious event: a banner over every page says so until it is dismissed, and it
    // stays dismissed when the page is loaded again.
    // db is on the failed target too: both are listed, so no later event brings the banner back.
    b.wait(
        "the banner",
        "['demo', 'db'].every((v) => [...document.querySelectorAll('#alerts:not([hidden]) li[data-kind=volume_degraded]')]
            .some((li) => li.textContent.includes(`${v}: degraded`)))",
    );
    b.click("a[href='#/tasks']");
    b.wait("the tasks page", "document.body.dataset.page === 'tasks'");
    assert_eq!(b.eval("return document.querySelector('#alerts').hidden;"), Value::Bool(false));
    b.screenshot("11-banner");
    b.click("#alerts-dismiss");
    b.wait("the banner dismissed", "document.querySelector('#alerts').hidden");
    b.call("POST", "/refresh", Some(json!({})));
    b.wait("the tasks page again", "document.body.dataset.page === 'tasks'");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(b.eval("return document.querySelector('#alerts').hidden;"), Value::Bool(true));
    restore_dir(&s.target_dir(0));
}
