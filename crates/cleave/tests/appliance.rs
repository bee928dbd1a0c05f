//! Gateways on one etcd are one appliance (docs/appliance.md): each volume is served by one
//! gateway, its primary, which holds it under an etcd lease. Two real `cleave serve`
//! processes and a real etcd:
//! - the second gateway knows the first one's volume and names its primary, and a client, a
//!   user or the webhook set through either gateway is seen by the other within a second, and
//!   both have one CA: a client's certificate from one opens its volume on the other;
//! - the primary is killed right after a flush: the other takes the volumes over within its
//!   lease and serves every flushed write, of a `local` volume too (acknowledged once the
//!   other gateway's standby log held it, and applied from that log at takeover);
//! - the new primary is paused (SIGSTOP) past its lease: the first gateway, restarted, takes
//!   its volumes over and writes; once resumed, the paused one serves neither volume: without
//!   a lease it acknowledges nothing (not even a flush of a volume in `local` durability, which
//!   needs no target) and what it refused reaches no reader; with a new one it forwards its
//!   hosts' requests to the primary.
//!
//! With three gateways, every gateway shows a volume's secondaries in the same order, an
//! administrator can put one first, and when the primary dies the first secondary takes the
//! volume over, not another.

mod common;

use std::time::Duration;

use cleave_control::config::testing::EtcdCluster;
use common::appliance::{
    acknowledges, chunk_is, event_kinds, gateway_id, member, one_at_a_time, served_here, signal, wait_for,
};
use common::{nbdcopy_image, nbdsh, qemu_io, tls_uri, Serve};

const MIB: u64 = 1 << 20;

fn write_flush(s: &Serve, byte: u8, offset: u64) {
    qemu_io(&s.uri("v"), &[format!("write -P {byte} {offset} {MIB}"), "flush".into()]);
}

