//! I/O forwarding in an appliance (docs/appliance.md), with real etcd and three `cleave
//! gateway` processes: a host attached to a gateway that is not the volume's primary writes
//! through it, the primary dies (SIGKILL) or loses its targets mid-write, and the host's
//! I/O pauses and goes on through the same connection: fio's crc32c verify of every block it
//! wrote passes, and a probe measures the time from the kill to the first completed I/O.
//!
//! Over iSCSI too: an initiator logged in to a gateway that is not the primary.
//!
//! `CLEAVE_FAILOVER_RUNS` sets how many kills are measured (3 by default; 10 for the
//! figure in the README).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cleave_control::config::testing::EtcdCluster;
use cleave_iscsi::testing::Raw;
use common::appliance::{
    alua_view, cut_path, gateway_id, host_may_write, member, member_with, one_at_a_time, pair_with_standby,
    served_here, wait_for, NON_OPTIMIZED, OPTIMIZED,
};
use common::Serve;

const MIB: u64 = 1 << 20;
/// The probe writes past what fio writes.
const PROBE_AT: u64 = 64 * MIB;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A host that writes 4 KiB every 20 ms on one connection and says when each write was
/// sent and acknowledged; an error ends it.
struct Probe {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

const PROBE: &str = r#"
import sys, time, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
at = int(sys.argv[2])
print("connected", flush=True)
i = 0
while True:
    sent = time.time()
    try:
        h.pwrite(bytes([i % 251 + 1]) * 4096, at + (i % 256) * 4096)
    except nbd.Error as e:
        print("error", e, flush=True)
        break
    print(sent, time.time(), flush=True)
    i += 1
    time.sleep(0.02)
"#;

impl Probe {
    fn start(uri: &str) -> Probe {
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", PROBE, uri, &PROBE_AT.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with libnbd (python3-libnbd)");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        let probe = Probe { child, lines };
        wait_for("the probe to write", Duration::from_secs(30), || probe.lines.lock().unwrap().len() > 2);
        probe
    }

    /// Stops it: when each write was sent and acknowledged. Panics if one failed.
    fn stop(mut self) -> Vec<(f64, f64)> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let lines = self.lines.lock().unwrap();
        if let Some(e) = lines.iter().find(|l| l.starts_with("error")) {
            panic!("the host got an error through the failover: {e}");
        }
        let times = lines.iter().skip(1).filter_map(|l| {
            let (sent, acked) = l.split_once(' ')?;
            Some((sent.parse::<f64>().ok()?, acked.parse::<f64>().ok()?))
        });
        times.collect()
    }
}

/// Seconds from `kill` to the first acknowledgement of a write sent after it.
fn resumed_after(times: &[(f64, f64)], kill: f64) -> f64 {
    let first = times.iter().filter(|(sent, _)| *sent >= kill).map(|(_, acked)| *acked).fold(f64::INFINITY, f64::min);
    assert!(first.is_finite(), "no write sent after the kill was acknowledged");
    first - kill
}

/// The longest a write waited for its acknowledgement, in seconds.
fn longest_wait(times: &[(f64, f64)]) -> f64 {
    times.iter().map(|(sent, acked)| acked - sent).fold(0.0, f64::max)
}

/// fio's random 4 KiB writes over the first 32 MiB of `uri`, then a crc32c verify of
/// every block, through one NBD connection.
fn fio(uri: &str, dir: &std::path::Path, iops: u32) -> Child {
    Command::new("fio")
        .current_dir(dir)
        .args(["--name=failover", "--ioengine=nbd", "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=32M"])
        .arg(format!("--rate_iops={iops}"))
        .args(["--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0"])
        .arg(format!("--uri={uri}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fio")
}

fn fio_passed(child: Child) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fio failed through the failover:\n{text}");
    assert!(!text.contains("verify: bad"), "{text}");
}

