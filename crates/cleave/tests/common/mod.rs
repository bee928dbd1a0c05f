//! Harness for end-to-end tests: runs the real `cleave` binary and real NBD clients.
#![allow(dead_code)]

pub mod appliance;
pub mod browser;
pub mod netns;
pub mod proxy;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const CLEAVE: &str = env!("CARGO_BIN_EXE_cleave");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `cleave serve` process, in the root network namespace unless `netns` names one.
pub struct Serve {
    pub child: Option<Child>,
    pub data: PathBuf,
    pub nbd_port: u16,
    pub http_port: u16,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The network namespace it runs in (see `netns::Lab`); its HTTP and NBD listeners on
    /// 127.0.0.1 are then only reachable from inside, so `cli` and `api` run there too.
    pub netns: Option<String>,
    /// `serve`, or `gateway` (the same command under the name appliances use).
    pub subcommand: &'static str,
    /// Runs in a mount namespace of its own (`unshare --mount`), so that a test can take
    /// a directory away from it alone (see `appliance::cut_path`).
    pub private_mounts: bool,
}

impl Serve {
    pub fn start(data: &Path, extra: &[&str]) -> Serve {
        Self::start_env(data, extra, &[])
    }

    pub fn start_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Serve {
        Self::launch(None, data, extra, env)
    }

    /// Starts it inside network namespace `ns` (`ip netns exec NS cleave serve ...`).
    pub fn start_in(ns: &str, data: &Path, extra: &[&str]) -> Serve {
        Self::launch(Some(ns), data, extra, &[])
    }

    /// A gateway of an appliance: `cleave gateway`, inside `netns` when one is given.
    pub fn start_gateway(netns: Option<&str>, data: &Path, extra: &[&str]) -> Serve {
        Self::start_gateway_with(netns, data, extra, false)
    }

    /// The same, in a mount namespace of its own with `private_mounts`.
    pub fn start_gateway_with(netns: Option<&str>, data: &Path, extra: &[&str], private_mounts: bool) -> Serve {
        let mut s = Self::unstarted(netns, data, extra, &[]);
        s.subcommand = "gateway";
        s.private_mounts = private_mounts;
        s.spawn();
        s
    }

    fn launch(netns: Option<&str>, data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut s = Self::unstarted(netns, data, extra, env);
        s.spawn();
        s
    }

    fn unstarted(netns: Option<&str>, data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Serve {
        Serve {
            child: None,
            data: data.to_path_buf(),
            nbd_port: free_port(),
            http_port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            netns: netns.map(str::to_string),
            subcommand: "serve",
            private_mounts: false,
        }
    }

    fn spawn(&mut self) {
        // `ip netns exec` execs cleave: the child's pid is cleave's, so signals reach it.
        let mut command = if self.private_mounts {
            // unshare execs cleave too.
            let mut c = self.command("unshare");
            c.args(["--mount", "--propagation", "private", "--", CLEAVE]);
            c
        } else {
            self.command(CLEAVE)
        };
        let mut child = command
            .arg(self.subcommand)
            .arg("--data-dir")
            .arg(&self.data)
            .args(self.nbd_args())
            .arg("--http")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .args(&self.extra)
            .args(self.autoconfig_args())
            .env("CLEAVE_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn cleave serve");
        wait_started(&mut child);
        self.child = Some(child);
    }

    /// NBD on loopback, unless the test gives `--nbd` itself.
    fn nbd_args(&self) -> Vec<String> {
        if self.extra.iter().any(|a| a == "--nbd") {
            return Vec::new();
        }
        vec!["--nbd".into(), format!("127.0.0.1:{}", self.nbd_port)]
    }

    /// Every server needs its own UDP auto-configuration port, unless the test picks one.
    fn autoconfig_args(&self) -> Vec<String> {
        if self.extra.iter().any(|a| a == "--autoconfig") {
            return Vec::new();
        }
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        vec!["--autoconfig".into(), format!("127.0.0.1:{port}")]
    }

    /// A command for `program` in this server's network namespace (plain `Command::new` when
    /// it has none): for clients of its TCP listeners, e.g. `tcp_uri`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        match &self.netns {
            Some(ns) => netns::exec_in(ns, program),
            None => Command::new(program),
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
    }

