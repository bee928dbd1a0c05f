//! `cleave serve --config FILE`: the example file starts a server, a flag beats the file and
//! the environment beats it too, unknown keys are refused before anything starts, and the
//! effective configuration is logged with its secrets masked.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, wait_started, Serve, CLEAVE};

const PASSPHRASE: &str = "config-test-passphrase-7f3a";

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cleave.example.toml")
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `cleave serve` with `args` and `env`, its log (JSON lines at info) in `log`. The
/// returned Serve answers on `http_port`.
fn start(data: &Path, http_port: u16, args: &[String], env: &[(&str, &str)], log: &Path) -> Serve {
    let mut child = Command::new(CLEAVE)
        .arg("serve")
        .args(args)
        .env("CLEAVE_LOG", "info")
        .env_remove("CLEAVE_PASSPHRASE")
        .env_remove("CLEAVE_LOG_FORMAT")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn cleave serve");
    wait_started(&mut child);
    Serve {
        child: Some(child),
        data: data.to_path_buf(),
        nbd_port: 0,
        http_port,
        extra: Vec::new(),
        env: Vec::new(),
        netns: None,
        subcommand: "serve",
        private_mounts: false,
    }
}

/// The settings the log shows, as (setting, value, from).
fn logged_settings(log: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "configuration")
        .map(|v| {
            let f = |k: &str| v["fields"][k].as_str().unwrap_or_default().to_string();
            (f("setting"), f("value"), f("from"))
        })
        .collect()
}

fn setting(settings: &[(String, String, String)], key: &str) -> (String, String) {
    let (_, value, from) = settings.iter().find(|s| s.0 == key).unwrap_or_else(|| panic!("{key} not logged"));
    (value.clone(), from.clone())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_example_file_serves_and_its_log_masks_the_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("serve.log");
    let (nbd, http, autoconfig) = (free_port(), free_port(), free_udp_port());
    let mut args = strings(&["--config", example().to_str().unwrap(), "--log-format", "json", "--data-dir"]);
    args.push(data.display().to_string());
    args.extend(["--nbd".into(), format!("127.0.0.1:{nbd}"), "--http".into(), format!("127.0.0.1:{http}")]);
    args.extend(["--autoconfig".into(), format!("127.0.0.1:{autoconfig}")]);
    let mut s = start(&data, http, &args, &[("CLEAVE_PASSPHRASE", PASSPHRASE)], &log);

    let volumes = s.api("/volumes").to_string();
    assert!(volumes.contains("\"demo\""), "{volumes}");
    // The passphrase was used: the master key is sealed.
    assert!(data.join("master.sealed").exists() && !data.join("master.key").exists());
    s.term();

    let settings = logged_settings(&log);
    assert_eq!(setting(&settings, "http"), (format!("127.0.0.1:{http}"), "flag".into()));
    assert_eq!(setting(&settings, "cache_size"), ("1GiB".into(), "file".into()));
    assert_eq!(setting(&settings, "config").1, "flag");
    assert_eq!(setting(&settings, "CLEAVE_PASSPHRASE"), ("***".into(), "env".into()));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(PASSPHRASE), "the passphrase is in the log:\n{text}");
}

/// A server is listening on `port` and speaks NBD there.
fn speaks_nbd(port: u16) -> bool {
    let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut magic = [0u8; 8];
    conn.read_exact(&mut magic).is_ok() && &magic == b"NBDMAGIC"
}

#[test]
fn flags_and_the_environment_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("serve.log");
    let (file_nbd, file_http, flag_http, autoconfig) = (free_port(), free_port(), free_port(), free_udp_port());
    let config = dir.path().join("cleave.toml");
    let text = format!(
        "[serve]\nnbd = \"127.0.0.1:{file_nbd}\"\nhttp = \"127.0.0.1:{file_http}\"\n\
         autoconfig = \"127.0.0.1:{autoconfig}\"\ncache-size = \"64MiB\"\nlog_format = \"text\"\n\n\
         [node]\nsite = \"elsewhere\"\n"
    );
    std::fs::write(&config, text).unwrap();
    let mut args = strings(&["--data-dir", data.to_str().unwrap(), "--http"]);
    args.push(format!("127.0.0.1:{flag_http}"));
    // The file comes from CLEAVE_CONFIG; CLEAVE_LOG_FORMAT beats the file's log_format.
    let env = [("CLEAVE_CONFIG", config.to_str().unwrap()), ("CLEAVE_LOG_FORMAT", "json")];
    let mut s = start(&data, flag_http, &args, &env, &log);

    // The flag's address is served, the file's is not; the file's NBD address is.
    assert!(s.api("/volumes").to_string().contains("\"demo\""));
    assert!(TcpStream::connect(("127.0.0.1", file_http)).is_err(), "the file's http address is listened on");
    assert!(speaks_nbd(file_nbd), "no NBD on the file's address");
    s.term();

    let settings = logged_settings(&log);
    assert!(!settings.is_empty(), "the log is not JSON: the file's log_format beat CLEAVE_LOG_FORMAT");
    assert_eq!(setting(&settings, "http"), (format!("127.0.0.1:{flag_http}"), "flag".into()));
    assert_eq!(setting(&settings, "nbd"), (format!("127.0.0.1:{file_nbd}"), "file".into()));
    assert_eq!(setting(&settings, "cache_size"), ("64MiB".into(), "file".into()));
    assert_eq!(setting(&settings, "log_format"), ("json".into(), "env".into()));
    assert_eq!(setting(&settings, "config"), (config.display().to_string(), "env".into()));
    assert_eq!(setting(&settings, "site"), ("default".into(), "default".into()));
}

#[test]
fn an_unknown_key_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("typo.toml");
    std::fs::write(&config, "[serve]\nnbd_adress = \"127.0.0.1:10809\"\n").unwrap();
    for by_env in [false, true] {
        let mut cmd = Command::new(CLEAVE);
        cmd.args(["serve", "--data-dir", data.to_str().unwrap()]).env_remove("CLEAVE_CONFIG");
        if by_env {
            cmd.env("CLEAVE_CONFIG", &config);
        } else {
            cmd.arg("--config").arg(&config);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "cleave serve started with an unknown key");
        assert!(stderr.contains(&format!("{}: [serve] nbd_adress: unknown setting", config.display())), "{stderr}");
        assert!(!data.exists(), "the data directory was created");
    }
}

#[test]
fn serve_help_tells_of_the_passphrase_and_the_file() {
    let out = common::run(Command::new(CLEAVE).args(["serve", "--help"]));
    for wanted in ["CLEAVE_PASSPHRASE", "--config <FILE>", "CLEAVE_CONFIG", "docs/cleave.example.toml"] {
        assert!(out.contains(wanted), "serve --help lacks {wanted}:\n{out}");
    }
}
