//! A node's side of the protocol: register, report, keep beating, say goodbye.
//!
//! The agent sends STARTUP, answers NEED_INFO with INFO, and sends HEARTBEAT
//! every `heartbeat` once control has acknowledged it. When control has said
//! nothing for three heartbeats (control restarted, the network went away) it
//! opens a fresh socket and starts over with STARTUP, so it registers again as
//! soon as control can be reached. Control's answers must carry the MAC and
//! strictly increasing sequence numbers; anything else is ignored.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use tokio::net::UdpSocket;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::packet::{self, MessageType, Packet};
use crate::pool::now_us;

pub struct AgentConfig {
    /// UDP address of control's auto-configuration listener.
    pub control: SocketAddr,
    pub secret: [u8; 32],
    pub id: String,
    /// host:port of this node's share API.
    pub address: String,
    pub site: String,
    pub heartbeat: Duration,
}

/// Heartbeats without any answer after which the agent starts over with STARTUP.
pub const SILENT_HEARTBEATS: u32 = 3;

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
    cfg: &'a AgentConfig,
    /// Last sequence number used. Starts at the clock (µs) so a restarted
    /// node's numbers still exceed those it used before.
    seq: u64,
}

impl Sender<'_> {
    async fn send(&mut self, link: &Link, kind: MessageType, data: serde_json::Value) {
        self.seq += 1;
        let p =
            Packet { kind, seq: self.seq, src: link.local, dst: self.cfg.control, data: data.to_string().into_bytes() };
        match packet::encode(&p, &self.cfg.secret) {
            Ok(bytes) => {
                if let Err(e) = link.socket.send(&bytes).await {
                    debug!(control = %self.cfg.control, error = %e, ?kind, "auto-configuration send failed");
                }
            }
            Err(e) => warn!(error = %e, ?kind, "auto-configuration packet not encoded"),
        }
    }
}

async fn connect(cfg: &AgentConfig) -> Option<Link> {
    match open(cfg.control).await {
        Ok((socket, local)) => Some(Link { socket, local }),
        Err(e) => {
            warn!(control = %cfg.control, error = %e, "cannot reach control; will retry");
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
    tokio::pin!(shutdown);
    let hello = json!({ "id": cfg.id });
    let mut out = Sender { cfg: &cfg, seq: now_us() };
    let mut control_seq = 0u64;
    let mut tick = tokio::time::interval_at(Instant::now() + cfg.heartbeat, cfg.heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 2048];
    let mut silent = 0u32;
    let mut registered = false;
    let mut link = connect(&cfg).await;
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
                        info!(control = %cfg.control, "no answer from control; registering again");
                    }
                    registered = false;
                    silent = 0;
                    link = connect(&cfg).await;
                }
                let Some(l) = &link else { continue };
                if registered {
                    let (_, free, objects) = stats();
                    out.send(l, MessageType::Heartbeat, json!({ "id": cfg.id, "free_bytes": free, "objects": objects }))
                        .await;
                } else {
                    out.send(l, MessageType::Startup, hello.clone()).await;
                }
            }
            r = recv => {
                // Errors here are ICMP reports of earlier sends (control not listening): keep going.
                let Ok(n) = r else { continue };
                let Some(l) = &link else { continue };
                let p = match packet::decode(&buf[..n], &cfg.secret) {
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
                match p.kind {
                    MessageType::NeedInfo => {
                        let (capacity, free, objects) = stats();
                        let info = json!({
                            "id": cfg.id, "address": cfg.address, "site": cfg.site,
                            "capacity_bytes": capacity, "free_bytes": free, "objects": objects,
                        });
                        out.send(l, MessageType::Info, info).await;
                    }
                    MessageType::Ack => {
                        if !registered {
                            info!(control = %cfg.control, "registered with control");
                        }
                        registered = true;
                    }
                    other => debug!(?other, "unexpected message from control"),
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
