//! The gateway's part in heartbeats (`crate::peers`): a connection to every other member of
//! the appliance, a FLUSH on it every [`EVERY`], and the events for peers that stop or start
//! answering.

use std::sync::{Arc, Weak};

use tracing::{debug, warn};

use crate::appliance::{blocking, Appliance};
use crate::events::EventKind;
use crate::gateway::Gateway;
use crate::peers::{EVERY, EXPORT, SILENT_FOR};

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
