//! UDP heartbeats between gateways, both ways, on the port number of the mirror listener.
//!
//! A packet is `"CLHB" | version u8 | sender id [16] | time µs u64 | MAC [32]`, the MAC a keyed
//! BLAKE3 of the rest under the key the two gateways derived from their last TLS session
//! (see `crate::link`). A packet is taken only if its MAC checks, its time is later than the
//! last one taken from that sender (replay) and within [`FRESH`] of ours. Everything else is
//! dropped and counted.
//!
//! A peer is `Down` when nothing was heard for `down_after`; it is `Steady` once heartbeats
//! have come without a gap (more than two intervals) for the probationary interval.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tracing::debug;

/// A gateway's mirror identity.
pub type PeerId = [u8; 16];

const MAGIC: &[u8; 4] = b"CLHB";
const VERSION: u8 = 1;
const PACKET: usize = 4 + 1 + 16 + 8 + 32;
/// How far a heartbeat's time may be from ours.
pub const FRESH: Duration = Duration::from_secs(60);

/// The heartbeat timers.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub interval: Duration,
    pub down_after: Duration,
    /// `None`: reconnect as soon as heartbeats are heard again.
    pub probation: Option<Duration>,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            interval: Duration::from_millis(1500),
            down_after: Duration::from_secs(4),
            probation: Some(Duration::from_secs(10)),
        }
    }
}

/// What the heartbeats say of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Down,
    /// Heard again, not yet for the whole probationary interval.
    Probation {
        remaining: Duration,
    },
    Steady,
}

/// Packets received and dropped, for `/metrics` and the tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub malformed: AtomicU64,
    pub forged: AtomicU64,
    pub replayed: AtomicU64,
}

struct Heard {
    last: Instant,
    steady_since: Instant,
    last_time: u64,
}

/// The heartbeat service of one gateway.
pub struct Heartbeats {
    socket: Arc<UdpSocket>,
    me: PeerId,
    timing: Timing,
    keys: RwLock<HashMap<PeerId, [u8; 32]>>,
    /// Where each peer's heartbeats go.
    peers: RwLock<HashMap<PeerId, SocketAddr>>,
    heard: Mutex<HashMap<PeerId, Heard>>,
    pub counters: Counters,
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn mac(key: &[u8; 32], body: &[u8]) -> [u8; 32] {
    *blake3::keyed_hash(key, body).as_bytes()
}

/// A signed heartbeat from `me` at `time`.
pub fn packet(me: &PeerId, key: &[u8; 32], time: u64) -> [u8; PACKET] {
    let mut p = [0u8; PACKET];
    p[..4].copy_from_slice(MAGIC);
    p[4] = VERSION;
    p[5..21].copy_from_slice(me);
    p[21..29].copy_from_slice(&time.to_be_bytes());
    let tag = mac(key, &p[..29]);
    p[29..].copy_from_slice(&tag);
    p
}

/// Why a packet was dropped.
#[derive(Debug, PartialEq, Eq)]
pub enum Drop {
    Malformed,
    Forged,
    Replayed,
}

/// The sender and time of a well-formed packet, not yet authenticated.
pub fn parse(p: &[u8]) -> Option<(PeerId, u64)> {
    if p.len() != PACKET || &p[..4] != MAGIC || p[4] != VERSION {
        return None;
    }
    let id: PeerId = p[5..21].try_into().ok()?;
    let time = u64::from_be_bytes(p[21..29].try_into().ok()?);
    Some((id, time))
}

impl Heartbeats {
    pub fn new(socket: UdpSocket, me: PeerId, timing: Timing) -> Arc<Self> {
        Arc::new(Heartbeats {
            socket: Arc::new(socket),
            me,
            timing,
            keys: RwLock::default(),
            peers: RwLock::default(),
            heard: Mutex::default(),
            counters: Counters::default(),
        })
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Sets the key shared with `peer` and where its heartbeats go.
    pub fn set_peer(&self, peer: PeerId, key: [u8; 32], addr: SocketAddr) {
        self.keys.write().expect("not poisoned").insert(peer, key);
        self.peers.write().expect("not poisoned").insert(peer, addr);
    }

    pub fn knows(&self, peer: &PeerId) -> bool {
        self.keys.read().expect("not poisoned").contains_key(peer)
    }

    /// Checks one packet; on success records the peer as heard.
    pub fn accept(&self, p: &[u8], now: Instant) -> Result<PeerId, Drop> {
        let (id, time) = parse(p).ok_or(Drop::Malformed)?;
        let key = *self.keys.read().expect("not poisoned").get(&id).ok_or(Drop::Forged)?;
        let tag: [u8; 32] = p[29..].try_into().map_err(|_| Drop::Malformed)?;
        if !tags_equal(&mac(&key, &p[..29]), &tag) {
            return Err(Drop::Forged);
        }
        let ours = now_micros();
        if ours.abs_diff(time) > FRESH.as_micros() as u64 {
            return Err(Drop::Replayed);
        }
        let mut heard = self.heard.lock().expect("not poisoned");
        let gap = self.timing.interval * 2;
        match heard.get_mut(&id) {
            Some(h) if time <= h.last_time => return Err(Drop::Replayed),
            Some(h) => {
                if now.duration_since(h.last) > gap {
                    h.steady_since = now;
                }
                h.last = now;
                h.last_time = time;
            }
            None => {
                heard.insert(id, Heard { last: now, steady_since: now, last_time: time });
            }
        }
        Ok(id)
    }

    /// What the heartbeats say of `peer` now.
    pub fn liveness(&self, peer: &PeerId) -> Liveness {
        let now = Instant::now();
        let heard = self.heard.lock().expect("not poisoned");
        let Some(h) = heard.get(peer) else { return Liveness::Down };
        if now.duration_since(h.last) > self.timing.down_after {
            return Liveness::Down;
        }
        let steady = now.duration_since(h.steady_since);
        match self.timing.probation {
            Some(p) if steady < p => Liveness::Probation { remaining: p - steady },
            _ => Liveness::Steady,
        }
    }

    /// Sends a heartbeat to every known peer every interval, forever.
    pub async fn send_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.timing.interval);
        loop {
            tick.tick().await;
            let peers: Vec<_> = self.peers.read().expect("not poisoned").iter().map(|(k, v)| (*k, *v)).collect();
            for (id, addr) in peers {
                let Some(key) = self.keys.read().expect("not poisoned").get(&id).copied() else { continue };
                let p = packet(&self.me, &key, now_micros());
                if let Err(e) = self.socket.send_to(&p, addr).await {
                    debug!(%addr, error = %e, "heartbeat not sent");
                }
            }
        }
    }

