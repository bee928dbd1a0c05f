//! Heartbeats between the gateways of an appliance (docs/appliance.md, "Heartbeats"). Each
//! gateway keeps one connection to every other member, opened like a forwarding connection
//! (NBD over TLS, each side proving itself with its gateway certificate) on the `.heartbeat`
//! export, and sends a FLUSH on it every [`EVERY`]: the answer is the acknowledgement. A peer
//! not heard for [`SILENT_FOR`] is unreachable from here (`peer_lost`) until it answers again
//! (`peer_back`).
//!
//! Liveness stays with etcd: a gateway holds its volumes while its lease holds, and a
//! heartbeat never takes a volume over (two gateways that cannot reach each other but both
//! reach etcd would otherwise both serve). What heartbeats change is what each gateway does
//! with the link: a primary does not keep its standby on a gateway it cannot reach, and a
//! gateway that has not reached a volume's primary for longer than a failover would take
//! reports its own iSCSI path unavailable, so that multipath hosts use a path that works
//! instead of waiting on this one. During a failover it does not: hosts wait for the next
//! primary, as they do over NBD.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cleave_nbd::{BlockDevice, BlockError};
use tracing::{debug, warn};

use crate::appliance::{blocking, Appliance};
use crate::events::EventKind;
use crate::gateway::Gateway;

/// The export a peer gateway opens for heartbeats.
pub(crate) const EXPORT: &str = ".heartbeat";
/// How often each peer is asked.
const EVERY: Duration = Duration::from_millis(1500);
/// A peer not heard for this long is unreachable.
const SILENT_FOR: Duration = Duration::from_secs(4);

/// What this gateway has heard of each other member.
#[derive(Default)]
pub(crate) struct Peers {
    heard: Mutex<HashMap<String, Heard>>,
}

struct Heard {
    /// The last answer, or when the peer was first known: a new peer has its time to answer.
    last: Instant,
    lost: bool,
}

impl Peers {
    /// Whether `gateway` answered heartbeats lately (a gateway not yet asked counts as heard).
    pub(crate) fn reaches(&self, gateway: &str) -> bool {
        let heard = self.heard.lock().expect("not poisoned");
        heard.get(gateway).is_none_or(|h| h.last.elapsed() < SILENT_FOR)
    }

    /// Whether `gateway` has been silent for longer than a lease of `ttl` and one more
    /// [`SILENT_FOR`]: had it died, etcd would have let another gateway take its volumes by
    /// then. One that is still a volume's primary is alive but out of reach from here, not
    /// in a failover.
    pub(crate) fn cut_off(&self, gateway: &str, ttl: Duration) -> bool {
        let heard = self.heard.lock().expect("not poisoned");
        heard.get(gateway).is_some_and(|h| h.last.elapsed() > ttl + SILENT_FOR)
    }

    fn answered(&self, gateway: &str) {
        if let Some(h) = self.heard.lock().expect("not poisoned").get_mut(gateway) {
            h.last = Instant::now();
        }
    }

    /// Starts following the members not followed yet; forgets those gone. The new ones.
    fn track(&self, members: &[String]) -> Vec<String> {
        let mut heard = self.heard.lock().expect("not poisoned");
        heard.retain(|g, _| members.contains(g));
        let new: Vec<String> = members.iter().filter(|g| !heard.contains_key(*g)).cloned().collect();
        for g in &new {
            heard.insert(g.clone(), Heard { last: Instant::now(), lost: false });
        }
        new
    }

    /// Peers that went silent and peers that answered again since the last call.
    fn changes(&self) -> (Vec<String>, Vec<String>) {
        let (mut lost, mut back) = (Vec::new(), Vec::new());
        for (g, h) in self.heard.lock().expect("not poisoned").iter_mut() {
            let silent = h.last.elapsed() >= SILENT_FOR;
            if silent != h.lost {
                h.lost = silent;
                if silent { &mut lost } else { &mut back }.push(g.clone());
            }
        }
        (lost, back)
    }

    fn follows(&self, gateway: &str) -> bool {
        self.heard.lock().expect("not poisoned").contains_key(gateway)
    }
}

