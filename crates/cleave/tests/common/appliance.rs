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
/// (a new NBD connection on its Unix socket); with qemu-io's output.
pub fn acknowledges(s: &Serve, volume: &str, offset: u64, byte: u8) -> (bool, String) {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", &format!("write -P {byte} {offset} {MIB}"), "-c", "flush"])
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
