//! Mirroring between two `cleave serve` processes, each in its own network namespace, with the
//! link between them cut for real: journal and probation, restarts while apart, the bitmap
//! past the journal's bound, both directions at once, split brain, a killed primary, and bad
//! input at the mirror port. Needs root (`ip netns`).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{Lab, Side};
use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 32 * MIB;
const PORT: u16 = 7000;
/// Heartbeats fast enough for tests that are not about their timers.
const FAST: &[&str] = &["--mirror-heartbeat-secs", "0.2", "--mirror-down-secs", "1", "--mirror-probation-secs", "1"];

struct Pair {
    lab: Lab,
    dir: tempfile::TempDir,
    a: Serve,
    b: Serve,
}

impl Pair {
    fn start(a_extra: &[&str], b_extra: &[&str]) -> Pair {
        let lab = Lab::new();
        let dir = tempfile::tempdir().unwrap();
        let a = Self::gateway(&lab, Side::A, &dir.path().join("a"), a_extra);
        let b = Self::gateway(&lab, Side::B, &dir.path().join("b"), b_extra);
        Pair { lab, dir, a, b }
    }

    fn gateway(lab: &Lab, side: Side, data: &Path, extra: &[&str]) -> Serve {
        let listen = format!("{}:{PORT}", lab.addr(side));
        let args = [&["--mirror-listen", &listen], extra].concat();
        Serve::start_in(lab.ns(side), data, &args)
    }

    fn addr(&self, side: Side) -> String {
        format!("{}:{PORT}", self.lab.addr(side))
    }

