//! Fault-injecting forwarders for delay and loss tests, on std threads: `Proxy` for TCP,
//! `UdpProxy` for datagrams. Both forward from a listening address to one destination and
//! stop (closing every connection) when dropped. Sockets live in the network namespace of the
//! thread that starts the proxy: start one inside `Lab::run_in` to place it in a namespace.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How often blocked or idle threads look at the settings again.
const TICK: Duration = Duration::from_millis(10);

/// The settings, shared by all of a proxy's threads.
#[derive(Default)]
struct Faults {
    delay_ns: AtomicU64,
    blocked: AtomicBool,
    loss: AtomicU64, // f64 bits
    stop: AtomicBool,
}

impl Faults {
    fn due(&self) -> Instant {
        Instant::now() + Duration::from_nanos(self.delay_ns.load(Ordering::Relaxed))
    }
    fn blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    /// Waits while blocked; false once the proxy is dropped.
    fn wait_unblocked(&self) -> bool {
        while self.blocked() && !self.stopped() {
            thread::sleep(TICK);
        }
        !self.stopped()
    }
}

/// A thread that hands each item to `deliver` when its due time comes, in order, until the
/// sender is dropped or `deliver` fails; then calls `finish` with whether all went well.
fn delivery<T: Send + 'static>(
    mut deliver: impl FnMut(T) -> std::io::Result<()> + Send + 'static,
    finish: impl FnOnce(bool) + Send + 'static,
) -> Sender<(Instant, T)> {
    let (tx, rx) = channel::<(Instant, T)>();
    thread::spawn(move || {
        for (due, item) in rx {
            thread::sleep(due.saturating_duration_since(Instant::now()));
            if deliver(item).is_err() {
                return finish(false);
            }
        }
        finish(true)
    });
    tx
}

/// A TCP forwarder: each accepted connection gets its own connection to the destination.
pub struct Proxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
}

impl Proxy {
    /// Listens on `listen` (port 0 picks one: see `addr()`) and forwards to `to`.
    pub fn start(listen: SocketAddr, to: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(listen).unwrap_or_else(|e| panic!("proxy bind {listen}: {e}"));
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let faults = Arc::new(Faults::default());
        let f = faults.clone();
        thread::spawn(move || {
            while !f.stopped() {
                match listener.accept() {
                    // While blocked, a new connection is accepted and closed at once.
                    Ok((client, _)) if !f.blocked() => {
                        let f = f.clone();
                        thread::spawn(move || connect(client, to, f));
                    }
                    Ok(_) => {}
                    Err(_) => thread::sleep(TICK),
                }
            }
        });
        Proxy { addr, faults }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Holds every forwarded chunk this long, in each direction. Order is kept and
    /// throughput is not limited.
    pub fn set_delay(&self, delay: Duration) {
        self.faults.delay_ns.store(delay.as_nanos() as u64, Ordering::Relaxed);
    }

    /// While blocked, new connections are closed on accept and established ones stall: no
    /// byte is read or written in either direction until unblocked (nothing is lost).
    pub fn set_blocked(&self, blocked: bool) {
        self.faults.blocked.store(blocked, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.faults.stop.store(true, Ordering::Relaxed);
    }
}

fn connect(client: TcpStream, to: SocketAddr, faults: Arc<Faults>) {
    let Ok(server) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) else { return };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
    pipe(client, s2, faults.clone());
    pipe(server, c2, faults);
}

/// Copies `from` to `to` through a delivery thread. End of input becomes a half close of
/// `to`; a failed write closes `to` altogether, which ends the other direction too.
fn pipe(mut from: TcpStream, to: TcpStream, faults: Arc<Faults>) {
    let _ = from.set_nonblocking(false);
    from.set_read_timeout(Some(TICK)).unwrap();
    let (mut writer, closer, f) = (to.try_clone().unwrap(), to, faults.clone());
    let tx = delivery(
        move |chunk: Vec<u8>| {
            if !f.wait_unblocked() {
                return Err(ErrorKind::Interrupted.into());
            }
            writer.write_all(&chunk)
        },
        move |ok| {
            let _ = closer.shutdown(if ok { Shutdown::Write } else { Shutdown::Both });
        },
    );
    thread::spawn(move || {
        let mut buf = vec![0; 64 << 10];
        while faults.wait_unblocked() {
            match from.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.send((faults.due(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
                Err(_) => break,
            }
        }
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// A UDP forwarder for one client: datagrams to `addr()` go to the destination from a socket
/// of the proxy's own, and the replies go back to whoever sent to the proxy last.
pub struct UdpProxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
}

impl UdpProxy {
    pub fn start(listen: SocketAddr, to: SocketAddr) -> UdpProxy {
        let front = UdpSocket::bind(listen).unwrap_or_else(|e| panic!("proxy bind {listen}: {e}"));
        let addr = front.local_addr().unwrap();
        let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
        let back = UdpSocket::bind(any).unwrap();
        back.connect(to).unwrap();
        let faults = Arc::new(Faults::default());
        let client = Arc::new(Mutex::new(None::<SocketAddr>));

        // A datagram that cannot be sent is lost, as UDP goes; so is one due while blocked.
        let (f, up_tx) = (faults.clone(), back.try_clone().unwrap());
        let up = delivery(
            move |d: Vec<u8>| {
                if !f.blocked() {
                    let _ = up_tx.send(&d);
                }
                Ok(())
            },
            drop,
        );
        let (f, down_tx, peer) = (faults.clone(), front.try_clone().unwrap(), client.clone());
        let down = delivery(
            move |d: Vec<u8>| {
                if let (Some(peer), false) = (*peer.lock().unwrap(), f.blocked()) {
                    let _ = down_tx.send_to(&d, peer);
                }
                Ok(())
            },
            drop,
        );
        udp_reader(front, faults.clone(), up, move |from| *client.lock().unwrap() = Some(from));
        udp_reader(back, faults.clone(), down, |_| {});
        UdpProxy { addr, faults }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Holds every forwarded datagram this long, in each direction. Order is kept and
    /// throughput is not limited.
    pub fn set_delay(&self, delay: Duration) {
        self.faults.delay_ns.store(delay.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Drops this fraction of the datagrams (0.0 to 1.0) in each direction, spread evenly and
    /// deterministically: 0.25 drops every fourth, 1.0 drops all.
    pub fn set_loss(&self, fraction: f64) {
        self.faults.loss.store(fraction.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    /// While blocked, every datagram is dropped, also those already delayed.
    pub fn set_blocked(&self, blocked: bool) {
        self.faults.blocked.store(blocked, Ordering::Relaxed);
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.faults.stop.store(true, Ordering::Relaxed);
    }
}

/// Receives datagrams on `socket` and queues those that survive loss and blocking.
fn udp_reader(
    socket: UdpSocket,
    faults: Arc<Faults>,
    tx: Sender<(Instant, Vec<u8>)>,
    mut seen: impl FnMut(SocketAddr) + Send + 'static,
) {
    socket.set_read_timeout(Some(TICK)).unwrap();
    thread::spawn(move || {
        let (mut buf, mut owed) = (vec![0; 65536], 0.0_f64);
        while !faults.stopped() {
            let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
            seen(from);
            owed += f64::from_bits(faults.loss.load(Ordering::Relaxed));
            if owed >= 1.0 {
                owed -= 1.0;
                continue;
            }
            if !faults.blocked() {
                let _ = tx.send((faults.due(), buf[..n].to_vec()));
            }
        }
    });
}
