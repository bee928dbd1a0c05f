//! Session reinstatement (RFC 7143 §6.3.5): a login with TSIH 0 from the same initiator, with
//! the ISID of a session live here to the same target, replaces that session (an initiator
//! that lost its connection logs in again this way). The old session is closed and its
//! commands end before the new one takes any, so nothing the old session still had running
//! lands after what the new one writes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::{info, warn};

/// How long a new session waits for the one it replaces to end its commands.
const OLD_ENDS_WITHIN: Duration = Duration::from_secs(30);

/// Initiator name, ISID and target (volume): one I_T nexus.
type Key = (String, [u8; 6], String);

/// The normal sessions live on this server.
#[derive(Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<Key, Live>>,
    next_id: AtomicU64,
}

struct Live {
    id: u64,
    close: Arc<Notify>,
    ended: watch::Receiver<()>,
}

/// A session's place among the live ones; dropped when the session is over.
pub(crate) struct Registered {
    sessions: Arc<Sessions>,
    key: Key,
    id: u64,
    /// Notified when a new login replaces this session.
    pub(crate) close: Arc<Notify>,
    _ended: watch::Sender<()>,
}

impl Sessions {
    /// Registers a new session of `key`; one already live under it is closed first, and
    /// waited for until its commands have ended.
    pub(crate) async fn reinstate(self: &Arc<Self>, key: Key) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let (ended_tx, ended_rx) = watch::channel(());
        let old = {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            live.insert(key.clone(), Live { id, close: close.clone(), ended: ended_rx })
        };
        if let Some(mut old) = old {
            info!(initiator = %key.0, isid = %hex::encode(key.1), target = %key.2, "a login reinstates a live session: closing the old one");
            old.close.notify_one();
            // Err once the old session's side is dropped: it is over.
            let ended = async { while old.ended.changed().await.is_ok() {} };
            if tokio::time::timeout(OLD_ENDS_WITHIN, ended).await.is_err() {
                warn!(initiator = %key.0, "the reinstated session's commands did not end in time; going on");
            }
        }
        Registered { sessions: self.clone(), key, id, close, _ended: ended_tx }
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        self.live.lock().unwrap().len()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut live = self.sessions.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.get(&self.key).is_some_and(|l| l.id == self.id) {
            live.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(isid: u8) -> Key {
        ("iqn.x".into(), [0x80, 0, 0, 0, 0, isid], "disk".into())
    }

    #[tokio::test]
    async fn a_second_login_closes_the_first_and_waits_for_it() {
        let sessions = Arc::new(Sessions::default());
        let first = sessions.reinstate(key(1)).await;
        let other = sessions.reinstate(key(2)).await;
        let (s, close) = (sessions.clone(), first.close.clone());
        let second = tokio::spawn(async move { s.reinstate(key(1)).await });
        close.notified().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "the new session waits for the old one to end");
        drop(first);
        let second = second.await.unwrap();
        assert_eq!(sessions.count(), 2);
        drop((second, other));
        assert_eq!(sessions.count(), 0, "sessions leave when they end");
    }
}
