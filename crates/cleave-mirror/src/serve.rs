//! The mirror listener: TLS with a client certificate the host admits, then requests
//! answered on their connection. Changes are applied concurrently (the primary never has two
//! overlapping ones in flight); a malformed frame or a request for a volume the peer does not
//! mirror is counted, and a malformed frame ends the connection.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn};

use crate::control::{AttachReply, Control, Welcome};
use crate::engine::{Engine, Side};
use crate::error::{MirrorError, Result};
use crate::replica::EventKind;
use crate::secondary::Verdict;
use crate::wire::{next_queued, read_frame, write_frame, Frame};

/// Changes applied at once per connection.
const APPLY_PARALLEL: usize = 64;

pub(crate) async fn accept_loop(engine: Weak<Engine>, listener: TcpListener) {
    loop {
        let Ok((tcp, from)) = listener.accept().await else { continue };
        let Some(e) = engine.upgrade() else { return };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            if let Err(err) = connection(e.clone(), tcp).await {
                debug!(%from, error = %err, "mirror connection ended");
            }
        });
    }
}

async fn connection(engine: Arc<Engine>, tcp: TcpStream) -> Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(engine.cfg.server_tls.clone());
    let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        _ => {
            engine.refusals.connections.fetch_add(1, Ordering::Relaxed);
            return Err(MirrorError::Refused("TLS handshake failed".into()));
        }
    };
    let (_, session) = tls.get_ref();
    let cert = session.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
    let Some(client) = cert.and_then(|c| engine.host.admit(&c)) else {
        engine.refusals.connections.fetch_add(1, Ordering::Relaxed);
        engine.host.event(
            "",
            EventKind::Refused,
            "a mirror connection without an admitted certificate was refused".into(),
        );
        return Err(MirrorError::Refused("certificate not admitted".into()));
    };
    let key = session
        .export_keying_material([0u8; 32], crate::link::HEARTBEAT_LABEL, None)
        .map_err(|e| MirrorError::Local(e.to_string()))?;
    let (mut read, write) = tokio::io::split(tls);
    let (tx, mut rx) = mpsc::channel::<Frame>(256);
    tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(64 << 10, write);
        while let Some(f) = rx.recv().await {
            let mut ok = write_frame(&mut w, &f).await.is_ok();
            // Replies of changes applied meanwhile go in the same flush.
            let mut yielded = false;
            while ok {
                let Some(more) = next_queued(&mut rx, &mut yielded).await else { break };
                ok = write_frame(&mut w, &more).await.is_ok();
            }
            if !ok || w.flush().await.is_err() {
                break;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(APPLY_PARALLEL));
    loop {
        let frame = match read_frame(&mut read).await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => {
                engine.refusals.malformed.fetch_add(1, Ordering::Relaxed);
                return Err(MirrorError::Refused(e.to_string()));
            }
        };
        let permit = slots.clone().acquire_owned().await.map_err(|e| MirrorError::Local(e.to_string()))?;
        let (engine, client, tx) = (engine.clone(), client.clone(), tx.clone());
        tokio::spawn(async move {
            let id = frame.id();
            let reply = match answer(&engine, &client, key, frame).await {
                Ok(body) => Frame::Reply { id, ok: true, body },
                Err(e) => Frame::Reply { id, ok: false, body: Bytes::from(e.to_string()) },
            };
            let _ = tx.send(reply).await;
            drop(permit);
        });
    }
}

