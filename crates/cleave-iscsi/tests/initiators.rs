//! Real initiators against the target: libiscsi's tools and qemu-io.

mod common;

use common::*;

#[test]
fn iscsi_inq_readcapacity_and_ls() {
    let addr = start(access(&["disk"], 64 << 20));
    let o = run("iscsi-inq", &["-i", TEST_INITIATOR, &url(addr, "disk")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("CLEAVE"), "{}", text(&o));
    let o = run("iscsi-readcapacity16", &["-i", TEST_INITIATOR, &url(addr, "disk")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("131071") || text(&o).contains("Total size:67108864"), "{}", text(&o));
    let o = run("iscsi-ls", &["-i", TEST_INITIATOR, "-s", &format!("iscsi://{addr}")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&target("disk")), "{}", text(&o));
}
