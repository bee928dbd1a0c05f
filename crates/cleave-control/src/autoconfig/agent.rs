//! A member's side of the protocol: register, report, keep beating, say goodbye.
//!
//! The agent sends STARTUP, answers NEED_INFO with INFO, and sends HEARTBEAT
//! every `heartbeat` once control has acknowledged it. When control has said
//! nothing for three heartbeats (control restarted, the network went away) it
//! opens a fresh socket and starts over with STARTUP, so it registers again as
//! soon as control can be reached. Control's answers must carry the MAC and
//! strictly increasing sequence numbers; anything else is ignored.
//!
//! A storage node runs [`run_agent`]. A control server that registers with a
//! parent control runs the same loop ([`run_member`]) with other message bodies
//! (see [`crate::hierarchy`]).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::UdpSocket;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::packet::{self, MessageType, Packet};
use crate::clock::now_us;

pub struct AgentConfig {
    /// UDP address of control's auto-configuration listener.
    pub control: SocketAddr,
    pub secret: [u8; 32],
    pub id: String,
    /// host:port of this node's share API.
    pub address: String,
    pub site: String,
    pub heartbeat: Duration,
    /// The node's credentials: its key goes into INFO, control's answers come back to it.
    pub enroll: Option<Arc<dyn Enrollee>>,
}

/// A member that gets credentials at registration (docs/control.md, "Credentials").
pub trait Enrollee: Send + Sync {
    /// The public key to be certified (hex), sent in INFO.
    fn key(&self) -> String;
    /// A checked answer from control (NEED_INFO or ACK) and its body.
    fn on_reply(&self, kind: MessageType, body: &serde_json::Value);
}

/// Heartbeats without any answer after which the agent starts over with STARTUP.
pub const SILENT_HEARTBEATS: u32 = 3;

/// What a member says, whatever kind it is. `info` gets the local address of
/// the socket that talks to control (never 0.0.0.0), which a member may use to
/// tell control where it can be reached.
pub(crate) struct Member<I, B, R> {
    pub control: SocketAddr,
    pub secret: [u8; 32],
    pub heartbeat: Duration,
    /// Body of STARTUP and SHUTDOWN.
    pub hello: serde_json::Value,
    /// Body of INFO.
    pub info: I,
    /// Body of HEARTBEAT.
    pub beat: B,
    /// Sees each checked answer from control and its body (credentials).
    pub on_reply: R,
}

/// A socket connected to control, and the source address control will see
/// (the connected socket's local address, so never 0.0.0.0).
async fn open(control: SocketAddr) -> io::Result<(UdpSocket, SocketAddr)> {
    let ip: IpAddr = match (control.ip().is_loopback(), control.is_ipv4()) {
        (true, true) => Ipv4Addr::LOCALHOST.into(),
        (true, false) => Ipv6Addr::LOCALHOST.into(),
        (false, true) => Ipv4Addr::UNSPECIFIED.into(),
        (false, false) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    socket.connect(control).await?;
    let local = socket.local_addr()?;
    Ok((socket, local))
}

struct Link {
    socket: UdpSocket,
    local: SocketAddr,
}

struct Sender<'a> {
    control: SocketAddr,
    secret: &'a [u8; 32],
    /// Last sequence number used. Follows the clock (µs): a restarted member's numbers
    /// still exceed those it used before, and a restarted control can refuse anything
    /// numbered before it started.
    seq: u64,
}

impl Sender<'_> {
    async fn send(&mut self, link: &Link, kind: MessageType, data: serde_json::Value) {
        self.seq = self.seq.saturating_add(1).max(now_us());
        let p = Packet { kind, seq: self.seq, src: link.local, dst: self.control, data: data.to_string().into_bytes() };
        match packet::encode(&p, self.secret) {
            Ok(bytes) => {
                if let Err(e) = link.socket.send(&bytes).await {
                    debug!(control = %self.control, error = %e, ?kind, "auto-configuration send failed");
                }
            }
            Err(e) => warn!(error = %e, ?kind, "auto-configuration packet not encoded"),
        }
    }
}

async fn connect(control: SocketAddr) -> Option<Link> {
    match open(control).await {
        Ok((socket, local)) => Some(Link { socket, local }),
        Err(e) => {
            warn!(%control, error = %e, "cannot reach control; will retry");
            None
        }
    }
}

