//! Control's side of the protocol: records nodes (and child control servers, see
//! [`crate::hierarchy`]), asks for their details, marks them down on SHUTDOWN or
//! when their heartbeats stop.
//!
//! Every datagram is checked before anything in the pool changes, in this order:
//! size (oversized), codec (malformed), MAC (unauthenticated), embedded source
//! address against the UDP source (spoofed), message body (malformed), message
//! type (unexpected: control never receives NEED_INFO or ACK), and last the
//! per-member sequence number, which must strictly increase (replayed). A dropped
//! datagram is counted, changes nothing and gets no answer. Members are told apart
//! by the body's `"kind"` (`node` when absent, or `control`); a node and a control
//! may share an id without meeting.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use super::packet::{self, MessageType, Packet, PacketError, MAX_PACKET};
use crate::children::{self, ControlBeat, ControlInfo};
use crate::pool::{now_ms, now_us, push, Inner, MemberKind, NodeInfo, NodeStatus, Pool};

/// Longest member id accepted.
pub const MAX_ID: usize = 128;

/// What every message body starts with.
#[derive(Deserialize)]
struct Hello {
    id: String,
    #[serde(default)]
    kind: MemberKind,
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
    /// The node's TLS public key (an uncompressed P-256 point, hex), to be certified.
    #[serde(default)]
    key: Option<String>,
}

#[derive(Deserialize)]
struct Beat {
    free_bytes: u64,
    #[serde(default)]
    objects: u64,
}

/// A fully checked message body.
enum Body {
    Startup,
    Info(Info),
    Heartbeat(Beat),
    Shutdown,
    ControlInfo(ControlInfo),
    ControlBeat(ControlBeat),
}

