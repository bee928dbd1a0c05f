//! Gateways of one appliance (docs/appliance.md): `cleave serve` processes on one etcd
//! namespace, and what the appliance tests ask of them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::Serve;

const MIB: u64 = 1 << 20;
/// The gateways' lease, short so that tests wait little for a failover.
pub const LEASE_SECS: &str = "3";
pub const LEASE: Duration = Duration::from_secs(3);

/// A gateway of the appliance on etcd `endpoints` (`cleave gateway`); `key_from` gives it the first gateway's
/// master key (how an administrator adds a gateway: docs/appliance.md).
pub fn member(root: &Path, name: &str, endpoints: &str, key_from: Option<&Path>) -> Serve {
    member_in(None, root, name, endpoints, key_from)
}

/// The same, inside network namespace `netns` when one is given.
pub fn member_in(netns: Option<&str>, root: &Path, name: &str, endpoints: &str, key_from: Option<&Path>) -> Serve {
    member_with(netns, false, root, name, endpoints, key_from, &[])
}

/// The same, inside network namespace `netns` with its NBD listener on `ip` there (where the
/// other gateways forward to it), not on loopback.
pub fn member_on(
    netns: &str,
    ip: std::net::Ipv4Addr,
    root: &Path,
    name: &str,
    endpoints: &str,
    key_from: Option<&Path>,
) -> Serve {
    let port = super::free_port();
    let nbd = format!("{ip}:{port}");
    let mut s = member_with(Some(netns), false, root, name, endpoints, key_from, &["--nbd", &nbd]);
    s.nbd_port = port;
    s
}

/// The same, in a mount namespace of its own with `private_mounts` (for [`cut_path`]), and
/// with `extra` arguments.
pub fn member_with(
    netns: Option<&str>,
    private_mounts: bool,
    root: &Path,
    name: &str,
    endpoints: &str,
    key_from: Option<&Path>,
    extra: &[&str],
) -> Serve {
    let data = root.join(name);
    if let Some(first) = key_from {
        std::fs::create_dir_all(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::copy(first.join("master.key"), data.join("master.key")).unwrap();
    }
    let mut args = vec!["--etcd", endpoints, "--etcd-namespace", "appliance/", "--lease-secs", LEASE_SECS];
    args.extend_from_slice(extra);
    Serve::start_gateway_with(netns, &data, &args, private_mounts)
}

/// Takes directory `dir` away from gateway `s` alone (started with private mounts): an
/// empty file system is mounted over it in the gateway's mount namespace, as when a mount
/// is lost. `restore` undoes it.
pub fn cut_path(s: &Serve, dir: &Path, restore: bool) {
    assert!(s.private_mounts, "the gateway shares the test's mounts");
    let pid = s.child.as_ref().unwrap().id().to_string();
    let mut c = Command::new("nsenter");
    c.args(["--target", &pid, "--mount", "--"]);
    if restore {
        c.arg("umount").arg(dir);
    } else {
        c.args(["mount", "-t", "tmpfs", "-o", "size=1m", "cut"]).arg(dir);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn gateway_id(s: &Serve) -> String {
    std::fs::read_to_string(s.data.join("gateway.id")).unwrap().trim().to_string()
}

/// Polls `done` every 200 ms until it holds; how long that took. Panics after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

/// Whether `s` is the primary of `volume` and serves it.
pub fn served_here(s: &Serve, volume: &str) -> bool {
    let show = s.show(volume);
    show["primary"] == gateway_id(s).as_str() && show["open_error"].is_null()
}

/// Whether `s` acknowledged a write of 1 MiB of `byte` at `offset` and a flush of `volume`
/// (a new NBD connection on its Unix socket); with qemu-io's output. Bounded: a gateway that
/// never answers is one that did not acknowledge (qemu-io is killed after 90 s).
pub fn acknowledges(s: &Serve, volume: &str, offset: u64, byte: u8) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["90", "qemu-io", "-f", "raw", "-c", &format!("write -P {byte} {offset} {MIB}"), "-c", "flush"])
        .arg(s.uri(volume))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !text.to_lowercase().contains("error"), text)
}

