//! Access control end to end: client certificates from control's CA, groups with
//! read-write, read-only and region grants, enforced on every NBD request; revocation;
//! crypto-erase when the last group goes. Real clients (qemu-io, nbdcopy, nbdsh, nbdinfo).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

/// Whether nbdinfo can open the export; returns its stderr when it cannot (with libnbd's
/// debug log, which carries the server's own error message).
fn nbdinfo(uri: &str) -> Result<serde_json::Value, String> {
    let out = Command::new("nbdinfo").arg("--json").arg(uri).env("LIBNBD_DEBUG", "1").output().unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn creds(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}-tls"))
}

#[test]
fn certificates_groups_modes_and_regions() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    let port = s.nbd_port;
    const MIB: u64 = 1 << 20;

    // Storage on demand for host alice: a group named after the volume, a new certificate.
    let a = creds(dir.path(), "alice");
    let v = json(&s.cli_ok(&[
        "--json",
        "volume",
        "create",
        "v",
        "--size",
        "16MiB",
        "--m",
        "2",
        "--n",
        "3",
        "--client",
        "alice",
        "--out",
        a.to_str().unwrap(),
    ]));
    assert_eq!(v["groups"], serde_json::json!(["v"]), "{v}");
    assert!(v.get("credentials").is_none(), "the key is written to files, not printed: {v}");
    for f in ["ca-cert.pem", "client-cert.pem", "client-key.pem"] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(a.join("client-key.pem")).unwrap().permissions().mode() & 0o077, 0);

    // alice writes with qemu-io and reads back with nbdcopy, both over TLS with her certificate.
    let mut w = Writes::new(16 << 20);
    let mut cmds = w.commands(&[(0, 65536, 0x41), (MIB, 8192, 0x42), ((16 << 20) - 4096, 4096, 0x43)]);
    cmds.push("flush".into());
    qemu_io_tls(port, "v", &a, &cmds);
    let got = nbdcopy_image(&tls_uri(port, "v", &a), dir.path());
    assert!(got == w.image, "image read back over TLS differs");

    // No certificate: refused in plain text on loopback ...
    let err = nbdinfo(&s.tcp_uri("v")).unwrap_err();
    assert!(err.contains("server error message: export \"v\": TLS required"), "{err}");
    // ... and over TLS without a client certificate.
    let nocert = dir.path().join("nocert");
    std::fs::create_dir_all(&nocert).unwrap();
    std::fs::copy(a.join("ca-cert.pem"), nocert.join("ca-cert.pem")).unwrap();
    let err = nbdinfo(&tls_uri(port, "v", &nocert)).unwrap_err();
    assert!(err.contains("server error message: export \"v\": refused: a client certificate is required"), "{err}");
    // ... and through the local administrator's socket, since v is not the admin group's; the
    // demo volume (admin group) is open there.
    let err = nbdinfo(&s.uri("v")).unwrap_err();
    assert!(err.contains("local administrator has no access to it"), "{err}");
    assert!(nbdinfo(&s.uri("demo")).is_ok());

    // bob's group has no grant on v: refused, and v is not even listed to him.
    let b = creds(dir.path(), "bob");
    s.cli_ok(&["client", "add", "bob", "--out", b.to_str().unwrap()]);
    s.cli_ok(&["group", "add", "others"]);
    s.cli_ok(&["group", "join", "others", "bob"]);
    let err = nbdinfo(&tls_uri(port, "v", &b)).unwrap_err();
    assert!(err.contains("client \"bob\" has no access to it"), "{err}");
    let listed = run(Command::new("nbdinfo")
        .args(["--list", "--json"])
        .arg(format!("nbds://127.0.0.1:{port}?tls-certificates={}", b.display())));
    assert!(!listed.contains("\"v\""), "bob must not see v listed: {listed}");

    // carol may only read: the export says read-only, and the server refuses writes even
    // from a client that ignores that (strict mode off).
    let c = creds(dir.path(), "carol");
    s.cli_ok(&["client", "add", "carol", "--out", c.to_str().unwrap()]);
    s.cli_ok(&["group", "add", "readers"]);
    s.cli_ok(&["group", "join", "readers", "carol"]);
    s.cli_ok(&["group", "grant", "readers", "v", "--read-only"]);
    let info = nbdinfo(&tls_uri(port, "v", &c)).unwrap();
    assert_eq!(info["exports"][0]["is_read_only"], true, "{info}");
    let script = "import errno\n\
        h.set_strict_mode(0)\n\
        assert h.pread(8192, 1048576) == b'\\x42' * 8192\n\
        try:\n    h.pwrite(b'x' * 4096, 0)\n    raise SystemExit('read-only client wrote')\n\
        except nbd.Error as e:\n    assert e.errnum == errno.EPERM, e\n";
    let (ok, out) = nbdsh(&tls_uri(port, "v", &c), script);
    assert!(ok, "{out}");

    // dave may only touch 1 MiB..2 MiB: inside works, anything outside or straddling is EPERM.
    let d = creds(dir.path(), "dave");
    s.cli_ok(&["client", "add", "dave", "--out", d.to_str().unwrap()]);
    s.cli_ok(&["group", "add", "part"]);
    s.cli_ok(&["group", "join", "part", "dave"]);
    s.cli_ok(&["group", "grant", "part", "v", "--region", "1MiB:1MiB"]);
    let script = "import errno\n\
        h.set_strict_mode(0)\n\
        h.pwrite(b'\\x44' * 4096, 1048576 + 65536)\n\
        assert h.pread(4096, 1048576 + 65536) == b'\\x44' * 4096\n\
        h.flush()\n\
        for (off, n) in [(0, 512), (2097152 - 512, 1024), (2097152, 512), (16777216 - 512, 512)]:\n\
        \x20   try:\n\
        \x20       h.pread(n, off)\n\
        \x20       raise SystemExit('read outside the region at %d' % off)\n\
        \x20   except nbd.Error as e:\n\
        \x20       assert e.errnum == errno.EPERM, e\n\
        for (off, n) in [(0, 4096), (2097152 - 512, 1024)]:\n\
        \x20   for op in (lambda: h.pwrite(b'z' * n, off), lambda: h.zero(n, off), lambda: h.trim(n, off)):\n\
        \x20       try:\n\
        \x20           op()\n\
        \x20           raise SystemExit('changed bytes outside the region at %d' % off)\n\
        \x20       except nbd.Error as e:\n\
        \x20           assert e.errnum == errno.EPERM, e\n";
    let (ok, out) = nbdsh(&tls_uri(port, "v", &d), script);
    assert!(ok, "{out}");
    // Outside the region nothing changed; inside, dave's write is there.
    w.image[(MIB + 65536) as usize..(MIB + 65536 + 4096) as usize].fill(0x44);
    let got = nbdcopy_image(&tls_uri(port, "v", &a), dir.path());
    assert!(got == w.image, "region client changed bytes it should not have");

    // Removing a client stops its certificate at once.
    s.cli_ok(&["client", "remove", "carol"]);
    let err = nbdinfo(&tls_uri(port, "v", &c)).unwrap_err();
    assert!(err.contains("not registered"), "{err}");
    // A certificate from another CA does not get past TLS.
    let other = tempfile::tempdir().unwrap();
    let s2 = Serve::start(&other.path().join("data"), &[]);
    let e = creds(dir.path(), "eve");
    s2.cli_ok(&["client", "add", "eve", "--out", e.to_str().unwrap()]);
    std::fs::copy(a.join("ca-cert.pem"), e.join("ca-cert.pem")).unwrap();
    assert!(nbdinfo(&tls_uri(port, "v", &e)).is_err());
    drop(s2);

    // Key slots follow grants. Revoking groups one by one; the last one crypto-erases and needs --erase.
    let uuid = s.show("v")["uuid"].as_str().unwrap().to_string();
    s.cli_ok(&["group", "revoke", "v", "v"]);
    assert!(nbdinfo(&tls_uri(port, "v", &a)).is_err(), "alice's group lost access");
    s.cli_ok(&["group", "revoke", "readers", "v"]);
    let out = s.cli(&["group", "revoke", "part", "v"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("crypto-erases"), "{out:?}");
    assert!(nbdinfo(&tls_uri(port, "v", &d)).is_ok(), "a refused revoke changes nothing");
    s.cli_ok(&["group", "revoke", "part", "v", "--erase"]);
    assert!(!s.cli(&["volume", "show", "v"]).status.success(), "volume is gone");
    let left: Vec<_> =
        (0..3).flat_map(|i| files_under(&s.target_dir(i))).filter(|p| p.to_string_lossy().contains(&uuid)).collect();
    assert!(left.is_empty(), "objects of the erased volume remain: {left:?}");
}

