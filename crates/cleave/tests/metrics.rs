//! `GET /metrics` scraped from a running `cleave serve` after NBD writes and reads, and read
//! with real parsers: Python's `prometheus_client` (the Prometheus text parser and the
//! OpenMetrics one; .ci/run installs it in its venv). Also `--log-format json`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// Parses a scrape with prometheus_client's parser for the format named in argv[1] and
/// prints, as JSON, each family's type and samples.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as prometheus
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
text = sys.stdin.read()
parser = openmetrics if sys.argv[1] == "openmetrics" else prometheus
out = {}
for f in parser(text):
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;

/// GET /metrics: (status, content type, body). `accept`: the Accept header to send.
fn scrape_as(s: &Serve, token: Option<&str>, accept: &str) -> (u16, String, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "-", "-w", "\n%{http_code} %{content_type}", "-H", &format!("Accept: {accept}")]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = run(c.arg(format!("http://127.0.0.1:{}/metrics", s.http_port)));
    let (body, tail) = out.rsplit_once('\n').unwrap();
    let (code, ctype) = tail.split_once(' ').unwrap();
    (code.parse().unwrap(), ctype.to_string(), body.to_string())
}

/// As Prometheus's text format, which curl gets by default.
fn scrape(s: &Serve, token: Option<&str>) -> (u16, String, String) {
    scrape_as(s, token, "*/*")
}

fn parse(text: &str) -> Value {
    parse_as("prometheus", text)
}