impl Gateway {
    /// Sends heartbeats to every other member and tells the administrator of the peers that
    /// stop or start answering.
    pub(crate) async fn beat(self: Arc<Self>, a: Arc<Appliance>) {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            let others: Vec<String> = a.known_members().into_iter().filter(|g| g != a.me()).collect();
            for peer in self.peers.track(&others) {
                tokio::spawn(heartbeats(Arc::downgrade(&self), a.clone(), peer));
            }
            let (lost, back) = self.peers.changes();
            for g in lost {
                warn!(peer = %g, "gateway {g} has not answered heartbeats for {SILENT_FOR:?}");
                self.record(EventKind::PeerLost, format!("gateway {g} does not answer heartbeats from {}", a.me()));
            }
            for g in back {
                self.record(EventKind::PeerBack, format!("gateway {g} answers heartbeats from {} again", a.me()));
            }
        }
    }
}

/// Heartbeats to one peer, for as long as it is a member: a connection, then a FLUSH on it
/// every [`EVERY`]; a FLUSH not answered within [`SILENT_FOR`] ends the connection.
async fn heartbeats(gateway: Weak<Gateway>, a: Arc<Appliance>, peer: String) {
    loop {
        let Some(gw) = gateway.upgrade() else { return };
        if !gw.peers.follows(&peer) {
            return;
        }
        let Some(tls) = gw.forwarding.get().map(|f| f.tls()) else { return };
        drop(gw);
        let (a2, p) = (a.clone(), peer.clone());
        let endpoint = blocking(move || a2.endpoint_of(&p)).await.ok().flatten();
        let connected = match endpoint {
            Some(e) => tokio::time::timeout(SILENT_FOR, crate::forward::connect(&e.nbd, tls, EXPORT)).await,
            None => {
                tokio::time::sleep(EVERY).await;
                continue;
            }
        };
        let client = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "no heartbeat connection");
                tokio::time::sleep(EVERY).await;
                continue;
            }
            Err(_) => continue,
        };
        loop {
            match tokio::time::timeout(SILENT_FOR, client.flush()).await {
                Ok(Ok(())) => match gateway.upgrade() {
                    Some(gw) if gw.peers.follows(&peer) => gw.peers.answered(&peer),
                    _ => return,
                },
                _ => break,
            }
            tokio::time::sleep(EVERY).await;
        }
        client.close();
    }
}

/// What a peer's heartbeat connection opens: nothing to read or write; a FLUSH is answered.
pub(crate) struct Heartbeat;

#[async_trait::async_trait]
impl BlockDevice for Heartbeat {
    fn size(&self) -> u64 {
        0
    }
    fn read_only(&self) -> bool {
        true
    }
    async fn read(&self, _offset: u64, _len: u32) -> Result<Bytes, BlockError> {
        Err(BlockError::Invalid("a heartbeat holds no data".into()))
    }
    async fn write(&self, _offset: u64, _data: Bytes, _fua: bool) -> Result<(), BlockError> {
        Err(BlockError::ReadOnly)
    }
    async fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
    async fn trim(&self, _offset: u64, _len: u32) -> Result<(), BlockError> {
        Err(BlockError::ReadOnly)
    }
    async fn write_zeroes(&self, _offset: u64, _len: u32, _fua: bool) -> Result<(), BlockError> {
        Err(BlockError::ReadOnly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_lost_once_silent_and_back_once_heard() {
        let peers = Peers::default();
        assert_eq!(peers.track(&["b".into(), "c".into()]).len(), 2);
        assert!(peers.reaches("b") && peers.reaches("unknown"));
        assert_eq!(peers.changes(), (vec![], vec![]), "new peers have their time to answer");
        peers.heard.lock().unwrap().get_mut("b").unwrap().last -= SILENT_FOR;
        assert!(!peers.reaches("b") && peers.reaches("c"));
        assert_eq!(peers.changes(), (vec!["b".to_string()], vec![]));
        assert_eq!(peers.changes(), (vec![], vec![]), "told once");
        peers.answered("b");
        assert_eq!(peers.changes(), (vec![], vec!["b".to_string()]));
        assert!(peers.track(&["c".into()]).is_empty());
        assert!(!peers.follows("b"), "a member gone is forgotten");
        peers.heard.lock().unwrap().get_mut("c").unwrap().last -= SILENT_FOR * 2;
        assert!(!peers.reaches("c"));
        assert!(!peers.cut_off("c", SILENT_FOR * 2), "silent, but not longer than a failover takes");
        assert!(peers.cut_off("c", SILENT_FOR / 2));
    }
}
