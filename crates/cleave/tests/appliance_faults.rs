//! Faults an appliance (docs/appliance.md) rides out, with real etcd and `cleave serve`
//! processes:
//! - the leader of a three-member etcd cluster is killed: the primary gateway keeps
//!   acknowledging writes and flushes over several leases and stays the primary, a change made
//!   through one gateway still reaches the other, and a failover still serves every flushed
//!   write;
//! - the primary gateway is cut off from etcd and from the other gateway by a real partition
//!   (network namespaces, the link between them set down) while a client keeps writing to it:
//!   it stops acknowledging within its lease, the other gateway takes the volume over and is
//!   written, and once the link is back the cut-off gateway names the other as the primary,
//!   nothing it was sent while it held no lease is visible through either gateway, and it
//!   forwards its hosts' new requests to the other;
//! - the standby of a `local` volume stops answering (SIGSTOP): its primary gives it up within
//!   seconds (`standby_lost`) and acknowledges the host's write and FLUSH from the targets;
//! - the link between two gateways is cut while both reach etcd over another: heartbeats
//!   tell each of them (`peer_lost`), and the primary gives up its standby across the cut.
//!
//! Needs root (`ip netns`). The tests run one at a time: both time leases of a few seconds.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use cleave_control::config::testing::EtcdCluster;
use cleave_iscsi::testing::Raw;
use common::appliance::{
    acknowledges, alua_view, chunk_is, event_kinds, gateway_id, host_may_write, member, member_on, member_with,
    one_at_a_time, pair_with_standby, served_here, signal, wait_for, LEASE, NON_OPTIMIZED, UNAVAILABLE,
};
use common::netns::{Lab, Side};
use common::{nbdcopy_image, qemu_io, Serve};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const INITIATOR: &str = "iqn.2026-01.invalid.test:host";
const TUR: [u8; 6] = [0; 6];

/// The index of the etcd member that leads: the one whose status names itself as leader.
fn etcd_leader(etcd: &EtcdCluster) -> usize {
    for (i, url) in etcd.all_endpoints().split(',').enumerate() {
        let status = Command::new("curl")
            .args(["-sf", "-m", "2", "-X", "POST", "-d", "{}", &format!("{url}/v3/maintenance/status")])
            .output()
            .unwrap();
        let Ok(status) = serde_json::from_slice::<Value>(&status.stdout) else { continue };
        if status["leader"].is_string() && status["leader"] == status["header"]["member_id"] {
            return i;
        }
    }
    panic!("no etcd member says it leads:\n{}", etcd.logs());
}

/// The primary of `volume` as `s` names it, once `s` knows the volume.
fn primary_seen_by(s: &Serve, volume: &str) -> Option<String> {
    let out = s.cli(&["volume", "show", volume, "--json"]);
    let show: Value = serde_json::from_slice(&out.stdout).ok()?;
    show["primary"].as_str().map(str::to_string)
}

/// The first byte where `got` differs from `want`, if any: images are never printed whole.
fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    assert_eq!(got.len(), want.len(), "image size");
    got.iter().zip(want).position(|(g, w)| g != w)
}

/// Writes MiB `chunk` of `v` through `s` with a byte of its own and flushes; both must be
/// acknowledged. `want` is the image the volume should now hold.
fn write_chunk(s: &Serve, want: &mut [u8], chunk: u64, when: &str) {
    let byte = 0x10 + chunk as u8;
    let (acked, text) = acknowledges(s, "v", chunk * MIB, byte);
    assert!(acked, "the primary refused a write and flush of chunk {chunk} {when}:\n{text}");
    want[(chunk * MIB) as usize..((chunk + 1) * MIB) as usize].fill(byte);
}