/// Runs `program` as the unprivileged user nobody (uid and gid 65534), from `/`.
fn as_nobody(program: &str, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", program])
        .args(args)
        .current_dir("/")
        .output()
        .unwrap()
}

/// Whether a qemu-io run read what it was asked to, pattern included.
fn read_ok(out: &std::process::Output) -> bool {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out.status.success() && text.contains("read 65536/65536 bytes") && !text.contains("Pattern verification failed")
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Every directory under `root` (itself included) is 0700, everything else 0600.
fn assert_private_tree(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        assert_eq!(mode(&d), 0o700, "directory {} is {:o}", d.display(), mode(&d));
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            seen += 1;
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            } else {
                assert_eq!(mode(&p), 0o600, "{} is {:o}", p.display(), mode(&p));
            }
        }
    }
    assert!(seen > 20, "only {seen} entries under {}", root.display());
}

#[test]
fn local_access_needs_the_data_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Where anyone may look, as a ./cleave-data in a home directory often is.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    let (tcp, unix) = (s.tcp_uri("demo"), s.uri("demo"));

    // Another local user reads nothing over TCP on loopback, and neither does root without a
    // certificate: loopback proves nothing.
    let read = ["-f", "raw", "-r", "-c", "read 0 64k"];
    let nobody_tcp = as_nobody("qemu-io", &[&read[..], &[tcp.as_str()]].concat());
    assert!(!read_ok(&nobody_tcp), "nobody read the owner's disk over TCP: {nobody_tcp:?}");
    let root_tcp = Command::new("qemu-io").args(read).arg(&tcp).output().unwrap();
    assert!(!read_ok(&root_tcp), "TCP without a certificate read the disk: {root_tcp:?}");
    let err = nbdinfo(&tcp).unwrap_err();
    assert!(err.contains("TLS required"), "{err}");

    // The owner writes and reads through the socket in the data directory; nobody cannot.
    qemu_io(&unix, &["write -P 0x5a 0 1M".into(), "flush".into()]);
    let owner = Command::new("qemu-io").args(["-f", "raw", "-r", "-c", "read -P 0x5a 0 64k"]).arg(&unix).output();
    assert!(read_ok(&owner.unwrap()), "the owner cannot read over the socket");
    let nobody_unix = as_nobody("qemu-io", &[&read[..], &[unix.as_str()]].concat());
    assert!(!read_ok(&nobody_unix), "nobody read the owner's disk over the socket: {nobody_unix:?}");
}

