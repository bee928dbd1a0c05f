//! Control's side of the protocol: records nodes, asks for their details, marks
//! them down on SHUTDOWN or when their heartbeats stop.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use super::packet::{self, MessageType, Packet, PacketError, MAX_PACKET};
use crate::pool::{now_ms, push, NodeInfo, NodeStatus, Pool};

#[derive(Deserialize)]
struct Hello {
    id: String,
}

#[derive(Deserialize)]
struct Info {
    id: String,
    address: String,
    site: String,
    capacity_bytes: u64,
    free_bytes: u64,
    #[serde(default)]
    objects: u64,
}

#[derive(Deserialize)]
struct Beat {
    id: String,
    free_bytes: u64,
    #[serde(default)]
    objects: u64,
}

/// Serves the protocol on `socket` until the task is dropped.
pub async fn run_listener(socket: UdpSocket, secret: [u8; 32], pool: Arc<Pool>, heartbeat_timeout: Duration) {
    let socket = Arc::new(socket);
    let local = socket.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                expire(&pool, heartbeat_timeout);
            }
        });
    }
    let mut buf = vec![0u8; 2048];
    let mut seq = now_ms() * 1000;
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "auto-configuration socket error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(reply) = handle(&pool, &secret, &buf[..n], from) else { continue };
        seq += 1;
        let p = Packet { kind: reply, seq, src: local, dst: from, data: Vec::new() };
        if let Ok(bytes) = packet::encode(&p, &secret) {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}

fn expire(pool: &Pool, timeout: Duration) {
    let mut inner = pool.inner.lock().expect("not poisoned");
    let now = now_ms();
    let mut gone = Vec::new();
    for n in inner.nodes.values_mut() {
        if n.status == NodeStatus::Up && now.saturating_sub(n.last_seen_unix_ms) > timeout.as_millis() as u64 {
            n.status = NodeStatus::Down;
            gone.push(format!("{} ({}): no heartbeat for {:?}", n.id, n.address, timeout));
        }
    }
    for g in gone {
        push(&mut inner, "node_down", g);
    }
}

