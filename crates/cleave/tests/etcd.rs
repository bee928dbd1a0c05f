//! `cleave serve --etcd`: the configuration database in a real etcd process. Superblocks,
//! users and tasks land in etcd under the namespace and none in DATA_DIR/config.redb; a
//! volume created through the CLI is in etcd when the command returns; a restart finds it.
//! Without etcd, `cleave serve` stops at once and says so. Over TLS (client certificates
//! required) it works with `--etcd-ca/--etcd-cert/--etcd-key`, and refuses an `https://`
//! endpoint without them.

mod common;

use std::time::Duration;

use cleave_control::config::testing::EtcdCluster;
use cleave_control::config::ConfigStore;
use common::{Serve, CLEAVE};

#[test]
fn serve_keeps_its_configuration_in_etcd() {
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let urls = etcd.endpoints();
    let mut s = Serve::start(&data, &["--etcd", &urls, "--etcd-namespace", "appliance-1/"]);
    let store = etcd.store("appliance-1/", Duration::from_secs(5));
    let keys = |prefix: &str| store.scan(prefix).unwrap().into_iter().map(|e| e.key).collect::<Vec<_>>();
    assert_eq!(keys("volume/"), ["volume/demo"]);
    assert!(store.get("users").unwrap().is_some());
    assert!(store.get("group-keys").unwrap().is_some());
    assert!(!data.join("config.redb").exists(), "nothing in the data directory's database");
    // Nothing outside the namespace.
    assert!(etcd.store("", Duration::from_secs(5)).scan("").unwrap().iter().all(|e| e.key.starts_with("appliance-1/")));

    s.cli_ok(&["volume", "create", "db", "--size", "4MiB", "--m", "1", "--n", "1"]);
    assert_eq!(keys("volume/"), ["volume/db", "volume/demo"]);
    s.term();
    s.restart();
    let listed = s.cli_ok(&["volume", "list"]);
    assert!(listed.contains("db") && listed.contains("demo"), "{listed}");
    s.term();
}

#[test]
fn serve_without_its_etcd_stops_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(CLEAVE)
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--http", "127.0.0.1:0", "--nbd", "127.0.0.1:0", "--autoconfig", "127.0.0.1:0"])
        .args(["--etcd", &format!("http://{closed}")])
        .env("CLEAVE_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("etcd") && stderr.contains(&closed.to_string()), "{stderr}");
}

#[test]
fn serve_reaches_etcd_over_tls_with_a_client_certificate() {
    let etcd = EtcdCluster::start_tls(1);
    let tls = etcd.tls_files().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let urls = etcd.endpoints();
    let (ca, cert, key) = (tls.ca.to_str().unwrap(), tls.cert.to_str().unwrap(), tls.key.to_str().unwrap());
    let mut s = Serve::start(&data, &["--etcd", &urls, "--etcd-ca", ca, "--etcd-cert", cert, "--etcd-key", key]);
    s.cli_ok(&["volume", "create", "db", "--size", "4MiB", "--m", "1", "--n", "1"]);
    let store = etcd.store("cleave/", Duration::from_secs(5));
    assert!(store.get("volume/db").unwrap().is_some(), "the volume is in etcd, reached over TLS");
    s.term();

    // An https endpoint without the CA: refused at once, saying what is missing.
    let out = std::process::Command::new(CLEAVE)
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("other"))
        .args(["--http", "127.0.0.1:0", "--nbd", "127.0.0.1:0", "--autoconfig", "127.0.0.1:0", "--etcd", &urls])
        .env("CLEAVE_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--etcd-ca"), "{stderr}");
}