/// Runs until `shutdown` completes, then sends SHUTDOWN (twice, best effort)
/// and returns. `stats` gives (capacity, free, objects). Socket errors are
/// never fatal: the agent keeps retrying until it is stopped.
pub async fn run_agent(
    cfg: AgentConfig,
    stats: impl Fn() -> (u64, u64, u64) + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send,
) {
    let AgentConfig { control, secret, id, address, site, heartbeat, enroll } = cfg;
    let hello = json!({ "id": id });
    let info = |_local: SocketAddr| {
        let (capacity, free, objects) = stats();
        let mut body = json!({
            "id": id, "address": address, "site": site,
            "capacity_bytes": capacity, "free_bytes": free, "objects": objects,
        });
        if let Some(e) = &enroll {
            body["key"] = e.key().into();
        }
        body
    };
    let on_reply = |kind: MessageType, body: &serde_json::Value| {
        if let Some(e) = &enroll {
            e.on_reply(kind, body);
        }
    };
    let beat = || {
        let (_, free, objects) = stats();
        json!({ "id": id, "free_bytes": free, "objects": objects })
    };
    run_member(Member { control, secret, heartbeat, hello, info, beat, on_reply }, shutdown).await
}

/// The protocol loop shared by every kind of member; see the module docs.
pub(crate) async fn run_member<I, B, R>(member: Member<I, B, R>, shutdown: impl Future<Output = ()> + Send)
where
    I: Fn(SocketAddr) -> serde_json::Value,
    B: Fn() -> serde_json::Value,
    R: Fn(MessageType, &serde_json::Value),
{
    tokio::pin!(shutdown);
    let Member { control, secret, heartbeat, hello, info, beat, on_reply } = member;
    let mut out = Sender { control, secret: &secret, seq: now_us() };
    let mut control_seq = 0u64;
    let mut tick = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 2048];
    let mut silent = 0u32;
    let mut registered = false;
    let mut link = connect(control).await;
    if let Some(l) = &link {
        out.send(l, MessageType::Startup, hello.clone()).await;
    }
    loop {
        let recv = async {
            match &link {
                Some(l) => l.socket.recv(&mut buf).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                silent += 1;
                if silent > SILENT_HEARTBEATS || link.is_none() {
                    // No answer for a while: control restarted or the network went away.
                    // Start over on a fresh socket (the local address may have changed).
                    if registered {
                        info!(%control, "no answer from control; registering again");
                    }
                    registered = false;
                    silent = 0;
                    link = connect(control).await;
                }
                let Some(l) = &link else { continue };
                if registered {
                    out.send(l, MessageType::Heartbeat, beat()).await;
                } else {
                    out.send(l, MessageType::Startup, hello.clone()).await;
                }
            }
            r = recv => {
                // Errors here are ICMP reports of earlier sends (control not listening): keep going.
                let Ok(n) = r else { continue };
                let Some(l) = &link else { continue };
                let p = match packet::decode(&buf[..n], &secret) {
                    Ok(p) if p.seq > control_seq => p,
                    Ok(_) => {
                        debug!("replayed packet from control ignored");
                        continue;
                    }
                    Err(e) => {
                        debug!(error = %e, "bad packet from control ignored");
                        continue;
                    }
                };
                control_seq = p.seq;
                silent = 0;
                if !p.data.is_empty() {
                    match serde_json::from_slice::<serde_json::Value>(&p.data) {
                        Ok(body) => on_reply(p.kind, &body),
                        Err(e) => debug!(error = %e, "unreadable body from control ignored"),
                    }
                }
                match p.kind {
                    MessageType::NeedInfo => {
                        let body = info(l.local);
                        out.send(l, MessageType::Info, body).await;
                    }
                    MessageType::Ack => {
                        if !registered {
                            info!(%control, "registered with control");
                        }
                        registered = true;
                    }
                    _ => debug!(kind = ?p.kind, "unexpected message from control"),
                }
            }
        }
    }
    if let Some(l) = &link {
        for _ in 0..2 {
            out.send(l, MessageType::Shutdown, hello.clone()).await;
        }
    }
}
