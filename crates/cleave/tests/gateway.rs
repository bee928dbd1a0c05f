//! End-to-end: `cleave serve` with real NBD clients (nbdinfo, qemu-io, nbdcopy, fio),
//! killed, starved of targets, damaged, recovered.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const MIB: u64 = 1 << 20;

fn create(s: &Serve, name: &str, size: &str, extra: &[&str]) {
    let mut args = vec!["volume", "create", name, "--size", size];
    args.extend_from_slice(extra);
    s.cli_ok(&args);
}

/// Writes scattered patterns (crossing chunk boundaries, some with FUA), then FLUSH.
fn scattered(s: &Serve, volume: &str, w: &mut Writes, seed: u8) {
    let size = w.image.len() as u64;
    let writes = [
        (0, 4096, seed),
        (MIB - 512, 1024, seed.wrapping_add(1)),
        (5 * MIB + 4096, 65536, seed.wrapping_add(2)),
        (9 * MIB, 2 * MIB, seed.wrapping_add(3)),
        (size / 2 + 12345 * 512 % MIB, 3 * 4096, seed.wrapping_add(4)),
        (size - 4096, 4096, seed.wrapping_add(5)),
    ];
    let mut cmds = w.commands(&writes);
    cmds.push("flush".into());
    qemu_io(&s.uri(volume), &cmds);
}

fn assert_image(s: &Serve, volume: &str, want: &[u8], scratch: &Path) {
    let got = nbdcopy_image(&s.uri(volume), scratch);
    assert_eq!(got.len(), want.len(), "image size");
    if let Some(pos) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("image differs at byte {pos}: got {:#x}, want {:#x}", got[pos], want[pos]);
    }
}

#[test]
fn real_clients_read_and_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    // First run created the demo volume.
    assert_eq!(nbdinfo_size(&s.uri("demo")), 1 << 30);
    let list = s.cli_ok(&["volume", "list"]);
    assert!(list.contains("demo"), "{list}");

    create(&s, "v", "64MiB", &[]);
    assert_eq!(nbdinfo_size(&s.uri("v")), 64 * MIB);
    let mut w = Writes::new(64 * MIB as usize);
    scattered(&s, "v", &mut w, 0x11);
    assert_image(&s, "v", &w.image, dir.path());

    // fio's own NBD engine, random writes at queue depth 32, verified.
    run(Command::new("fio")
        .current_dir(dir.path())
        .args(["--name=verify", "--ioengine=nbd", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=32M"])
        .args(["--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0"])
        .arg(format!("--uri={}", s.uri("v"))));

    // Reading past the end is refused, and the server keeps serving.
    let out = Command::new("qemu-io").args(["-f", "raw", "-c", "read 64M 4096"]).arg(s.uri("v")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.to_lowercase().contains("error") || !out.status.success(), "{text}");
    assert_eq!(nbdinfo_size(&s.uri("v")), 64 * MIB);

    let show = s.show("v");
    assert_eq!(show["health"]["state"], "clean", "{show}");
}

fn crash_rounds(durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serve::start(&dir.path().join("data"), &[]);
    create(&s, "v", "48MiB", &["--durability", durability]);
    let mut w = Writes::new(48 * MIB as usize);
    let mut rng = fastrand_seed(durability.len() as u64);
    for round in 0..3u8 {
        // Flushed writes in [0, 32 MiB): these must survive.
        let mut writes = Vec::new();
        for k in 0..6u64 {
            let off = (rng() % (32 * MIB - 70_000)) / 512 * 512;
            writes.push((off, 4096 * (k + 1), 0x40 + round * 8 + k as u8));
        }
        let mut cmds = w.commands(&writes);
        cmds.push("flush".into());
        qemu_io(&s.uri("v"), &cmds);
        // Unflushed writes in [32, 48) MiB are in flight when the gateway dies.
        let mut fio = Command::new("fio")
            .current_dir(dir.path())
            .args(["--name=inflight", "--ioengine=nbd", "--rw=randwrite", "--bs=64k", "--iodepth=16"])
            .args(["--offset=32M", "--size=16M", "--time_based", "--runtime=30"])
            .arg(format!("--uri={}", s.uri("v")))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300 + rng() % 900));
        s.kill9();
        let _ = fio.wait();
        s.restart();
        let got = nbdcopy_image(&s.uri("v"), dir.path());
        let flushed = (32 * MIB) as usize;
        if let Some(pos) = got[..flushed].iter().zip(&w.image[..flushed]).position(|(a, b)| a != b) {
            panic!("{durability}, round {round}: flushed byte {pos} lost after SIGKILL");
        }
    }
}