    /// The local administrator's URI: the Unix socket in the data directory, which clients
    /// reach from any network namespace.
    pub fn uri(&self, volume: &str) -> String {
        format!("nbd+unix:///{volume}?socket={}", self.socket().display())
    }

    /// Plain NBD over TCP, which needs TLS and a client certificate. With `netns` set, only
    /// clients run through `command` reach it.
    pub fn tcp_uri(&self, volume: &str) -> String {
        format!("nbd://127.0.0.1:{}/{volume}", self.nbd_port)
    }

    pub fn socket(&self) -> PathBuf {
        self.data.canonicalize().unwrap().join("nbd.sock")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait: a clean shutdown destages everything.
    pub fn term(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_kill(c.id() as i32, 15);
            let status = c.wait().unwrap();
            assert!(status.success(), "cleave serve exited with {status}");
        }
    }

    /// Runs a `cleave` CLI command against this server (in its namespace, if it has one).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(CLEAVE)
            .args(args)
            .arg("--server")
            .arg(format!("http://127.0.0.1:{}", self.http_port))
            .arg("--token-file")
            .arg(self.data.join("admin.token"))
            .env("CLEAVE_LOG", "warn")
            .output()
            .unwrap()
    }

    /// A scrub that leaves problems exits 3 (README, "Exit status"): its `--json` report.
    pub fn scrub_problems(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(&[&["scrub"], args, &["--json"]].concat());
        assert_eq!(out.status.code(), Some(3), "cleave scrub {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "cleave {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// GET on the admin API with the admin token; the call must succeed.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let token = std::fs::read_to_string(self.data.join("admin.token")).unwrap();
        let out = run(self.command("curl").args([
            "-sf",
            "-H",
            &format!("Authorization: Bearer {}", token.trim()),
            &format!("http://127.0.0.1:{}/api/v1{path}", self.http_port),
        ]));
        serde_json::from_str(&out).unwrap()
    }

    pub fn show(&self, volume: &str) -> serde_json::Value {
        serde_json::from_str(&self.cli_ok(&["volume", "show", volume, "--json"])).unwrap()
    }

    pub fn target_dir(&self, i: usize) -> PathBuf {
        self.data.join("targets").join(format!("t{i}"))
    }

    /// Directory target `i` fails (`break_dir`; `restore_dir` brings it back) while `volume`
    /// is written and destaged: the volume turns degraded.
    pub fn fail_target_under_writes(&self, i: usize, volume: &str) {
        break_dir(&self.target_dir(i));
        qemu_io(&self.uri(volume), &["write -P 9 0 1M".to_string()]);
        let token = std::fs::read_to_string(self.data.join("admin.token")).unwrap();
        // The destage fails on the broken target; what matters is that it was tried.
        let _ = self
            .command("curl")
            .args(["-s", "-X", "POST", "-H", &format!("Authorization: Bearer {}", token.trim())])
            .arg(format!("http://127.0.0.1:{}/api/v1/volumes/{volume}/destage", self.http_port))
            .output();
    }
}

/// Waits until a `cleave serve` or `cleave control` started with its stdout piped prints its
/// API address, then keeps draining stdout so the server never blocks on a full pipe.
pub fn wait_started(child: &mut Child) {
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "cleave did not start");
        match lines.next() {
            Some(Ok(line)) if line.starts_with("API:") => break,
            Some(Ok(_)) => continue,
            _ => panic!("cleave exited before it started: {:?}", child.wait()),
        }
    }
    std::thread::spawn(move || for _ in lines {});
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn unsafe_kill(pid: i32, sig: i32) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success());
}

