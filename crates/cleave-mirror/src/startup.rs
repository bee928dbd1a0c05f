//! Starting an engine: the listener and heartbeat sockets, the mirrors kept on disk, and
//! the tasks that serve peers and keep links.

use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, RwLock};

use tracing::info;

use crate::engine::{Engine, EngineConfig, Host, Refusals};
use crate::error::Result;
use crate::heartbeat::{Heartbeats, PeerId};
use crate::peers::Peers;

impl Engine {
    /// Binds the listener (TCP and UDP), loads the mirrors kept in `cfg.dir`, and starts.
    pub async fn start(cfg: EngineConfig, host: Arc<dyn Host>) -> Result<Arc<Engine>> {
        crate::files::private_dir(&cfg.dir)?;
        let me = load_id(&cfg.dir.join("id"))?;
        let tcp = tokio::net::TcpListener::bind(cfg.listen).await?;
        let udp = tokio::net::UdpSocket::bind(tcp.local_addr()?).await?;
        let heartbeats = Heartbeats::new(udp, me, cfg.timing);
        let peers = Peers::load(&cfg.dir.join("peers"))?;
        for p in peers.all() {
            if let (Some(id), Some(key), Ok(addr)) = (p.id(), p.key(), p.addr.parse()) {
                heartbeats.set_peer(id, key, addr);
            }
        }
        let engine = Arc::new(Engine {
            cfg,
            me,
            host,
            heartbeats: heartbeats.clone(),
            volumes: RwLock::default(),
            peers,
            handles: Mutex::default(),
            next_handle: AtomicU32::new(1),
            demoting: Mutex::default(),
            refusals: Refusals::default(),
        });
        engine.load_volumes()?;
        tokio::spawn(heartbeats.clone().send_loop());
        tokio::spawn(heartbeats.receive_loop());
        tokio::spawn(crate::serve::accept_loop(Arc::downgrade(&engine), tcp));
        tokio::spawn(crate::tend::run(Arc::downgrade(&engine)));
        info!(listen = %engine.cfg.listen, "mirror listener up");
        Ok(engine)
    }
}

fn load_id(path: &Path) -> Result<PeerId> {
    if let Ok(s) = std::fs::read_to_string(path) {
        if let Some(id) = crate::peers::parse_id(s.trim()) {
            return Ok(id);
        }
    }
    let id: PeerId = fastrand::u128(..).to_be_bytes();
    crate::files::write_atomic(path, hex::encode(id).as_bytes())?;
    Ok(id)
}
