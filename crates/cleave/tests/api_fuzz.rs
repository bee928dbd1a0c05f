//! Issue 10: the REST API's JSON bodies, fuzzed against a real `cleave serve`. Valid bodies of
//! every route that takes one are mutated (wrong types, extreme numbers, long, hostile or
//! control-character strings, deep nesting, missing and unknown fields, broken JSON), seeded
//! and reproducible. No answer may be a 500, and the server must keep serving its disk.

mod common;

use std::time::Duration;

use common::*;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn weird(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    let deep = (0..200).fold(json!(1), |v, _| json!([v]));
    let choices = [
        json!(null),
        json!(true),
        json!(-1),
        json!(0),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1.5e308),
        json!(0.5),
        json!(""),
        json!("x".repeat(70_000)),
        json!("../../../etc/passwd"),
        json!("a/b?c#d"),
        json!("é\u{0}\u{202e}\n"),
        json!("file:///etc"),
        json!("node://127.0.0.1:1"),
        json!("s3://b/p?endpoint=http://127.0.0.1:1"),
        json!([]),
        json!({}),
        json!(["a", 1, null]),
        json!({"offset": u64::MAX, "length": u64::MAX}),
        json!([{"offset": u64::MAX - 1, "length": 2}]),
        deep,
        json!("read-only"),
        json!("admin"),
        json!(18_446_744_073_709_551_104u64),
        json!(65),
        json!(255),
    ];
    choices[rng.below(choices.len())].clone()
}

/// One mutation of a valid body, as the bytes to send.
fn mutate(rng: &mut Rng, valid: &serde_json::Value) -> Vec<u8> {
    let mut body = valid.clone();
    match rng.below(10) {
        0 => return b"{\"name\": ".to_vec(),
        1 => return (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        2 => body = weird(rng),
        _ => {
            let Some(map) = body.as_object_mut() else { return body.to_string().into_bytes() };
            for _ in 0..=rng.below(3) {
                let keys: Vec<String> = map.keys().cloned().collect();
                match rng.below(4) {
                    0 if !keys.is_empty() => {
                        map.remove(&keys[rng.below(keys.len())]);
                    }
                    1 => {
                        map.insert(format!("unknown{}", rng.below(3)), weird(rng));
                    }
                    _ if !keys.is_empty() => {
                        map.insert(keys[rng.below(keys.len())].clone(), weird(rng));
                    }
                    _ => {}
                }
            }
        }
    }
    body.to_string().into_bytes()
}

#[test]
fn mutated_json_bodies_get_no_500_and_the_server_keeps_serving() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    let token = std::fs::read_to_string(s.data.join("admin.token")).unwrap().trim().to_string();
    let base = format!("http://127.0.0.1:{}/api/v1", s.http_port);
    s.cli_ok(&["group", "add", "g1"]);
    let routes: Vec<(&str, String, serde_json::Value)> = vec![
        (
            "POST",
            "/volumes".into(),
            json!({"name": "f1", "size_bytes": 16777216, "m": 2, "n": 3, "chunk_size": 1048576,
                   "durability": "dispersed", "write_quorum": 2, "store_zero_chunks": false, "groups": ["admin"]}),
        ),
        ("POST", "/tasks".into(), json!({"kind": "scrub", "volume": "demo"})),
        (
            "POST",
            "/tasks".into(),
            json!({"kind": "move", "volume": "demo", "from": "node-x", "to": "node://127.0.0.1:1"}),
        ),
        ("POST", "/groups".into(), json!({"name": "g2"})),
        ("POST", "/clients".into(), json!({"name": "c1"})),
        (
            "PUT",
            "/groups/g1/volumes/demo".into(),
            json!({"mode": "read-only", "regions": [{"offset": 0, "length": 4096}]}),
        ),
        ("POST", "/users".into(), json!({"name": "u1", "role": "viewer", "password": "correct horse battery"})),
        ("PUT", "/users/u1".into(), json!({"role": "operator", "password": "another good one"})),
        ("POST", "/login".into(), json!({"name": "fuzz-nobody", "password": "x"})),
        ("POST", "/users/u1/tokens".into(), json!({"name": "t"})),
    ];
    let seed: u64 = std::env::var("CLEAVE_API_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_cafe);
    let rounds: usize = std::env::var("CLEAVE_API_FUZZ_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1500);
    let mut rng = Rng(seed | 1);
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for round in 0..rounds {
        let (method, path, valid) = &routes[rng.below(routes.len())];
        let body = mutate(&mut rng, valid);
        let answer = agent
            .request(method, &format!("{base}{path}"))
            .set("Authorization", &format!("Bearer {token}"))
            .set("Content-Type", "application/json")
            .send_bytes(&body);
        let status = match answer {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!(
                "seed {seed:#x} round {round}: {method} {path} got no answer ({e}); body {:.300}",
                String::from_utf8_lossy(&body)
            ),
        };
        *statuses.entry(status).or_default() += 1;
        assert!(
            status < 500 || status == 503,
            "seed {seed:#x} round {round}: {method} {path} answered {status} to {:.300}",
            String::from_utf8_lossy(&body)
        );
    }
    let summary = format!("API fuzz: seed {seed:#x}, {rounds} requests, answers by status {statuses:?}");
    println!("{summary}");
    // For .ci/run to print: a passing test's output is not shown.
    let _ =
        std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("api-fuzz-summary.txt"), summary + "\n");
    assert!(statuses.keys().any(|s| (200..300).contains(s)), "no mutated body was ever accepted: {statuses:?}");
    // Still serving: the API and the disk.
    assert_eq!(s.show("demo")["name"], "demo");
    qemu_io(&s.uri("demo"), &["write -P 9 0 4096".into(), "read -P 9 0 4096".into()]);
}
