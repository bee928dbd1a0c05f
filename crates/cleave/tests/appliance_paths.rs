//! Back-end path loss in an appliance (docs/appliance.md), with real etcd and `cleave
//! gateway` processes: the primary's targets are taken away from it alone (an empty file
//! system mounted over them in its own mount namespace, as when a mount is lost), while the
//! other gateway still reaches them. The primary gives the volume up, the other gateway
//! takes it over and serves every flushed write, and the old primary forwards I/O to it.
//! When the path comes back the volume stays where it is.
//!
//! Front-end path loss: the address the primary's NBD listener is advertised at (a fault
//! proxy in front of it) stops answering. The primary gives its volumes up the same way.
//!
//! Needs root (`unshare`, `nsenter`, `mount`).

mod common;

use std::time::{Duration, Instant};

use cleave_control::config::testing::EtcdCluster;
use common::appliance::{
    acknowledges, chunk_is, cut_path, event_kinds, gateway_id, member, member_with, one_at_a_time, served_here,
    wait_for,
};
use common::nbdcopy_image;
use common::proxy::Proxy;

const MIB: u64 = 1 << 20;

#[test]
fn a_primary_that_loses_its_targets_passes_its_volumes_to_a_gateway_that_reaches_them() {
    let _one = one_at_a_time();
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let endpoints = etcd.endpoints();
    let mut a = member_with(None, true, dir.path(), "a", &endpoints, None, &[]);
    a.cli_ok(&["volume", "create", "v", "--size", "16MiB", "--durability", "dispersed"]);
    let mut b = member(dir.path(), "b", &endpoints, Some(&dir.path().join("a")));
    let id_b = gateway_id(&b);
    assert!(served_here(&a, "v"), "{}", a.show("v"));
    let (acked, text) = acknowledges(&a, "v", 0, 0x31);
    assert!(acked, "the primary refused a write before the cut: {text}");

    // The volume's five directory targets live in a's data directory: gone for a alone.
    let targets = dir.path().join("a").join("targets");
    cut_path(&a, &targets, false);
    let cut = Instant::now();
    wait_for("b to take v over", Duration::from_secs(60), || served_here(&b, "v"));
    eprintln!("back-end path of the primary lost: the other gateway serves the volume {:?} after", cut.elapsed());
    let kinds = event_kinds(&a);
    assert!(kinds.iter().any(|k| k == "path_lost"), "no path_lost event: {kinds:?}");
    wait_for("a to name b the primary", Duration::from_secs(10), || a.show("v")["primary"] == id_b.as_str());
    // A host of a still writes: a forwards its requests to b.
    let (acked, text) = acknowledges(&a, "v", MIB, 0x32);
    assert!(acked, "the gateway that cannot reach the targets did not forward a write:\n{text}");

    // Every flushed write is served by the new primary, which takes new ones.
    let image = nbdcopy_image(&b.uri("v"), dir.path());
    assert!(chunk_is(&image, 0, 0x31), "the write flushed before the cut is not there");
    assert!(chunk_is(&image, 1, 0x32), "the write forwarded by a is not there");
    let (acked, text) = acknowledges(&b, "v", MIB, 0x33);
    assert!(acked, "the new primary refused a write: {text}");

    // The path comes back: nothing names a first, so the volume stays with b.
    cut_path(&a, &targets, true);
    std::thread::sleep(Duration::from_secs(6));
    assert!(served_here(&b, "v"), "{}", b.show("v"));
    let image = nbdcopy_image(&b.uri("v"), dir.path());
    assert!(chunk_is(&image, 0, 0x31) && chunk_is(&image, 1, 0x33), "a flushed write is missing");
    a.term();
    b.term();
}

#[test]
fn a_primary_whose_nbd_listener_cannot_be_reached_passes_its_volumes_on() {
    let _one = one_at_a_time();
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let endpoints = etcd.endpoints();
    // a listens on one port and is reached through a proxy it advertises, as behind a
    // forwarded port or a virtual address.
    let nbd_port = common::free_port();
    let nbd = format!("127.0.0.1:{nbd_port}");
    let proxy = Proxy::start("127.0.0.1:0".parse().unwrap(), nbd.parse().unwrap());
    let advertised = proxy.addr().to_string();
    let extra = ["--nbd", nbd.as_str(), "--nbd-advertise", advertised.as_str()];
    let mut a = member_with(None, false, dir.path(), "a", &endpoints, None, &extra);
    a.nbd_port = nbd_port;
    a.cli_ok(&["volume", "create", "v", "--size", "16MiB"]);
    let mut b = member(dir.path(), "b", &endpoints, Some(&dir.path().join("a")));
    let id_b = gateway_id(&b);
    assert!(served_here(&a, "v"), "{}", a.show("v"));
    let shown = a.show("v");
    assert!(
        shown["nbds_uri"].as_str().unwrap().contains(&advertised),
        "hosts are told the advertised address: {shown}"
    );
    let (acked, text) = acknowledges(&a, "v", 0, 0x41);
    assert!(acked, "the primary refused a write before the cut: {text}");

    proxy.set_blocked(true);
    let cut = Instant::now();
    wait_for("b to take v over", Duration::from_secs(60), || served_here(&b, "v"));
    eprintln!("front-end path of the primary lost: the other gateway serves the volume {:?} after", cut.elapsed());
    let events = a.api("/events");
    let lost = events.as_array().unwrap().iter().any(|e| {
        e["kind"] == "path_lost" && e["detail"].as_str().is_some_and(|d| d.contains("NBD listener does not answer"))
    });
    assert!(lost, "no path_lost event naming the NBD listener: {events}");
    wait_for("a to name b the primary", Duration::from_secs(10), || a.show("v")["primary"] == id_b.as_str());
    // A host on a's local socket still writes: a forwards to b, whose listener answers.
    let (acked, text) = acknowledges(&a, "v", MIB, 0x42);
    assert!(acked, "the gateway hosts cannot reach did not forward a local host's write:\n{text}");
    let image = nbdcopy_image(&b.uri("v"), dir.path());
    assert!(chunk_is(&image, 0, 0x41), "the write flushed before the cut is not there");
    assert!(chunk_is(&image, 1, 0x42), "the write forwarded by a is not there");

    // The listener answers again: nothing names a first, so the volume stays with b.
    proxy.set_blocked(false);
    std::thread::sleep(Duration::from_secs(6));
    assert!(served_here(&b, "v"), "{}", b.show("v"));
    a.term();
    b.term();
}