/// Whether MiB `chunk` of `image` is all `byte`.
pub fn chunk_is(image: &[u8], chunk: u64, byte: u8) -> bool {
    image[(chunk * MIB) as usize..((chunk + 1) * MIB) as usize].iter().all(|&b| b == byte)
}

/// The kinds of the gateway's events (`gateway_failover`, `gateway_fenced`, ...).
pub fn event_kinds(s: &Serve) -> Vec<String> {
    let events = s.api("/events");
    events.as_array().unwrap().iter().filter_map(|e| e["kind"].as_str().map(str::to_string)).collect()
}

/// Sends `sig` (`-STOP`, `-CONT`, ...) to the gateway.
pub fn signal(s: &Serve, sig: &str) {
    let pid = s.child.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
}

/// Tests that hang on lease timing run one at a time within a test binary.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gateways `a` and `b` of an appliance on etcd `endpoints`: a serves a new 4 MiB `local`
/// volume, and b is its standby, ready.
pub fn pair_with_standby(root: &Path, endpoints: &str, volume: &str) -> (Serve, Serve) {
    let a = member(root, "a", endpoints, None);
    a.cli_ok(&["volume", "create", volume, "--size", "4MiB"]);
    let b = member(root, "b", endpoints, Some(&root.join("a")));
    let id_b = gateway_id(&b);
    wait_for("b to be the standby", Duration::from_secs(30), || a.show(volume)["standby"] == id_b.as_str());
    (a, b)
}

/// Makes client `host` (its certificates written to `certs`) that may write `volume`, through
/// group `hosts`, and lets `initiators` log in as it over iSCSI without CHAP.
pub fn host_may_write(s: &Serve, volume: &str, certs: &Path, initiators: &[&str]) {
    s.cli_ok(&["client", "add", "host", "--out", certs.to_str().unwrap()]);
    s.cli_ok(&["group", "add", "hosts"]);
    s.cli_ok(&["group", "join", "hosts", "host"]);
    s.cli_ok(&["group", "grant", "hosts", volume]);
    for initiator in initiators {
        s.cli_ok(&["client", "initiator", "add", "host", initiator, "--no-chap"]);
    }
}

/// Asymmetric access states, as REPORT TARGET PORT GROUPS codes them.
pub const OPTIMIZED: u8 = 0;
pub const NON_OPTIMIZED: u8 = 1;
pub const UNAVAILABLE: u8 = 3;

/// This path's target port group (VPD 0x83) and every group's asymmetric access state
/// (REPORT TARGET PORT GROUPS), as the host sees them.
pub fn alua_view(host: &mut cleave_iscsi::testing::Raw) -> (u16, std::collections::BTreeMap<u16, u8>) {
    let vpd = host.scsi(&[0x12, 1, 0x83, 0, 255, 0], &[], 255);
    // The target port group designator: association 1 (port), type 5, 4 bytes.
    let local = vpd
        .data
        .windows(8)
        .find(|w| w[1] & 0x3f == 0x15 && w[3] == 4)
        .map(|w| u16::from_be_bytes([w[6], w[7]]))
        .unwrap_or_else(|| panic!("no target port group in VPD 0x83: {:x?}", vpd.data));
    let r = host.scsi(&[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0], &[], 1024);
    assert_eq!(r.status, 0, "REPORT TARGET PORT GROUPS: {r:?}");
    let mut groups = std::collections::BTreeMap::new();
    let mut d = &r.data[4..];
    while d.len() >= 8 {
        let ports = d[7] as usize;
        groups.insert(u16::from_be_bytes([d[2], d[3]]), d[0] & 0xf);
        d = &d[(8 + 4 * ports).min(d.len())..];
    }
    (local, groups)
}
