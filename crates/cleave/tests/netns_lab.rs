//! The lab the mirroring tests stand on: a gateway runs inside a network namespace and the
//! harness's helpers reach it there; the link between two namespaces is cut and healed for
//! real; the fault proxies forward, delay, block and drop. Needs root (`ip netns`).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::{Lab, Side};
use common::proxy::{Proxy, UdpProxy};
use common::*;

const MIB: u64 = 1 << 20;

/// A gateway in namespace A whose NBD listener is on A's end of the link.
fn gateway_in_a(lab: &Lab, data: &Path) -> (Serve, SocketAddr) {
    let nbd = SocketAddr::from((lab.addr(Side::A), 10809));
    (Serve::start_in(lab.ns(Side::A), data, &["--nbd", &nbd.to_string()]), nbd)
}

/// The child is cleave itself (`ip netns exec` exec'd it), running in namespace `ns`.
fn assert_cleave_in(s: &Serve, ns: &str) {
    let pid = s.child.as_ref().unwrap().id();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, Path::new(CLEAVE).canonicalize().unwrap(), "pid {pid} is not cleave");
    assert_eq!(run(Command::new("ip").args(["netns", "identify", &pid.to_string()])).trim(), ns);
}

fn assert_image(s: &Serve, volume: &str, want: &[u8], scratch: &Path) {
    let got = nbdcopy_image(&s.uri(volume), scratch);
    assert_eq!(got.len(), want.len(), "image size");
    if let Some(pos) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("image differs at byte {pos}: got {:#x}, want {:#x}", got[pos], want[pos]);
    }
}

#[test]
fn a_gateway_in_a_namespace_serves_through_the_helpers() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = gateway_in_a(&lab, &dir.path().join("data"));
    assert_cleave_in(&s, lab.ns(Side::A));
    // Its HTTP API listens on A's loopback, which only A sees.
    assert!(lab.connects(Side::A, SocketAddr::from(([127, 0, 0, 1], s.http_port))));
    assert!(TcpStream::connect(("127.0.0.1", s.http_port)).is_err(), "the root namespace reaches A's loopback");

    // The CLI and the API go through `ip netns exec`; NBD through the Unix socket.
    s.cli_ok(&["volume", "create", "v", "--size", "16MiB", "--m", "1", "--n", "1"]);
    let names: Vec<_> = s.api("/volumes").as_array().unwrap().iter().map(|v| v["name"].clone()).collect();
    assert!(names.contains(&"v".into()), "{names:?}");
    assert_eq!(nbdinfo_size(&s.uri("v")), 16 * MIB);
    let mut w = Writes::new(16 * MIB as usize);
    let mut cmds = w.commands(&[(0, 4096, 0x5a), (MIB - 512, 65536, 0xa5), (16 * MIB - 4096, 4096, 0x3c)]);
    cmds.push("flush".into());
    qemu_io(&s.uri("v"), &cmds);
    assert_image(&s, "v", &w.image, dir.path());

    // SIGKILL reaches cleave (not just `ip`): the restarted server binds the same ports and
    // still has the flushed writes; SIGTERM then ends it cleanly (term() checks exit 0).
    s.kill9();
    s.restart();
    assert_cleave_in(&s, lab.ns(Side::A));
    assert_image(&s, "v", &w.image, dir.path());
    assert_eq!(s.show("v")["health"]["state"], "clean");
    s.term();
}

/// Whether an outside process in `from`'s namespace (bash's /dev/tcp) opens a connection to `to`.
fn bash_connects(lab: &Lab, from: Side, to: SocketAddr) -> bool {
    let script = format!("exec 3<>/dev/tcp/{}/{}", to.ip(), to.port());
    let out = lab.command(from, "timeout").args(["3", "bash", "-c", &script]).output().unwrap();
    out.status.success()
}

/// Reads the 8-byte NBD greeting magic a gateway sends first, through `addr`, from `from`.
fn nbd_magic(lab: &Lab, from: Side, addr: SocketAddr) -> std::io::Result<[u8; 8]> {
    lab.run_in(from, || {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut magic = [0; 8];
        c.read_exact(&mut magic)?;
        Ok(magic)
    })
}

/// Answers every connection with what it receives.
fn echo_server(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut r = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut conn);
            });
        }
    });
}

/// Whether `c` receives exactly `want` within `limit` (false if nothing came).
fn receives(c: &mut TcpStream, want: &[u8], limit: Duration) -> bool {
    c.set_read_timeout(Some(limit)).unwrap();
    let mut got = vec![0; want.len()];
    match c.read_exact(&mut got) {
        Ok(()) => {
            assert_eq!(got, want);
            true
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("read: {e}"),
    }
}

#[test]
fn the_link_is_cut_and_healed_for_real() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let (s, nbd) = gateway_in_a(&lab, &dir.path().join("data"));

    // From B, the gateway in A answers over the link, to an outside process and to this one.
    assert!(bash_connects(&lab, Side::B, nbd));
    assert_eq!(&nbd_magic(&lab, Side::B, nbd).unwrap(), b"NBDMAGIC");

    // An established connection from B to an echo server in A.
    let listener = lab.run_in(Side::A, || TcpListener::bind((lab.addr(Side::A), 0)).unwrap());
    let echo = listener.local_addr().unwrap();
    echo_server(listener);
    let mut conn = lab.run_in(Side::B, || TcpStream::connect(echo).unwrap());
    conn.write_all(b"before").unwrap();
    assert!(receives(&mut conn, b"before", Duration::from_secs(5)));

    lab.cut();
    assert!(!bash_connects(&lab, Side::B, nbd));
    assert!(!lab.connects(Side::B, nbd));
    assert!(!lab.connects(Side::A, SocketAddr::from((lab.addr(Side::B), 9))));
    // Established connections stall: nothing crosses, nothing is refused.
    conn.write_all(b"during").unwrap();
    assert!(!receives(&mut conn, b"during", Duration::from_secs(1)), "data crossed a cut link");
    // Inside A the gateway carries on.
    assert!(s.cli_ok(&["volume", "list"]).contains("demo"));

    lab.heal();
    assert!(bash_connects(&lab, Side::B, nbd));
    assert_eq!(&nbd_magic(&lab, Side::B, nbd).unwrap(), b"NBDMAGIC");
    // TCP retransmits what was written during the cut.
    assert!(receives(&mut conn, b"during", Duration::from_secs(15)), "the stalled bytes never arrived");

    // A proxy started in B forwards B's loopback to the gateway in A, and cuts with the link.
    let proxy = lab.run_in(Side::B, || Proxy::start("127.0.0.1:0".parse().unwrap(), nbd));
    assert_eq!(&nbd_magic(&lab, Side::B, proxy.addr()).unwrap(), b"NBDMAGIC");
    lab.cut();
    assert!(nbd_magic(&lab, Side::B, proxy.addr()).is_err(), "the proxy reached A over a cut link");
    lab.heal();
    assert_eq!(&nbd_magic(&lab, Side::B, proxy.addr()).unwrap(), b"NBDMAGIC");
}