/// A small deterministic generator, so failures can be replayed.
fn fastrand_seed(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[test]
fn sigkill_keeps_flushed_writes_local() {
    crash_rounds("local");
}

#[test]
fn sigkill_keeps_flushed_writes_dispersed() {
    crash_rounds("dispersed");
}

/// Writes, then shuts down cleanly and drops the cache, so reads must come from the targets.
fn written_and_cold(dir: &Path, size_mib: u64) -> (Serve, Writes) {
    let mut s = Serve::start(&dir.join("data"), &[]);
    create(&s, "v", &format!("{size_mib}MiB"), &[]);
    let mut w = Writes::new((size_mib * MIB) as usize);
    scattered(&s, "v", &mut w, 0x21);
    s.term();
    for f in files_under(&s.data.join("cache")) {
        std::fs::remove_file(f).unwrap();
    }
    (s, w)
}

#[test]
fn survives_losing_n_minus_m_targets_and_repairs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, mut w) = written_and_cold(dir.path(), 32);
    // Two of five targets lose every share (they keep their labels: not replaced, damaged).
    for i in [0, 3] {
        for f in files_under(&s.target_dir(i)).into_iter().filter(|f| !f.ends_with("label")) {
            std::fs::remove_file(f).unwrap();
        }
    }
    s.restart();
    assert_image(&s, "v", &w.image, dir.path());
    let show = s.show("v");
    assert_eq!(show["health"]["state"], "degraded", "{show}");

    // Scrub names the missing shares, on the two targets that lost them.
    let report = s.scrub_problems(&["v"]);
    let problems = report["problems"].as_array().unwrap();
    assert!(!problems.is_empty(), "{report}");
    assert!(problems.iter().all(|p| [0, 3].contains(&p["share"].as_u64().unwrap()) && p["problem"] == "missing"));

    // Writes go on, in a region not written before.
    let cmds = w.commands(&[(20 * MIB, 8192, 0x61), (30 * MIB + 4096, 4096, 0x62)]);
    qemu_io(&s.uri("v"), &[cmds, vec!["flush".into()]].concat());
    assert_image(&s, "v", &w.image, dir.path());

    let report: serde_json::Value = serde_json::from_str(&s.cli_ok(&["scrub", "v", "--repair", "--json"])).unwrap();
    assert!(report["chunks_repaired"].as_u64().unwrap() > 0, "{report}");
    let report: serde_json::Value = serde_json::from_str(&s.cli_ok(&["scrub", "v", "--json"])).unwrap();
    assert_eq!(report["problems"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(s.show("v")["health"]["state"], "clean");
    assert_image(&s, "v", &w.image, dir.path());
}

/// Makes a directory target fail every operation: its path becomes a file.
fn break_target(s: &Serve, i: usize) {
    break_dir(&s.target_dir(i));
}

fn restore_target(s: &Serve, i: usize) {
    restore_dir(&s.target_dir(i));
}

#[test]
fn more_than_n_minus_m_failing_gives_eio_and_keeps_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, mut w) = written_and_cold(dir.path(), 32);
    s.restart();
    for i in [1, 2, 4] {
        break_target(&s, i);
    }
    // Reading data that only the targets hold fails with an error, never wrong data.
    let out = Command::new("qemu-io").args(["-f", "raw", "-c", "read 9M 4096"]).arg(s.uri("v")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Input/output error"), "expected EIO, got: {text}");
    // Writes land in the cache and are acknowledged (local durability).
    let cmds = w.commands(&[(20 * MIB, 4096, 0x77), (21 * MIB + 512, 8192, 0x78)]);
    qemu_io(&s.uri("v"), &[cmds, vec!["flush".into()]].concat());
    // The destager finds the targets down in the background: poll, generously.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state = s.show("v")["health"]["state"].clone();
        if state == "unavailable" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "volume health stayed {state}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in [1, 2, 4] {
        restore_target(&s, i);
    }
    // Once the targets are back the writes destage and everything reads back.
    s.cli_ok(&["volume", "show", "v"]);
    let _ = s.cli(&["scrub", "v"]);
    s.term();
    for f in files_under(&s.data.join("cache")) {
        std::fs::remove_file(f).unwrap();
    }
    s.restart();
    assert_image(&s, "v", &w.image, dir.path());
}