/// Runs a command and asserts it succeeded; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// qemu-io against an NBD URI, one `-c` per command.
pub fn qemu_io(uri: &str, cmds: &[String]) -> String {
    let mut c = Command::new("qemu-io");
    c.arg("-f").arg("raw");
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = run(c.arg(uri));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(!out.to_lowercase().contains("error"), "qemu-io reported an error:\n{out}");
    out
}

/// Copies the whole disk to a file with nbdcopy and returns its bytes.
pub fn nbdcopy_image(uri: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join("copy.img");
    let _ = std::fs::remove_file(&out);
    run(Command::new("nbdcopy").arg(uri).arg(&out));
    std::fs::read(&out).unwrap()
}

pub fn nbdinfo_size(uri: &str) -> u64 {
    let json = run(Command::new("nbdinfo").arg("--json").arg(uri));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["exports"][0]["export-size"].as_u64().unwrap()
}

/// A deterministic pattern write: `len` bytes of `byte` at `offset`, applied to `image` too.
pub struct Writes {
    pub image: Vec<u8>,
}

impl Writes {
    pub fn new(size: usize) -> Self {
        Writes { image: vec![0; size] }
    }
    /// qemu-io commands writing each (offset, len, byte), FUA on every third.
    pub fn commands(&mut self, writes: &[(u64, u64, u8)]) -> Vec<String> {
        let mut cmds = Vec::new();
        for (i, &(off, len, byte)) in writes.iter().enumerate() {
            self.image[off as usize..(off + len) as usize].fill(byte);
            let fua = if i % 3 == 0 { " -f" } else { "" };
            cmds.push(format!("write{fua} -P {byte} {off} {len}"));
        }
        cmds
    }
}

/// Makes a directory target fail every operation: its path becomes a file.
pub fn break_dir(d: &Path) {
    std::fs::rename(d, d.with_extension("away")).unwrap();
    std::fs::write(d, b"not a directory").unwrap();
}

pub fn restore_dir(d: &Path) {
    std::fs::remove_file(d).unwrap();
    std::fs::rename(d.with_extension("away"), d).unwrap();
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A moto_server (S3) on loopback, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]'; .ci/run does)");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn create_bucket(&self, name: &str) {
        run(Command::new("curl").args(["-sf", "-X", "PUT", &format!("{}/{name}", self.endpoint())]));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const AWS_ENV: [(&str, &str); 2] = [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")];

/// An NBD-over-TLS URI for libnbd tools, with a credentials directory (ca-cert.pem,
/// client-cert.pem, client-key.pem).
pub fn tls_uri(port: u16, volume: &str, creds: &Path) -> String {
    format!("nbds://127.0.0.1:{port}/{volume}?tls-certificates={}", creds.display())
}

/// qemu-io over TLS with a client certificate; returns (success, stdout + stderr).
pub fn qemu_io_tls_output(port: u16, volume: &str, creds: &Path, cmds: &[String]) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    c.arg("--object").arg(format!("tls-creds-x509,id=tls0,endpoint=client,dir={}", creds.display()));
    c.arg("--image-opts");
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(format!("driver=nbd,host=127.0.0.1,port={port},export={volume},tls-creds=tls0"));
    let out = c.output().expect("qemu-io");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && !text.to_lowercase().contains("error") && !text.contains("failed"), text)
}

pub fn qemu_io_tls(port: u16, volume: &str, creds: &Path, cmds: &[String]) -> String {
    let (ok, text) = qemu_io_tls_output(port, volume, creds, cmds);
    assert!(ok, "qemu-io over TLS failed:\n{text}");
    text
}

/// Runs an nbdsh script against `uri`; returns (success, stderr).
pub fn nbdsh(uri: &str, script: &str) -> (bool, String) {
    // nbdsh runs `env python3`; the libnbd module is installed for the system Python.
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    // `-u` refuses URIs that name local files (tls-certificates), so connect from the script.
    let script = format!("h.set_uri_allow_local_file(True)\nh.connect_uri({uri:?})\n{script}");
    let out = Command::new("nbdsh").arg("-c").arg(script).env("PATH", path).output().expect("nbdsh");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}
