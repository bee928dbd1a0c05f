//! Real initiators against the target: libiscsi's tools and qemu-io.

mod common;

use std::sync::Arc;

use cleave_nbd::MemDevice;
use common::*;

#[test]
fn iscsi_inq_readcapacity_and_ls() {
    let addr = start(access(&["disk", "other"], 64 << 20));
    let o = run("iscsi-inq", &["-i", TEST_INITIATOR, &url(addr, "disk")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Vendor:CLEAVE") && text(&o).contains("TPGS:1"), "{}", text(&o));
    let o = run("iscsi-readcapacity16", &["-i", TEST_INITIATOR, &url(addr, "disk")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Total size:67108864") && text(&o).contains("LBPME:1"), "{}", text(&o));
    // SendTargets discovery lists every volume; -s logs in to each and shows its LUN.
    let o = run("iscsi-ls", &["-i", TEST_INITIATOR, "-s", &format!("iscsi://{addr}")]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains(&format!("Target:{} Portal:{addr},1", target("disk"))), "{out}");
    assert!(out.contains(&target("other")) && out.contains("Lun:0"), "{out}");
}

#[test]
fn qemu_io_writes_flushes_and_reads_back() {
    let dev = Arc::new(MemDevice::new(32 << 20));
    let addr = start(with_devices(vec![("disk", dev.clone())]));
    let u = url(addr, "disk");
    // 1 MiB is more than the first burst: immediate data, then R2T-solicited Data-Out.
    let cmds = ["write -P 0x5a 0 1M", "write -P 0x33 1M 4k", "flush", "read -P 0x5a 0 1M", "read -P 0x33 1M 4k"];
    let mut args = vec!["-f", "raw"];
    for c in &cmds {
        args.extend(["-c", c]);
    }
    args.push(&u);
    let o = run("qemu-io", &args);
    assert!(o.status.success() && !text(&o).contains("Pattern verification failed"), "{}", text(&o));
    // The device holds what the initiator wrote.
    let c = dev.contents();
    assert!(c[..1 << 20].iter().all(|&b| b == 0x5a) && c[1 << 20..(1 << 20) + 4096].iter().all(|&b| b == 0x33));
}

#[test]
fn chap_right_secret_logs_in_and_wrong_one_is_refused() {
    let initiator = "iqn.2025-01.invalid.test:chap";
    let mut a = access(&["disk"], 1 << 20);
    a.chap.insert(initiator.into(), ("alice".into(), b"goodsecret12".to_vec()));
    let addr = start(a);
    let with = |user: &str| format!("iscsi://{user}@{addr}/{}/0", target("disk"));
    let o = run("iscsi-inq", &["-i", initiator, &with("alice%goodsecret12")]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run("iscsi-inq", &["-i", initiator, &with("alice%wrongsecret1")]);
    assert!(!o.status.success(), "a wrong secret logged in: {}", text(&o));
    let o = run("iscsi-inq", &["-i", initiator, &with("mallory%goodsecret12")]);
    assert!(!o.status.success(), "an unknown CHAP name logged in: {}", text(&o));
    // Without CHAP at all, an initiator that must use it is refused.
    let o = run("iscsi-inq", &["-i", initiator, &url(addr, "disk")]);
    assert!(!o.status.success(), "logged in without CHAP: {}", text(&o));
}

#[test]
fn mutual_chap() {
    let initiator = "iqn.2025-01.invalid.test:mutual";
    let mut a = access(&["disk"], 1 << 20);
    a.chap.insert(initiator.into(), ("alice".into(), b"goodsecret12".to_vec()));
    a.target_chap = Some(("target".into(), b"targetsecret".to_vec()));
    let addr = start(a);
    let u = |tp: &str| {
        format!("iscsi://alice%goodsecret12@{addr}/{}/0?target_user=target&target_password={tp}", target("disk"))
    };
    let o = run("iscsi-inq", &["-i", initiator, &u("targetsecret")]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run("iscsi-inq", &["-i", initiator, &u("notthesecret")]);
    assert!(!o.status.success(), "the initiator accepted a wrong target secret: {}", text(&o));
}

#[test]
fn qemu_io_with_header_digests() {
    let addr = start(access(&["disk"], 8 << 20));
    let opts = format!(
        "driver=iscsi,transport=tcp,portal={addr},target={},lun=0,header-digest=crc32c,initiator-name={TEST_INITIATOR}",
        target("disk")
    );
    let o = run("qemu-io", &["--image-opts", &opts, "-c", "write -P 0x11 0 256k", "-c", "read -P 0x11 0 256k"]);
    assert!(o.status.success() && !text(&o).contains("Pattern verification failed"), "{}", text(&o));
}