#[test]
fn damaged_shares_are_named_read_around_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, w) = written_and_cold(dir.path(), 32);
    let shares = |i: usize| -> Vec<std::path::PathBuf> {
        files_under(&s.target_dir(i)).into_iter().filter(|p| p.to_string_lossy().contains("/d/")).collect()
    };
    let (t0, t1, t2, t3) = (shares(0), shares(1), shares(2), shares(3));
    assert!(t0.len() >= 4, "expected several chunks, found {}", t0.len());
    // A flipped byte, a truncated share, and two shares swapped between targets.
    let mut bytes = std::fs::read(&t0[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&t0[0], bytes).unwrap();
    let len = std::fs::metadata(&t1[1]).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&t1[1]).unwrap().set_len(len - 100).unwrap();
    let (a, b) = (std::fs::read(&t2[2]).unwrap(), std::fs::read(&t3[2]).unwrap());
    std::fs::write(&t2[2], b).unwrap();
    std::fs::write(&t3[2], a).unwrap();

    s.restart();
    // Scrub first: a read that meets a bad share notes it, and the re-replication that follows
    // on its own may mend it before a scrub could name it.
    let report = s.scrub_problems(&["v"]);
    let problems = report["problems"].as_array().unwrap();
    let named: Vec<(u64, String)> =
        problems.iter().map(|p| (p["share"].as_u64().unwrap(), p["problem"].as_str().unwrap().to_string())).collect();
    assert!(named.iter().any(|(i, p)| *i == 0 && p.contains("damaged")), "{named:?}");
    assert!(named.iter().any(|(i, p)| *i == 1 && p.contains("truncated")), "{named:?}");
    assert!(named.iter().any(|(i, p)| *i == 2 && p.contains("swapped")), "{named:?}");
    assert!(named.iter().any(|(i, p)| *i == 3 && p.contains("swapped")), "{named:?}");
    assert_image(&s, "v", &w.image, dir.path());
    s.cli_ok(&["scrub", "v", "--repair"]);
    let report: serde_json::Value = serde_json::from_str(&s.cli_ok(&["scrub", "v", "--json"])).unwrap();
    assert_eq!(report["problems"].as_array().unwrap().len(), 0, "{report}");
    assert_image(&s, "v", &w.image, dir.path());
}