/// Handles one datagram; returns the message to answer with, if any.
fn handle(pool: &Pool, secret: &[u8; 32], bytes: &[u8], from: SocketAddr) -> Option<MessageType> {
    let c = &pool.counters;
    if bytes.len() > MAX_PACKET {
        c.oversized.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let p = match packet::decode(bytes, secret) {
        Ok(p) => p,
        Err(PacketError::BadMac) => {
            c.unauthenticated.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Err(PacketError::Oversized(_)) => {
            c.oversized.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Err(e) => {
            debug!(%from, error = %e, "malformed auto-configuration packet");
            c.malformed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    // The packet must come from where it says it comes from.
    if p.src.port() != from.port() || (p.src.ip() != from.ip() && !p.src.ip().is_unspecified()) {
        c.spoofed.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let Ok(hello) = serde_json::from_slice::<Hello>(&p.data) else {
        c.malformed.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let mut inner = pool.inner.lock().expect("not poisoned");
    if inner.last_seq.get(&hello.id).is_some_and(|&last| p.seq <= last) {
        c.replayed.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    inner.last_seq.insert(hello.id.clone(), p.seq);
    let now = now_ms();
    match p.kind {
        MessageType::Startup => Some(MessageType::NeedInfo),
        MessageType::Info => {
            let Ok(info) = serde_json::from_slice::<Info>(&p.data) else {
                c.malformed.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            let was_up = inner.nodes.get(&info.id).is_some_and(|n| n.status == NodeStatus::Up);
            let detail = format!("{} ({}, site {})", info.id, info.address, info.site);
            inner.nodes.insert(
                info.id.clone(),
                NodeInfo {
                    id: info.id,
                    address: info.address,
                    site: info.site,
                    status: NodeStatus::Up,
                    capacity_bytes: info.capacity_bytes,
                    free_bytes: info.free_bytes,
                    objects: info.objects,
                    last_seen_unix_ms: now,
                },
            );
            if !was_up {
                push(&mut inner, "node_up", detail);
            }
            Some(MessageType::Ack)
        }
        MessageType::Heartbeat => {
            let Ok(beat) = serde_json::from_slice::<Beat>(&p.data) else {
                c.malformed.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            match inner.nodes.get_mut(&beat.id) {
                Some(n) if n.status == NodeStatus::Up => {
                    n.last_seen_unix_ms = now;
                    n.free_bytes = beat.free_bytes;
                    n.objects = beat.objects;
                    Some(MessageType::Ack)
                }
                // Unknown, or back after being marked down: register again.
                _ => Some(MessageType::NeedInfo),
            }
        }
        MessageType::Shutdown => {
            if let Some(n) = inner.nodes.get_mut(&hello.id) {
                if n.status == NodeStatus::Up {
                    n.status = NodeStatus::Down;
                    let detail = format!("{} ({}): clean stop", n.id, n.address);
                    push(&mut inner, "node_down", detail);
                }
            }
            None
        }
        MessageType::NeedInfo | MessageType::Ack => {
            c.unexpected.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [5; 32];

    fn packet(kind: MessageType, seq: u64, src: SocketAddr, data: serde_json::Value) -> Vec<u8> {
        let p = Packet { kind, seq, src, dst: "127.0.0.1:7700".parse().unwrap(), data: data.to_string().into_bytes() };
        packet::encode(&p, &SECRET).unwrap()
    }

    #[test]
    fn registration_replay_spoofing_and_shutdown() {
        let pool = Pool::new();
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let hello = serde_json::json!({ "id": "n1" });
        let startup = packet(MessageType::Startup, 10, from, hello.clone());
        assert_eq!(handle(&pool, &SECRET, &startup, from), Some(MessageType::NeedInfo));
        let info = serde_json::json!({
            "id": "n1", "address": "127.0.0.1:7800", "site": "a", "capacity_bytes": 100, "free_bytes": 60,
        });
        assert_eq!(handle(&pool, &SECRET, &packet(MessageType::Info, 11, from, info), from), Some(MessageType::Ack));
        assert_eq!(pool.nodes()[0].status, NodeStatus::Up);
        let before = format!("{:?}", pool.nodes());

        // A captured packet sent again is a replay: dropped, counted, nothing changes.
        assert_eq!(handle(&pool, &SECRET, &startup, from), None);
        assert_eq!(pool.counters().replayed, 1);
        // The same packet from another address is spoofed.
        let other: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let shutdown = packet(MessageType::Shutdown, 12, from, hello.clone());
        assert_eq!(handle(&pool, &SECRET, &shutdown, other), None);
        assert_eq!(pool.counters().spoofed, 1);
        // Wrong secret, garbage, oversized.
        let mut forged = shutdown.clone();
        forged[20] ^= 1;
        assert_eq!(handle(&pool, &SECRET, &forged, from), None);
        assert_eq!(handle(&pool, &SECRET, b"garbage", from), None);
        assert_eq!(handle(&pool, &SECRET, &[0u8; 1500], from), None);
        let c = pool.counters();
        assert_eq!((c.unauthenticated, c.malformed, c.oversized), (1, 1, 1));
        assert_eq!(format!("{:?}", pool.nodes()), before);

        // The genuine SHUTDOWN marks it down at once, with an event.
        assert_eq!(handle(&pool, &SECRET, &shutdown, from), None);
        assert_eq!(pool.nodes()[0].status, NodeStatus::Down);
        assert!(pool.events().iter().any(|e| e.kind == "node_down" && e.detail.contains("clean stop")));
        // A heartbeat from a node marked down asks it to register again.
        let beat = serde_json::json!({ "id": "n1", "free_bytes": 50 });
        assert_eq!(
            handle(&pool, &SECRET, &packet(MessageType::Heartbeat, 13, from, beat), from),
            Some(MessageType::NeedInfo)
        );
    }

    #[test]
    fn silent_nodes_expire() {
        let pool = Pool::new();
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let info = serde_json::json!({
            "id": "n2", "address": "127.0.0.1:7801", "site": "b", "capacity_bytes": 1, "free_bytes": 1,
        });
        handle(&pool, &SECRET, &packet(MessageType::Info, 1, from, info), from);
        pool.inner.lock().unwrap().nodes.get_mut("n2").unwrap().last_seen_unix_ms -= 10_000;
        expire(&pool, Duration::from_secs(5));
        assert_eq!(pool.nodes()[0].status, NodeStatus::Down);
        assert!(pool.events().iter().any(|e| e.detail.contains("no heartbeat")));
    }
}