/// The gateway that serves `volume` now.
fn primary(gateways: &[Serve], volume: &str) -> usize {
    let mut at = None;
    wait_for("a gateway to serve the volume", Duration::from_secs(60), || {
        at = gateways.iter().position(|g| g.child.is_some() && served_here(g, volume));
        at.is_some()
    });
    at.unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn a_host_on_another_gateway_writes_on_through_the_death_of_the_primary() {
    let _one = one_at_a_time();
    let runs: usize = std::env::var("CLEAVE_FAILOVER_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("a");
    let mut gateways = vec![member(dir.path(), "a", &etcd.endpoints(), None)];
    gateways[0].cli_ok(&["volume", "create", "v", "--size", "128MiB"]);
    for name in ["b", "c"] {
        gateways.push(member(dir.path(), name, &etcd.endpoints(), Some(&first)));
    }
    let mut pauses = Vec::new();
    for run in 0..runs {
        let p = primary(&gateways, "v");
        let host = (p + 1) % gateways.len();
        let id_p = gateway_id(&gateways[p]);
        // The host's gateway exports the volume it does not serve.
        assert!(!served_here(&gateways[host], "v"));
        let probe = Probe::start(&gateways[host].uri("v"));
        let writer = fio(&gateways[host].uri("v"), dir.path(), 2000);
        std::thread::sleep(Duration::from_millis(1500));
        let kill = now();
        gateways[p].kill9();
        let started = Instant::now();
        fio_passed(writer);
        let times = probe.stop();
        let pause = resumed_after(&times, kill);
        eprintln!(
            "run {run}: primary {id_p} killed; the host's I/O resumed {pause:.2} s after the kill (longest write {:.2} s)",
            longest_wait(&times)
        );
        pauses.push(pause);
        let q = primary(&gateways, "v");
        assert_ne!(q, p, "the dead gateway serves the volume");
        eprintln!("run {run}: fio verified every block {:?} after the kill", started.elapsed());
        // The dead gateway comes back as a secondary, for the next run.
        gateways[p].restart();
        let id_q = gateway_id(&gateways[q]);
        wait_for("the restarted gateway to name the primary", Duration::from_secs(30), || {
            gateways[p].show("v")["primary"] == id_q.as_str()
        });
    }
    eprintln!(
        "kill of the primary to the first completed I/O through another gateway, {runs} runs: p50 {:.2} s, all {:?}",
        median(pauses.clone()),
        pauses.iter().map(|p| format!("{p:.2}")).collect::<Vec<_>>()
    );
    for g in &mut gateways {
        g.term();
    }
}

#[test]
fn a_host_on_another_gateway_writes_on_when_the_primary_loses_its_targets() {
    let _one = one_at_a_time();
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("a");
    let mut a = member_with(None, true, dir.path(), "a", &etcd.endpoints(), None, &[]);
    a.cli_ok(&["volume", "create", "v", "--size", "128MiB"]);
    let mut b = member(dir.path(), "b", &etcd.endpoints(), Some(&first));
    assert!(served_here(&a, "v"), "{}", a.show("v"));
    let probe = Probe::start(&b.uri("v"));
    // Long enough to write on through the handover.
    let mut writer = fio(&b.uri("v"), dir.path(), 500);
    std::thread::sleep(Duration::from_millis(1500));
    // The volume's directory targets live in a's data directory: gone for a alone.
    cut_path(&a, &first.join("targets"), false);
    let took = wait_for("b to take v over", Duration::from_secs(60), || served_here(&b, "v"));
    assert!(writer.try_wait().unwrap().is_none(), "fio was done before the handover: it proves nothing");
    fio_passed(writer);
    let times = probe.stop();
    eprintln!(
        "back-end path of the primary lost: b served the volume {took:?} after; the longest write through b took {:.2} s",
        longest_wait(&times)
    );
    cut_path(&a, &first.join("targets"), true);
    a.term();
    b.term();
}

const IQN_BASE: &str = "iqn.2025-01.invalid.cleave";
const INITIATOR: &str = "iqn.2026-01.invalid.test:host";
const TUR: [u8; 6] = [0; 6];
/// qemu-io over iSCSI to `portal` as [`INITIATOR`]: whether every command succeeded.
fn qemu_io_iscsi(portal: &str, volume: &str, cmds: &[&str]) -> (bool, String) {
    let opts = format!(
        "driver=iscsi,transport=tcp,portal={portal},target={IQN_BASE}:cleave:{volume},lun=0,initiator-name={INITIATOR}"
    );
    let mut c = Command::new("qemu-io");
    c.arg("--image-opts").arg(opts);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !text.contains("failed") && !text.to_lowercase().contains("error"), text)
}

/// iSCSI is a front end like NBD: an initiator logged in to a gateway that is not the
/// primary writes through it, and reads its data back through it after the primary died.
#[test]
fn an_initiator_on_another_gateway_is_forwarded_and_outlives_the_primary() {
    let _one = one_at_a_time();
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("a");
    let mut a = member(dir.path(), "a", &etcd.endpoints(), None);
    a.cli_ok(&["volume", "create", "v", "--size", "16MiB"]);
    let portal = format!("127.0.0.1:{}", common::free_port());
    let mut b = member_with(None, false, dir.path(), "b", &etcd.endpoints(), Some(&first), &["--iscsi", &portal]);
    // The initiator's client may write v: set up on a, seen by b.
    let certs = dir.path().join("host");
    host_may_write(&a, "v", &certs, &[INITIATOR]);
    wait_for("b to see the initiator", Duration::from_secs(5), || {
        b.cli_ok(&["client", "list", "--json"]).contains(INITIATOR)
    });
    assert!(served_here(&a, "v") && !served_here(&b, "v"));

    let (ok, text) = qemu_io_iscsi(&portal, "v", &["write -P 90 0 1M", "flush"]);
    assert!(ok, "a write over iSCSI through b was not forwarded:\n{text}");
    let image = common::nbdcopy_image(&a.uri("v"), dir.path());
    assert!(image[..MIB as usize].iter().all(|&x| x == 90), "the primary does not hold what b forwarded");
    // ALUA: b's path is active/non-optimized (it forwards), a's active/optimized.
    let mut host = Raw::connect(portal.parse().unwrap());
    assert_eq!(host.login(INITIATOR, "v"), (0, 0));
    let (local, states) = alua_view(&mut host);
    assert_eq!(states.len(), 2, "one port group per gateway: {states:?}");
    assert_eq!(states[&local], NON_OPTIMIZED, "b's own group: {states:?}");
    assert!(states.iter().any(|(g, s)| *g != local && *s == OPTIMIZED), "a's group: {states:?}");
    assert_eq!(host.scsi(&TUR, &[], 0).status, 0);

    a.kill9();
    let (ok, text) = qemu_io_iscsi(&portal, "v", &["read -P 90 0 1M", "write -P 91 1M 1M", "flush"]);
    assert!(ok, "over iSCSI through b after the primary died:\n{text}");
    assert!(served_here(&b, "v"), "{}", b.show("v"));
    // The session kept on b hears of the change once, then finds b's group optimized.
    let r = host.scsi(&TUR, &[], 0);
    assert_eq!(r.sense_code(), Some((0x6, 0x2a, 0x06)), "ASYMMETRIC ACCESS STATE CHANGED: {r:?}");
    assert_eq!(host.scsi(&TUR, &[], 0).status, 0);
    let (_, states) = alua_view(&mut host);
    assert_eq!(states[&local], OPTIMIZED, "b serves v now: {states:?}");
    b.term();
}

/// Waits until a one-block WRITE (10) from `host` gets `status`.
fn write_gets(host: &mut Raw, status: u8, what: &str) {
    wait_for(what, Duration::from_secs(5), || {
        host.scsi(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[7; 512], 0).status == status
    });
}

/// Persistent reservations are the appliance's, not a gateway's: a reservation made through
/// one gateway refuses another host's writes through another gateway (whose session began
/// before it), and a preemption made there fences the first host on the first gateway, which
/// hears of it there (REGISTRATIONS PREEMPTED).
#[test]
fn reservations_made_through_one_gateway_hold_on_every_gateway() {
    const RESERVATION_CONFLICT: u8 = 0x18;
    const WRITE_EXCLUSIVE: u8 = 1;
    let _one = one_at_a_time();
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let portals = [common::free_port(), common::free_port()].map(|p| format!("127.0.0.1:{p}"));
    let mut a = member_with(None, false, dir.path(), "a", &etcd.endpoints(), None, &["--iscsi", &portals[0]]);
    a.cli_ok(&["volume", "create", "v", "--size", "16MiB"]);
    let first = dir.path().join("a");
    let mut b = member_with(None, false, dir.path(), "b", &etcd.endpoints(), Some(&first), &["--iscsi", &portals[1]]);
    let (x, y) = ("iqn.2026-01.invalid.test:x", "iqn.2026-01.invalid.test:y");
    host_may_write(&a, "v", &dir.path().join("host"), &[x, y]);
    wait_for("b to see the initiators", Duration::from_secs(5), || b.cli_ok(&["client", "list", "--json"]).contains(y));
    let mut on_b = Raw::connect(portals[1].parse().unwrap());
    assert_eq!(on_b.login(y, "v"), (0, 0));
    write_gets(&mut on_b, 0, "y to write through b");

    let mut on_a = Raw::connect(portals[0].parse().unwrap());
    assert_eq!(on_a.login(x, "v"), (0, 0));
    assert_eq!(on_a.pr_out(0, 0, 0, 0x11), 0, "x registers through a");
    assert_eq!(on_a.pr_out(1, WRITE_EXCLUSIVE, 0x11, 0), 0, "x reserves through a");
    write_gets(&mut on_b, RESERVATION_CONFLICT, "x's reservation to refuse y's writes through b");
    assert_eq!(on_b.scsi(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512).status, 0, "reads go on");

    // y takes the reservation from x through b: x is fenced on a.
    assert_eq!(on_b.pr_out(0, 0, 0, 0x22), 0, "y registers through b");
    assert_eq!(on_b.pr_out(4, WRITE_EXCLUSIVE, 0x22, 0x11), 0, "y preempts x through b");
    write_gets(&mut on_b, 0, "y, now holding the reservation, to write through b");
    wait_for("x to hear on a that it was preempted", Duration::from_secs(5), || {
        on_a.scsi(&[0; 6], &[], 0).sense_code() == Some((0x6, 0x2a, 0x05))
    });
    write_gets(&mut on_a, RESERVATION_CONFLICT, "the preemption to fence x on a");
    let keys = on_a.scsi(&[0x5e, 0, 0, 0, 0, 0, 0, 1, 0, 0], &[], 256).data;
    assert_eq!(&keys[4..16], &[&8u32.to_be_bytes()[..], &0x22u64.to_be_bytes()].concat()[..], "only y's key is left");
    a.term();
    b.term();
}

/// The exports gateways open on each other (heartbeats, standby logs) are no host's: a client
/// with a certificate that may use the volume, and the local administrator, are answered as
/// for a volume that does not exist, while the gateways use them.
#[test]
fn hosts_cannot_open_the_exports_gateways_keep_for_each_other() {
    let _one = one_at_a_time();
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = pair_with_standby(dir.path(), &etcd.endpoints(), "v");
    let id_b = gateway_id(&b);
    let certs = dir.path().join("host");
    host_may_write(&a, "v", &certs, &[]);
    let standby_log = format!(".standby/{}/1/v", "0".repeat(32));
    let refusal = |uri: &str, export: &str| {
        let out = Command::new("nbdinfo").arg(uri).output().unwrap();
        assert!(!out.status.success(), "a host opened {export} on b ({uri})");
        String::from_utf8_lossy(&out.stderr).replace(export, "EXPORT")
    };
    for export in [".heartbeat", standby_log.as_str()] {
        let tls = |e: &str| common::tls_uri(b.nbd_port, e, &certs);
        assert_eq!(refusal(&tls(export), export), refusal(&tls("nosuch"), "nosuch"), "over TLS");
        assert_eq!(refusal(&b.uri(export), export), refusal(&b.uri("nosuch"), "nosuch"), "on the local socket");
    }
    assert_eq!(a.show("v")["standby"], id_b.as_str(), "the gateways still use them");
    a.term();
    b.term();
}

/// A volume deleted and made again with another size is exported at its new size by a
/// gateway that forwarded the old one.
#[test]
fn a_volume_made_again_is_exported_at_its_new_size_by_every_gateway() {
    let _one = one_at_a_time();
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let mut a = member(dir.path(), "a", &etcd.endpoints(), None);
    a.cli_ok(&["volume", "create", "v", "--size", "16MiB"]);
    let mut b = member(dir.path(), "b", &etcd.endpoints(), Some(&dir.path().join("a")));
    let size = |s: &Serve| b.show("v")["size_bytes"].as_u64().map(|_| common::nbdinfo_size(&s.uri("v")));
    wait_for("b to export v", Duration::from_secs(10), || b.show("v")["size_bytes"] == 16 * MIB);
    assert_eq!(size(&b), Some(16 * MIB));
    a.cli_ok(&["volume", "delete", "v"]);
    a.cli_ok(&["volume", "create", "v", "--size", "32MiB"]);
    wait_for("b to know the new v", Duration::from_secs(10), || {
        b.cli(&["volume", "show", "v", "--json"]).status.success() && b.show("v")["size_bytes"] == 32 * MIB
    });
    assert_eq!(size(&b), Some(32 * MIB), "b exports the new volume at the old one's size");
    a.term();
    b.term();
}