#[test]
fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut s = Serve::start(&dir.path().join("data"), &[]);
    qemu_io(&s.uri("demo"), &["write -P 0x5a 0 1M".into(), "flush".into()]);

    // Keys, certificates, caches, targets, the database: nothing in the data directory is
    // readable by others, after data went everywhere it goes.
    let creds = dir.path().join("web-tls");
    let out = creds.to_str().unwrap();
    s.cli_ok(&["volume", "create", "v", "--size", "4MiB", "--m", "1", "--n", "1", "--client", "web", "--out", out]);
    let token = std::fs::read_to_string(s.data.join("admin.token")).unwrap();
    run(Command::new("curl").args([
        "-sf",
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {}", token.trim()),
        &format!("http://127.0.0.1:{}/api/v1/volumes/demo/destage", s.http_port),
    ]));
    assert!(files_under(&s.target_dir(0)).len() > 2, "nothing destaged");
    assert_private_tree(&s.data);

    // A data directory left open by an older version is closed at the next start.
    s.term();
    std::fs::set_permissions(&s.data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(s.data.join("admin.token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    s.restart();
    assert_eq!(mode(&s.data), 0o700);
    assert_eq!(mode(&s.data.join("admin.token")), 0o600);
}

/// The server's own words from libnbd's debug log, with the export's name taken out.
fn server_words(err: &str, export: &str) -> Vec<String> {
    err.lines()
        .filter(|l| l.contains("server error message") || l.contains("server replied with error"))
        .map(|l| l.replace(export, "NAME"))
        .collect()
}

#[test]
fn missing_and_forbidden_exports_are_refused_alike() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    let b = creds(dir.path(), "bob");
    s.cli_ok(&["client", "add", "bob", "--out", b.to_str().unwrap()]);
    s.cli_ok(&["volume", "create", "secret-db", "--size", "4MiB", "--m", "1", "--n", "1"]);
    let exists = nbdinfo(&tls_uri(s.nbd_port, "secret-db", &b)).unwrap_err();
    let missing = nbdinfo(&tls_uri(s.nbd_port, "no-such-db", &b)).unwrap_err();
    let (exists, missing) = (server_words(&exists, "secret-db"), server_words(&missing, "no-such-db"));
    assert!(!exists.is_empty(), "no server message in libnbd's log");
    assert_eq!(exists, missing, "a client without rights can tell existing volumes from missing ones");
}

/// Issue 10, item 14: the admin API offers TLS (`--http-tls on`; on by default when it
/// listens off loopback) with a certificate from control's CA, which the CLI trusts.
#[test]
fn the_admin_api_speaks_tls_with_a_certificate_from_control() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &["--http-tls", "on"]);
    let url = format!("https://127.0.0.1:{}", s.http_port);
    let ca = s.data.join("tls").join("ca.crt");
    let token = std::fs::read_to_string(s.data.join("admin.token")).unwrap().trim().to_string();
    let auth = format!("Authorization: Bearer {token}");
    // The CLI finds the CA beside its token file.
    let out = Command::new(CLEAVE)
        .args(["volume", "list", "--server", &url, "--token-file"])
        .arg(s.data.join("admin.token"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo"));
    // curl trusts nothing by default: the certificate is control's own, not a public one.
    let api = format!("{url}/api/v1/volumes");
    let refused = Command::new("curl").args(["-sf", "-H", &auth, &api]).output().unwrap();
    assert!(!refused.status.success(), "a certificate not from control's CA was accepted");
    let ok = run(Command::new("curl").args(["-sf", "--cacert"]).arg(&ca).args(["-H", &auth, &api]));
    assert!(ok.contains("demo"), "{ok}");
    // Plain HTTP on the same port gets no answer from the API.
    let plain = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &auth])
        .arg(format!("http://127.0.0.1:{}/api/v1/volumes", s.http_port))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200", "the API answered over plain HTTP");
}
