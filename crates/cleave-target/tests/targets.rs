//! The same conformance suite for every backend: a directory, S3 on a real
//! moto_server, and the fault-injection wrapper.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cleave_target::{open, DynTarget, FaultyTarget, TargetError};

async fn conformance(t: DynTarget) {
    t.health().await.unwrap();
    t.put("vol/chunks/1/a", Bytes::from_static(b"hello share")).await.unwrap();
    assert_eq!(&t.get("vol/chunks/1/a").await.unwrap()[..], b"hello share");
    // Create-only: the second put fails and the first content stays.
    let err = t.put("vol/chunks/1/a", Bytes::from_static(b"other")).await.unwrap_err();
    assert!(err.is_already_exists(), "{err}");
    assert_eq!(&t.get("vol/chunks/1/a").await.unwrap()[..], b"hello share");
    assert!(t.get("vol/chunks/1/missing").await.unwrap_err().is_not_found());
    assert_eq!(&t.get_range("vol/chunks/1/a", 6..11).await.unwrap()[..], b"share");
    assert_eq!(&t.get_range("vol/chunks/1/a", 6..100).await.unwrap()[..], b"share");
    for k in ["vol/journal/2", "vol/journal/1", "other/x"] {
        t.put(k, Bytes::from_static(b"j")).await.unwrap();
    }
    assert_eq!(t.list("vol/journal/").await.unwrap(), vec!["vol/journal/1", "vol/journal/2"]);
    assert_eq!(t.list("vol/").await.unwrap().len(), 3);
    t.delete("vol/journal/1").await.unwrap();
    t.delete("vol/journal/1").await.unwrap();
    assert!(t.get("vol/journal/1").await.unwrap_err().is_not_found());
    for bad in ["", "/abs", "a/../b", "a/.hidden", "a//b", "a\\b"] {
        assert!(matches!(t.put(bad, Bytes::new()).await, Err(TargetError::InvalidKey(_))), "{bad:?}");
    }
    // Concurrent puts of one key: exactly one wins.
    let results = futures::future::join_all((0..8).map(|i| {
        let t = t.clone();
        async move { t.put("race/key", Bytes::from(vec![i as u8; 1000])).await }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    // Many concurrent puts of distinct keys.
    let results = futures::future::join_all((0..100).map(|i| {
        let t = t.clone();
        async move { t.put(&format!("many/{i:03}"), Bytes::from(vec![i as u8; 4096])).await }
    }))
    .await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(t.list("many/").await.unwrap().len(), 100);
}

#[tokio::test]
async fn file_target() {
    let dir = tempfile::tempdir().unwrap();
    let t = open(&format!("file://{}", dir.path().display())).unwrap();
    conformance(t).await;
    // No temporary files are left behind.
    let leftovers = walk(dir.path()).into_iter().filter(|p| p.contains(".tmp-")).count();
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn file_put_that_fails_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("blocker"), b"a file where a directory should be").unwrap();
    let t = open(&format!("file://{}", dir.path().display())).unwrap();
    let err = t.put("blocker/child", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(err, TargetError::Io(_)), "{err}");
    assert_eq!(walk(dir.path()).len(), 1);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn uris_are_checked() {
    assert!(matches!(open("file://relative/path"), Err(TargetError::InvalidUri(_))));
    assert!(matches!(open("ftp://x"), Err(TargetError::InvalidUri(_))));
    std::env::remove_var("CLEAVE_NODE_TOKEN");
    assert!(matches!(open("node://127.0.0.1:1"), Err(TargetError::InvalidUri(_))));
    assert!(matches!(open("s3://bucket/p?colour=red"), Err(TargetError::InvalidUri(_))));
    let t = open("s3://bucket/prefix?endpoint=http://127.0.0.1:9&region=us-east-1").unwrap();
    assert_eq!(t.name(), "s3://bucket/prefix?endpoint=http://127.0.0.1:9");
}

#[tokio::test]
async fn faulty_wrapper_injects_faults() {
    let dir = tempfile::tempdir().unwrap();
    let inner = open(&format!("file://{}", dir.path().display())).unwrap();
    let faulty = FaultyTarget::new(inner);
    let f = faulty.faults();
    let t: DynTarget = Arc::new(faulty);
    conformance(t.clone()).await;
    t.put("k", Bytes::from(vec![7u8; 64])).await.unwrap();

    f.set_down(true);
    assert!(matches!(t.get("k").await, Err(TargetError::Unavailable(_))));
    f.set_down(false);
    assert_eq!(t.get("k").await.unwrap().len(), 64);

    f.set_corrupt_reads(true);
    let got = t.get("k").await.unwrap();
    assert_eq!(got.iter().filter(|&&b| b != 7).count(), 1, "exactly one byte flipped");
    f.set_corrupt_reads(false);

    f.set_error_rate(1.0);
    assert!(t.list("").await.is_err());
    f.set_error_rate(0.0);

    f.set_fail_puts(true);
    assert!(t.put("k2", Bytes::new()).await.is_err());
    assert!(t.get("k").await.is_ok());
    f.set_fail_puts(false);

    f.set_latency(Duration::from_millis(50));
    let started = Instant::now();
    t.get("k").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(f.ops() > 0);
}

#[tokio::test]
async fn s3_target_on_moto() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut moto = std::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto_server (pip install 'moto[server]'; .ci/run does)");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    let status = std::process::Command::new("curl").args(["-sf", "-X", "PUT", &format!("{endpoint}/conf")]).status();
    assert!(status.unwrap().success());
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "s3cr3tKEYdoNotLog");
    let t = open(&format!("s3://conf/prefix?endpoint={endpoint}&region=us-east-1")).unwrap();
    conformance(t.clone()).await;
    // Credentials never show in names or errors.
    assert!(!format!("{t:?}").contains("s3cr3tKEYdoNotLog"), "secret in Debug output");
    let err = t.get("nope").await.unwrap_err().to_string();
    assert!(!err.contains("s3cr3tKEYdoNotLog"), "secret in an error");
    let _ = moto.kill();
    let _ = moto.wait();
}