#[test]
fn volumes_fail_over_to_another_gateway_and_a_paused_primary_is_fenced() {
    let _one = one_at_a_time();
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let mut a = member(dir.path(), "a", &etcd.endpoints(), None);
    a.cli_ok(&["volume", "create", "v", "--size", "16MiB", "--durability", "dispersed"]);
    a.cli_ok(&["volume", "create", "loc", "--size", "4MiB"]);
    let mut b = member(dir.path(), "b", &etcd.endpoints(), Some(&dir.path().join("a")));
    let (id_a, id_b) = (gateway_id(&a), gateway_id(&b));
    assert_ne!(id_a, id_b);
    assert!(served_here(&a, "v"), "{}", a.show("v"));
    let seen_from_b = b.show("v");
    assert_eq!(seen_from_b["primary"], id_a.as_str(), "{seen_from_b}");
    // b exports v too, and shows the health a publishes, not "unavailable".
    wait_for("b to show v's health as a sees it", Duration::from_secs(10), || {
        b.show("v")["health"]["state"] == "clean"
    });
    // A change made through one gateway is seen by the other within a second.
    let creds = dir.path().join("host1.json");
    a.cli_ok(&["client", "add", "host1", "--out", creds.to_str().unwrap()]);
    let seen =
        wait_for("b to see a's new client", Duration::from_secs(5), || b.cli_ok(&["client", "list"]).contains("host1"));
    // One CA for the appliance: host1's certificate, issued by A, will open v on B.
    let ca = |s: &Serve| std::fs::read(s.data.join("tls/ca.crt")).unwrap();
    assert!(ca(&a) == ca(&b), "the gateways of an appliance have different CAs");
    a.cli_ok(&["group", "add", "hosts"]);
    a.cli_ok(&["group", "join", "hosts", "host1"]);
    a.cli_ok(&["group", "grant", "hosts", "v"]);
    assert!(seen < Duration::from_secs(1), "seen after {seen:?}");
    b.cli_ok(&["user", "add", "ops", "--role", "viewer"]);
    wait_for("a to see b's new user", Duration::from_secs(5), || a.cli_ok(&["user", "list"]).contains("ops"));
    // The webhook too: set on one gateway, every gateway sends its events there.
    let hook = "http://127.0.0.1:9/cleave-events";
    a.cli_ok(&["webhook", "set", hook]);
    let webhook_url = |s: &Serve| s.api("/webhook")["url"].as_str().map(str::to_string);
    wait_for("b to follow a's webhook", Duration::from_secs(5), || webhook_url(&b).as_deref() == Some(hook));
    b.cli_ok(&["webhook", "remove"]);
    wait_for("a to follow b's removal", Duration::from_secs(5), || webhook_url(&a).is_none());
    // A control on the appliance's etcd administers the same volumes and users.
    let control = control_on(&etcd.endpoints(), &dir.path().join("control"), &dir.path().join("a"));
    let listed = control.list(&["volume", "list"]);
    assert!(listed.contains("v") && listed.contains("loc"), "{listed}");
    assert!(control.list(&["user", "list"]).contains("ops"));
    drop(control);
    let refused = b.cli(&["volume", "delete", "v"]);
    assert!(!refused.status.success(), "a volume is deleted on its primary only");
    write_flush(&a, 0x0a, 0);
    // A `local` volume's FLUSH must survive the failover too: in an appliance it is
    // acknowledged once B, its standby, keeps the change as well (before that, once the
    // targets hold it). The kill comes well before the cache destages it (3 s after).
    wait_for("b to be the standby of loc", Duration::from_secs(30), || a.show("loc")["standby"] == id_b.as_str());
    let shown = a.show("loc");
    assert_eq!(
        a.show("v")["standby"],
        serde_json::Value::Null,
        "a dispersed volume's FLUSH reaches the targets anyway"
    );
    qemu_io(&a.uri("loc"), &[format!("write -P 12 0 {MIB}"), "flush".into()]);

    // The primary dies: B takes the volume over once A's lease has expired.
    a.kill9();
    let took = wait_for("gateway b to take v over", Duration::from_secs(60), || served_here(&b, "v"));
    eprintln!("failover after the kill: {took:?}");
    let image = nbdcopy_image(&b.uri("v"), dir.path());
    assert!(chunk_is(&image, 0, 0x0a), "a flushed write was lost in the failover");
    // A host with A's certificate reattaches to B over TLS.
    let over_tls = nbdcopy_image(&tls_uri(b.nbd_port, "v", &creds), dir.path());
    assert!(over_tls == image, "the image read over TLS on the new primary differs");
    wait_for("gateway b to take loc over", Duration::from_secs(30), || served_here(&b, "loc"));
    let image = nbdcopy_image(&b.uri("loc"), dir.path());
    assert!(chunk_is(&image, 0, 12), "a flushed write to a local volume was lost in the failover");
    assert_eq!(shown["durability"], "local", "{shown}");
    assert_eq!(shown["flush_reaches_targets"], false, "{shown}");
    let events = b.api("/events");
    assert!(events.as_array().unwrap().iter().any(|e| e["kind"] == "gateway_failover"), "{events}");
    let applied = events.as_array().unwrap().iter().any(|e| {
        e["kind"] == "standby_applied"
            && e["detail"].as_str().is_some_and(|d| d.starts_with("loc: ") && !d.starts_with("loc: 0 "))
    });
    assert!(applied, "b did not apply a's standby log of loc: {events}");
    write_flush(&b, 0x1b, MIB);
    b.cli_ok(&["volume", "create", "l", "--size", "4MiB"]);
    assert!(acknowledges(&b, "l", 0, 61).0);

    // A comes back as a secondary; B is paused past its lease and A takes the volume back.
    a.restart();
    wait_for("gateway a to see b as the primary", Duration::from_secs(30), || a.show("v")["primary"] == id_b.as_str());
    signal(&b, "-STOP");
    wait_for("gateway a to take v back", Duration::from_secs(60), || served_here(&a, "v") && served_here(&a, "l"));
    write_flush(&a, 0x2c, 2 * MIB);
    signal(&b, "-CONT");
    // Resumed, B serves neither volume: until it has a new lease it acknowledges nothing,
    // then it forwards to A. A write it acknowledged is A's; one it refused reached no reader.
    let (acked_l, _) = acknowledges(&b, "l", MIB, 61);
    let (acked_v, _) = acknowledges(&b, "v", 3 * MIB, 61);
    wait_for("gateway b to name a as the primary", Duration::from_secs(30), || b.show("v")["primary"] == id_a.as_str());
    assert!(!served_here(&b, "v") && !served_here(&b, "l"));
    let image = nbdcopy_image(&a.uri("v"), dir.path());
    assert!(chunk_is(&image, 0, 0x0a) && chunk_is(&image, 1, 0x1b) && chunk_is(&image, 2, 0x2c));
    let want = if acked_v { 61 } else { 0 };
    assert!(chunk_is(&image, 3, want), "acknowledged by the resumed gateway: {acked_v}, but not what A holds");
    let image = nbdcopy_image(&a.uri("l"), dir.path());
    let want = if acked_l { 61 } else { 0 };
    assert!(chunk_is(&image, 1, want), "acknowledged by the resumed gateway: {acked_l}, but not what A holds");
    // Once it has a lease again, B forwards to A.
    let (acked, text) = acknowledges(&b, "v", 4 * MIB, 62);
    assert!(acked, "the resumed gateway did not forward a write: {text}");
    assert!(chunk_is(&nbdcopy_image(&a.uri("v"), dir.path()), 4, 62));
    a.term();
    b.term();
}

