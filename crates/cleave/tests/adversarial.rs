//! Issue 10's adversarial suite, data-loss part: real `cleave serve` processes, real NBD
//! clients, targets taken away, lying and brought back, then offline `cleave recover`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Makes a directory target fail every operation: its path becomes a file.
fn break_dir(d: &Path) {
    std::fs::rename(d, d.with_extension("away")).unwrap();
    std::fs::write(d, b"not a directory").unwrap();
}

fn restore_dir(d: &Path) {
    std::fs::remove_file(d).unwrap();
    std::fs::rename(d.with_extension("away"), d).unwrap();
}

fn target_path(show: &serde_json::Value, i: usize) -> PathBuf {
    PathBuf::from(show["targets"][i].as_str().unwrap().strip_prefix("file://").unwrap())
}

/// `cleave recover` from the given directory targets; the image on success.
fn recover(s: &Serve, dirs: &[PathBuf], extra: &[&str]) -> Result<Vec<u8>, String> {
    let out_file = s.data.parent().unwrap().join("recovered.img");
    let _ = std::fs::remove_file(&out_file);
    let mut cmd = Command::new(CLEAVE);
    cmd.arg("recover");
    for d in dirs {
        cmd.arg("--target").arg(format!("file://{}", d.display()));
    }
    cmd.arg("--key-file").arg(s.data.join("master.key")).args(["--volume", "v", "--output"]).arg(&out_file);
    let out: Output = cmd.args(extra).env("CLEAVE_LOG", "warn").output().unwrap();
    if out.status.success() {
        Ok(std::fs::read(&out_file).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn chunk_is(image: &[u8], chunk: usize, byte: u8) -> bool {
    image[chunk * MIB..(chunk + 1) * MIB].iter().all(|&b| b == byte)
}

fn write_flush(s: &Serve, byte: u8, offset: usize) {
    qemu_io(&s.uri("v"), &[format!("write -P {byte} {offset} {MIB}"), "flush".into()]);
}

fn tasks_of(s: &Serve, kind: &str) -> Vec<serde_json::Value> {
    s.api("/tasks").as_array().unwrap().iter().filter(|t| t["kind"] == kind && t["volume"] == "v").cloned().collect()
}

/// Item 1. 3-of-5, dispersed: write A; target 4 unusable; write B (acknowledged on four);
/// target 4 back. Targets 2, 3, 4 must never give A or zeros for B: recovery stops and names
/// the journal record it cannot read, `--accept-stale` gives A, and once the gateway has
/// re-replicated (a task, on its own) any three targets give B.
#[test]
fn degraded_write_leaves_every_m_targets_able_to_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serve::start(&dir.path().join("data"), &[]);
    s.cli_ok(&["volume", "create", "v", "--size", "16MiB", "--durability", "dispersed"]);
    let show = s.show("v");
    let t: Vec<PathBuf> = (0..5).map(|i| target_path(&show, i)).collect();
    write_flush(&s, 0xa1, MIB);
    break_dir(&t[4]);
    write_flush(&s, 0xb2, MIB);
    s.term();
    restore_dir(&t[4]);

    let subset = [t[2].clone(), t[3].clone(), t[4].clone()];
    let err = recover(&s, &subset, &[]).expect_err("targets 2, 3, 4 lack the last journal record");
    assert!(err.contains("journal record") && err.contains("--accept-stale"), "unclear error: {err}");
    let stale = recover(&s, &subset, &["--accept-stale"]).unwrap();
    assert!(chunk_is(&stale, 1, 0xa1), "--accept-stale must give the last fully redundant state (A)");

    s.restart();
    wait_for("re-replication to make v clean", Duration::from_secs(90), || s.show("v")["health"]["state"] == "clean");
    let done = tasks_of(&s, "rereplicate");
    assert!(done.iter().any(|t| t["state"] == "succeeded"), "no re-replication task succeeded: {done:?}");
    s.term();
    for subset in [[2, 3, 4], [0, 1, 4], [0, 2, 4]] {
        let dirs: Vec<PathBuf> = subset.iter().map(|&i| t[i].clone()).collect();
        let image = recover(&s, &dirs, &[]).unwrap_or_else(|e| panic!("targets {subset:?}: {e}"));
        assert!(chunk_is(&image, 1, 0xb2), "targets {subset:?} must give B");
    }
}

/// Item 3. An empty object named `journal/fffffffffffffffe` on one directory target: writes
/// go on, the API keeps answering, and the gateway starts again and reads the data back.
#[test]
fn hostile_journal_object_on_one_target_stops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serve::start(&dir.path().join("data"), &[]);
    s.cli_ok(&["volume", "create", "v", "--size", "16MiB", "--durability", "dispersed"]);
    let show = s.show("v");
    let uuid = show["uuid"].as_str().unwrap().to_string();
    write_flush(&s, 0x11, 0);
    let journal = target_path(&show, 1).join(&uuid).join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    std::fs::write(journal.join("fffffffffffffffe"), b"").unwrap();
    std::fs::write(journal.join("ffffffffffffffff"), b"garbage").unwrap();
    write_flush(&s, 0x22, 2 * MIB);
    write_flush(&s, 0x33, 0);
    assert_eq!(s.show("v")["name"], "v");
    s.term();
    s.restart();
    let image = nbdcopy_image(&s.uri("v"), dir.path());
    assert!(chunk_is(&image, 0, 0x33) && chunk_is(&image, 2, 0x22), "data lost after a hostile object");
    write_flush(&s, 0x44, 4 * MIB);
    s.term();
}

/// Item 9. A 2-of-3 volume with one target down keeps taking dispersed FLUSHes (write
/// quorum 2), shows the reduced redundancy, and re-replicates when the target is back.
#[test]
fn two_of_three_with_a_target_down_keeps_taking_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serve::start(&dir.path().join("data"), &[]);
    s.cli_ok(&["volume", "create", "v", "--size", "16MiB", "--m", "2", "--n", "3", "--durability", "dispersed"]);
    let show = s.show("v");
    let t: Vec<PathBuf> = (0..3).map(|i| target_path(&show, i)).collect();
    break_dir(&t[0]);
    write_flush(&s, 0x5a, 3 * MIB);
    assert_eq!(s.show("v")["write_quorum"], 2);
    let health = s.show("v")["health"].clone();
    assert_eq!(health["state"], "degraded", "{health}");
    restore_dir(&t[0]);
    wait_for("re-replication to make v clean", Duration::from_secs(90), || s.show("v")["health"]["state"] == "clean");
    s.term();
    let image = recover(&s, &[t[0].clone(), t[2].clone()], &[]).unwrap();
    assert!(chunk_is(&image, 3, 0x5a));
}

