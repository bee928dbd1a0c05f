//! The pool of storage nodes as control sees it, the child control servers that
//! registered with it (see [`crate::children`]), and the events an administrator reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::children::ChildControl;
pub use crate::clock::{now_ms, now_us};
pub use crate::model::{MemberKind, NodeStatus, PoolSummary};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct NodeInfo {
    pub id: String,
    /// host:port of the node's share API.
    pub address: String,
    pub site: String,
    pub status: NodeStatus,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub objects: u64,
    pub last_seen_unix_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// The event's number, from 1 each time this process starts: a gap means events were
    /// dropped (the oldest of the 1000 kept here, or of a notifier's queue).
    #[serde(default)]
    pub seq: u64,
    pub time_unix_ms: u64,
    pub kind: String,
    pub detail: String,
}

/// Where every event goes as it is recorded, besides the list: called in order, under the
/// pool's lock, so it must not block (the webhook notifier only queues the event).
pub trait EventSink: Send + Sync {
    fn recorded(&self, event: &Event);
}

/// The pool's [`EventSink`], if one is set.
#[derive(Default)]
pub(crate) struct Sink(Option<Arc<dyn EventSink>>);

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Sink(set)" } else { "Sink(none)" })
    }
}

/// Packets dropped by the auto-configuration listener, by reason.
#[derive(Debug, Default, Serialize, Clone, Copy, PartialEq, Eq)]
pub struct DropCounters {
    pub unauthenticated: u64,
    pub malformed: u64,
    pub replayed: u64,
    pub oversized: u64,
    /// Authentic, but the embedded source address is not the UDP source.
    pub spoofed: u64,
    /// Authentic, but a message control never receives (NEED_INFO, ACK).
    pub unexpected: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub unauthenticated: AtomicU64,
    pub malformed: AtomicU64,
    pub replayed: AtomicU64,
    pub oversized: AtomicU64,
    pub spoofed: AtomicU64,
    pub unexpected: AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Child control servers, by id.
    pub controls: BTreeMap<String, ChildControl>,
    /// Highest sequence number accepted per member (kind and id).
    pub last_seq: BTreeMap<(MemberKind, String), u64>,
    pub events: Vec<Event>,
    /// The number of the last event recorded.
    pub last_event: u64,
    pub sink: Sink,
}

/// What control gives members when they register (docs/control.md, "Credentials"): its node
/// CA and signing key in NEED_INFO, and a node certificate for the key a node sends in INFO.
pub trait Enroller: Send + Sync {
    /// Body of NEED_INFO: what a member needs to trust this control.
    fn trust(&self) -> serde_json::Value;
    /// Admits node `id` with public key `key` (the first key seen for an id is kept; another is
    /// refused) and returns its certificate (DER), or why not.
    fn admit(&self, id: &str, key: &[u8]) -> Result<Vec<u8>, String>;
}

#[derive(Default)]
pub struct Pool {
    pub(crate) inner: Mutex<Inner>,
    pub(crate) counters: Counters,
    /// Packets numbered below this (µs since the epoch) are replays: senders number their
    /// packets by the clock, so nothing sent before this control started is accepted again
    /// after a restart, when the per-member windows kept in memory are gone.
    pub(crate) seq_floor: u64,
    pub(crate) enroller: Mutex<Option<Arc<dyn Enroller>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("inner", &self.inner).finish()
    }
}

const MAX_EVENTS: usize = 1000;

impl Pool {
    pub fn new() -> Arc<Pool> {
        Arc::new(Pool::default())
    }

    /// A pool for a control that starts now: auto-configuration packets sent before it
    /// started are refused as replays.
    pub fn started_now() -> Arc<Pool> {
        Arc::new(Pool { seq_floor: now_us(), ..Pool::default() })
    }

    /// Who issues members' credentials at registration.
    pub fn set_enroller(&self, e: Arc<dyn Enroller>) {
        *self.enroller.lock().expect("not poisoned") = Some(e);
    }

    pub(crate) fn enroller(&self) -> Option<Arc<dyn Enroller>> {
        self.enroller.lock().expect("not poisoned").clone()
    }

    /// The registered node serving at `address` (host:port): the one up, else the last seen.
    pub fn node_at(&self, address: &str) -> Option<NodeInfo> {
        let inner = self.inner.lock().expect("not poisoned");
        inner
            .nodes
            .values()
            .filter(|n| n.address == address)
            .max_by_key(|n| (n.status == NodeStatus::Up, n.last_seen_unix_ms))
            .cloned()
    }

    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.inner.lock().expect("not poisoned").nodes.values().cloned().collect()
    }

    /// Child control servers that registered here, with their status and summaries.
    pub fn controls(&self) -> Vec<ChildControl> {
        self.inner.lock().expect("not poisoned").controls.values().cloned().collect()
    }

    /// This pool at a glance, child controls' subtrees included.
    pub fn summary(&self) -> PoolSummary {
        let inner = self.inner.lock().expect("not poisoned");
        let mut s = PoolSummary::default();
        for n in inner.nodes.values() {
            if n.status == NodeStatus::Up {
                s.nodes_up += 1;
                s.capacity_bytes = s.capacity_bytes.saturating_add(n.capacity_bytes);
                s.free_bytes = s.free_bytes.saturating_add(n.free_bytes);
            } else {
                s.nodes_down += 1;
            }
        }
        for c in inner.controls.values() {
            if c.status == NodeStatus::Up {
                s.controls_up += 1;
                s.add(&c.summary);
            } else {
                s.controls_down += 1;
            }
        }
        s
    }

    pub fn events(&self) -> Vec<Event> {
        self.inner.lock().expect("not poisoned").events.clone()
    }

    /// Sends every event recorded from now on to `sink` too.
    pub fn set_event_sink(&self, sink: Arc<dyn EventSink>) {
        self.inner.lock().expect("not poisoned").sink = Sink(Some(sink));
    }

    pub fn push_event(&self, kind: &str, detail: String) {
        let mut inner = self.inner.lock().expect("not poisoned");
        push(&mut inner, kind, detail);
    }

    pub fn counters(&self) -> DropCounters {
        let c = &self.counters;
        DropCounters {
            unauthenticated: c.unauthenticated.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
            oversized: c.oversized.load(Ordering::Relaxed),
            spoofed: c.spoofed.load(Ordering::Relaxed),
            unexpected: c.unexpected.load(Ordering::Relaxed),
        }
    }
}

pub(crate) fn push(inner: &mut Inner, kind: &str, detail: String) {
    tracing::info!(kind, %detail, "event");
    inner.last_event += 1;
    let event = Event { seq: inner.last_event, time_unix_ms: now_ms(), kind: kind.to_string(), detail };
    if let Some(sink) = &inner.sink.0 {
        sink.recorded(&event);
    }
    inner.events.push(event);
    if inner.events.len() > MAX_EVENTS {
        inner.events.remove(0);
    }
}
