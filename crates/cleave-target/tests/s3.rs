//! The S3 backend against a real S3 server (moto_server, started here), through the
//! same conformance suite as the file backend.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cleave_target::{open, TargetError};

const SECRET: &str = "s3cr3tKEYdoNotLog";

mod common;

/// moto_server, killed when dropped.
struct Moto(common::Server);

impl Moto {
    fn start() -> Moto {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.ci/venv/bin/moto_server");
        let args: &[&str] = &["-H", "127.0.0.1", "-p", "{port}"];
        let module: &[&str] = &["-m", "moto.server", "-H", "127.0.0.1", "-p", "{port}"];
        Moto(common::Server::start("moto_server", &[("moto_server", args), (venv, args), ("python3", module)]))
    }

    fn create_bucket(&self, bucket: &str) {
        let url = format!("{}/{bucket}", self.0.endpoint);
        let status = Command::new("curl").args(["-sf", "-o", "/dev/null", "-X", "PUT", &url]).status();
        assert!(status.expect("curl").success(), "creating bucket {bucket}");
    }
}

// One test function: the AWS_* variables are process-wide and set once, before any other thread reads them.
#[tokio::test]
async fn s3_target_on_moto() {
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    let moto = Moto::start();
    moto.create_bucket("conf");
    let uri = |prefix: &str| format!("s3://conf/{prefix}?endpoint={}&region=us-east-1", moto.0.endpoint);

    let t = open(&uri("prefix")).unwrap();
    assert_eq!(t.name(), format!("s3://conf/prefix?endpoint={}", moto.0.endpoint));
    cleave_target::testing::conformance(t.clone()).await;

    // Without a prefix, the whole bucket; with another prefix, nothing of the first.
    let root = open(&format!("s3://conf?endpoint={}&region=us-east-1", moto.0.endpoint)).unwrap();
    assert_eq!(
        root.list("prefix/vol/journal/").await.unwrap(),
        ["prefix/vol/journal/1", "prefix/vol/journal/10", "prefix/vol/journal/2"]
    );
    let other = open(&uri("pre")).unwrap();
    assert!(other.list("").await.unwrap().is_empty());
    other.put("fix/vol/chunks/1/a", Bytes::from_static(b"not a clash")).await.unwrap();
    assert_eq!(&t.get("vol/chunks/1/a").await.unwrap()[..], b"hello share");
    let nested = open(&uri("prefix/vol")).unwrap();
    assert_eq!(nested.list("journal/").await.unwrap(), ["journal/1", "journal/10", "journal/2"]);

    // Keys come back from list exactly as they were put, even with characters S3 tools escape.
    let odd = "odd/a%b c+d=e";
    t.put(odd, Bytes::from_static(b"odd")).await.unwrap();
    assert_eq!(t.list("odd/").await.unwrap(), [odd]);
    assert_eq!(&t.get(odd).await.unwrap()[..], b"odd");

    // Credentials never show in names, Debug output or errors.
    assert!(!format!("{t:?}").contains(SECRET), "secret in Debug output");
    let err = t.get("nope").await.unwrap_err();
    assert!(err.is_not_found() && !format!("{err} {err:?}").contains(SECRET), "{err}");

    // A missing bucket and a dead endpoint are Unavailable, and quickly so.
    let missing = open(&format!("s3://no-such-bucket/p?endpoint={}&region=us-east-1", moto.0.endpoint)).unwrap();
    assert!(missing.health().await.is_err());
    let dead_port = common::free_port();
    let dead = open(&format!("s3://conf/p?endpoint=http://127.0.0.1:{dead_port}&region=us-east-1")).unwrap();
    let started = Instant::now();
    for err in [dead.health().await.unwrap_err(), dead.get("k").await.unwrap_err()] {
        assert!(matches!(err, TargetError::Unavailable(_)), "{err}");
        assert!(!format!("{err} {err:?}").contains(SECRET), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(60), "a dead endpoint took {:?}", started.elapsed());
}
