//! End-to-end, hostile lifecycle: rejected creates, volumes whose targets are gone at
//! start-up, and offline recovery with either form of the master key. Real `cleave serve`,
//! real qemu-io and the real `cleave` CLI.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

/// A JSON request on the admin API with the admin token: (HTTP status, body).
fn api_call(s: &Serve, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let token = std::fs::read_to_string(s.data.join("admin.token")).unwrap();
    let mut c = Command::new("curl");
    c.args(["-s", "-w", "\n%{http_code}", "-X", method])
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
        .args(["-H", "Content-Type: application/json"]);
    if let Some(b) = body {
        c.args(["-d", b]);
    }
    let out = run(c.arg(format!("http://127.0.0.1:{}/api/v1{path}", s.http_port)));
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.parse().unwrap(), body.to_string())
}

/// Every file under the targets and the cache, except the demo volume's (`keep` is its uuid).
fn state_files(s: &Serve, keep: &str) -> BTreeSet<PathBuf> {
    let mut out: BTreeSet<PathBuf> = files_under(&s.data.join("targets")).into_iter().collect();
    out.extend(files_under(&s.data.join("cache")));
    out.retain(|p| !p.to_string_lossy().contains(keep));
    out
}

fn volume_names(s: &Serve) -> Vec<String> {
    s.api("/volumes").as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_rejected_create_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serve::start(&dir.path().join("data"), &[]);
    let demo = s.show("demo")["uuid"].as_str().unwrap().to_string();
    let before = state_files(&s, &demo);
    let groups_before = s.api("/groups");
    let clients_before = s.api("/clients");
    // 2^64 - 512: a multiple of 512, but no chunk arithmetic can hold it. 64 TiB: created (the
    // cache is sized by --cache-size, not by the volume), then removed with its client group.
    for (name, size, client) in
        [("zmax", 18446744073709551104u64, None), ("zbig", 64 << 40, Some("hostz")), ("zmax2", u64::MAX, None)]
    {
        let mut body = serde_json::json!({ "name": name, "size_bytes": size, "m": 3, "n": 5 });
        if let Some(c) = client {
            body["client"] = c.into();
        }
        let (code, text) = api_call(&s, "POST", "/volumes", Some(&body.to_string()));
        if name == "zbig" {
            assert_eq!(code, 201, "a 64 TiB volume: {text}");
            s.cli_ok(&["volume", "delete", name]);
            assert_eq!(api_call(&s, "DELETE", "/groups/zbig", None).0, 200);
            assert_eq!(api_call(&s, "DELETE", "/clients/hostz", None).0, 204);
            continue;
        }
        assert!((400..500).contains(&code), "{name}: got {code} {text}");
        assert!(!volume_names(&s).contains(&name.to_string()), "{name} is listed after a rejected create");
    }
    assert_eq!(state_files(&s, &demo), before, "a rejected create left files on the targets or in the cache");
    assert_eq!(s.api("/groups"), groups_before, "a rejected create left a group");
    assert_eq!(s.api("/clients"), clients_before, "a rejected create left a client");
    s.term();
    // Nothing in the configuration database either: the next start works, without them.
    s.restart();
    assert_eq!(volume_names(&s), vec!["demo".to_string()]);
    qemu_io(&s.uri("demo"), &["read 0 4096".into()]);
}

/// Creates `name` (16 MiB, 3-of-5) on five directory targets of its own under `root`.
fn create_on_own_targets(s: &Serve, name: &str, root: &Path) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = (0..5).map(|i| root.join(format!("{name}-t{i}"))).collect();
    let uris: Vec<String> = dirs.iter().map(|d| format!("file://{}", d.display())).collect();
    let mut args = vec!["volume", "create", name, "--size", "16MiB"];
    for u in &uris {
        args.extend(["--target", u]);
    }
    s.cli_ok(&args);
    dirs
}