/// Sends `msg` and waits for the same bytes back; how long that took, or None after `limit`.
fn round_trip(c: &mut TcpStream, msg: &[u8], limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    c.write_all(msg).unwrap();
    receives(c, msg, limit).then(|| t.elapsed())
}

#[test]
fn the_tcp_proxy_forwards_delays_and_blocks() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo = listener.local_addr().unwrap();
    echo_server(listener);
    let proxy = Proxy::start("127.0.0.1:0".parse().unwrap(), echo);
    let mut c = TcpStream::connect(proxy.addr()).unwrap();
    let fast = round_trip(&mut c, b"one", Duration::from_secs(5)).expect("no echo through the proxy");
    assert!(fast < Duration::from_millis(200), "{fast:?}");

    // The delay applies in each direction: a round trip takes at least twice as long.
    proxy.set_delay(Duration::from_millis(300));
    let slow = round_trip(&mut c, b"two", Duration::from_secs(5)).expect("no echo with a delay");
    assert!(slow >= Duration::from_millis(600) && slow < Duration::from_secs(3), "{slow:?}");
    proxy.set_delay(Duration::ZERO);

    // Blocked: the open connection stalls, a new one is closed at once.
    proxy.set_blocked(true);
    assert_eq!(round_trip(&mut c, b"three", Duration::from_secs(1)), None, "data crossed a blocked proxy");
    let mut fresh = TcpStream::connect(proxy.addr()).unwrap();
    fresh.write_all(b"x").unwrap();
    assert_closed(&mut fresh);
    // Unblocked: the stalled bytes arrive, nothing was lost.
    proxy.set_blocked(false);
    assert!(receives(&mut c, b"three", Duration::from_secs(2)), "the stalled bytes never arrived");
    assert!(round_trip(&mut c, b"four", Duration::from_secs(2)).is_some());

    // Dropping the proxy closes its connections.
    drop(proxy);
    assert_closed(&mut c);
}

/// `c` is closed by the other end within 2 s: end of file or reset, not a timeout, no data.
fn assert_closed(c: &mut TcpStream) {
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    match c.read(&mut [0; 1]) {
        Ok(0) => {}
        Ok(_) => panic!("data arrived on a connection that should be closed"),
        Err(e) => assert!(!matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "not closed: {e}"),
    }
}

/// Sends `msg` and waits up to `limit` for it to come back (ignoring other datagrams).
fn udp_round_trip(c: &UdpSocket, msg: &[u8], limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    c.send(msg).unwrap();
    let mut buf = [0; 64];
    while t.elapsed() < limit {
        c.set_read_timeout(Some(limit - t.elapsed())).unwrap();
        match c.recv(&mut buf) {
            Ok(n) if &buf[..n] == msg => return Some(t.elapsed()),
            _ => continue,
        }
    }
    None
}

#[test]
fn the_udp_proxy_forwards_delays_drops_and_blocks() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo = server.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0; 64];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            let _ = server.send_to(&buf[..n], from);
        }
    });
    let proxy = UdpProxy::start("127.0.0.1:0".parse().unwrap(), echo);
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.connect(proxy.addr()).unwrap();
    let wait = Duration::from_millis(300);
    assert!(udp_round_trip(&c, b"hello", Duration::from_secs(5)).is_some(), "no echo through the proxy");

    // Half lost each way, evenly: of 10 datagrams 5 reach the server, 3 of whose replies return.
    proxy.set_loss(0.5);
    let back = (0..10u8).filter(|i| udp_round_trip(&c, &[b'a' + i], wait).is_some()).count();
    assert_eq!(back, 3);
    proxy.set_loss(1.0);
    assert!((0..5u8).all(|i| udp_round_trip(&c, &[b'k' + i], wait).is_none()), "a datagram crossed at loss 1.0");
    proxy.set_loss(0.0);

    proxy.set_delay(Duration::from_millis(200));
    let slow = udp_round_trip(&c, b"slow", Duration::from_secs(3)).expect("no echo with a delay");
    assert!(slow >= Duration::from_millis(400) && slow < Duration::from_secs(2), "{slow:?}");
    proxy.set_delay(Duration::ZERO);

    proxy.set_blocked(true);
    assert!(udp_round_trip(&c, b"blocked", wait).is_none(), "a datagram crossed a blocked proxy");
    proxy.set_blocked(false);
    assert!(udp_round_trip(&c, b"open", wait).is_some());
}