/// Serves the protocol on `socket` until the task is dropped (or aborted); the
/// heartbeat-expiry tick runs inside the same task and stops with it.
pub async fn run_listener(socket: UdpSocket, secret: [u8; 32], pool: Arc<Pool>, heartbeat_timeout: Duration) {
    let local = socket.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let period = (heartbeat_timeout / 5).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Recv buffer larger than MAX_PACKET so oversized datagrams are seen as such.
    let mut buf = vec![0u8; 2048];
    let mut seq = now_us();
    loop {
        let (n, from) = tokio::select! {
            _ = tick.tick() => {
                expire(&pool, heartbeat_timeout);
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // Not fatal (an ICMP report of an earlier send, say); pause so a
                    // persistent error cannot spin.
                    debug!(error = %e, "auto-configuration socket error");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Some((reply, body)) = handle_with_body(&pool, &secret, &buf[..n], from) else { continue };
        seq += 1;
        let data = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
        let p = Packet { kind: reply, seq, src: local, dst: from, data };
        match packet::encode(&p, &secret) {
            Ok(bytes) => {
                if let Err(e) = socket.send_to(&bytes, from).await {
                    warn!(%from, error = %e, "auto-configuration reply not sent");
                }
            }
            Err(e) => warn!(error = %e, "auto-configuration reply not encoded"),
        }
    }
}

pub(crate) fn expire(pool: &Pool, timeout: Duration) {
    let mut inner = pool.inner.lock().expect("not poisoned");
    let now = now_ms();
    let limit = timeout.as_millis() as u64;
    let mut gone = Vec::new();
    for n in inner.nodes.values_mut() {
        if n.status == NodeStatus::Up && now.saturating_sub(n.last_seen_unix_ms) > limit {
            n.status = NodeStatus::Down;
            gone.push(format!("{} ({}): heartbeat timeout (none for {:?})", n.id, n.address, timeout));
        }
    }
    for g in gone {
        push(&mut inner, "node_down", g);
    }
    for (kind, detail) in children::expire(&mut inner.controls, now, timeout) {
        push(&mut inner, kind, detail);
    }
}

fn count<T>(c: &AtomicU64) -> Option<T> {
    c.fetch_add(1, Ordering::Relaxed);
    None
}

/// Same address, whether written as IPv4 or IPv4-mapped IPv6.
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID && !id.chars().any(char::is_control)
}

/// Handles one datagram; returns the message to answer with, if any.
#[cfg(test)]
pub(crate) fn handle(pool: &Pool, secret: &[u8; 32], bytes: &[u8], from: SocketAddr) -> Option<MessageType> {
    handle_with_body(pool, secret, bytes, from).map(|(kind, _)| kind)
}

/// The credentials a reply carries: control's trust anchors with NEED_INFO, a node's new
/// certificate with the ACK to its INFO.
fn with_body(pool: &Pool, reply: Option<MessageType>, cert: Option<Vec<u8>>) -> Option<(MessageType, Value)> {
    let reply = reply?;
    let body = match (reply, cert) {
        (MessageType::NeedInfo, _) => pool.enroller().map(|e| e.trust()).unwrap_or(Value::Null),
        (MessageType::Ack, Some(cert)) => serde_json::json!({ "cert": hex::encode(cert) }),
        _ => Value::Null,
    };
    Some((reply, body))
}

/// A node's key, checked and certified by the enroller. Err(()) drops the INFO.
fn certify(pool: &Pool, id: &str, key: &Option<String>) -> Result<Option<Vec<u8>>, ()> {
    let (Some(key), Some(enroller)) = (key, pool.enroller()) else { return Ok(None) };
    let key = hex::decode(key).map_err(|_| ())?;
    enroller.admit(id, &key).map(Some).map_err(|why| warn!(node = id, "registration refused: {why}"))
}

/// [`handle`], with the body of the answer.
pub(crate) fn handle_with_body(
    pool: &Pool,
    secret: &[u8; 32],
    bytes: &[u8],
    from: SocketAddr,
) -> Option<(MessageType, Value)> {
    let c = &pool.counters;
    let (p, id, kind, body) = check(pool, secret, bytes, from)?;
    let member = (kind, id.clone());
    let last = pool.inner.lock().expect("not poisoned").last_seq.get(&member).copied();
    if p.seq < pool.seq_floor || last.is_some_and(|last| p.seq <= last) {
        return count(&c.replayed);
    }
    // One task handles every datagram, so nothing comes between this check and the insert below.
    let cert = match &body {
        Body::Info(info) => match certify(pool, &id, &info.key) {
            Ok(cert) => cert,
            Err(()) => return count(&c.spoofed),
        },
        _ => None,
    };
    pool.inner.lock().expect("not poisoned").last_seq.insert(member, p.seq);
    let reply = apply(pool, id, kind, body);
    with_body(pool, reply, cert)
}

/// Every check of a datagram but the sequence number's; None (counted) drops it.
fn check(pool: &Pool, secret: &[u8; 32], bytes: &[u8], from: SocketAddr) -> Option<(Packet, String, MemberKind, Body)> {
    let c = &pool.counters;
    if bytes.len() > MAX_PACKET {
        return count(&c.oversized);
    }
    let p = match packet::decode(bytes, secret) {
        Ok(p) => p,
        Err(PacketError::BadMac) => return count(&c.unauthenticated),
        Err(PacketError::Oversized(_)) => return count(&c.oversized),
        Err(e) => {
            debug!(%from, error = %e, "malformed auto-configuration packet");
            return count(&c.malformed);
        }
    };
    // The packet must come from where it says it comes from.
    if !same_addr(p.src, from) {
        debug!(%from, claimed = %p.src, "auto-configuration packet from elsewhere than it claims");
        return count(&c.spoofed);
    }
    if matches!(p.kind, MessageType::NeedInfo | MessageType::Ack) {
        return count(&c.unexpected);
    }
    let Ok(Hello { id, kind }) = serde_json::from_slice::<Hello>(&p.data) else { return count(&c.malformed) };
    let body = match (p.kind, kind) {
        (MessageType::Startup, _) => Ok(Body::Startup),
        (MessageType::Shutdown, _) => Ok(Body::Shutdown),
        (MessageType::Info, MemberKind::Node) => serde_json::from_slice::<Info>(&p.data).map(Body::Info),
        (MessageType::Heartbeat, MemberKind::Node) => serde_json::from_slice::<Beat>(&p.data).map(Body::Heartbeat),
        (MessageType::Info, MemberKind::Control) => {
            serde_json::from_slice::<ControlInfo>(&p.data).map(Body::ControlInfo)
        }
        (MessageType::Heartbeat, MemberKind::Control) => {
            serde_json::from_slice::<ControlBeat>(&p.data).map(Body::ControlBeat)
        }
        (MessageType::NeedInfo | MessageType::Ack, _) => return count(&c.unexpected),
    };
    let Ok(body) = body else { return count(&c.malformed) };
    if !valid_id(&id) || matches!(&body, Body::ControlInfo(i) if !i.valid()) {
        return count(&c.malformed);
    }
    Some((p, id, kind, body))
}

/// Applies a checked message to the pool; returns the answer, if any.
fn apply(pool: &Pool, id: String, kind: MemberKind, body: Body) -> Option<MessageType> {
    let mut inner = pool.inner.lock().expect("not poisoned");
    let now = now_ms();
    match body {
        Body::Startup if kind == MemberKind::Control => {
            children::on_startup(&mut inner.controls, id, now);
            Some(MessageType::NeedInfo)
        }
        Body::Shutdown if kind == MemberKind::Control => {
            for (kind, detail) in children::on_shutdown(&mut inner.controls, &id, now) {
                push(&mut inner, kind, detail);
            }
            None
        }
        Body::ControlInfo(info) => {
            let (answer, events) = children::on_info(&mut inner.controls, info, now);
            for (kind, detail) in events {
                push(&mut inner, kind, detail);
            }
            Some(answer)
        }
        Body::ControlBeat(beat) => Some(children::on_beat(&mut inner.controls, &id, beat, now)),
        Body::Startup => {
            node_startup(&mut inner, id, now);
            // Control records the unit, then asks for its details.
            Some(MessageType::NeedInfo)
        }
        Body::Info(info) => {
            node_info(&mut inner, id, info, now);
            Some(MessageType::Ack)
        }
        Body::Heartbeat(beat) => Some(node_beat(&mut inner, &id, beat, now)),
        Body::Shutdown => {
            node_shutdown(&mut inner, &id, now);
            None
        }
    }
}

/// A node's STARTUP: recorded, down until its INFO.
fn node_startup(inner: &mut Inner, id: String, now: u64) {
    let n = inner.nodes.entry(id.clone()).or_insert_with(|| NodeInfo {
        id,
        address: String::new(),
        site: String::new(),
        status: NodeStatus::Down,
        capacity_bytes: 0,
        free_bytes: 0,
        objects: 0,
        last_seen_unix_ms: now,
    });
    n.last_seen_unix_ms = now;
}

/// A node's INFO: registered and up.
fn node_info(inner: &mut Inner, id: String, info: Info, now: u64) {
    let was_up = inner.nodes.get(&id).is_some_and(|n| n.status == NodeStatus::Up);
    let detail = format!("{} ({}, site {})", info.id, info.address, info.site);
    inner.nodes.insert(
        id,
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
        push(inner, "node_up", detail);
    }
}

/// A node's HEARTBEAT: ACK, or NEED_INFO when it must register again.
fn node_beat(inner: &mut Inner, id: &str, beat: Beat, now: u64) -> MessageType {
    match inner.nodes.get_mut(id) {
        Some(n) => {
            n.last_seen_unix_ms = now;
            n.free_bytes = beat.free_bytes;
            n.objects = beat.objects;
            // Back after being marked down: register again.
            if n.status == NodeStatus::Up {
                MessageType::Ack
            } else {
                MessageType::NeedInfo
            }
        }
        // Unknown (control restarted, say): register again.
        None => MessageType::NeedInfo,
    }
}

/// A node's clean SHUTDOWN: down at once, without waiting for missed heartbeats.
fn node_shutdown(inner: &mut Inner, id: &str, now: u64) {
    if let Some(n) = inner.nodes.get_mut(id) {
        n.last_seen_unix_ms = now;
        if n.status == NodeStatus::Up {
            n.status = NodeStatus::Down;
            let detail = format!("{} ({}): clean stop", n.id, n.address);
            push(inner, "node_down", detail);
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
        assert!(pool.events().iter().any(|e| e.kind == "node_down" && e.detail.contains("heartbeat timeout")));
    }

    #[test]
    fn startup_records_and_rejected_bodies_leave_no_trace() {
        let pool = Pool::new();
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let startup = packet(MessageType::Startup, 10, from, serde_json::json!({ "id": "n3" }));
        assert_eq!(handle(&pool, &SECRET, &startup, from), Some(MessageType::NeedInfo));
        let n = &pool.nodes()[0];
        assert_eq!((n.id.as_str(), n.status), ("n3", NodeStatus::Down));
        assert!(pool.events().is_empty(), "no node_up before INFO");
        let before = format!("{:?}", pool.nodes());
        // An authentic INFO whose body is incomplete is malformed, and does not use up its number.
        let bad = packet(MessageType::Info, 11, from, serde_json::json!({ "id": "n3", "address": "x" }));
        assert_eq!(handle(&pool, &SECRET, &bad, from), None);
        // Empty and absurd ids are malformed too.
        let empty = packet(MessageType::Startup, 12, from, serde_json::json!({ "id": "" }));
        assert_eq!(handle(&pool, &SECRET, &empty, from), None);
        let long = packet(MessageType::Startup, 12, from, serde_json::json!({ "id": "x".repeat(MAX_ID + 1) }));
        assert_eq!(handle(&pool, &SECRET, &long, from), None);
        let ack = packet(MessageType::Ack, 12, from, serde_json::json!({ "id": "n3" }));
        assert_eq!(handle(&pool, &SECRET, &ack, from), None);
        let c = pool.counters();
        assert_eq!((c.malformed, c.unexpected, c.replayed), (3, 1, 0));
        assert_eq!(format!("{:?}", pool.nodes()), before);
        let info = serde_json::json!({
            "id": "n3", "address": "127.0.0.1:7803", "site": "c", "capacity_bytes": 9, "free_bytes": 8,
        });
        assert_eq!(handle(&pool, &SECRET, &packet(MessageType::Info, 11, from, info), from), Some(MessageType::Ack));
        assert_eq!(pool.nodes()[0].status, NodeStatus::Up);
        assert_eq!(pool.events().len(), 1);
    }

    #[test]
    fn source_comparison_ignores_ipv4_mapping_only() {
        let v4: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5000".parse().unwrap();
        assert!(same_addr(v4, mapped) && same_addr(mapped, v4));
        assert!(!same_addr(v4, "10.0.0.1:5001".parse().unwrap()));
        assert!(!same_addr(v4, "10.0.0.2:5000".parse().unwrap()));
        assert!(!same_addr("0.0.0.0:5000".parse().unwrap(), v4), "an unspecified source is not a wildcard");
    }

    fn control_info(id: &str, api: &str, nodes_up: u64) -> serde_json::Value {
        serde_json::json!({
            "id": id, "kind": "control", "name": format!("{id}-name"), "site": "east", "api": api,
            "summary": { "nodes_up": nodes_up, "nodes_down": 0, "capacity_bytes": 10, "free_bytes": 5 },
        })
    }

    #[test]
    fn child_controls_register_beat_and_leave_apart_from_nodes() {
        let pool = Pool::new();
        let from: SocketAddr = "127.0.0.1:40010".parse().unwrap();
        let hello = serde_json::json!({ "id": "c1", "kind": "control" });
        assert_eq!(
            handle(&pool, &SECRET, &packet(MessageType::Startup, 1, from, hello.clone()), from),
            Some(MessageType::NeedInfo)
        );
        assert_eq!(pool.controls()[0].status, NodeStatus::Down);
        assert!(pool.nodes().is_empty(), "a control is not a node");
        let info = control_info("c1", "http://127.0.0.1:8081", 2);
        assert_eq!(handle(&pool, &SECRET, &packet(MessageType::Info, 2, from, info), from), Some(MessageType::Ack));
        let c = &pool.controls()[0];
        assert_eq!(
            (c.status, c.name.as_str(), c.api.as_str(), c.summary.nodes_up),
            (NodeStatus::Up, "c1-name", "http://127.0.0.1:8081", 2)
        );
        assert_eq!(pool.events().iter().filter(|e| e.kind == "control_up").count(), 1);
        // A heartbeat refreshes the summary.
        let beat = serde_json::json!({ "id": "c1", "kind": "control", "summary": { "nodes_up": 3, "nodes_down": 1, "capacity_bytes": 7, "free_bytes": 1 } });
        assert_eq!(
            handle(&pool, &SECRET, &packet(MessageType::Heartbeat, 3, from, beat), from),
            Some(MessageType::Ack)
        );
        assert_eq!(pool.controls()[0].summary.nodes_down, 1);
        assert_eq!(pool.summary().nodes_up, 3);
        assert_eq!(pool.summary().controls_up, 1);
        // A node with the same id has its own record and its own sequence numbers.
        let node = serde_json::json!({ "id": "c1" });
        assert_eq!(
            handle(&pool, &SECRET, &packet(MessageType::Startup, 1, from, node), from),
            Some(MessageType::NeedInfo)
        );
        assert_eq!((pool.nodes().len(), pool.controls().len()), (1, 1));
        assert_eq!(pool.counters().replayed, 0);
        // Replayed, forged and malformed control messages change nothing.
        let before = format!("{:?}", pool.controls());
        let replay = packet(MessageType::Info, 2, from, control_info("c1", "http://10.9.9.9:1", 99));
        assert_eq!(handle(&pool, &SECRET, &replay, from), None);
        let forged = {
            let p = Packet {
                kind: MessageType::Info,
                seq: 100,
                src: from,
                dst: from,
                data: control_info("c1", "http://10.9.9.9:1", 99).to_string().into_bytes(),
            };
            packet::encode(&p, &[6; 32]).unwrap()
        };
        assert_eq!(handle(&pool, &SECRET, &forged, from), None);
        for bad_api in ["10.9.9.9:1", "http://u:p@10.9.9.9:1", "http://10.9.9.9:1/x", "https://10.9.9.9:1"] {
            let bad = packet(MessageType::Info, 101, from, control_info("c1", bad_api, 99));
            assert_eq!(handle(&pool, &SECRET, &bad, from), None, "{bad_api}");
        }
        let unknown_kind =
            packet(MessageType::Startup, 102, from, serde_json::json!({ "id": "c1", "kind": "gateway" }));
        assert_eq!(handle(&pool, &SECRET, &unknown_kind, from), None);
        let spoofed = packet(MessageType::Shutdown, 103, "127.0.0.1:40011".parse().unwrap(), hello.clone());
        assert_eq!(handle(&pool, &SECRET, &spoofed, from), None);
        let c = pool.counters();
        assert_eq!((c.replayed, c.unauthenticated, c.malformed, c.spoofed), (1, 1, 5, 1));
        assert_eq!(format!("{:?}", pool.controls()), before);
        // A clean stop.
        assert_eq!(handle(&pool, &SECRET, &packet(MessageType::Shutdown, 104, from, hello), from), None);
        assert_eq!(pool.controls()[0].status, NodeStatus::Down);
        assert!(pool.events().iter().any(|e| e.kind == "control_down" && e.detail.contains("clean stop")));
        assert_eq!(pool.summary().controls_down, 1);
        assert_eq!(pool.summary().nodes_up, 0);
    }

    #[test]
    fn silent_controls_expire() {
        let pool = Pool::new();
        let from: SocketAddr = "127.0.0.1:40020".parse().unwrap();
        let info = control_info("c2", "http://127.0.0.1:8082", 1);
        assert_eq!(handle(&pool, &SECRET, &packet(MessageType::Info, 5, from, info), from), Some(MessageType::Ack));
        expire(&pool, Duration::from_secs(5));
        assert_eq!(pool.controls()[0].status, NodeStatus::Up);
        pool.inner.lock().unwrap().controls.get_mut("c2").unwrap().last_seen_unix_ms -= 10_000;
        expire(&pool, Duration::from_secs(5));
        assert_eq!(pool.controls()[0].status, NodeStatus::Down);
        assert!(pool.events().iter().any(|e| e.kind == "control_down" && e.detail.contains("heartbeat timeout")));
        // A heartbeat from a control marked down asks it to register again.
        let beat = serde_json::json!({ "id": "c2", "kind": "control", "summary": { "nodes_up": 1, "nodes_down": 0, "capacity_bytes": 1, "free_bytes": 1 } });
        assert_eq!(
            handle(&pool, &SECRET, &packet(MessageType::Heartbeat, 6, from, beat), from),
            Some(MessageType::NeedInfo)
        );
    }

    /// A control that restarted has no per-member windows left: anything numbered before
    /// it started is still a replay.
    #[test]
    fn a_restarted_control_refuses_packets_from_before_its_start() {
        let from: SocketAddr = "127.0.0.1:7801".parse().unwrap();
        let old =
            packet(MessageType::Startup, now_us() - 1_000_000, from, serde_json::json!({"id": "n1", "kind": "node"}));
        let pool = Pool::started_now();
        assert_eq!(handle(&pool, &SECRET, &old, from), None);
        assert_eq!(pool.counters().replayed, 1);
        assert!(pool.nodes().is_empty());
        let fresh = packet(MessageType::Startup, now_us(), from, serde_json::json!({"id": "n1", "kind": "node"}));
        assert_eq!(handle(&pool, &SECRET, &fresh, from), Some(MessageType::NeedInfo));
    }
}