async fn answer(engine: &Arc<Engine>, client: &str, key: [u8; 32], frame: Frame) -> Result<Bytes> {
    match frame {
        Frame::Data { handle, op, .. } => {
            let secondary = {
                let handles = engine.handles.lock().expect("not poisoned");
                match handles.get(&handle) {
                    Some((owner, s)) if owner == client => s.clone(),
                    _ => {
                        engine.refusals.forbidden.fetch_add(1, Ordering::Relaxed);
                        return Err(MirrorError::Invalid(format!("no volume attached as {handle} for {client}")));
                    }
                }
            };
            secondary.apply(op).await.map(|_| Bytes::new())
        }
        Frame::Control { body, .. } => {
            let c: Control = serde_json::from_slice(&body).map_err(|e| {
                engine.refusals.malformed.fetch_add(1, Ordering::Relaxed);
                MirrorError::Invalid(format!("control request: {e}"))
            })?;
            control(engine, client, key, c).await
        }
        Frame::Reply { .. } => Err(MirrorError::Invalid("a reply is not a request".into())),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<Bytes> {
    serde_json::to_vec(v).map(Bytes::from).map_err(|e| MirrorError::Local(e.to_string()))
}

async fn control(engine: &Arc<Engine>, client: &str, key: [u8; 32], c: Control) -> Result<Bytes> {
    match c {
        Control::Hello { id, listen } => {
            let peer_id = crate::peers::parse_id(&id).ok_or_else(|| MirrorError::Invalid("hello: bad id".into()))?;
            let addr = listen.parse().map_err(|_| MirrorError::Invalid(format!("hello: bad listener {listen:?}")))?;
            engine.peers.update(&listen, |f| {
                f.id = Some(id.clone());
                f.heartbeat_key = Some(hex::encode(key));
                f.client = Some(client.to_string());
            })?;
            engine.heartbeats.set_peer(peer_id, key, addr);
            json(&Welcome { id: hex::encode(engine.me) })
        }
        c @ Control::Create { .. } => engine.create_secondary(client, c).await.map(|_| Bytes::new()),
        Control::Attach { volume, generation, history, keeps_order } => {
            let Some(Side::Secondary(s)) = engine.side(&volume) else {
                return match engine.side(&volume) {
                    Some(Side::Primary(p)) => json(&AttachReply::SplitBrain {
                        reason: format!(
                            "both sides are primary for volume {volume:?} (this side's generation {}); \
                             run `cleave mirror resolve {volume} --discard local` on the side whose changes go",
                            p.generation()
                        ),
                    }),
                    _ => Err(MirrorError::NotFound(volume)),
                };
            };
            if !engine.is_client_of(&s.record().peer, client) {
                engine.refusals.forbidden.fetch_add(1, Ordering::Relaxed);
                return Err(MirrorError::Invalid(format!("{client} is not the primary of {volume:?}")));
            }
            let handle = engine.next_handle.fetch_add(1, Ordering::Relaxed);
            match s.attach(&generation, &history, keeps_order, handle)? {
                Verdict::Accept(a) => {
                    engine.handles.lock().expect("not poisoned").insert(handle, (client.to_string(), s));
                    json(&AttachReply::Attached(a))
                }
                Verdict::SplitBrain(reason) => {
                    engine.host.event(&volume, EventKind::SplitBrain, reason.clone());
                    json(&AttachReply::SplitBrain { reason })
                }
            }
        }
        Control::Consistent { handle, consistent } => {
            let s = engine
                .handles
                .lock()
                .expect("not poisoned")
                .get(&handle)
                .filter(|(o, _)| o == client)
                .map(|(_, s)| s.clone());
            let s = s.ok_or_else(|| MirrorError::Invalid(format!("no volume attached as {handle}")))?;
            s.set_consistent(consistent)?;
            if consistent {
                engine.host.event(
                    &s.record().volume,
                    EventKind::InSync,
                    "this mirror is consistent and in sync".into(),
                );
            }
            Ok(Bytes::new())
        }
        Control::Demote { volume } => engine.demote(client, &volume).await.map(|_| Bytes::new()),
        Control::Remove { volume } => {
            match engine.side(&volume) {
                Some(Side::Secondary(s)) if engine.is_client_of(&s.record().peer, client) => engine.forget(&volume)?,
                _ => warn!(volume, client, "refused a removal from a peer that is not the primary"),
            }
            Ok(Bytes::new())
        }
    }
}