    fn side(&self, side: Side) -> &Serve {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// Creates `volume` on `from` and mirrors it to the other side.
    fn mirror(&self, from: Side, volume: &str, mode: &str) {
        let (p, m) = (self.side(from), self.side(from.other()));
        p.cli_ok(&["volume", "create", volume, "--size", "32MiB", "--m", "2", "--n", "3"]);
        let creds = self.dir.path().join(format!("creds-{volume}.json"));
        m.cli_ok(&["mirror", "credentials", &format!("peer-{volume}"), "--out", creds.to_str().unwrap()]);
        let peer = self.addr(from.other());
        p.cli_ok(&[
            "mirror",
            "create",
            volume,
            "--peer",
            &peer,
            "--mode",
            mode,
            "--credentials",
            creds.to_str().unwrap(),
        ]);
        wait_state(p, volume, "in-sync", 60);
    }

    fn scratch(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

fn show(s: &Serve, volume: &str) -> Value {
    serde_json::from_str(&s.cli_ok(&["mirror", "show", volume, "--json"])).unwrap()
}

fn wait_state(s: &Serve, volume: &str, want: &str, secs: u64) -> Value {
    let start = Instant::now();
    loop {
        let v = show(s, volume);
        if v["state"] == want {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(secs), "{volume}: wanted {want}, still {v}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn image(s: &Serve, volume: &str, scratch: &Path) -> Vec<u8> {
    nbdcopy_image(&s.uri(volume), scratch)
}

fn assert_same(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: sizes");
    if let Some(pos) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: the images differ at byte {pos} ({:#x} and {:#x})", a[pos], b[pos]);
    }
}

/// Scattered writes of `len` bytes with `byte`, through the primary's NBD.
fn scatter(s: &Serve, volume: &str, w: &mut Writes, byte: u8, count: u64, len: u64) {
    let writes: Vec<(u64, u64, u8)> =
        (0..count).map(|i| ((i * 7_340_033 + byte as u64 * 4096) % (SIZE - len) / 4096 * 4096, len, byte)).collect();
    let mut cmds = w.commands(&writes);
    cmds.push("flush".into());
    qemu_io(&s.uri(volume), &cmds);
}

/// The link goes down during writes, then comes back: changes are journaled, probation
/// holds the reconnection for 10 s of steady heartbeats, the journal is replayed. Both
/// directions at once (v1: A to B, async; v2: B to A, sync). Then the same with each side
/// restarted while apart, and with more changes than the journal's bound (the bitmap).
#[test]
fn a_cut_link_journals_waits_out_probation_and_resyncs_both_ways() {
    let small_journal = ["--mirror-journal-size", "2MiB"];
    let p = Pair::start(&small_journal, &[]);
    p.mirror(Side::A, "v1", "async");
    p.mirror(Side::B, "v2", "sync");
    let (mut w1, mut w2) = (Writes::new(SIZE as usize), Writes::new(SIZE as usize));
    scatter(&p.a, "v1", &mut w1, 1, 16, 4096);
    scatter(&p.b, "v2", &mut w2, 2, 16, 4096);

    // 30 s apart, writing on both sides.
    p.lab.cut();
    let cut = Instant::now();
    scatter(&p.a, "v1", &mut w1, 3, 20, 4096);
    scatter(&p.b, "v2", &mut w2, 4, 20, 4096);
    let s1 = wait_state(&p.a, "v1", "disconnected", 20);
    assert!(s1["journal_records"].as_u64().unwrap() >= 20, "{s1}");
    assert_eq!(s1["journal_overflowed"], false, "{s1}");
    std::thread::sleep(Duration::from_secs(30).saturating_sub(cut.elapsed()));
    scatter(&p.a, "v1", &mut w1, 5, 8, 4096);
    p.lab.heal();
    let healed = Instant::now();
    let reconnected = wait_reconnect(&p.a, "v1");
    assert!(reconnected >= Duration::from_millis(9500), "reconnected {reconnected:?} after the link came back");
    wait_state(&p.a, "v1", "in-sync", 60);
    wait_state(&p.b, "v2", "in-sync", 60);
    assert!(healed.elapsed() < Duration::from_secs(60));
    assert_same(&image(&p.a, "v1", &p.scratch()), &w1.image, "v1 on A");
    assert_same(&image(&p.b, "v1", &p.scratch()), &w1.image, "v1 on B");
    assert_same(&image(&p.a, "v2", &p.scratch()), &w2.image, "v2 on A");
    assert_same(&image(&p.b, "v2", &p.scratch()), &w2.image, "v2 on B");

    // Apart again; the mirror side of v1 restarts meanwhile, and the journal (on A) outgrows
    // its bound of 2 MiB: the regions it touched are copied instead.
    let mut p = p;
    p.lab.cut();
    scatter(&p.a, "v1", &mut w1, 6, 40, 65536);
    p.b.term();
    p.b.restart();
    scatter(&p.a, "v1", &mut w1, 7, 8, 4096);
    let s1 = wait_until(&p.a, "v1", |v| v["journal_overflowed"] == true, 20);
    assert!(s1["bitmap_regions"].as_u64().unwrap() > 0, "{s1}");
    p.lab.heal();
    wait_state(&p.a, "v1", "in-sync", 90);
    assert_same(&image(&p.b, "v1", &p.scratch()), &w1.image, "v1 on B after the bitmap resync");

    // Apart once more; now the primary of v1 restarts while apart: its journal survives.
    p.lab.cut();
    scatter(&p.a, "v1", &mut w1, 8, 12, 4096);
    p.a.term();
    p.a.restart();
    scatter(&p.a, "v1", &mut w1, 9, 12, 4096);
    scatter(&p.b, "v2", &mut w2, 10, 12, 4096);
    p.lab.heal();
    wait_state(&p.a, "v1", "in-sync", 90);
    wait_state(&p.b, "v2", "in-sync", 90);
    assert_same(&image(&p.b, "v1", &p.scratch()), &w1.image, "v1 on B after A's restart");
    assert_same(&image(&p.a, "v2", &p.scratch()), &w2.image, "v2 on A after A's restart");
}

/// How long after now the mirror left `disconnected`/`probation`; it must pass through
/// `probation` on the way.
fn wait_reconnect(s: &Serve, volume: &str) -> Duration {
    let start = Instant::now();
    let mut probation = false;
    loop {
        let v = show(s, volume);
        match v["state"].as_str().unwrap() {
            "probation" => probation = true,
            "disconnected" => {}
            _ => {
                assert!(probation, "reconnected without probation: {v}");
                return start.elapsed();
            }
        }
        assert!(start.elapsed() < Duration::from_secs(40), "never reconnected: {v}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn wait_until(s: &Serve, volume: &str, ok: impl Fn(&Value) -> bool, secs: u64) -> Value {
    let start = Instant::now();
    loop {
        let v = show(s, volume);
        if ok(&v) {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(secs), "{volume}: condition never met: {v}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A planned switchover between two processes, of an async mirror with writes just made:
/// B takes over with nothing lost, A becomes the mirror, B's writes reach A; then back.
#[test]
fn a_planned_switchover_loses_nothing_and_can_go_back() {
    let p = Pair::start(FAST, FAST);
    p.mirror(Side::A, "v", "async");
    let mut w = Writes::new(SIZE as usize);
    for (round, (from, to)) in [(Side::A, Side::B), (Side::B, Side::A)].into_iter().enumerate() {
        let (old, new) = (p.side(from), p.side(to));
        scatter(old, "v", &mut w, 1 + round as u8, 32, 65536);
        new.cli_ok(&["mirror", "promote", "v"]);
        assert_eq!(show(new, "v")["role"], "primary", "round {round}");
        assert_eq!(show(old, "v")["role"], "secondary", "round {round}");
        assert_same(&image(new, "v", &p.scratch()), &w.image, "the new primary after the switchover");
        scatter(new, "v", &mut w, 0x10 + round as u8, 16, 4096);
        wait_until(new, "v", |v| v["state"] == "in-sync" && v["lag_bytes"] == 0, 60);
        assert_same(&image(old, "v", &p.scratch()), &w.image, "the new mirror");
    }
}

/// B is promoted by force while A is cut off, both write, the link returns: both refuse
/// and report split brain; resolving on B (its changes go) makes the images identical.
#[test]
fn split_brain_is_refused_reported_and_resolved_by_discarding_one_side() {
    let p = Pair::start(FAST, FAST);
    p.mirror(Side::A, "v", "sync");
    let mut w = Writes::new(SIZE as usize);
    scatter(&p.a, "v", &mut w, 1, 8, 4096);
    p.lab.cut();
    wait_state(&p.a, "v", "disconnected", 20);
    p.b.cli_ok(&["mirror", "promote", "v", "--force"]);
    let mut on_b = Writes::new(SIZE as usize);
    on_b.image.copy_from_slice(&w.image);
    qemu_io(&p.b.uri("v"), &on_b.commands(&[(2 * MIB, 65536, 0xb2)]));
    scatter(&p.a, "v", &mut w, 3, 8, 4096);
    p.lab.heal();
    wait_state(&p.a, "v", "split-brain", 30);
    wait_state(&p.b, "v", "split-brain", 30);
    let events = p.a.api("/events").to_string();
    assert!(events.contains("mirror-split-brain"), "{events}");
    assert_ne!(image(&p.b, "v", &p.scratch()), w.image, "B kept its own changes while split");

    p.b.cli_ok(&["mirror", "resolve", "v", "--discard", "local"]);
    wait_state(&p.a, "v", "in-sync", 60);
    assert_same(&image(&p.b, "v", &p.scratch()), &w.image, "B after the resolution");
    assert_same(&image(&p.a, "v", &p.scratch()), &w.image, "A after the resolution");
    let b = show(&p.b, "v");
    assert_eq!(b["role"], "secondary", "{b}");
}

/// A sync mirror: fio writes and verifies on A, A is killed, B is promoted, and fio's verify
/// passes on B. Then a writer that logs every acknowledged write is cut short by SIGKILL at
/// a random point: every acknowledged write reads back on the promoted mirror.
#[test]
fn a_sync_mirror_has_every_acknowledged_write_when_the_primary_is_killed() {
    let mut p = Pair::start(FAST, FAST);
    p.mirror(Side::A, "v", "sync");
    let scratch = p.scratch();
    let fio = |s: &Serve, verify_only: bool| {
        let mut c = Command::new("fio");
        c.current_dir(&scratch)
            .args(["--name=mirror", "--ioengine=nbd", "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=8M"])
            .args(["--verify=crc32c", "--verify_fatal=1", "--randrepeat=1", "--randseed=7"])
            .arg(format!("--uri={}", s.uri("v")));
        if verify_only {
            c.arg("--verify_only");
        } else {
            c.arg("--do_verify=1");
        }
        run(&mut c)
    };
    fio(&p.a, false);

    // Random 4 KiB writes, each logged when sent and when acknowledged; no flush.
    let script = format!(
        "import random, sys\n\
         h = nbd.NBD()\n\
         h.connect_uri({uri:?})\n\
         rnd = random.Random(11)\n\
         i = 0\n\
         while True:\n\
         \x20   i += 1\n\
         \x20   off = 8*1024*1024 + rnd.randrange(0, 24*1024*1024 // 4096) * 4096\n\
         \x20   b = i % 251 + 1\n\
         \x20   print('sent', off, b, flush=True)\n\
         \x20   h.pwrite(bytes([b]) * 4096, off)\n\
         \x20   print('ack', off, b, flush=True)\n",
        uri = p.a.uri("v")
    );
    // nbdsh runs `env python3`; the libnbd module is installed for the system Python.
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    let mut writer = Command::new("nbdsh")
        .arg("-c")
        .arg(&script)
        .env("PATH", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = writer.stdout.take().unwrap();
    let reader = std::thread::spawn(move || BufReader::new(out).lines().map_while(Result::ok).collect::<Vec<String>>());
    std::thread::sleep(Duration::from_millis(1500 + (std::process::id() as u64 * 7919) % 2000));
    p.a.kill9();
    let _ = writer.wait();
    let log = reader.join().unwrap();
    let acked = log.iter().filter(|l| l.starts_with("ack")).count();
    assert!(acked > 10, "the writer got {acked} acknowledgements before the kill");
    eprintln!("{acked} writes acknowledged before the kill");

    p.b.cli_ok(&["mirror", "promote", "v", "--force"]);
    fio(&p.b, true);
    let img = image(&p.b, "v", &p.scratch());
    // Per block: the last acknowledged byte, or one sent after it (in flight at the kill).
    let mut allowed: std::collections::HashMap<usize, (u8, Vec<u8>)> = Default::default();
    for l in &log {
        let f: Vec<&str> = l.split(' ').collect();
        let (off, b): (usize, u8) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        let e = allowed.entry(off).or_insert((0, Vec::new()));
        if f[0] == "ack" {
            *e = (b, Vec::new());
        } else {
            e.1.push(b);
        }
    }
    for (off, (last, later)) in allowed {
        let got = img[off];
        assert!(img[off..off + 4096].iter().all(|&x| x == got), "block {off} is torn");
        assert!(
            got == last || later.contains(&got),
            "block {off}: {got} on the mirror, acknowledged {last}, sent later {later:?}"
        );
    }
}

/// Garbage, forged heartbeats and connections without an admitted certificate are dropped
/// and counted; the mirror keeps working.
#[test]
fn bad_input_at_the_mirror_port_is_dropped_and_counted() {
    let p = Pair::start(FAST, FAST);
    p.mirror(Side::A, "v", "async");
    let target: SocketAddr = p.addr(Side::A).parse().unwrap();
    p.lab.run_in(Side::B, || {
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.send_to(b"not a heartbeat", target).unwrap();
        let mut forged = b"CLHB\x01".to_vec();
        forged.extend([0u8; 16 + 8 + 32]);
        u.send_to(&forged, target).unwrap();
        // TCP without TLS, and a TLS hello from nobody.
        let mut t = TcpStream::connect(target).unwrap();
        std::io::Write::write_all(&mut t, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    });
    malformed_frame_from_a_registered_peer(&p, target);
    std::thread::sleep(Duration::from_secs(2));
    let token = std::fs::read_to_string(p.a.data.join("admin.token")).unwrap();
    let auth = format!("Authorization: Bearer {}", token.trim());
    let url = format!("http://127.0.0.1:{}/metrics", p.a.http_port);
    let metrics = p.a.command("curl").args(["-sf", "-H", &auth, &url]).output().unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout).to_string();
    let count = |needle: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(count("cleave_mirror_heartbeats_total{outcome=\"malformed\"}") >= 1.0, "{metrics}");
    assert!(count("cleave_mirror_heartbeats_total{outcome=\"forged\"}") >= 1.0, "{metrics}");
    assert!(count("cleave_mirror_refused_total{reason=\"connection\"}") >= 1.0, "{metrics}");
    assert!(count("cleave_mirror_heartbeats_total{outcome=\"accepted\"}") >= 1.0, "{metrics}");
    assert!(count("cleave_mirror_refused_total{reason=\"malformed\"}") >= 1.0, "{metrics}");
    let mut w = Writes::new(SIZE as usize);
    scatter(&p.a, "v", &mut w, 9, 4, 4096);
    wait_until(&p.a, "v", |v| v["state"] == "in-sync" && v["lag_bytes"] == 0, 30);
    assert_same(&image(&p.b, "v", &p.scratch()), &w.image, "the mirror after bad input");
}

/// A peer with valid credentials (a registered client of A's CA) whose TLS connection carries a
/// frame of an unknown kind: A must count it and end that connection (openssl hangs up then).
fn malformed_frame_from_a_registered_peer(p: &Pair, target: SocketAddr) {
    let creds = p.scratch().join("creds-rogue.json");
    p.a.cli_ok(&["mirror", "credentials", "rogue", "--out", creds.to_str().unwrap()]);
    let c: Value = serde_json::from_str(&std::fs::read_to_string(&creds).unwrap()).unwrap();
    let file = |name: &str, field: &str| {
        let path = p.scratch().join(name);
        std::fs::write(&path, c[field].as_str().unwrap()).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (ca, cert, key) =
        (file("rogue-ca.pem", "ca_pem"), file("rogue-cert.pem", "cert_pem"), file("rogue-key.pem", "key_pem"));
    // len 9 (kind and id), kind 77, id 0.
    let frame = [0, 0, 0, 9, 77, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut child = p
        .lab
        .command(Side::B, "timeout")
        .args(["20", "openssl", "s_client", "-quiet", "-connect", &target.to_string()])
        .args(["-cert", &cert, "-key", &key, "-CAfile", &ca])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &frame).unwrap();
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(124), "the gateway kept a connection that sent a malformed frame");
}

/// iSCSI hosts see a mirror pair as two ALUA target port groups (1 on the side that created
/// the mirror, 2 on the other; unit-tested in the gateway): the primary's active/optimized, the
/// mirror's standby (media access refused). A planned switchover swaps the states, and a host that kept its session to
/// the old mirror writes through it.
#[test]
fn iscsi_hosts_see_the_primary_optimized_and_follow_a_switchover() {
    let extra = [FAST, &["--iscsi", "0.0.0.0:3260"]].concat();
    let p = Pair::start(&extra, &extra);
    p.mirror(Side::A, "v", "sync");
    const HOST: &str = "iqn.2026-01.invalid.test:multipath";
    for s in [&p.a, &p.b] {
        s.cli_ok(&["client", "add", "h", "--out", p.scratch().join("h-tls").to_str().unwrap()]);
        s.cli_ok(&["client", "initiator", "add", "h", HOST, "--no-chap"]);
        s.cli_ok(&["group", "add", "hosts"]);
        s.cli_ok(&["group", "join", "hosts", "h"]);
        s.cli_ok(&["group", "grant", "hosts", "v"]);
    }
    let io = |s: &Serve, cmd: &str| {
        let opts = format!(
            "driver=iscsi,transport=tcp,portal=127.0.0.1:3260,target=iqn.2025-01.invalid.cleave:cleave:v,lun=0,initiator-name={HOST}"
        );
        // Reads open read-only: a standby path must refuse the read itself, not the opening.
        let mut c = s.command("qemu-io");
        if cmd.starts_with("read") {
            c.arg("-r");
        }
        let out = c.args(["--image-opts", &opts, "-c", cmd]).output().unwrap();
        let t = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success() && !t.contains("failed") && !t.contains("rror"), t)
    };
    let (ok, t) = io(&p.a, "write -P 0x61 0 64k");
    assert!(ok, "the primary (active/optimized) refused a write: {t}");
    let (ok, t) = io(&p.b, "read 0 64k");
    assert!(!ok, "the mirror (standby) served a read: {t}");

    p.b.cli_ok(&["mirror", "promote", "v"]);
    let (ok, t) = io(&p.b, "read -P 0x61 0 64k");
    assert!(ok, "the promoted side does not serve what A wrote: {t}");
    let (ok, t) = io(&p.b, "write -P 0x62 64k 64k");
    assert!(ok, "the promoted side refused a write: {t}");
    let (ok, t) = io(&p.a, "read 0 64k");
    assert!(!ok, "the old primary (standby now) served a read: {t}");
    wait_until(&p.b, "v", |v| v["state"] == "in-sync" && v["lag_bytes"] == 0, 60);
}