fn wait_for_state(s: &Serve, name: &str, want: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let v = s.show(name);
        if v["health"]["state"] == want {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} stayed {} (want {want}): {v}", v["health"]["state"]);
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_volume_that_cannot_open_is_listed_unavailable_retried_and_deletable() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serve::start(&dir.path().join("data"), &[]);
    let ext = dir.path().join("ext");
    let bad = create_on_own_targets(&s, "bad", &ext);
    let gone = create_on_own_targets(&s, "gone", &ext);
    qemu_io(&s.uri("bad"), &["write -P 0x5c 0 1M".into(), "write -P 0x3d 9M 64k".into(), "flush".into()]);
    qemu_io(&s.uri("demo"), &["write -P 0x11 0 64k".into(), "flush".into()]);
    s.term();
    for d in bad.iter().chain(&gone) {
        break_dir(d);
    }

    // The gateway starts anyway and serves the other volumes.
    s.restart();
    qemu_io(&s.uri("demo"), &["read -P 0x11 0 64k".into()]);
    for name in ["bad", "gone"] {
        let v = s.show(name);
        assert_eq!(v["health"]["state"], "unavailable", "{v}");
        assert!(!v["open_error"].as_str().unwrap_or("").is_empty(), "no reason given: {v}");
    }
    let list = s.cli_ok(&["volume", "list"]);
    assert!(list.lines().any(|l| l.starts_with("bad ") && l.contains("unavailable")), "{list}");
    // Its NBD export is refused, not served with a made-up map.
    let out = Command::new("qemu-io").args(["-f", "raw", "-c", "read 0 4096"]).arg(s.uri("bad")).output().unwrap();
    assert!(!out.status.success() || String::from_utf8_lossy(&out.stderr).contains("rror"), "{out:?}");

    // It can be deleted while unavailable, and stays deleted.
    s.cli_ok(&["volume", "delete", "gone"]);
    assert!(!volume_names(&s).contains(&"gone".to_string()));

    // Targets back: the volume opens by itself and serves its data.
    for d in &bad {
        restore_dir(d);
    }
    let v = wait_for_state(&s, "bad", "clean", Duration::from_secs(60));
    assert!(v["open_error"].is_null(), "{v}");
    qemu_io(&s.uri("bad"), &["read -P 0x5c 0 1M".into(), "read -P 0x3d 9M 64k".into(), "read -P 0 2M 4096".into()]);

    s.term();
    s.restart();
    assert_eq!(volume_names(&s), vec!["bad".to_string(), "demo".to_string()]);
    qemu_io(&s.uri("bad"), &["read -P 0x5c 0 1M".into()]);
}

const PASS: &str = "correct horse battery staple";

fn recover_cmd(s: &Serve, key: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(CLEAVE);
    cmd.arg("recover");
    for i in [0usize, 2, 4] {
        cmd.arg("--target").arg(format!("file://{}", s.target_dir(i).display()));
    }
    cmd.arg("--key-file").arg(key).args(["--volume", "v", "--output"]).arg(out);
    cmd.env_remove("CLEAVE_PASSPHRASE").env("CLEAVE_LOG", "warn").stdin(Stdio::null());
    cmd
}

#[test]
fn recover_works_from_the_sealed_key_and_from_an_exported_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serve::start_env(&dir.path().join("data"), &[], &[("CLEAVE_PASSPHRASE", PASS)]);
    let sealed = s.data.join("master.sealed");
    assert!(sealed.exists() && !s.data.join("master.key").exists(), "expected only a sealed master key");
    s.cli_ok(&["volume", "create", "v", "--size", "16MiB"]);
    let mut w = Writes::new(16 * MIB as usize);
    let mut cmds = w.commands(&[(0, 4096, 0xa1), (MIB - 512, 8192, 0xa2), (7 * MIB, 2 * MIB, 0xa3)]);
    cmds.push("flush".into());
    qemu_io(&s.uri("v"), &cmds);

    // Export while the server runs: a plain key file, 0600, never over an existing file.
    let exported = dir.path().join("offline").join("master.key");
    std::fs::create_dir_all(exported.parent().unwrap()).unwrap();
    let export = |env: Option<&str>| {
        let mut c = Command::new(CLEAVE);
        c.args(["key", "export", "--data-dir"]).arg(&s.data).arg("--out").arg(&exported);
        c.env_remove("CLEAVE_PASSPHRASE").stdin(Stdio::null());
        if let Some(p) = env {
            c.env("CLEAVE_PASSPHRASE", p);
        }
        c.output().unwrap()
    };
    let out = export(None);
    assert!(!out.status.success() && !exported.exists(), "export without the passphrase: {out:?}");
    let out = export(Some("wrong"));
    assert!(!out.status.success() && !exported.exists(), "export with a wrong passphrase: {out:?}");
    let out = export(Some(PASS));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(&exported).unwrap().permissions().mode() & 0o777, 0o600);
    let first = std::fs::read(&exported).unwrap();
    let out = export(Some(PASS));
    assert!(!out.status.success(), "a second export overwrote {}", exported.display());
    assert_eq!(std::fs::read(&exported).unwrap(), first);
    s.term();

    let img = dir.path().join("recovered.img");
    // The sealed file with the passphrase from the environment.
    run(recover_cmd(&s, &sealed, &img).env("CLEAVE_PASSPHRASE", PASS));
    assert!(std::fs::read(&img).unwrap() == w.image, "image recovered with the sealed key differs");
    std::fs::remove_file(&img).unwrap();
    // Without a passphrase (and no terminal to ask on) or with a wrong one: refused, with the reason.
    for pass in [None, Some("wrong")] {
        let mut c = recover_cmd(&s, &sealed, &img);
        if let Some(p) = pass {
            c.env("CLEAVE_PASSPHRASE", p);
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("passphrase"), "{pass:?}: {err}");
    }
    // The exported key file, no passphrase needed.
    run(&mut recover_cmd(&s, &exported, &img));
    assert!(std::fs::read(&img).unwrap() == w.image, "image recovered with the exported key differs");
}
