//! The file backend and the fault-injection wrapper through the shared conformance suite,
//! their own guarantees, and URI parsing. S3 runs the same suite in `s3.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cleave_target::file::FileTarget;
use cleave_target::{open, DynTarget, FaultyTarget, TargetError};

fn file_target(dir: &std::path::Path) -> DynTarget {
    open(&format!("file://{}", dir.display())).unwrap()
}

/// Every file below `dir`, as paths relative to it.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn file_target_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let t = file_target(dir.path());
    assert_eq!(t.name(), format!("file://{}", dir.path().display()));
    cleave_target::testing::conformance(t.clone()).await;
    // No temporary files are left behind, and the files are the keys.
    let files = walk(dir.path());
    assert!(!files.iter().any(|p| p.contains(".tmp-")), "{files:?}");
    assert_eq!(files, t.list("").await.unwrap());
}

#[tokio::test]
async fn file_target_creates_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b/c");
    let t = FileTarget::new(root.clone()).unwrap();
    assert!(root.is_dir());
    let t: DynTarget = Arc::new(t);
    t.health().await.unwrap();
    // A root that is a file is refused; a root removed later makes the target unhealthy.
    std::fs::write(dir.path().join("f"), b"").unwrap();
    assert!(FileTarget::new(dir.path().join("f")).is_err());
    std::fs::remove_dir(&root).unwrap();
    assert!(matches!(t.health().await, Err(TargetError::Unavailable(_))));
}

#[tokio::test]
async fn file_put_that_fails_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("blocker"), b"a file where a directory should be").unwrap();
    let t = file_target(dir.path());
    let err = t.put("blocker/child", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(err, TargetError::Io(_)), "{err}");
    assert!(err.to_string().contains("blocker/child"), "{err}");
    assert_eq!(walk(dir.path()), ["blocker"]);
    // Reading or deleting under a file is just a missing key.
    assert!(t.get("blocker/child").await.unwrap_err().is_not_found());
    t.delete("blocker/child").await.unwrap();
    // A key that names a directory is not an object.
    t.put("d/k", Bytes::from_static(b"x")).await.unwrap();
    assert!(t.get("d").await.unwrap_err().is_not_found());
    assert!(t.get_range("d", 0..1).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn file_concurrent_put_of_one_key_from_two_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let t = file_target(dir.path());
    for round in 0..50 {
        let key = format!("k/{round}");
        let (a, b) = (t.clone(), t.clone());
        let (ka, kb) = (key.clone(), key.clone());
        let ha = tokio::spawn(async move { a.put(&ka, Bytes::from(vec![1u8; 10_000])).await });
        let hb = tokio::spawn(async move { b.put(&kb, Bytes::from(vec![2u8; 10_000])).await });
        let (ra, rb) = (ha.await.unwrap(), hb.await.unwrap());
        assert!(ra.is_ok() != rb.is_ok(), "round {round}: {ra:?} {rb:?}");
        let loser = if ra.is_ok() { rb } else { ra };
        assert!(loser.unwrap_err().is_already_exists());
        let got = t.get(&key).await.unwrap();
        assert!(got.iter().all(|&x| x == got[0]) && got.len() == 10_000, "never a mix of both writers");
    }
    assert!(!walk(dir.path()).iter().any(|p| p.contains(".tmp-")));
}

#[tokio::test]
async fn faulty_wrapper_conforms_when_calm() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyTarget::new(file_target(dir.path()));
    let f = faulty.faults();
    let t: DynTarget = Arc::new(faulty);
    assert_eq!(t.name(), format!("faulty(file://{})", dir.path().display()));
    cleave_target::testing::conformance(t).await;
    assert!(f.ops() > 100);
}

#[tokio::test]
async fn faulty_wrapper_injects_faults() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = FaultyTarget::new(file_target(dir.path()));
    let f = faulty.faults();
    let t: DynTarget = Arc::new(faulty);
    let data: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    t.put("k", Bytes::from(data.clone())).await.unwrap();

    // Down: every operation fails, then everything works again.
    f.set_down(true);
    assert!(matches!(t.get("k").await, Err(TargetError::Unavailable(_))));
    assert!(matches!(t.get_range("k", 0..1).await, Err(TargetError::Unavailable(_))));
    assert!(matches!(t.put("k2", Bytes::new()).await, Err(TargetError::Unavailable(_))));
    assert!(matches!(t.delete("k").await, Err(TargetError::Unavailable(_))));
    assert!(matches!(t.list("").await, Err(TargetError::Unavailable(_))));
    let err = t.health().await.unwrap_err();
    assert!(matches!(err, TargetError::Unavailable(_)) && err.to_string().contains(t.name()), "{err}");
    f.set_down(false);
    assert_eq!(t.get("k").await.unwrap(), data);
    t.health().await.unwrap();

    // Corrupt reads: exactly one byte differs, every time, on whole and ranged reads.
    f.set_corrupt_reads(true);
    for _ in 0..50 {
        let got = t.get("k").await.unwrap();
        assert_eq!(got.len(), data.len());
        assert_eq!(got.iter().zip(&data).filter(|(a, b)| a != b).count(), 1, "exactly one byte flipped");
        let got = t.get_range("k", 100..200).await.unwrap();
        assert_eq!(got.iter().zip(&data[100..200]).filter(|(a, b)| a != b).count(), 1);
    }
    assert!(t.get_range("k", 5000..6000).await.unwrap().is_empty(), "nothing to corrupt");
    f.set_corrupt_reads(false);
    assert_eq!(t.get("k").await.unwrap(), data);

    // Error rate 1.0 fails everything; 0.0 nothing.
    f.set_error_rate(1.0);
    for _ in 0..20 {
        assert!(matches!(t.get("k").await, Err(TargetError::Unavailable(_))));
        assert!(matches!(t.list("").await, Err(TargetError::Unavailable(_))));
    }
    f.set_error_rate(0.0);
    for _ in 0..20 {
        t.get("k").await.unwrap();
    }

    // Failing puts: writes fail and store nothing, reads work.
    f.set_fail_puts(true);
    assert!(matches!(t.put("k2", Bytes::from_static(b"x")).await, Err(TargetError::Unavailable(_))));
    assert_eq!(t.get("k").await.unwrap(), data);
    f.set_fail_puts(false);
    assert!(t.get("k2").await.unwrap_err().is_not_found());
    t.put("k2", Bytes::from_static(b"x")).await.unwrap();

    // Latency applies before each operation.
    f.set_latency(Duration::from_millis(50));
    let started = Instant::now();
    t.get("k").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(50));
    f.set_latency(Duration::ZERO);

    // Every call is counted, failed ones too.
    let before = f.ops();
    f.set_down(true);
    let _ = t.get("k").await;
    f.set_down(false);
    t.get("k").await.unwrap();
    assert_eq!(f.ops(), before + 2);
}

