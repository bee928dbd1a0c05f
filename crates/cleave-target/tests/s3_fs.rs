//! The S3 backend against s3s-fs (a fast S3 server over a directory, the one `bench/s3.sh`
//! measures against), through the conformance suite. s3s-fs 0.14 checks `If-None-Match: *`
//! before writing rather than atomically (racing creates of one key can all succeed), so
//! that one clause is left out here; moto (`tests/s3.rs`) runs the whole suite.

use cleave_target::open;

mod common;

// One test function: the AWS_* variables are process-wide and set once, before any other thread reads them.
#[tokio::test]
async fn s3_target_on_s3s_fs() {
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "s3s-fs-secret");
    let root = tempfile::tempdir().unwrap();
    // s3s-fs serves each directory below its root as a bucket.
    std::fs::create_dir(root.path().join("conf")).unwrap();
    let dir = root.path().to_str().unwrap();
    let installed = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.ci/s3s-fs/bin/s3s-fs");
    let args: &[&str] =
        &["--host", "127.0.0.1", "--port", "{port}", "--access-key", "test", "--secret-key", "s3s-fs-secret", dir];
    let server = common::Server::start("s3s-fs", &[("s3s-fs", args), (installed, args)]);

    let t = open(&format!("s3://conf/prefix?endpoint={}&region=us-east-1", server.endpoint)).unwrap();
    cleave_target::testing::conformance_without_racing_creates(t).await;
}