    /// Receives heartbeats forever, counting what it drops.
    pub async fn receive_loop(self: Arc<Self>) {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = self.socket.recv_from(&mut buf).await else { continue };
            let c = &self.counters;
            match self.accept(&buf[..n], Instant::now()) {
                Ok(_) => c.received.fetch_add(1, Ordering::Relaxed),
                Err(Drop::Malformed) => c.malformed.fetch_add(1, Ordering::Relaxed),
                Err(Drop::Forged) => c.forged.fetch_add(1, Ordering::Relaxed),
                Err(Drop::Replayed) => c.replayed.fetch_add(1, Ordering::Relaxed),
            };
            debug!(%from, bytes = n, "heartbeat packet");
        }
    }
}

/// Compares two tags in constant time.
fn tags_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn service(timing: Timing) -> Arc<Heartbeats> {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Heartbeats::new(s, [1; 16], timing)
    }

    #[tokio::test]
    async fn forged_replayed_and_malformed_packets_are_dropped() {
        let hb = service(Timing::default()).await;
        let key = [7u8; 32];
        hb.set_peer([2; 16], key, "127.0.0.1:9".parse().unwrap());
        let now = Instant::now();
        let t = now_micros();
        let good = packet(&[2; 16], &key, t);
        assert_eq!(hb.accept(&good, now), Ok([2; 16]));
        assert_eq!(hb.accept(&good, now), Err(Drop::Replayed), "the same packet twice");
        assert_eq!(hb.accept(&packet(&[2; 16], &key, t - 1), now), Err(Drop::Replayed), "an older one");
        assert_eq!(hb.accept(&packet(&[2; 16], &[8; 32], t + 1), now), Err(Drop::Forged), "wrong key");
        assert_eq!(hb.accept(&packet(&[3; 16], &key, t + 1), now), Err(Drop::Forged), "unknown sender");
        let stale = t - FRESH.as_micros() as u64 - 1_000_000;
        assert_eq!(hb.accept(&packet(&[2; 16], &key, stale), now), Err(Drop::Replayed), "too old");
        let mut flipped = packet(&[2; 16], &key, t + 2);
        flipped[25] ^= 1;
        assert_eq!(hb.accept(&flipped, now), Err(Drop::Forged), "changed time");
        assert_eq!(hb.accept(&good[..40], now), Err(Drop::Malformed));
        assert_eq!(hb.accept(&packet(&[2; 16], &key, t + 3), now), Ok([2; 16]));
    }

    #[tokio::test]
    async fn probation_restarts_on_a_gap() {
        let timing = Timing {
            interval: Duration::from_millis(100),
            down_after: Duration::from_millis(300),
            probation: Some(Duration::from_millis(500)),
        };
        let hb = service(timing).await;
        let key = [7u8; 32];
        let peer = [2; 16];
        hb.set_peer(peer, key, "127.0.0.1:9".parse().unwrap());
        assert_eq!(hb.liveness(&peer), Liveness::Down);
        let start = Instant::now();
        let beat = |ms: u64| hb.accept(&packet(&peer, &key, now_micros() + ms), start + Duration::from_millis(ms));
        beat(0).unwrap();
        beat(100).unwrap();
        // A gap of 250 ms (more than two intervals) restarts the probation at 350.
        beat(350).unwrap();
        let h = hb.heard.lock().unwrap();
        assert_eq!(h[&peer].steady_since, start + Duration::from_millis(350));
    }
}