#[tokio::test]
async fn open_parses_each_uri_form() {
    let dir = tempfile::tempdir().unwrap();
    let t = open(&format!("file://{}/sub", dir.path().display())).unwrap();
    assert_eq!(t.name(), format!("file://{}/sub", dir.path().display()));
    // An existing target's root is never created: a missing one is a target that is down.
    assert!(!dir.path().join("sub").exists());
    assert!(matches!(t.health().await, Err(cleave_target::TargetError::Unavailable(_))));
    assert!(matches!(
        t.put("k", bytes::Bytes::from_static(b"v")).await,
        Err(cleave_target::TargetError::Unavailable(_))
    ));
    assert!(!dir.path().join("sub").exists(), "a put recreated a missing target root");
    // A new volume's target is made with `create`.
    let t = cleave_target::create(&format!("file://{}/sub", dir.path().display())).unwrap();
    assert!(dir.path().join("sub").is_dir());
    t.put("k", bytes::Bytes::from_static(b"v")).await.unwrap();

    let t = open("s3://bucket/prefix?endpoint=http://127.0.0.1:9&region=us-east-1").unwrap();
    assert_eq!(t.name(), "s3://bucket/prefix?endpoint=http://127.0.0.1:9");
    let t = open("s3://bucket/deep/prefix/?region=eu-west-1&endpoint=https://s3.example.com/").unwrap();
    assert_eq!(t.name(), "s3://bucket/deep/prefix?endpoint=https://s3.example.com");
    let t = open("s3://bucket?region=us-east-1").unwrap();
    assert_eq!(t.name(), "s3://bucket/");

    // node:// needs the gateway's node credentials, passed explicitly: the environment plays no part.
    let e = open("node://127.0.0.1:1").unwrap_err();
    assert!(e.to_string().contains("node credentials"), "{e}");
}

#[test]
fn open_rejects_bad_uris_clearly() {
    let cases = [
        ("", "unknown scheme"),
        ("/just/a/path", "unknown scheme"),
        ("ftp://x", "unknown scheme"),
        ("file://relative/path", "absolute path"),
        ("file://", "absolute path"),
        ("s3://", "bucket"),
        ("s3:///prefix", "bucket"),
        ("s3://bucket/p?colour=red", "unknown parameter"),
        ("s3://bucket:9000/p", "port"),
        ("s3://bucket/a/.hidden", "prefix"),
        ("s3://bucket/a%20b", "prefix"),
        ("s3://bucket/p?endpoint=ftp://x", "endpoint"),
        ("s3://bucket/p?endpoint=not a url", "endpoint"),
        ("node://", "node://host:port"),
        ("node://a:1/path", "node://host:port"),
    ];
    for (uri, why) in cases {
        match open(uri) {
            Err(TargetError::InvalidUri(m)) => assert!(m.contains(why), "{uri:?}: {m:?} should mention {why:?}"),
            other => panic!("{uri:?}: expected InvalidUri, got {other:?}"),
        }
    }
}

#[test]
fn secrets_in_uris_never_reach_errors() {
    for uri in [
        "s3://AKIDEXAMPLE:SeCrEtKeY@bucket/p",
        "s3://bucket/p?endpoint=http://user:SeCrEtKeY@127.0.0.1:9",
        "s3://bucket/p?aws_secret_access_key=SeCrEtKeY",
        "s3://bucket/p?endpoint=http%3A%2F%2Fu%3ASeCrEtKeY%40h",
        "weird://SeCrEtKeY@x",
    ] {
        let err = open(uri).unwrap_err();
        assert!(matches!(err, TargetError::InvalidUri(_)), "{uri}: {err:?}");
        assert!(!err.to_string().contains("SeCrEtKeY") && !format!("{err:?}").contains("SeCrEtKeY"), "{err}");
    }
}
