//! Keeping the primaries' links: every second, for each peer a primary sends to, close the
//! link when heartbeats say the peer is down, reconnect once they have been steady for the
//! probationary interval, and attach the volumes waiting for it.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::control::{AttachReply, Control};
use crate::engine::{Engine, Side};
use crate::error::{MirrorError, Result};
use crate::heartbeat::Liveness;
use crate::link::{Link, VolumeChannel};
use crate::primary::Primary;
use crate::replica::EventKind;
use crate::state::MirrorState;

pub(crate) async fn run(engine: Weak<Engine>) {
    let mut last_split_try = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(e) = engine.upgrade() else { return };
        let retry_split = last_split_try.elapsed() > Duration::from_secs(5);
        if retry_split {
            last_split_try = Instant::now();
        }
        let peers: BTreeSet<String> = primaries(&e).iter().map(|p| p.record().peer).collect();
        for peer in peers {
            tend(&e, &peer, retry_split).await;
        }
    }
}

fn primaries(e: &Engine) -> Vec<Arc<Primary>> {
    let v = e.volumes.read().expect("not poisoned");
    v.values().filter_map(|s| if let Side::Primary(p) = s { Some(p.clone()) } else { None }).collect()
}

async fn tend(e: &Arc<Engine>, peer: &str, retry_split: bool) {
    let ours: Vec<Arc<Primary>> = primaries(e).into_iter().filter(|p| p.record().peer == peer).collect();
    let liveness = match e.peers.get(peer).and_then(|p| p.id()) {
        Some(id) if e.heartbeats.knows(&id) => e.heartbeats.liveness(&id),
        _ => Liveness::Steady, // first contact: nothing to wait for
    };
    let mut link = e.peers.link(peer);
    if link.is_some() && liveness == Liveness::Down {
        warn!(peer, "peer down: no heartbeat for {:?}", e.heartbeats.timing().down_after);
        e.peers.drop_link(peer);
        link = None;
    }
    let link = match (link, liveness) {
        (Some(l), _) => l,
        (None, Liveness::Down) => {
            for p in &ours {
                p.detach("the peer is down (no heartbeats)", MirrorState::Disconnected);
            }
            return;
        }
        (None, Liveness::Probation { remaining }) => {
            let why = format!("heartbeats are back; reconnecting after probation ({} s left)", remaining.as_secs() + 1);
            for p in &ours {
                p.detach(&why, MirrorState::Probation);
                p.set_link_state(MirrorState::Probation, &why);
            }
            return;
        }
        (None, Liveness::Steady) => match e.connect(peer).await {
            Ok(l) => {
                info!(peer, "mirror link up");
                for p in &ours {
                    e.host.event(&p.record().volume, EventKind::Reconnected, format!("link to {peer} up"));
                }
                l
            }
            Err(err) => {
                for p in &ours {
                    p.detach(&err.to_string(), MirrorState::Disconnected);
                    p.set_link_state(MirrorState::Disconnected, &err.to_string());
                }
                return;
            }
        },
    };
    for p in ours {
        let split = p.view().state == MirrorState::SplitBrain;
        if p.wants_attach() && (!split || retry_split) {
            if let Err(err) = attach(&link, &p).await {
                p.set_link_state(MirrorState::Disconnected, &err.to_string());
            }
        }
    }
}

async fn attach(link: &Arc<Link>, p: &Arc<Primary>) -> Result<()> {
    let r = p.record();
    let req = Control::Attach {
        volume: r.volume.clone(),
        generation: r.generation.clone(),
        history: r.history.clone(),
        keeps_order: p.resync_keeps_order(),
    };
    let answer = link.control(&req).await?;
    let reply: AttachReply =
        serde_json::from_slice(&answer).map_err(|err| MirrorError::Refused(format!("attach: {err}")))?;
    match reply {
        AttachReply::SplitBrain { reason } => {
            p.split_brain(&reason);
            Ok(())
        }
        AttachReply::Attached(a) => {
            let channel = Arc::new(VolumeChannel { link: link.clone(), handle: a.handle });
            p.attach(channel, &a.discarded, a.full_copy).await?;
            info!(volume = %r.volume, "mirror attached");
            Ok(())
        }
    }
}
