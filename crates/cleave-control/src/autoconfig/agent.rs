//! A node's side of the protocol: register, report, keep beating, say goodbye.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::net::UdpSocket;
use tracing::{debug, info};

use super::packet::{self, MessageType, Packet};
use crate::pool::now_ms;

pub struct AgentConfig {
    pub control: SocketAddr,
    pub secret: [u8; 32],
    pub id: String,
    /// host:port of this node's share API.
    pub address: String,
    pub site: String,
    pub heartbeat: Duration,
}

/// Runs until `shutdown` completes, then sends SHUTDOWN. `stats` gives
/// (capacity, free, objects).
pub async fn run_agent(
    cfg: AgentConfig,
    stats: impl Fn() -> (u64, u64, u64) + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let bind: SocketAddr =
        if cfg.control.ip().is_loopback() { ([127, 0, 0, 1], 0).into() } else { ([0, 0, 0, 0], 0).into() };
    let socket = UdpSocket::bind(bind).await?;
    let local = socket.local_addr()?;
    // Starts at the clock so a restarted node's numbers still increase.
    let mut seq = now_ms() * 1000;
    let send = |kind: MessageType, data: serde_json::Value, seq: u64| {
        let p = Packet { kind, seq, src: local, dst: cfg.control, data: data.to_string().into_bytes() };
        packet::encode(&p, &cfg.secret)
    };
    let hello = json!({ "id": cfg.id });
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(cfg.heartbeat);
    let mut buf = vec![0u8; 2048];
    let mut silent = 0u32;
    let mut registered = false;
    seq += 1;
    if let Ok(b) = send(MessageType::Startup, hello.clone(), seq) {
        let _ = socket.send_to(&b, cfg.control).await;
    }
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                silent += 1;
                seq += 1;
                let (kind, data) = if !registered || silent > 3 {
                    // No answer for a while: the network or control came back; start over.
                    (MessageType::Startup, hello.clone())
                } else {
                    let (_, free, objects) = stats();
                    (MessageType::Heartbeat, json!({ "id": cfg.id, "free_bytes": free, "objects": objects }))
                };
                if let Ok(b) = send(kind, data, seq) {
                    let _ = socket.send_to(&b, cfg.control).await;
                }
            }
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                if from != cfg.control {
                    continue;
                }
                let Ok(p) = packet::decode(&buf[..n], &cfg.secret) else { continue };
                silent = 0;
                match p.kind {
                    MessageType::NeedInfo => {
                        let (capacity, free, objects) = stats();
                        seq += 1;
                        let info = json!({
                            "id": cfg.id, "address": cfg.address, "site": cfg.site,
                            "capacity_bytes": capacity, "free_bytes": free, "objects": objects,
                        });
                        if let Ok(b) = send(MessageType::Info, info, seq) {
                            let _ = socket.send_to(&b, cfg.control).await;
                        }
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
    for _ in 0..2 {
        seq += 1;
        if let Ok(b) = send(MessageType::Shutdown, hello.clone(), seq) {
            let _ = socket.send_to(&b, cfg.control).await;
        }
    }
    Ok(())
}