#[test]
fn recover_from_any_m_targets_and_the_key_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (s, w) = written_and_cold(dir.path(), 32);
    for subset in [[0usize, 1, 2], [4, 1, 3]] {
        let out = dir.path().join("recovered.img");
        let mut cmd = Command::new(CLEAVE);
        cmd.arg("recover");
        for i in subset {
            cmd.arg("--target").arg(format!("file://{}", s.target_dir(i).display()));
        }
        cmd.arg("--key-file").arg(s.data.join("master.key")).args(["--volume", "v", "--output"]).arg(&out);
        run(&mut cmd);
        assert!(std::fs::read(&out).unwrap() == w.image, "recovered image differs (targets {subset:?})");
    }
    // Two targets are not enough, and the failure says so.
    let out = Command::new(CLEAVE)
        .arg("recover")
        .arg("--target")
        .arg(format!("file://{}", s.target_dir(0).display()))
        .arg("--target")
        .arg(format!("file://{}", s.target_dir(1).display()))
        .arg("--key-file")
        .arg(s.data.join("master.key"))
        .args(["--volume", "v", "--output"])
        .arg(dir.path().join("x.img"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn no_plaintext_reaches_the_targets() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serve::start(&dir.path().join("data"), &[]);
    create(&s, "v", "16MiB", &[]);
    let secret = b"CLEAVE-CANARY-7f3a9c-do-not-leak";
    let mut payload = Vec::new();
    while payload.len() < 2 * MIB as usize {
        payload.extend_from_slice(secret);
    }
    let file = dir.path().join("payload");
    std::fs::write(&file, &payload).unwrap();
    run(Command::new("nbdcopy").arg(&file).arg(s.uri("v")).arg("--destination-is-zero"));
    run(Command::new("qemu-io").args(["-f", "raw", "-c", "flush"]).arg(s.uri("v")));
    s.term();
    let mut scanned = 0;
    for f in files_under(&s.data.join("targets")) {
        let bytes = std::fs::read(&f).unwrap();
        scanned += bytes.len();
        assert!(!bytes.windows(12).any(|w| w == &secret[..12]), "plaintext found in {}", f.display());
    }
    assert!(scanned > 2 * MIB as usize, "only {scanned} bytes under the targets");
}

#[test]
fn s3_targets_on_moto_read_and_write() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    let uris: Vec<String> = (0..5)
        .map(|i| {
            moto.create_bucket(&format!("cleave-t{i}"));
            format!("s3://cleave-t{i}/pool?endpoint={}&region=us-east-1", moto.endpoint())
        })
        .collect();
    let mut s = Serve::start_env(&dir.path().join("data"), &[], &AWS_ENV);
    let mut args = vec!["--size", "24MiB"];
    for u in &uris {
        args.push("--target");
        args.push(u);
    }
    create(&s, "v", "24MiB", &args[2..]);
    let mut w = Writes::new(24 * MIB as usize);
    scattered(&s, "v", &mut w, 0x31);
    assert_image(&s, "v", &w.image, dir.path());
    run(Command::new("fio")
        .current_dir(dir.path())
        .args(["--name=verify", "--ioengine=nbd", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=8M"])
        .args(["--offset=12M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1"])
        .arg(format!("--uri={}", s.uri("v"))));
    // Cold: reads must come back from the buckets.
    s.term();
    for f in files_under(&s.data.join("cache")) {
        std::fs::remove_file(f).unwrap();
    }
    s.restart();
    let got = nbdcopy_image(&s.uri("v"), dir.path());
    assert!(got[..12 * MIB as usize] == w.image[..12 * MIB as usize], "S3-backed image differs");
    assert_eq!(s.show("v")["health"]["state"], "clean");
}

/// Tasks outlive the process: after a kill and a restart, `task list` shows them, the one
/// that was running and the one queued behind it are `interrupted` (not running forever), and
/// new ids follow the old ones.
#[test]
fn task_history_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let creds = [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")];
    let mut s = Serve::start_env(&dir.path().join("data"), &[], &creds);
    let task = |s: &Serve, args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&s.cli_ok(&[&["--json"], args].concat())).unwrap()
    };
    let scrub = task(&s, &["task", "start", "scrub", "demo"]);
    let id = scrub["id"].as_u64().unwrap().to_string();
    assert_eq!(task(&s, &["task", "wait", &id])["state"], "succeeded");
    // An S3 endpoint that accepts connections and never answers keeps a recover task running;
    // a scrub waits behind it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("s3://b/p?endpoint=http://{}&region=us-east-1", silent.local_addr().unwrap());
    std::thread::spawn(move || silent.incoming().collect::<Vec<_>>());
    let recover = task(&s, &["task", "start", "recover", "lost", "--target", &endpoint]);
    let queued = task(&s, &["task", "start", "scrub", "demo"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.api(&format!("/tasks/{}", recover["id"]))["state"] != "running" {
        assert!(std::time::Instant::now() < deadline, "the recover task never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.api(&format!("/tasks/{}", queued["id"]))["state"], "queued");
    s.kill9();
    s.restart();

    let tasks = s.api("/tasks");
    let states: Vec<(u64, &str)> =
        tasks.as_array().unwrap().iter().map(|t| (t["id"].as_u64().unwrap(), t["state"].as_str().unwrap())).collect();
    assert_eq!(states, [(1, "succeeded"), (2, "interrupted"), (3, "interrupted")], "{tasks}");
    assert!(tasks[0]["result"]["chunks_checked"].is_u64(), "{tasks}");
    assert!(tasks[1]["error"].as_str().unwrap().contains("was running"), "{tasks}");
    assert!(tasks[2]["error"].as_str().unwrap().contains("was queued"), "{tasks}");
    let listed = s.cli_ok(&["task", "list"]);
    assert!(listed.contains("interrupted") && listed.contains("succeeded"), "{listed}");
    let out = s.cli(&["task", "wait", "2"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    assert_eq!(task(&s, &["task", "start", "scrub", "demo"])["id"], 4);
    s.term();
}

#[test]
fn scrub_repair_recover_and_delete_run_as_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, w) = written_and_cold(dir.path(), 16);
    s.restart();
    let started: serde_json::Value =
        serde_json::from_str(&s.cli_ok(&["task", "start", "repair", "v", "--json"])).unwrap();
    assert!(["queued", "running"].contains(&started["state"].as_str().unwrap()), "{started}");
    let id = started["id"].as_u64().unwrap().to_string();
    let done: serde_json::Value = serde_json::from_str(&s.cli_ok(&["task", "wait", &id, "--json"])).unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["progress"].as_f64().unwrap(), 1.0);
    assert!(done["result"]["chunks_checked"].as_u64().unwrap() > 0, "{done}");
    assert!(s.cli_ok(&["task", "list"]).contains("succeeded"));
    // A task on a volume that does not exist is refused with the reason.
    let out = s.cli(&["task", "start", "scrub", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no volume"));

    // Another gateway that has only the master key serves the volume again from 3 of its 5
    // targets (a recover task), then deletes it (a delete task).
    let uuid = s.show("v")["uuid"].as_str().unwrap().to_string();
    s.term();
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(s.data.join("master.key"), other.join("master.key")).unwrap();
    let b = Serve::start(&other, &[]);
    let mut args = vec!["--json".to_string(), "task".into(), "start".into(), "recover".into(), "v".into()];
    for i in [0usize, 2, 4] {
        args.extend(["--target".into(), format!("file://{}", s.target_dir(i).display())]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started: serde_json::Value = serde_json::from_str(&b.cli_ok(&args)).unwrap();
    let id = started["id"].as_u64().unwrap().to_string();
    let done: serde_json::Value = serde_json::from_str(&b.cli_ok(&["task", "wait", &id, "--json"])).unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(done["result"]["mapped_chunks"].as_u64().unwrap() > 0, "{done}");
    assert_image(&b, "v", &w.image, dir.path());
    let started: serde_json::Value =
        serde_json::from_str(&b.cli_ok(&["task", "start", "delete", "v", "--json"])).unwrap();
    let id = started["id"].as_u64().unwrap().to_string();
    let done: serde_json::Value = serde_json::from_str(&b.cli_ok(&["task", "wait", &id, "--json"])).unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(!b.cli(&["volume", "show", "v"]).status.success());
    for i in [0usize, 2, 4] {
        let left: Vec<_> =
            files_under(&s.target_dir(i)).into_iter().filter(|p| p.to_string_lossy().contains(&uuid)).collect();
        assert!(left.is_empty(), "target {i} still holds objects of v after delete: {left:?}");
    }
    // Recovering what no longer exists fails with the reason.
    let started: serde_json::Value = serde_json::from_str(&b.cli_ok(&args)).unwrap();
    let id = started["id"].as_u64().unwrap().to_string();
    let out = b.cli(&["task", "wait", &id]);
    assert_eq!(out.status.code(), Some(3), "a failed task exits 3: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no superblock"), "{out:?}");
}

#[test]
fn api_refuses_anonymous_calls_and_its_openapi_document_validates() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    let base = format!("http://127.0.0.1:{}/api/v1", s.http_port);
    for path in [
        "/volumes",
        "/nodes",
        "/nodes?all=true",
        "/controls",
        "/tasks",
        "/events",
        "/volumes/demo",
        "/clients",
        "/groups",
        "/users",
        "/me",
    ] {
        let code =
            run(Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{base}{path}")]));
        assert_eq!(code, "401", "{path}");
        let code = run(Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Authorization: Bearer wrong",
            &format!("{base}{path}"),
        ]));
        assert_eq!(code, "401", "{path} with a wrong token");
    }
    let code = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "DELETE",
        &format!("{base}/volumes/demo"),
    ]));
    assert_eq!(code, "401");
    let doc = dir.path().join("openapi.json");
    run(Command::new("curl").args(["-sf", "-o"]).arg(&doc).arg(format!("{base}/openapi.json")));
    run(Command::new("openapi-spec-validator").arg(&doc));
}

/// The server's peak resident memory, from /proc.
fn vm_hwm_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Option haggling by hand up to NBD_OPT_GO, on any stream.
fn nbd_go(s: &mut (impl std::io::Read + std::io::Write), export: &str) {
    use cleave_nbd::proto;
    let mut greeting = [0u8; proto::GREETING_LEN];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s.write_all(&proto::encode_option(proto::OPT_GO, &proto::encode_info_request(export, &[]))).unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let (_, kind, len) = proto::parse_option_reply_header(&h).unwrap();
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).unwrap();
        match kind {
            proto::REP_INFO => continue,
            proto::REP_ACK => return,
            other => panic!("GO {export}: reply {other:#x}: {}", String::from_utf8_lossy(&data)),
        }
    }
}