#[test]
fn the_primary_keeps_serving_when_the_etcd_leader_dies_and_still_fails_over() {
    let _one = one_at_a_time();
    let mut etcd = EtcdCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let endpoints = etcd.endpoints();
    let mut a = member(dir.path(), "a", &endpoints, None);
    a.cli_ok(&["volume", "create", "v", "--size", "64MiB", "--durability", "dispersed"]);
    let mut b = member(dir.path(), "b", &endpoints, Some(&dir.path().join("a")));
    let (id_a, id_b) = (gateway_id(&a), gateway_id(&b));
    assert!(served_here(&a, "v"), "{}", a.show("v"));
    let mut want = vec![0u8; 64 * MIB as usize];
    write_chunk(&a, &mut want, 0, "before any fault");

    // The leader dies; the gateways still have its address among their endpoints.
    let leader = etcd_leader(&etcd);
    etcd.kill(leader);
    let killed = Instant::now();
    let mut chunk = 1;
    while killed.elapsed() < 4 * LEASE {
        assert!(chunk < 64, "more writes than the volume has chunks");
        write_chunk(&a, &mut want, chunk, &format!("{:?} after the etcd leader died", killed.elapsed()));
        chunk += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let new_leader = etcd_leader(&etcd);
    eprintln!(
        "etcd member {leader} (the leader) killed; member {new_leader} leads; {} chunks written since",
        chunk - 1
    );
    assert!(served_here(&a, "v"), "{}", a.show("v"));
    assert_eq!(primary_seen_by(&b, "v").as_deref(), Some(id_a.as_str()));
    let kinds = event_kinds(&a);
    assert!(!kinds.iter().any(|k| k == "gateway_fenced"), "the primary fenced itself: {kinds:?}");

    // Administration through either gateway still reaches the other.
    let creds = dir.path().join("host1.json");
    a.cli_ok(&["client", "add", "host1", "--out", creds.to_str().unwrap()]);
    let seen = wait_for("b to see a's new client", Duration::from_secs(10), || {
        b.cli_ok(&["client", "list"]).contains("host1")
    });
    b.cli_ok(&["user", "add", "ops", "--role", "viewer"]);
    wait_for("a to see b's new user", Duration::from_secs(10), || a.cli_ok(&["user", "list"]).contains("ops"));
    b.cli_ok(&["volume", "create", "w", "--size", "4MiB", "--durability", "dispersed"]);
    wait_for("a to name b the primary of w", Duration::from_secs(10), || {
        primary_seen_by(&a, "w").as_deref() == Some(id_b.as_str())
    });
    let (acked, text) = acknowledges(&b, "w", 0, 0x77);
    assert!(acked, "b refused a write to the volume it created: {text}");
    eprintln!("a client added through a seen by b after {seen:?}");

    // The primary dies: B takes v over and serves every flushed write, byte for byte.
    a.kill9();
    let took = wait_for("b to take v over", Duration::from_secs(60), || served_here(&b, "v"));
    eprintln!("failover after the kill: {took:?}");
    let kinds = event_kinds(&b);
    assert!(kinds.iter().any(|k| k == "gateway_failover"), "{kinds:?}");
    let image = nbdcopy_image(&b.uri("v"), dir.path());
    if let Some(at) = first_difference(&image, &want) {
        panic!("v through b after the failover differs at byte {at}: {:#x}, want {:#x}", image[at], want[at]);
    }
    b.term();
}

/// An NBD client that stays connected to one export (libnbd's Python binding): told a write,
/// it sends the write and then a flush on that connection, and says which were acknowledged.
struct NbdClient {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<String>,
}

const CLIENT: &str = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("connected", flush=True)
for line in sys.stdin:
    offset, length, byte = map(int, line.split())
    said = []
    for op in (lambda: h.pwrite(bytes([byte]) * length, offset), h.flush):
        try:
            op()
            said.append("ok")
        except nbd.Error:
            said.append("refused")
    print(*said, flush=True)
"#;

impl NbdClient {
    fn connect(uri: &str) -> NbdClient {
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", CLIENT, uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with libnbd (python3-libnbd)");
        let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        let (tx, replies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let client = NbdClient { child, stdin, replies };
        assert_eq!(client.reply(), "connected");
        client
    }

    fn reply(&self) -> String {
        self.replies.recv_timeout(Duration::from_secs(60)).expect("the NBD client answers within a minute")
    }

    /// Writes `len` bytes of `byte` at `offset`, then flushes: whether both were acknowledged.
    fn write_flush(&mut self, offset: u64, len: u64, byte: u8) -> bool {
        writeln!(self.stdin, "{offset} {len} {byte}").unwrap();
        match self.reply().as_str() {
            "ok ok" => true,
            "ok refused" | "refused ok" | "refused refused" => false,
            other => panic!("the NBD client said {other:?}"),
        }
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The partition test's volume is written in slots of 64 KiB, each with its own byte.
const SLOT: u64 = 64 << 10;
const SIZE: u64 = 16 * MIB;
/// A fresh client of A, cut off, writes 1 MiB here; B writes in `B_SLOTS`.
const FRESH_A: u64 = 12 * MIB;
const B_SLOTS: std::ops::Range<u64> = 224..228;

fn pattern(slot: u64) -> u8 {
    (slot % 200) as u8 + 1
}

/// What a reader of the volume must see: `image`, except that a slot in `either` may also
/// hold its own byte (a write whose acknowledgement was refused while the lease lapsed).
struct Expected {
    image: Vec<u8>,
    either: Vec<u64>,
}

impl Expected {
    fn fill(&mut self, slot: u64, byte: u8) {
        self.image[(slot * SLOT) as usize..((slot + 1) * SLOT) as usize].fill(byte);
    }

    fn check(&self, got: &[u8], what: &str) {
        assert_eq!(got.len(), self.image.len(), "{what}: image size");
        for slot in 0..SIZE / SLOT {
            let range = (slot * SLOT) as usize..((slot + 1) * SLOT) as usize;
            let (g, w) = (&got[range.clone()], &self.image[range]);
            if g == w || (self.either.contains(&slot) && g.iter().all(|&b| b == pattern(slot))) {
                continue;
            }
            let at = first_difference(g, w).unwrap();
            panic!("{what}: slot {slot} differs at byte {at} of it: {:#x}, want {:#x}", g[at], w[at]);
        }
    }
}

#[test]
fn a_partitioned_primary_stops_acknowledging_and_what_it_was_sent_after_reaches_no_reader() {
    let _one = one_at_a_time();
    // A alone in namespace A; etcd and gateway B in namespace B, reached from A over the link.
    let lab = Lab::new();
    let etcd = lab.run_in(Side::B, || EtcdCluster::start_on(1, lab.addr(Side::B).into()));
    let dir = tempfile::tempdir().unwrap();
    let endpoints = etcd.endpoints();
    // Each gateway's NBD listener on its namespace's address, where the other forwards to it.
    let mut a = member_on(lab.ns(Side::A), lab.addr(Side::A), dir.path(), "a", &endpoints, None);
    a.cli_ok(&["volume", "create", "v", "--size", "16MiB", "--durability", "dispersed"]);
    let key_from = Some(dir.path().join("a"));
    let mut b = member_on(lab.ns(Side::B), lab.addr(Side::B), dir.path(), "b", &endpoints, key_from.as_deref());
    let id_b = gateway_id(&b);
    assert!(served_here(&a, "v"), "{}", a.show("v"));

    let mut want = Expected { image: vec![0; SIZE as usize], either: Vec::new() };
    let mut client = NbdClient::connect(&a.uri("v"));
    for slot in 0..4 {
        assert!(client.write_flush(slot * SLOT, SLOT, pattern(slot)), "A refused slot {slot} before the cut");
        want.fill(slot, pattern(slot));
    }

    lab.cut();
    let cut = Instant::now();
    // The client keeps writing through A, a new slot each time. A's last renewal was sent
    // before the cut, so from 3/4 of the lease after it A holds no lease: whatever it is sent
    // from then on must never be acknowledged nor seen. Before that, what A acknowledges must
    // last; the write of the first refused attempt may have gone in before the lease lapsed.
    let mut slot = 4;
    let mut refused_at = None;
    loop {
        let at = cut.elapsed();
        let acked = client.write_flush(slot * SLOT, SLOT, pattern(slot));
        if acked {
            assert!(refused_at.is_none(), "A acknowledged slot {slot} {at:?} after the cut, after refusing one");
            assert!(at < LEASE * 3 / 4, "A acknowledged slot {slot} sent {at:?} after the cut, its lease is {LEASE:?}");
            want.fill(slot, pattern(slot));
        } else if refused_at.is_none() {
            refused_at = Some(at);
            if at < LEASE * 3 / 4 {
                want.either.push(slot);
            }
        }
        slot += 1;
        if at >= LEASE {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused_at = refused_at.unwrap();
    // Any other client is refused too (the export is gone).
    let (acked, text) = acknowledges(&a, "v", FRESH_A, 0xee);
    assert!(!acked, "A, cut off past its lease, acknowledged a new client:\n{text}");

    wait_for("b to take v over", Duration::from_secs(60), || served_here(&b, "v"));
    let took_at = cut.elapsed();
    let b_writes = format!("write -P 177 {} {}", B_SLOTS.start * SLOT, B_SLOTS.count() as u64 * SLOT);
    qemu_io(&b.uri("v"), &[format!("write -P 176 {SLOT} {SLOT}"), b_writes, "flush".into()]);
    want.fill(1, 176);
    B_SLOTS.for_each(|s| want.fill(s, 177));
    assert!(!client.write_flush(slot * SLOT, SLOT, pattern(slot)), "A acknowledged a write after B took over");
    slot += 1;

    lab.heal();
    let rejoined = wait_for("a to name b the primary", Duration::from_secs(30), || {
        primary_seen_by(&a, "v").as_deref() == Some(id_b.as_str())
    });
    // Back in the appliance, A serves v no more: it forwards its hosts' requests to B, the
    // client that stayed connected and a new one alike, and B has what they wrote.
    assert!(!served_here(&a, "v"), "{}", a.show("v"));
    let (acked, text) = acknowledges(&a, "v", FRESH_A, 0xef);
    assert!(acked, "A did not forward a new client's write to B:\n{text}");
    (FRESH_A / SLOT..FRESH_A / SLOT + MIB / SLOT).for_each(|s| want.fill(s, 0xef));
    assert!(client.write_flush(slot * SLOT, SLOT, pattern(slot)), "A did not forward a write to B");
    want.fill(slot, pattern(slot));
    assert!(slot < FRESH_A / SLOT, "the slots ran into the others");
    drop(client);
    eprintln!(
        "after the cut: A refused from {refused_at:?} (in doubt: slots {:?}), B served v from {took_at:?}; \
         A named B the primary {rejoined:?} after the heal",
        want.either
    );
    let kinds = event_kinds(&a);
    assert!(kinds.iter().any(|k| k == "gateway_fenced"), "{kinds:?}");

    let through_b = nbdcopy_image(&b.uri("v"), dir.path());
    want.check(&through_b, "v through B");

    // B stops cleanly and gives v up: A serves it again, what the targets hold and nothing
    // from its cache of before the cut.
    b.term();
    wait_for("a to serve v again", Duration::from_secs(30), || served_here(&a, "v"));
    let through_a = nbdcopy_image(&a.uri("v"), dir.path());
    if let Some(at) = first_difference(&through_a, &through_b) {
        panic!("v through A differs from v through B at byte {at}: {:#x} and {:#x}", through_a[at], through_b[at]);
    }
    want.check(&through_a, "v through A after B stopped");
    let (acked, text) = acknowledges(&a, "v", FRESH_A, 0xef);
    assert!(acked, "A, the primary again, refused a write:\n{text}");
    a.term();
}

/// Heartbeats: the link between two gateways is cut while both still reach etcd (over a
/// second link). Each says the other stopped answering (`peer_lost`); the primary keeps the
/// volume (its lease holds) but gives up its standby across the cut within seconds, with no
/// write needed to notice, so FLUSHes reach the targets. An iSCSI host on the other gateway
/// sees that path turn unavailable (ALUA), so multipath would use the primary's. Once the
/// link is back the peers answer again (`peer_back`), the path is non-optimized again, and the
/// standby is made again.
#[test]
fn gateways_cut_from_each_other_say_so_and_keep_no_standby_across_the_cut() {
    let _one = one_at_a_time();
    let lab = Lab::new();
    let db = lab.second_link();
    let etcd = lab.run_in(Side::B, || EtcdCluster::start_on(1, db[1].into()));
    let dir = tempfile::tempdir().unwrap();
    let endpoints = etcd.endpoints();
    let mut a = member_on(lab.ns(Side::A), lab.addr(Side::A), dir.path(), "a", &endpoints, None);
    a.cli_ok(&["volume", "create", "loc", "--size", "4MiB"]);
    let key_from = Some(dir.path().join("a"));
    let nbd_b = format!("{}:{}", lab.addr(Side::B), common::free_port());
    let portal = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let extra = ["--nbd", &nbd_b, "--iscsi", &portal.to_string()];
    let mut b = member_with(Some(lab.ns(Side::B)), false, dir.path(), "b", &endpoints, key_from.as_deref(), &extra);
    let id_b = gateway_id(&b);
    host_may_write(&a, "loc", &dir.path().join("host"), &[INITIATOR]);
    wait_for("b to be loc's standby", Duration::from_secs(30), || a.show("loc")["standby"] == id_b.as_str());
    wait_for("b to see the initiator", Duration::from_secs(5), || {
        b.cli_ok(&["client", "list", "--json"]).contains(INITIATOR)
    });
    let mut host = lab.run_in(Side::B, || Raw::connect(portal));
    assert_eq!(host.login(INITIATOR, "loc"), (0, 0));
    let (local, states) = alua_view(&mut host);
    assert_eq!(states[&local], NON_OPTIMIZED, "b forwards to a: {states:?}");

    lab.cut();
    let cut = Instant::now();
    let gave_up = wait_for("a to give up its standby across the cut", Duration::from_secs(20), || {
        a.show("loc")["standby"].is_null()
    });
    wait_for("b to say a stopped answering", Duration::from_secs(10), || {
        event_kinds(&b).contains(&"peer_lost".to_string())
    });
    assert!(event_kinds(&a).contains(&"peer_lost".to_string()), "{:?}", event_kinds(&a));
    assert!(served_here(&a, "loc"), "a reaches etcd: it keeps the volume\n{}", a.show("loc"));
    let (acked, text) = acknowledges(&a, "loc", 0, 82);
    assert!(acked, "a did not acknowledge a write and a FLUSH with its standby cut off: {text}");
    // Once the silence is longer than a failover would take, a is alive and out of reach.
    wait_for("the host on b to hear its path changed", Duration::from_secs(20), || {
        host.scsi(&TUR, &[], 0).sense_code() == Some((0x6, 0x2a, 0x06))
    });
    let unavailable = cut.elapsed();
    let (_, states) = alua_view(&mut host);
    assert_eq!(states[&local], UNAVAILABLE, "b cannot reach the primary: {states:?}");
    let r = host.scsi(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512);
    assert_eq!(r.sense_code(), Some((0x2, 0x04, 0x0c)), "NOT READY, ASYMMETRIC ACCESS STATE: UNAVAILABLE: {r:?}");

    lab.heal();
    let back =
        wait_for("b to be loc's standby again", Duration::from_secs(30), || a.show("loc")["standby"] == id_b.as_str());
    wait_for("a to say b answers again", Duration::from_secs(10), || {
        event_kinds(&a).contains(&"peer_back".to_string())
    });
    let r = host.scsi(&TUR, &[], 0);
    assert_eq!(r.sense_code(), Some((0x6, 0x2a, 0x06)), "ASYMMETRIC ACCESS STATE CHANGED: {r:?}");
    assert_eq!(alua_view(&mut host).1[&local], NON_OPTIMIZED);
    eprintln!(
        "standby given up {gave_up:?} after the cut, b's path unavailable {unavailable:?} after it; \
         standby made again {back:?} after the heal"
    );
    assert!(chunk_is(&nbdcopy_image(&a.uri("loc"), dir.path()), 0, 82));
    a.term();
    b.term();
}

#[test]
fn a_paused_standby_does_not_stop_its_primary() {
    let _one = one_at_a_time();
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = pair_with_standby(dir.path(), &etcd.endpoints(), "loc");
    signal(&b, "-STOP");
    let (acked, text) = acknowledges(&a, "loc", 0, 81);
    signal(&b, "-CONT");
    assert!(acked, "the primary did not acknowledge a write and a FLUSH with its standby paused: {text}");
    assert!(event_kinds(&a).contains(&"standby_lost".to_string()), "{:?}", event_kinds(&a));
    assert!(served_here(&a, "loc"), "{}", a.show("loc"));
    assert!(chunk_is(&nbdcopy_image(&a.uri("loc"), dir.path()), 0, 81));
    a.term();
    b.term();
}
