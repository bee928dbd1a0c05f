//! The webhook with a real `cleave serve` and a receiver in this test: set through the CLI,
//! every event arrives in order, signed with the secret printed once (checked here with
//! HMAC-SHA256 of our own); the setting survives a restart; a receiver that is down at first
//! still gets the events once it is up (retried); once removed, nothing more is sent.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(60);

/// One POST as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A minimal HTTP/1.1 receiver: answers every request 200 and keeps it.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Serves `listener` in a thread, for the rest of the test.
    fn start(listener: TcpListener) -> Receiver {
        let r = Receiver::default();
        let got = r.got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(req) = read_request(stream) {
                    got.lock().unwrap().push(req);
                }
            }
        });
        r
    }

    /// Waits for a POST whose event is of `kind` and detail contains `detail`.
    fn wait_for(&self, kind: &str, detail: &str) -> Received {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found = self.got.lock().unwrap().iter().find(|r| r.json()["kind"] == kind).cloned();
            match found {
                Some(r) if r.json()["detail"].as_str().unwrap().contains(detail) => return r,
                _ => assert!(Instant::now() < deadline, "no {kind} event ({detail}) arrived: {:?}", self.kinds()),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kinds(&self) -> Vec<String> {
        self.got.lock().unwrap().iter().map(|r| r.json()["kind"].as_str().unwrap().to_string()).collect()
    }
}

fn read_request(mut stream: TcpStream) -> Option<Received> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    assert!(line.starts_with("POST "), "{line}");
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let Some((k, v)) = h.trim_end().split_once(':') else { break };
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").ok()?;
    Some(Received { path, headers, body })
}

/// What a receiver checks: the signature header is HMAC-SHA256 of the body under the secret.
fn assert_signed(r: &Received, secret: &str) {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let given = r.headers.get("x-cleave-signature").expect("a signature header");
    let mac = hex_decode(given.strip_prefix("sha256=").expect("sha256="));
    assert!(aws_lc_rs::hmac::verify(&key, &r.body, &mac).is_ok(), "bad signature on {}", r.json());
    let other = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"another secret");
    assert!(aws_lc_rs::hmac::verify(&other, &r.body, &mac).is_err());
    assert_eq!(r.headers.get("content-type").map(String::as_str), Some("application/json"));
    assert_eq!(r.headers.get("x-cleave-event").map(String::as_str), r.json()["kind"].as_str());
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn webhook(s: &Serve) -> Value {
    serde_json::from_str(&s.cli_ok(&["webhook", "show", "--json"])).unwrap()
}

/// Sets the webhook through the CLI; returns the secret it printed.
fn set(s: &Serve, url: &str) -> String {
    let secret = s.cli_ok(&["webhook", "set", url]).trim().to_string();
    assert_eq!(secret.len(), 64, "{secret}");
    secret
}

/// A scrub task on `demo`, which ends with a `scrub_done` event.
fn scrub(s: &Serve) {
    s.cli_ok(&["task", "start", "scrub", "demo"]);
}

/// Waits until the webhook's `field` is `want`.
fn wait_until(s: &Serve, field: &str, want: impl Fn(u64) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !webhook(s)[field].as_u64().is_some_and(&want) {
        assert!(Instant::now() < deadline, "{field}: {}", webhook(s));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn events_arrive_signed_in_order_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serve::start(&dir.path().join("data"), &[]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/cleave", listener.local_addr().unwrap());
    let rx = Receiver::start(listener);
    let secret = set(&s, &url);
    let gateway = std::fs::read_to_string(s.data.join("gateway.id")).unwrap().trim().to_string();

    // Setting it is the first event sent; it names where events go, not the path.
    let first = rx.wait_for("webhook_set", "http://127.0.0.1:");
    assert_signed(&first, &secret);
    assert_eq!(first.path, "/hooks/cleave");
    assert!(!first.json()["detail"].as_str().unwrap().contains("/hooks"), "{}", first.json());
    assert_eq!(first.json()["gateway"], gateway.as_str());

    // A target of demo fails: the volume turns degraded, and the event arrives.
    s.fail_target_under_writes(0, "demo");
    let degraded = rx.wait_for("volume_degraded", "demo");
    restore_dir(&s.target_dir(0));
    assert_signed(&degraded, &secret);
    let d = degraded.json();
    assert!(d["seq"].as_u64() > first.json()["seq"].as_u64(), "{d}");
    assert!(d["time_unix_ms"].as_u64().unwrap() >= first.json()["time_unix_ms"].as_u64().unwrap());
    // The same event, by number, in the gateway's list.
    let listed = s.api("/events");
    assert!(listed.as_array().unwrap().iter().any(|e| e["seq"] == d["seq"] && e["kind"] == "volume_degraded"));

    // Every event went out, each once, in the order recorded.
    let seqs: Vec<u64> = rx.got.lock().unwrap().iter().map(|r| r.json()["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let v = webhook(&s);
    assert_eq!(v["url"], url.as_str());
    assert!(v["delivered"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(v["dropped"], 0);

    // The setting and its secret survive a restart.
    s.term();
    s.restart();
    scrub(&s);
    assert_signed(&rx.wait_for("scrub_done", "demo"), &secret);

    // Removed: nothing more is sent.
    s.cli_ok(&["webhook", "remove"]);
    assert_eq!(webhook(&s)["url"], Value::Null);
    let before = rx.got.lock().unwrap().len();
    scrub(&s);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rx.got.lock().unwrap().len(), before, "{:?}", rx.kinds());
}

#[test]
fn a_receiver_that_is_down_at_first_gets_the_events_once_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    // Nothing listens there yet: every attempt is refused.
    let port = free_port();
    let secret = set(&s, &format!("http://127.0.0.1:{port}/"));
    wait_until(&s, "failed", |n| n >= 2);
    let v = webhook(&s);
    assert!(v["last_error"].as_str().unwrap().contains("refused"), "{v}");
    assert_eq!(v["delivered"], 0);
    scrub(&s);
    wait_until(&s, "queued", |n| n == 2);

    // The receiver comes up: the retries deliver both, in order.
    let rx = Receiver::start(TcpListener::bind(("127.0.0.1", port)).unwrap());
    let set_event = rx.wait_for("webhook_set", "");
    let done = rx.wait_for("scrub_done", "demo");
    assert_signed(&set_event, &secret);
    assert_signed(&done, &secret);
    assert_eq!(rx.kinds(), ["webhook_set", "scrub_done"]);
    let v = webhook(&s);
    assert_eq!((v["queued"].as_u64(), v["delivered"].as_u64()), (Some(0), Some(2)), "{v}");
    assert_eq!(v["last_error"], Value::Null);

    // Only admins may read or change it, and a URL that is not http(s) is refused.
    let out = s.cli(&["webhook", "set", "ftp://127.0.0.1/"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("400"), "{}", String::from_utf8_lossy(&out.stderr));
}
