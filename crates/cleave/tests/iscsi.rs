//! `cleave serve --iscsi`: initiators log in as Cleave clients (CHAP, or by name when an
//! administrator allows it), see and use what their groups may, with real initiators
//! (libiscsi's tools and compliance suite, qemu-io) and what they write read back over NBD.

mod common;

use std::process::{Command, Output};

use common::*;

/// The initiator names of libiscsi's test tool (`iscsi-test-cu`), as the README lets them in.
const TEST_INITIATOR: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test";
const TEST_INITIATOR_2: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2";
const READER: &str = "iqn.2026-01.invalid.test:reader";
const IQN_BASE: &str = "iqn.2025-01.invalid.cleave";

struct Gateway {
    serve: Serve,
    portal: String,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start() -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let portal = format!("127.0.0.1:{}", free_port());
        let serve = Serve::start(&dir.path().join("data"), &["--iscsi", &portal]);
        Gateway { serve, portal, _dir: dir }
    }

    fn target(&self, volume: &str) -> String {
        format!("{IQN_BASE}:cleave:{volume}")
    }

    /// `iscsi://[user%secret@]portal/target/0`
    fn url(&self, login: Option<(&str, &str)>, volume: &str) -> String {
        let who = login.map(|(u, s)| format!("{u}%{s}@")).unwrap_or_default();
        format!("iscsi://{who}{}/{}/0", self.portal, self.target(volume))
    }

    /// qemu-io over iSCSI as `initiator`, with CHAP when `login` is given.
    fn qemu_io(&self, initiator: &str, login: Option<(&str, &str)>, volume: &str, cmds: &[&str]) -> Output {
        let mut opts = format!(
            "driver=iscsi,transport=tcp,portal={},target={},lun=0,initiator-name={initiator}",
            self.portal,
            self.target(volume)
        );
        if let Some((user, secret)) = login {
            opts.push_str(&format!(",user={user},password={secret}"));
        }
        let mut c = Command::new("qemu-io");
        // A write-protected LUN opens read-only only.
        if cmds.iter().all(|c| c.starts_with("read")) {
            c.arg("-r");
        }
        c.arg("--image-opts").arg(opts);
        for cmd in cmds {
            c.arg("-c").arg(cmd);
        }
        c.output().unwrap()
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn tool(name: &str, args: &[&str]) -> Output {
    Command::new(name).args(args).output().unwrap()
}

/// A client with CHAP secrets and libiscsi's two test initiators, in a group that may write
/// `disk`; and a read-only client whose initiator logs in without CHAP. Returns the secret.
fn set_up(gw: &Gateway) -> String {
    let s = &gw.serve;
    for v in ["disk", "other"] {
        s.cli_ok(&["volume", "create", v, "--size", "64MiB"]);
    }
    let certs = gw._dir.path().join("certs");
    for (client, group) in [("host1", "writers"), ("host2", "readers")] {
        s.cli_ok(&["client", "add", client, "--out", certs.join(client).to_str().unwrap()]);
        s.cli_ok(&["group", "add", group]);
        s.cli_ok(&["group", "join", group, client]);
    }
    s.cli_ok(&["group", "grant", "writers", "disk"]);
    s.cli_ok(&["group", "grant", "readers", "disk", "--read-only"]);
    let chap: serde_json::Value = serde_json::from_str(&s.cli_ok(&["client", "chap", "host1", "--json"])).unwrap();
    let no_secret = s.cli(&["client", "initiator", "add", "host2", READER]);
    assert!(!no_secret.status.success(), "CHAP asked of a client without a secret was accepted");
    for i in [TEST_INITIATOR, TEST_INITIATOR_2] {
        s.cli_ok(&["client", "initiator", "add", "host1", i]);
    }
    s.cli_ok(&["client", "initiator", "add", "host2", READER, "--no-chap"]);
    chap["secret"].as_str().unwrap().to_string()
}

#[test]
fn initiators_log_in_as_clients_and_get_their_rights() {
    let gw = Gateway::start();
    let secret = set_up(&gw);
    let login = Some(("host1", secret.as_str()));

    // Discovery lists only what the client may see.
    let ls = tool("iscsi-ls", &["-i", TEST_INITIATOR, "-s", &format!("iscsi://host1%{secret}@{}", gw.portal)]);
    let out = text(&ls);
    assert!(ls.status.success() && out.contains(&gw.target("disk")), "{out}");
    assert!(!out.contains(":cleave:other"), "a volume the client cannot reach was listed: {out}");

    let inq = tool("iscsi-inq", &["-i", TEST_INITIATOR, &gw.url(login, "disk")]);
    assert!(inq.status.success(), "{}", text(&inq));
    for (who, url) in [
        ("a wrong secret", gw.url(Some(("host1", "not-the-secret16")), "disk")),
        ("no CHAP where it is required", gw.url(None, "disk")),
        ("another client's CHAP name", gw.url(Some(("host2", &secret)), "disk")),
        ("a volume the client cannot reach", gw.url(login, "other")),
    ] {
        let o = tool("iscsi-inq", &["-i", TEST_INITIATOR, &url]);
        assert!(!o.status.success(), "{who} logged in: {}", text(&o));
    }
    let unknown = tool("iscsi-inq", &["-i", "iqn.2026-01.invalid.test:stranger", &gw.url(None, "disk")]);
    assert!(!unknown.status.success(), "an unknown initiator logged in: {}", text(&unknown));

    // Written over iSCSI, flushed, read back over NBD.
    let w = gw.qemu_io(TEST_INITIATOR, login, "disk", &["write -P 0xa5 1M 3M", "write -P 0x3c 8M 4k", "flush"]);
    assert!(w.status.success() && !text(&w).contains("error"), "{}", text(&w));
    let image = nbdcopy_image(&gw.serve.uri("disk"), gw._dir.path());
    assert_eq!(image.len(), 64 << 20);
    assert!(image[1 << 20..4 << 20].iter().all(|&b| b == 0xa5), "iSCSI writes missing over NBD");
    assert!(image[8 << 20..(8 << 20) + 4096].iter().all(|&b| b == 0x3c));
    assert!(image[..1 << 20].iter().all(|&b| b == 0) && image[4 << 20..8 << 20].iter().all(|&b| b == 0));

    // The read-only client (no CHAP, by an administrator's choice) reads, and cannot write.
    let r = gw.qemu_io(READER, None, "disk", &["read -P 0xa5 1M 3M"]);
    assert!(r.status.success() && !text(&r).contains("verification failed"), "{}", text(&r));
    let w = gw.qemu_io(READER, None, "disk", &["write -P 0x77 1M 4k"]);
    assert!(!w.status.success() || text(&w).contains("error"), "a read-only client wrote: {}", text(&w));
    let after = nbdcopy_image(&gw.serve.uri("disk"), gw._dir.path());
    assert!(after[1 << 20..(1 << 20) + 4096].iter().all(|&b| b == 0xa5), "the read-only write landed");

    // The CLI shows it; removing the initiator stops its logins.
    let list = gw.serve.cli_ok(&["client", "list"]);
    assert!(list.contains(&format!("{READER} (no CHAP)")) && list.contains("one-way"), "{list}");
    gw.serve.cli_ok(&["client", "initiator", "remove", "host2", READER]);
    let gone = gw.qemu_io(READER, None, "disk", &["read 0 4k"]);
    assert!(!gone.status.success(), "a removed initiator logged in: {}", text(&gone));

    // Mutual CHAP: new secrets replace the old, and the gateway proves its own.
    let m: serde_json::Value =
        serde_json::from_str(&gw.serve.cli_ok(&["client", "chap", "host1", "--mutual", "--json"])).unwrap();
    let (new, target) = (m["secret"].as_str().unwrap(), m["target_secret"].as_str().unwrap());
    assert_eq!(m["target_name"], "cleave");
    let mutual = |tp: &str| format!("{}?target_user=cleave&target_password={tp}", gw.url(Some(("host1", new)), "disk"));
    let ok = tool("iscsi-inq", &["-i", TEST_INITIATOR, &mutual(target)]);
    assert!(ok.status.success(), "mutual CHAP: {}", text(&ok));
    let wrong = tool("iscsi-inq", &["-i", TEST_INITIATOR, &mutual("not-the-target-1")]);
    assert!(!wrong.status.success(), "the initiator accepted a wrong target secret: {}", text(&wrong));
    let old = tool("iscsi-inq", &["-i", TEST_INITIATOR, &gw.url(login, "disk")]);
    assert!(!old.status.success(), "the replaced secret still logs in: {}", text(&old));
}

/// (tests run, tests failed) from CUnit's run summary.
fn summary(out: &str) -> Option<(u32, u32)> {
    let line = out.lines().find(|l| l.trim_start().starts_with("tests "))?;
    let n: Vec<u32> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    Some((*n.get(1)?, *n.get(3)?))
}

/// The README's way of running libiscsi's compliance suite against a volume: its two test
/// initiators belong to a client with CHAP. These families exercise the gateway's device
/// (writes, unmap, compare-and-write) and reservations; the crate's own test runs them all.
#[test]
fn compliance_suite_against_a_volume() {
    let gw = Gateway::start();
    let secret = set_up(&gw);
    let url = gw.url(Some(("host1", &secret)), "disk");
    let families = [
        "SCSI.TestUnitReady",
        "SCSI.Inquiry",
        "SCSI.ReadCapacity16",
        "SCSI.Read10",
        "SCSI.Write16",
        "SCSI.WriteSame16",
        "SCSI.Unmap",
        "SCSI.Verify16",
        "SCSI.CompareAndWrite",
        "SCSI.ProutRegister",
        "SCSI.ProutReserve",
        "iSCSI.iSCSITMF",
    ];
    let mut broken = Vec::new();
    for family in families {
        let o = tool("iscsi-test-cu", &["--dataloss", "-n", "-t", family, &url]);
        match summary(&text(&o)) {
            Some((ran, 0)) if ran > 0 => {}
            got => broken.push(format!("{family}: {got:?}\n{}", text(&o))),
        }
    }
    assert!(broken.is_empty(), "families that fail against a volume:\n{}", broken.join("\n"));
}
