//! Back-end path loss in an appliance (docs/appliance.md), with real etcd and `cleave
//! gateway` processes: the primary's targets are taken away from it alone (an empty file
//! system mounted over them in its own mount namespace, as when a mount is lost), while the
//! other gateway still reaches them. The primary gives the volume up, the other gateway
//! takes it over and serves every flushed write, and the old primary forwards I/O to it.
//! When the path comes back the volume stays where it is.
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
