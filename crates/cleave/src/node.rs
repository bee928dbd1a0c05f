//! `cleave node`: a storage node. It offers a directory over HTTP and registers
//! itself with control by the auto-configuration protocol.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use anyhow::{Context, Result};
use cleave_control::autoconfig::packet::MessageType;
use tracing::{info, warn};

use cleave_gateway::data_dir::{read_secret, stable_id};
use cleave_gateway::ByteSize;

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// Directory that holds the shares.
    #[arg(long, required = true)]
    pub data: Option<PathBuf>,
    /// HTTP listen address for share traffic.
    #[arg(long, default_value = "127.0.0.1:7800")]
    pub listen: SocketAddr,
    /// Control's auto-configuration address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub control: SocketAddr,
    /// The cluster secret (control writes it to DATA_DIR/cluster.secret).
    #[arg(long, required = true)]
    pub secret_file: Option<PathBuf>,
    /// Space offered; default: the filesystem's size.
    #[arg(long)]
    pub capacity: Option<ByteSize>,
    /// Failure domain, for placement.
    #[arg(long, default_value = "default")]
    pub site: String,
    /// Heartbeat interval.
    #[arg(long, value_parser = crate::config::seconds, default_value_t = 1.0)]
    pub heartbeat_secs: f64,
    #[command(flatten)]
    pub config: crate::config::ConfigFlag,
}

pub async fn run(args: NodeArgs) -> Result<()> {
    let data = args.data.clone().context("--data is required")?;
    let secret = read_secret(&args.secret_file.clone().context("--secret-file is required")?)?;
    let node = cleave_node::Node::open(cleave_node::NodeConfig {
        data: data.clone(),
        listen: args.listen,
        capacity: args.capacity.map(|c| c.0),
        site: args.site.clone(),
    })?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let address = listener.local_addr()?;
    let id = node_id(&data)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http = {
        let node = node.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(node.serve(listener, async move {
            let _ = rx.changed().await;
        }))
    };
    let agent = {
        let node = node.clone();
        let mut rx = stop_rx.clone();
        let cfg = cleave_control::autoconfig::agent::AgentConfig {
            control: args.control,
            secret,
            id: id.clone(),
            address: address.to_string(),
            site: args.site.clone(),
            heartbeat: Duration::from_secs_f64(args.heartbeat_secs.max(0.05)),
            enroll: Some(Arc::new(Enrollee(node.credentials().clone()))),
        };
        tokio::spawn(cleave_control::autoconfig::agent::run_agent(
            cfg,
            move || {
                let s = node.stats();
                (s.capacity_bytes, s.free_bytes, s.objects)
            },
            async move {
                let _ = rx.changed().await;
            },
        ))
    };
    println!("node {id} serving on http://{address}, registering with {}", args.control);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!("stopping: telling control");
    let _ = stop_tx.send(true);
    let _ = agent.await;
    let _ = http.await;
    Ok(())
}

/// The node's side of registration: its public key goes into INFO; control's node CA (from
/// NEED_INFO, kept from the first time) and the node's certificate (from the ACK) come back.
struct Enrollee(Arc<cleave_node::tls::NodeCredentials>);

impl cleave_control::autoconfig::agent::Enrollee for Enrollee {
    fn key(&self) -> String {
        hex::encode(self.0.public_key())
    }

    fn on_reply(&self, kind: MessageType, body: &serde_json::Value) {
        let field = |k: &str| body.get(k).and_then(|v| v.as_str()).and_then(|v| hex::decode(v).ok());
        let done = match (kind, field("ca"), field("cert")) {
            (MessageType::NeedInfo, Some(ca), _) => self.0.trust_ca(ca),
            (MessageType::Ack, _, Some(cert)) => self.0.install(cert),
            _ => return,
        };
        match done {
            Ok(()) if kind == MessageType::Ack => info!("certificate from control installed"),
            Ok(()) => {}
            Err(e) => warn!(error = %e, "credentials from control not taken"),
        }
    }
}

/// A stable id per data directory, created on first run.
fn node_id(data: &std::path::Path) -> Result<String> {
    std::fs::create_dir_all(data)?;
    stable_id(&data.join("node.id"))
}