/// A volume's secondaries as `s` shows them (none while it does not know the volume yet).
fn secondaries(s: &Serve, volume: &str) -> Vec<String> {
    let out = s.cli(&["volume", "show", volume, "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    shown["secondaries"].as_array().unwrap().iter().map(|g| g.as_str().unwrap().to_string()).collect()
}

#[test]
fn the_first_secondary_takes_a_volume_over_in_the_order_an_administrator_set() {
    let _one = one_at_a_time();
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("a");
    let mut a = member(dir.path(), "a", &etcd.endpoints(), None);
    let mut others = vec![
        member(dir.path(), "b", &etcd.endpoints(), Some(&first)),
        member(dir.path(), "c", &etcd.endpoints(), Some(&first)),
    ];
    a.cli_ok(&["volume", "create", "v", "--size", "8MiB", "--durability", "dispersed"]);
    write_flush(&a, 0x0a, 0);
    let id_a = gateway_id(&a);
    let ids: Vec<String> = others.iter().map(gateway_id).collect();
    // Every gateway names the same primary and the same secondaries, in the same order.
    wait_for("every gateway to list two secondaries", Duration::from_secs(10), || {
        secondaries(&a, "v").len() == 2 && others.iter().all(|s| secondaries(s, "v").len() == 2)
    });
    let order = secondaries(&a, "v");
    let mut sorted = order.clone();
    sorted.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(sorted, expected);
    for s in &others {
        assert_eq!(secondaries(s, "v"), order);
        assert_eq!(s.show("v")["primary"], id_a.as_str());
    }
    // An administrator puts the last secondary first, through any gateway.
    let chosen = order[1].clone();
    let refused = others[0].cli(&["volume", "order", "v", "not-a-gateway"]);
    assert!(!refused.status.success(), "a name that is no gateway's was taken");
    others[0].cli_ok(&["volume", "order", "v", &chosen]);
    wait_for("the new order to be seen", Duration::from_secs(5), || secondaries(&a, "v")[0] == chosen);
    // A `local` volume's standby is its first secondary; when an administrator puts the other
    // one first, the standby moves there, and that gateway takes the volume over with every
    // write a FLUSH acknowledged from the two caches.
    a.cli_ok(&["volume", "create", "loc", "--size", "4MiB"]);
    let standby = |s: &Serve| s.show("loc")["standby"].as_str().unwrap_or_default().to_string();
    wait_for("loc to have a standby", Duration::from_secs(30), || !standby(&a).is_empty());
    let keeper = ids.iter().find(|g| **g != standby(&a)).unwrap().clone();
    a.cli_ok(&["volume", "order", "loc", &id_a, &keeper]);
    wait_for("loc's standby to move to its new first secondary", Duration::from_secs(30), || standby(&a) == keeper);
    qemu_io(&a.uri("loc"), &[format!("write -P 12 0 {MIB}"), "flush".into()]);
    // The primary dies: the chosen gateway takes the volume over, the other one does not.
    a.kill9();
    let at = ids.iter().position(|g| *g == chosen).unwrap();
    let took = wait_for("the chosen gateway to take v over", Duration::from_secs(60), || served_here(&others[at], "v"));
    eprintln!("failover to the first secondary after the kill: {took:?}");
    let other = &others[1 - at];
    wait_for("the other gateway to name the new primary", Duration::from_secs(10), || {
        other.show("v")["primary"] == chosen.as_str()
    });
    assert!(!served_here(other, "v"));
    let image = nbdcopy_image(&others[at].uri("v"), dir.path());
    assert!(chunk_is(&image, 0, 0x0a), "a flushed write was lost in the failover");
    let kept_by = &others[ids.iter().position(|g| *g == keeper).unwrap()];
    wait_for("loc's standby to take it over", Duration::from_secs(60), || served_here(kept_by, "loc"));
    assert!(chunk_is(&nbdcopy_image(&kept_by.uri("loc"), dir.path()), 0, 12), "a flushed write to loc was lost");
    assert!(event_kinds(kept_by).contains(&"standby_applied".to_string()), "{:?}", event_kinds(kept_by));
    // The dead gateway left the order with its lease.
    wait_for("the order to drop the dead gateway", Duration::from_secs(15), || {
        secondaries(&others[at], "v") == [ids[1 - at].clone()]
    });
    // A comes back; named first, it takes the volume back by a planned switchover that loses
    // nothing, not even a write no client flushed.
    a.restart();
    let (written, text) = nbdsh(&others[at].uri("v"), &format!("h.pwrite(b'\\x0b' * {MIB}, {MIB})"));
    assert!(written, "{text}");
    others[at].cli_ok(&["volume", "order", "v", &id_a]);
    let took = wait_for("a to take v back", Duration::from_secs(30), || served_here(&a, "v"));
    eprintln!("planned switchover back to the restored gateway: {took:?}");
    let image = nbdcopy_image(&a.uri("v"), dir.path());
    assert!(chunk_is(&image, 0, 0x0a) && chunk_is(&image, 1, 0x0b), "the switchover lost a write");
    // The old primary forwards what its hosts write to the new one.
    let (acked, text) = acknowledges(&others[at], "v", 2 * MIB, 61);
    assert!(acked, "the old primary did not forward a write after the switchover: {text}");
    assert!(!served_here(&others[at], "v"));
    let image = nbdcopy_image(&a.uri("v"), dir.path());
    assert!(chunk_is(&image, 2, 61), "the forwarded write is not on the new primary");
    assert!(event_kinds(&a).contains(&"gateway_handover".to_string()));
    assert!(event_kinds(&others[at]).contains(&"gateway_handover".to_string()));
    // A deleted volume's order goes with it: a new volume of that name stays where it is made.
    a.cli_ok(&["volume", "delete", "v"]);
    let listed = |s: &Serve| s.api("/volumes").as_array().unwrap().iter().any(|x| x["name"] == "v");
    wait_for("the deletion to be seen on every gateway", Duration::from_secs(10), || {
        !listed(&others[0]) && !listed(&others[1])
    });
    others[at].cli_ok(&["volume", "create", "v", "--size", "4MiB"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(served_here(&others[at], "v"), "a new volume took the order of a deleted one of its name");
    a.term();
    for s in &mut others {
        s.term();
    }
}

/// `cleave control --etcd`, with the first gateway's master key (and its own admin token).
struct Control {
    child: std::process::Child,
    http: u16,
    token: std::path::PathBuf,
}

impl Control {
    fn list(&self, args: &[&str]) -> String {
        let server = format!("http://127.0.0.1:{}", self.http);
        let out = std::process::Command::new(common::CLEAVE)
            .args(args)
            .args(["--server", &server, "--token-file"])
            .arg(&self.token)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn control_on(endpoints: &str, data: &std::path::Path, first: &std::path::Path) -> Control {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(data).unwrap();
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::copy(first.join("master.key"), data.join("master.key")).unwrap();
    let http = common::free_port();
    let autoconfig = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = std::process::Command::new(common::CLEAVE)
        .args(["control", "--etcd", endpoints, "--etcd-namespace", "appliance/", "--data-dir"])
        .arg(data)
        .args(["--http", &format!("127.0.0.1:{http}"), "--autoconfig", &format!("127.0.0.1:{autoconfig}")])
        .env("CLEAVE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_started(&mut child);
    Control { child, http, token: data.join("admin.token") }
}