fn parse_as(format: &str, text: &str) -> Value {
    let mut py = Command::new("python3")
        .args(["-c", PARSE, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parsers refused the scrape (pip package prometheus-client, in .ci/run's venv):\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include all of `labels`.
fn sample(m: &Value, family: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let f = m.get(family).unwrap_or_else(|| panic!("no family {family}"));
    f["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][*k] == *v))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {f}"))[2]
        .as_f64()
        .unwrap()
}

#[test]
fn metrics_count_nbd_io_and_parse_as_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    let token = std::fs::read_to_string(s.data.join("admin.token")).unwrap();
    let token = token.trim();

    // Only authenticated callers read metrics.
    assert_eq!(scrape(&s, None).0, 401);
    assert_eq!(scrape(&s, Some("wrong")).0, 401);

    s.cli_ok(&["volume", "create", "mx", "--size", "32MiB", "--m", "2", "--n", "3"]);
    let (code, ctype, text) = scrape(&s, Some(token));
    assert_eq!(code, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let before = parse(&text);
    let written0 = sample(&before, "cleave_volume_write_bytes", "cleave_volume_write_bytes_total", &[("volume", "mx")]);

    // 3 MiB written in three writes, then read back (from the cache) in one read.
    qemu_io(
        &s.uri("mx"),
        &["write -P 1 0 1M".into(), "write -P 2 1M 1M".into(), "write -P 3 2M 1M".into(), "read -P 2 1M 1M".into()],
    );
    let m = parse(&scrape(&s, Some(token)).2);
    let v = [("volume", "mx")];

    // Types as Prometheus reads them.
    for (family, kind) in [
        ("cleave_volume_read_ops", "counter"),
        ("cleave_volume_read_bytes", "counter"),
        ("cleave_volume_write_ops", "counter"),
        ("cleave_volume_write_bytes", "counter"),
        ("cleave_volume_cache_hits", "counter"),
        ("cleave_volume_cache_misses", "counter"),
        ("cleave_volume_read_latency_seconds", "histogram"),
        ("cleave_volume_write_latency_seconds", "histogram"),
        ("cleave_volume_dirty_bytes", "gauge"),
        ("cleave_volume_cache_bytes", "gauge"),
        ("cleave_volume_cache_limit_bytes", "gauge"),
        ("cleave_volume_size_bytes", "gauge"),
        ("cleave_volume_destage_lag_seconds", "gauge"),
        ("cleave_volume_health", "gauge"),
        ("cleave_volume_stored_bytes", "counter"),
        ("cleave_target_latency_seconds", "gauge"),
        ("cleave_target_requests", "counter"),
        ("cleave_target_errors", "counter"),
        ("cleave_target_up", "gauge"),
        ("cleave_node_capacity_bytes", "gauge"),
        ("cleave_node_free_bytes", "gauge"),
        ("cleave_node_up", "gauge"),
        ("cleave_tasks", "gauge"),
    ] {
        let f = m.get(family).unwrap_or_else(|| panic!("no family {family} in {m}"));
        assert_eq!(f["type"], kind, "{family}");
    }

    let written = sample(&m, "cleave_volume_write_bytes", "cleave_volume_write_bytes_total", &v);
    assert_eq!(written - written0, 3.0 * 1048576.0, "write bytes grew by what was written");
    assert_eq!(sample(&m, "cleave_volume_write_ops", "cleave_volume_write_ops_total", &v), 3.0);
    assert_eq!(sample(&m, "cleave_volume_read_bytes", "cleave_volume_read_bytes_total", &v), 1048576.0);
    assert_eq!(sample(&m, "cleave_volume_read_ops", "cleave_volume_read_ops_total", &v), 1.0);
    assert_eq!(sample(&m, "cleave_volume_cache_hits", "cleave_volume_cache_hits_total", &v), 1.0);
    // The histogram: three writes counted, the +Inf bucket holds them all.
    let wl = "cleave_volume_write_latency_seconds";
    assert_eq!(sample(&m, wl, &format!("{wl}_count"), &v), 3.0);
    assert_eq!(sample(&m, wl, &format!("{wl}_bucket"), &[("volume", "mx"), ("le", "+Inf")]), 3.0);
    assert!(sample(&m, wl, &format!("{wl}_sum"), &v) > 0.0);
    // Health: one state at 1.
    assert_eq!(
        sample(&m, "cleave_volume_health", "cleave_volume_health", &[("volume", "mx"), ("state", "clean")]),
        1.0
    );
    assert_eq!(
        sample(&m, "cleave_volume_health", "cleave_volume_health", &[("volume", "mx"), ("state", "degraded")]),
        0.0
    );
    // Three targets, all up.
    let ups: Vec<_> =
        m["cleave_target_up"]["samples"].as_array().unwrap().iter().filter(|s| s[1]["volume"] == "mx").collect();
    assert_eq!(ups.len(), 3);
    assert!(ups.iter().all(|s| s[2] == 1.0), "{ups:?}");

    // Destaged: nothing dirty, no lag, and the targets were asked.
    run(Command::new("curl").args([
        "-sf",
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("http://127.0.0.1:{}/api/v1/volumes/mx/destage", s.http_port),
    ]));
    let m = parse(&scrape(&s, Some(token)).2);
    assert_eq!(sample(&m, "cleave_volume_dirty_bytes", "cleave_volume_dirty_bytes", &v), 0.0);
    assert_eq!(sample(&m, "cleave_volume_destage_lag_seconds", "cleave_volume_destage_lag_seconds", &v), 0.0);
    // Three 1 MiB chunks at 2-of-3 store at least 3 x 1.5 MiB of shares, and a record.
    let stored = |kind| {
        sample(
            &m,
            "cleave_volume_stored_bytes",
            "cleave_volume_stored_bytes_total",
            &[("volume", "mx"), ("kind", kind)],
        )
    };
    assert!(stored("data") >= 3.0 * 1.5 * 1048576.0, "{}", stored("data"));
    assert!(stored("metadata") > 0.0 && stored("metadata") < stored("data") / 100.0, "{}", stored("metadata"));
    // What Prometheus asks for: OpenMetrics, which its strict parser accepts, with the same
    // families and types.
    let (code, ctype, text) = scrape_as(&s, Some(token), "application/openmetrics-text;version=1.0.0,text/plain;q=0.5");
    assert_eq!(code, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(text.ends_with("# EOF\n"));
    let om = parse_as("openmetrics", &text);
    for (name, f) in m.as_object().unwrap() {
        assert_eq!(om[name]["type"], f["type"], "{name} in OpenMetrics");
    }
    assert_eq!(sample(&om, "cleave_volume_dirty_bytes", "cleave_volume_dirty_bytes", &v), 0.0);
    let asked =
        sample(&m, "cleave_target_requests", "cleave_target_requests_total", &[("volume", "mx"), ("share", "0")]);
    assert!(asked > 0.0, "target 0 was never asked");
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = free_port();
    let mut child = Command::new(CLEAVE)
        .args(["serve", "--log-format", "json", "--data-dir"])
        .arg(&data)
        .args(["--nbd", &format!("127.0.0.1:{}", free_port()), "--http", &format!("127.0.0.1:{http}")])
        .args(["--autoconfig", &format!("127.0.0.1:{}", free_port())])
        .env("CLEAVE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the start-up lines, then stop it.
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in std::io::BufRead::lines(stdout) {
        if line.unwrap().starts_with("API:") {
            break;
        }
    }
    // An NBD connection: its lines carry the connection's span.
    let uri = format!("nbd+unix:///demo?socket={}", data.canonicalize().unwrap().join("nbd.sock").display());
    qemu_io(&uri, &["read 0 4k".into()]);
    run(Command::new("kill").arg(child.id().to_string()));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<Value> =
        stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(lines.len() >= 3, "{stderr}");
    assert!(lines.iter().all(|l| l["level"].is_string() && l["fields"]["message"].is_string()), "{stderr}");
    assert!(
        lines.iter().any(|l| l["span"]["name"] == "nbd" && l["span"]["export"] == "demo"),
        "no line in an NBD connection's span:\n{stderr}"
    );
}
