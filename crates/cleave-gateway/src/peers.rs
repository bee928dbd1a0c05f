//! Heartbeats between the gateways of an appliance (docs/appliance.md, "Heartbeats"): what
//! each gateway has heard of the others, and the export they ask; the gateway sends them in
//! `crate::heartbeats`. Each
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
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cleave_nbd::{BlockDevice, BlockError};

/// The export a peer gateway opens for heartbeats.
pub(crate) const EXPORT: &str = ".heartbeat";
/// How often each peer is asked.
pub(crate) const EVERY: Duration = Duration::from_millis(1500);
/// A peer not heard for this long is unreachable.
pub(crate) const SILENT_FOR: Duration = Duration::from_secs(4);

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

    pub(crate) fn answered(&self, gateway: &str) {
        if let Some(h) = self.heard.lock().expect("not poisoned").get_mut(gateway) {
            h.last = Instant::now();
        }
    }

    /// Starts following the members not followed yet; forgets those gone. The new ones.
    pub(crate) fn track(&self, members: &[String]) -> Vec<String> {
        let mut heard = self.heard.lock().expect("not poisoned");
        heard.retain(|g, _| members.contains(g));
        let new: Vec<String> = members.iter().filter(|g| !heard.contains_key(*g)).cloned().collect();
        for g in &new {
            heard.insert(g.clone(), Heard { last: Instant::now(), lost: false });
        }
        new
    }

    /// Peers that went silent and peers that answered again since the last call.
    pub(crate) fn changes(&self) -> (Vec<String>, Vec<String>) {
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

    pub(crate) fn follows(&self, gateway: &str) -> bool {
        self.heard.lock().expect("not poisoned").contains_key(gateway)
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
