//! Two network namespaces joined by a veth pair: a link a test can cut for real.
//!
//! Needs root (`ip netns`, veth). Nothing in the root namespace's network is changed: the veth
//! pair is created directly inside the two namespaces, and dropping the `Lab` deletes both
//! namespaces, which deletes the pair.
//!
//! ```ignore
//! let lab = Lab::new();
//! let a = Serve::start_in(lab.ns(Side::A), &data_a, &[]);
//! lab.cut(); // no packet crosses until heal()
//! lab.heal();
//! ```

use std::ffi::OsStr;
use std::fs::File;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    fn i(self) -> usize {
        self as usize
    }
}

/// Each end of the veth pair has this name inside its own namespace.
const DEV: [&str; 2] = ["veth-a", "veth-b"];
/// The ends of the second pair, which `cut` leaves alone.
const SECOND_DEV: [&str; 2] = ["veth2-a", "veth2-b"];
/// How long `heal` waits for the link to carry traffic again.
const HEAL_PATIENCE: Duration = Duration::from_secs(10);

static LABS: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    ns: [String; 2],
    addr: [Ipv4Addr; 2],
    /// This lab's /30, as an offset within the link's /12.
    subnet: u32,
}

// No Default: creating a Lab has side effects and needs root.
#[allow(clippy::new_without_default)]
impl Lab {
    /// Creates namespaces `clv<pid>-<n>a` and `clv<pid>-<n>b` (n counts the labs of this
    /// process), `lo` up in each, and a veth pair between them on a /30 in 10.200.0.0/12 picked
    /// from pid and n. Addresses only matter inside the pair's two namespaces, so even two
    /// labs on the same /30 would not disturb each other; distinct subnets just keep logs clear.
    pub fn new() -> Lab {
        let pid = std::process::id();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let ns = [format!("clv{pid}-{n}a"), format!("clv{pid}-{n}b")];
        let subnet = (((pid % 4096) << 6) | (n % 64)) << 2; // 2^18 subnets of 4 addresses
        let base = u32::from(Ipv4Addr::new(10, 200, 0, 0)) + subnet;
        let addr = [Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2)];
        // A namespace of this name can only be left over by a killed earlier process with our
        // pid: remove it. From here on the Lab exists, so a failing step still cleans up.
        for name in &ns {
            ip_quiet(&["netns", "del", name]);
        }
        let lab = Lab { ns, addr, subnet };
        for name in &lab.ns {
            ip(&["netns", "add", name]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &lab.ns[0], "link", "add", DEV[0], "type", "veth", "peer", "name", DEV[1], "netns", &lab.ns[1]]);
        for side in [Side::A, Side::B] {
            ip(&["-n", lab.ns(side), "addr", "add", &format!("{}/30", lab.addr(side)), "dev", DEV[side.i()]]);
        }
        lab.heal();
        lab
    }

    /// A second veth pair between the namespaces, on a /30 in 10.216.0.0/12, which [`Lab::cut`]
    /// leaves up: for what must still connect the two sides through a cut (a database both
    /// reach). Its two addresses, once each side reaches the other over it.
    pub fn second_link(&self) -> [Ipv4Addr; 2] {
        let base = u32::from(Ipv4Addr::new(10, 216, 0, 0)) + self.subnet;
        let addr = [Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2)];
        let [a, b] = SECOND_DEV;
        ip(&["-n", &self.ns[0], "link", "add", a, "type", "veth", "peer", "name", b, "netns", &self.ns[1]]);
        for side in [Side::A, Side::B] {
            let (ns, dev) = (self.ns(side), SECOND_DEV[side.i()]);
            ip(&["-n", ns, "addr", "add", &format!("{}/30", addr[side.i()]), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        let deadline = Instant::now() + HEAL_PATIENCE;
        let answers = |from: Side, to: Ipv4Addr| {
            self.run_in(from, || match TcpStream::connect_timeout(&SocketAddr::from((to, 9)), Duration::from_secs(1)) {
                Ok(_) => true,
                Err(e) => e.kind() == ErrorKind::ConnectionRefused,
            })
        };
        while !(answers(Side::A, addr[1]) && answers(Side::B, addr[0])) {
            assert!(Instant::now() < deadline, "the second link did not come up within {HEAL_PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        addr
    }

    /// The side's namespace name, for `ip netns exec` and `Serve::start_in`.
    pub fn ns(&self, side: Side) -> &str {
        &self.ns[side.i()]
    }

    /// The side's address on the veth link.
    pub fn addr(&self, side: Side) -> Ipv4Addr {
        self.addr[side.i()]
    }

    /// `ip netns exec NS program`: add arguments as usual. `ip` execs the program, so the
    /// child's pid is the program's and signals reach it.
    pub fn command(&self, side: Side, program: impl AsRef<OsStr>) -> Command {
        exec_in(self.ns(side), program)
    }

    /// Runs `f` on a thread that has entered the side's network namespace: sockets it opens
    /// live there (and stay there when used from other threads), and threads it spawns start
    /// there too, so e.g. a `Proxy` started inside `f` listens and connects in that namespace.
    pub fn run_in<T: Send>(&self, side: Side, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.ns(side));
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: setns only changes this thread's network namespace; `ns` is an open fd.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            });
            t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Whether a TCP connection from the side's namespace to `to` opens within a second.
    pub fn connects(&self, from: Side, to: SocketAddr) -> bool {
        self.run_in(from, || TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok())
    }

    /// Whether `from` reaches the other side's address at all: a TCP connection to a port
    /// nobody listens on is refused by the other side's kernel, which needs the link.
    pub fn reachable(&self, from: Side) -> bool {
        let to = SocketAddr::from((self.addr(from.other()), 9));
        self.run_in(from, || match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::ConnectionRefused,
        })
    }

    /// Takes both ends of the (first) link down: a true partition, nothing crosses in either
    /// direction (new connections fail, established ones stall). Checked before returning.
    pub fn cut(&self) {
        for side in [Side::A, Side::B] {
            ip(&["-n", self.ns(side), "link", "set", DEV[side.i()], "down"]);
        }
        for side in [Side::A, Side::B] {
            assert!(!self.reachable(side), "{side:?} still reaches {:?} after cut", side.other());
        }
    }

    /// Brings both ends up again (re-adding an address if it went missing) and waits until
    /// each side reaches the other; panics if that does not happen within 10 s.
    pub fn heal(&self) {
        for side in [Side::A, Side::B] {
            let (ns, dev) = (self.ns(side), DEV[side.i()]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            let want = self.addr(side).to_string();
            let have = ip(&["-n", ns, "-4", "-o", "addr", "show", "dev", dev]);
            if !have.contains(&format!("inet {want}/")) {
                ip(&["-n", ns, "addr", "add", &format!("{want}/30"), "dev", dev]);
            }
        }
        let deadline = Instant::now() + HEAL_PATIENCE;
        while !(self.reachable(Side::A) && self.reachable(Side::B)) {
            assert!(Instant::now() < deadline, "the link did not come back within {HEAL_PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lab {
    /// Kills whatever still runs in the namespaces, then deletes them (which deletes the veth
    /// pair). Best effort: never panics, also not while unwinding from a failed test.
    fn drop(&mut self) {
        let me = std::process::id();
        for name in &self.ns {
            let pids = Command::new("ip").args(["netns", "pids", name]).stderr(Stdio::null()).output();
            let pids = pids.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<u32>().ok()).filter(|&p| p != me) {
                // SAFETY: plain kill(2) of a process running in a namespace this Lab created.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            ip_quiet(&["netns", "del", name]);
        }
    }
}

/// `ip netns exec NS program`.
pub fn exec_in(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Runs `ip ARGS`, panicking with its stderr if it fails; returns stdout.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}