/// 140 reads of 32 MiB sent at once on one connection: the server reads requests only as fast as
/// replies drain, so its memory stays bounded, and every reply arrives whole and right.
#[test]
fn pipelined_large_reads_keep_memory_bounded() {
    use cleave_nbd::proto::{self, Command, Request};
    use std::io::{Read, Write};
    const LEN: u32 = 32 << 20;
    const COUNT: u64 = 140;
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    qemu_io(&s.uri("demo"), &["write -P 0x5a 0 1M".into(), "flush".into()]);
    let mut conn = std::os::unix::net::UnixStream::connect(s.socket()).unwrap();
    nbd_go(&mut conn, "demo");
    let mut reader = conn.try_clone().unwrap();
    let replies = std::thread::spawn(move || {
        let mut seen = std::collections::BTreeSet::new();
        let mut data = vec![0u8; LEN as usize];
        for _ in 0..COUNT {
            let mut h = [0u8; proto::SIMPLE_REPLY_LEN];
            reader.read_exact(&mut h).unwrap();
            let (error, handle) = proto::parse_simple_reply(&h).unwrap();
            assert_eq!(error, 0, "read {handle} failed");
            reader.read_exact(&mut data).unwrap();
            let want_pattern = handle % 32 == 0;
            assert!(data[..MIB as usize].iter().all(|&b| b == if want_pattern { 0x5a } else { 0 }), "read {handle}");
            assert!(data[MIB as usize..].iter().all(|&b| b == 0), "read {handle}");
            assert!(seen.insert(handle), "reply {handle} twice");
        }
        seen.len()
    });
    let mut all = Vec::new();
    for handle in 0..COUNT {
        let r = Request { flags: 0, command: Command::Read, handle, offset: (handle % 32) * LEN as u64, len: LEN };
        all.extend_from_slice(&proto::encode_request(&r));
    }
    conn.write_all(&all).unwrap();
    assert_eq!(replies.join().unwrap(), COUNT as usize);
    let pid = s.child.as_ref().unwrap().id();
    let hwm = vm_hwm_bytes(pid);
    assert!(hwm < 1 << 30, "the gateway peaked at {} MiB", hwm >> 20);
}
