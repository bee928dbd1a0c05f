//! libiscsi's compliance suite (`iscsi-test-cu`, Debian `libiscsi-bin`) against a RAM disk.
//! Every family listed in PASSING passes today; one that starts failing breaks this test.
//! Families not listed: see docs/iscsi.md.

mod common;

use common::*;

/// Families that pass completely with `--dataloss` (libiscsi 1.19). Some of their tests pass
/// by skipping what the target does not claim (e.g. protection information).
const PASSING: &[&str] = &[
    "SCSI.TestUnitReady",
    "SCSI.Inquiry",
    "SCSI.ReadCapacity10",
    "SCSI.ReadCapacity16",
    "SCSI.Read6",
    "SCSI.Read10",
    "SCSI.Read12",
    "SCSI.Read16",
    "SCSI.Write10",
    "SCSI.Write12",
    "SCSI.Write16",
    "SCSI.WriteSame10",
    "SCSI.WriteSame16",
    "SCSI.WriteVerify10",
    "SCSI.WriteVerify12",
    "SCSI.WriteVerify16",
    "SCSI.Unmap",
    "SCSI.Verify10",
    "SCSI.Verify12",
    "SCSI.Verify16",
    "SCSI.CompareAndWrite",
    "SCSI.ModeSense6",
    "SCSI.Mandatory",
    "SCSI.Prefetch10",
    "SCSI.Prefetch16",
    "SCSI.StartStopUnit",
    "SCSI.PreventAllow",
    "SCSI.NoMedia",
    "SCSI.ReadOnly",
    "SCSI.MultipathIO",
    "SCSI.PrinReadKeys",
    "SCSI.PrinServiceactionRange",
    "SCSI.PrinReportCapabilities",
    "SCSI.ProutRegister",
    "SCSI.ProutReserve",
    "SCSI.ProutClear",
    "SCSI.ProutPreempt",
    "iSCSI.iSCSIcmdsn",
    "iSCSI.iSCSIdatasn",
    "iSCSI.iSCSIResiduals",
    "iSCSI.iSCSITMF",
];

/// (tests run, tests failed) from CUnit's run summary.
fn summary(out: &str) -> Option<(u32, u32)> {
    let line = out.lines().find(|l| l.trim_start().starts_with("tests "))?;
    let n: Vec<u32> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    Some((*n.get(1)?, *n.get(3)?))
}

#[test]
fn compliance_families_that_pass_keep_passing() {
    let addr = start(access(&["disk"], 64 << 20));
    let u = url(addr, "disk");
    let mut broken = Vec::new();
    for family in PASSING {
        let o = run("iscsi-test-cu", &["--dataloss", "-n", "-t", family, &u]);
        let out = text(&o);
        match summary(&out) {
            Some((ran, 0)) if ran > 0 => {}
            got => broken.push(format!("{family}: {got:?}\n{out}")),
        }
    }
    assert!(broken.is_empty(), "families that no longer pass:\n{}", broken.join("\n"));
}