/// Item 2. Two directory targets are moved away while the server is stopped and empty
/// folders (a new disk, an unmounted mount point) take their place: the volume is degraded
/// at once, without I/O; a re-replication task rebuilds every share there; then the two
/// new targets with any third one rebuild the data. A missing folder is never recreated.
#[test]
fn replaced_targets_are_detected_at_once_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serve::start(&dir.path().join("data"), &[]);
    s.cli_ok(&["volume", "create", "v", "--size", "16MiB"]);
    let t: Vec<PathBuf> = (0..5).map(|i| target_path(&s.show("v"), i)).collect();
    for (i, byte) in [(0usize, 0x61u8), (5, 0x62), (9, 0x63)] {
        write_flush(&s, byte, i * MIB);
    }
    s.term();
    for i in [1, 2] {
        std::fs::rename(&t[i], t[i].with_extension("old")).unwrap();
    }
    // A folder that is simply gone stays gone: the target is down, not recreated.
    s.restart();
    assert_eq!(s.show("v")["health"]["state"], "degraded");
    assert!(!t[1].exists() && !t[2].exists(), "a missing target folder was recreated");
    s.term();
    for i in [1, 2] {
        std::fs::create_dir(&t[i]).unwrap();
    }
    s.restart();
    let health = s.show("v")["health"].clone();
    assert_eq!(health["state"], "degraded", "replaced targets must show at once: {health}");
    wait_for("the rebuild to make v clean", Duration::from_secs(90), || s.show("v")["health"]["state"] == "clean");
    assert!(tasks_of(&s, "rereplicate").iter().any(|t| t["state"] == "succeeded"));
    s.term();
    let image = recover(&s, &[t[1].clone(), t[2].clone(), t[4].clone()], &[]).unwrap();
    assert!(chunk_is(&image, 0, 0x61) && chunk_is(&image, 5, 0x62) && chunk_is(&image, 9, 0x63));
}
