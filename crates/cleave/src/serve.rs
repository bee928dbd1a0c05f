//! `cleave serve` and `cleave control`: flags, then the wiring. The data directory and its
//! stores are opened, the node pool and the hierarchy started, the front ends bound, and the
//! gateway (`cleave_gateway`) run behind NBD and the REST API (`cleave_api`) until a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cleave_control::config::{EtcdOptions, EtcdStore, EtcdTls};
use cleave_control::pool::Pool;
use cleave_gateway::appliance::Appliance;
use cleave_gateway::data_dir::DataDir;
use cleave_gateway::gateway::unix_uri;
use cleave_gateway::users::FIRST_ADMIN;
use cleave_gateway::{ByteSize, Gateway, GatewayConfig, NbdExport, Stores};
use cleave_nbd::{Server, ServerConfig};
use tokio::net::{TcpListener, UnixListener};
use tracing::{error, info};
use zeroize::Zeroizing;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Where keys, volume metadata, caches and the default targets live.
    #[arg(long, default_value = "./cleave-data")]
    pub data_dir: PathBuf,
    /// NBD listen address.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub nbd: SocketAddr,
    /// How hosts and the other gateways of an appliance reach the NBD listener (`HOST:PORT`),
    /// when not at the listen address (a name, a virtual address, a port forwarded to it).
    /// Volume URIs name it, and the front-end path check asks it.
    #[arg(long)]
    pub nbd_advertise: Option<String>,
    /// Admin API listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Local cache size per volume.
    #[arg(long, default_value = "1GiB")]
    pub cache_size: ByteSize,
    /// iSCSI listen address (docs/iscsi.md). Without it there is no iSCSI front end. iSCSI has
    /// no TLS: listen on loopback or a storage network only.
    #[arg(long)]
    pub iscsi: Option<SocketAddr>,
    /// The start of every iSCSI target name: volume V is `IQN_BASE:cleave:V`.
    #[arg(long, default_value = "iqn.2025-01.invalid.cleave")]
    pub iscsi_iqn_base: String,
    /// Extra DNS names or IP addresses for the NBD TLS certificate (localhost, loopback
    /// addresses, the host name and the NBD address are always in it).
    #[arg(long = "tls-name")]
    pub tls_names: Vec<String>,
    #[command(flatten)]
    pub etcd: EtcdFlags,
    /// With --etcd: the time to live of this gateway's lease (seconds). Gateways on one etcd
    /// namespace are one appliance (docs/appliance.md); a gateway that cannot renew its lease
    /// stops serving within three quarters of this, and another takes its volumes over.
    #[arg(long, default_value_t = 5)]
    pub lease_secs: u64,
    #[command(flatten)]
    pub control: ControlFlags,
    #[command(flatten)]
    pub mirror: MirrorFlags,
    #[command(flatten)]
    pub config: crate::config::ConfigFlag,
}

/// The configuration database in etcd, shared by the gateways (and controls) of an appliance.
#[derive(clap::Args, Debug, Clone)]
pub struct EtcdFlags {
    /// Keep the configuration database in etcd (client URLs, comma-separated) instead of
    /// DATA_DIR/config.redb; keys, caches and targets stay in the data directory.
    #[arg(long)]
    pub etcd: Option<String>,
    /// The prefix of this appliance's keys in etcd.
    #[arg(long, default_value = "cleave/")]
    pub etcd_namespace: String,
    /// TLS to etcd (`https://` endpoints): the CA (PEM file) that issued etcd's certificate.
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// With --etcd-ca: this gateway's client certificate (PEM file), for an etcd that requires
    /// one (`--client-cert-auth`).
    #[arg(long, requires = "etcd_ca", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert (PEM file).
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdFlags {
    /// The TLS files named, read.
    fn tls(&self) -> Result<Option<EtcdTls>> {
        let Some(ca) = &self.etcd_ca else { return Ok(None) };
        let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
        let identity = match (&self.etcd_cert, &self.etcd_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, Zeroizing::new(read(key)?))),
            _ => None,
        };
        Ok(Some(EtcdTls { ca_pem: read(ca)?, identity }))
    }

    /// The stores in `data_dir`, the configuration database in etcd if one is named.
    fn open(&self, data_dir: PathBuf) -> Result<Stores> {
        let Some(urls) = &self.etcd else { return Ok(Stores::open(data_dir)?) };
        let mut opts = EtcdOptions::new(urls);
        opts.namespace = self.etcd_namespace.clone();
        opts.tls = self.tls()?;
        let etcd = EtcdStore::connect(opts)?;
        info!(etcd = %urls, namespace = %self.etcd_namespace, "configuration database in etcd");
        Ok(Stores::load(DataDir::with_config(data_dir, Arc::new(etcd))?)?)
    }
}

/// Mirroring to and from peer gateways (docs/mirroring.md).
#[derive(clap::Args, Debug, Clone)]
pub struct MirrorFlags {
    /// Mirror traffic: TLS data connections (TCP) and heartbeats (UDP) on this address.
    /// Without it this gateway neither mirrors nor is a mirror.
    #[arg(long)]
    pub mirror_listen: Option<SocketAddr>,
    /// How peers reach the mirror listener (`HOST:PORT`), when it listens on every address.
    #[arg(long)]
    pub mirror_advertise: Option<String>,
    /// TCP connections to each peer, one worker each.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub mirror_connections: u16,
    /// Seconds between heartbeats.
    #[arg(long, value_parser = crate::config::seconds, default_value_t = 1.5)]
    pub mirror_heartbeat_secs: f64,
    /// A peer silent this long is down: its changes are journaled.
    #[arg(long, value_parser = crate::config::seconds, default_value_t = 4.0)]
    pub mirror_down_secs: f64,
    /// Heartbeats must come back without a gap this long before reconnecting (0: at once).
    #[arg(long, value_parser = crate::config::seconds, default_value_t = 10.0)]
    pub mirror_probation_secs: f64,
    /// Past this the journal of a disconnected mirror gives way to the dirty-region bitmap.
    #[arg(long, default_value = "1GiB")]
    pub mirror_journal_size: ByteSize,
    /// Async mirrors: changes waiting for the link past this go to the journal.
    #[arg(long, default_value = "64MiB")]
    pub mirror_max_lag: ByteSize,
}

impl MirrorFlags {
    fn config(&self) -> Option<cleave_gateway::mirror::MirrorConfig> {
        let listen = self.mirror_listen?;
        let secs = std::time::Duration::from_secs_f64;
        let timing = cleave_mirror::Timing {
            interval: secs(self.mirror_heartbeat_secs),
            down_after: secs(self.mirror_down_secs),
            probation: (self.mirror_probation_secs > 0.0).then(|| secs(self.mirror_probation_secs)),
        };
        let settings = cleave_mirror::Settings {
            journal_bytes: self.mirror_journal_size.0,
            max_lag_bytes: self.mirror_max_lag.0,
            ..cleave_mirror::Settings::default()
        };
        Some(cleave_gateway::mirror::MirrorConfig {
            listen,
            advertise: self.mirror_advertise.clone(),
            connections: self.mirror_connections as usize,
            timing,
            settings,
        })
    }
}

/// The environment of `cleave serve` and `cleave control`, for their --help.
pub const ENVIRONMENT: &str = "\
Environment:
  CLEAVE_PASSPHRASE   The passphrase of the master key (never a flag or a setting of the file).
                      Set on the first run, the key is sealed under it in DIR/master.sealed and
                      later runs need it (or it is asked for on a terminal); unset, the key is
                      kept unencrypted in DIR/master.key (mode 0600).
  CLEAVE_CONFIG       The configuration file, as --config.
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
                      The credentials of s3:// targets.
  CLEAVE_LOG          The log level (default info).";

/// What `cleave control` and `cleave serve` share.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlFlags {
    /// UDP address where storage nodes register (auto-configuration protocol).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub autoconfig: SocketAddr,
    /// A node (or child control) silent for this long is marked down.
    #[arg(long, value_parser = crate::config::seconds, default_value_t = 5.0)]
    pub heartbeat_timeout_secs: f64,
    /// TLS on the admin API and console (certificate from control's CA, DIR/tls/ca.crt):
    /// auto is on unless --http is a loopback address.
    #[arg(long, value_enum, default_value_t = HttpTls::Auto)]
    pub http_tls: HttpTls,
    #[command(flatten)]
    pub hierarchy: crate::hierarchy::HierarchyFlags,
}

#[derive(clap::Args, Debug)]
pub struct ControlArgs {
    #[arg(long, default_value = "./cleave-data")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    #[command(flatten)]
    pub etcd: EtcdFlags,
    #[command(flatten)]
    pub control: ControlFlags,
    #[command(flatten)]
    pub config: crate::config::ConfigFlag,
}

/// When the admin API speaks TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpTls {
    /// On unless the API listens on a loopback address only.
    #[default]
    Auto,
    On,
    Off,
}

impl HttpTls {
    pub fn enabled(self, addr: SocketAddr) -> bool {
        match self {
            HttpTls::On => true,
            HttpTls::Off => false,
            HttpTls::Auto => !addr.ip().is_loopback(),
        }
    }
}

/// `cleave control`: the API and the node pool, without an NBD front end.
pub async fn control(args: ControlArgs) -> Result<()> {
    let stores = args.etcd.open(args.data_dir)?;
    let front = FrontEnds { nbd: None, nbd_advertise: None, iscsi: None, http: args.http };
    run(stores, front, ByteSize(1 << 30), args.control, Vec::new(), None, None).await
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let mirror = args.mirror.config();
    let stores = args.etcd.open(args.data_dir)?;
    let appliance = match &args.etcd.etcd {
        None => None,
        Some(_) => {
            let (store, me) = (stores.data.config.clone(), stores.data.gateway_id()?);
            let appliance = Appliance::join(store, me.clone(), Duration::from_secs(args.lease_secs.max(2)))?;
            println!("gateway: {me}");
            Some(Arc::new(appliance))
        }
    };
    let iscsi = args.iscsi.map(|addr| (addr, args.iscsi_iqn_base.clone()));
    let front = FrontEnds { nbd: Some(args.nbd), nbd_advertise: args.nbd_advertise.clone(), iscsi, http: args.http };
    run(stores, front, args.cache_size, args.control, args.tls_names, mirror, appliance).await
}

/// Binds `DIR/nbd.sock` (mode 0600), the local administrators' way in: reaching it proves the
/// caller may enter the data directory. Returns the listener and the socket's absolute path.
fn bind_local_socket(root: &std::path::Path) -> Result<(UnixListener, PathBuf)> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = root.canonicalize().with_context(|| format!("resolving {}", root.display()))?.join("nbd.sock");
    // sun_path holds 108 bytes with the closing NUL.
    if path.as_os_str().len() > 107 {
        bail!("the NBD socket path {} is longer than a Unix socket allows: use a shorter --data-dir", path.display());
    }
    // The configuration database is open, so no other server uses this directory: a socket
    // left here is from a server that stopped.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(&path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(&path).with_context(|| format!("NBD on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, path))
}

/// The NBD front end's listeners: TCP (TLS) and the local socket.
struct NbdListeners {
    tcp: TcpListener,
    unix: UnixListener,
    export: NbdExport,
}

async fn bind_nbd(addr: SocketAddr, advertise: Option<String>, data: &DataDir) -> Result<NbdListeners> {
    let tcp = TcpListener::bind(addr).await.with_context(|| format!("NBD on {addr}"))?;
    let (unix, socket) = bind_local_socket(&data.root)?;
    let export = NbdExport { addr: tcp.local_addr()?, socket, advertise };
    Ok(NbdListeners { tcp, unix, export })
}

/// Starts the auto-configuration listener, where nodes and child controls register.
async fn start_autoconfig(control: &ControlFlags, secret: [u8; 32], pool: Arc<Pool>) -> Result<SocketAddr> {
    let udp = tokio::net::UdpSocket::bind(control.autoconfig)
        .await
        .with_context(|| format!("auto-configuration on {}", control.autoconfig))?;
    let addr = udp.local_addr()?;
    tokio::spawn(cleave_control::autoconfig::listener::run_listener(
        udp,
        secret,
        pool,
        Duration::from_secs_f64(control.heartbeat_timeout_secs.max(0.1)),
    ));
    Ok(addr)
}

/// The host of an advertised `HOST:PORT` (`[::1]:10809` too), for the certificates.
fn advertised_host(addr: &str) -> Option<String> {
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| host.to_string())
}

/// The names the NBD and API certificates are issued for.
fn tls_names(nbd_addr: SocketAddr, extra: Vec<String>) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(h.trim().to_string());
    }
    if !nbd_addr.ip().is_unspecified() {
        names.push(nbd_addr.ip().to_string());
    }
    names.extend(extra);
    names.dedup();
    names
}

/// Serves NBD (TLS on TCP, and the local socket) until it fails; without NBD, never ends.
fn spawn_nbd(
    gw: &Arc<Gateway>,
    nbd: Option<NbdListeners>,
    names: &[String],
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let tls = gw.access().tls_config(names).context("NBD TLS configuration")?;
    let gw = gw.clone();
    Ok(tokio::spawn(async move {
        match nbd {
            Some(NbdListeners { tcp, unix, .. }) => {
                let server = Arc::new(Server::new(gw, ServerConfig { tls: Some(tls), ..Default::default() }));
                tokio::select! {
                    r = server.clone().serve(tcp) => r,
                    r = server.serve_unix(unix) => r,
                }
            }
            None => std::future::pending().await,
        }
    }))
}

/// Serves the API and the console, over TLS when `https`.
fn spawn_http(
    gw: &Arc<Gateway>,
    listener: TcpListener,
    https: bool,
    mut names: Vec<String>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let app = cleave_api::router(gw.clone());
    if !https {
        return Ok(tokio::spawn(async move { axum::serve(listener, app).await }));
    }
    let http_addr = listener.local_addr()?;
    if !http_addr.ip().is_unspecified() {
        names.push(http_addr.ip().to_string());
    }
    let config = gw.access().https_config(&names).context("admin API TLS configuration")?;
    let listener = cleave_api::https::TlsListener::new(listener, config)?;
    Ok(tokio::spawn(async move { axum::serve(listener, app).await }))
}

/// What an operator needs to know at start-up: where everything is.
fn print_addresses(gw: &Gateway, autoconfig: SocketAddr, http: SocketAddr, https: bool) {
    let scheme = if https { "https" } else { "http" };
    let root = &gw.data().root;
    if let Some(nbd) = gw.nbd() {
        for name in cleave_nbd::ExportProvider::list(gw) {
            println!("NBD: {}", unix_uri(&name, &nbd.socket));
        }
        println!("NBD over TLS, for clients with a certificate: nbds://{}/VOLUME", nbd.reachable());
    }
    println!("autoconfig: udp://{autoconfig} (cluster secret in {})", root.join("cluster.secret").display());
    println!("console: {scheme}://{http}/ (user {FIRST_ADMIN}, password in {})", root.join("admin.password").display());
    println!("API: {scheme}://{http}/api/v1 (token in {})", root.join("admin.token").display());
    if https {
        println!("API certificate authority: {}", root.join("tls").join("ca.crt").display());
    }
}

/// Where the front ends listen: NBD, iSCSI (with its IQN base), the admin API.
struct FrontEnds {
    nbd: Option<SocketAddr>,
    /// How the NBD listener is reached, when not at its address.
    nbd_advertise: Option<String>,
    iscsi: Option<(SocketAddr, String)>,
    http: SocketAddr,
}

/// Serves iSCSI until it fails; without iSCSI, never ends.
async fn spawn_iscsi(
    gw: &Arc<Gateway>,
    iscsi: Option<(SocketAddr, String)>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let Some((addr, iqn_base)) = iscsi else { return Ok(tokio::spawn(std::future::pending())) };
    let listener = TcpListener::bind(addr).await.with_context(|| format!("iSCSI on {addr}"))?;
    let config = cleave_iscsi::ServerConfig { iqn_base, ..Default::default() };
    let server = Arc::new(cleave_iscsi::Server::new(gw.clone(), config));
    gw.follow_reservations(&server);
    let bound = listener.local_addr()?;
    println!("iSCSI: iscsi://{bound}/{}/0", server.target_name("VOLUME"));
    Ok(tokio::spawn(server.serve(listener)))
}

async fn run(
    stores: Stores,
    front: FrontEnds,
    cache_size: ByteSize,
    control: ControlFlags,
    mut tls_names_extra: Vec<String>,
    mirror: Option<cleave_gateway::mirror::MirrorConfig>,
    appliance: Option<Arc<Appliance>>,
) -> Result<()> {
    let data = &stores.data;
    let secret = data.cluster_secret()?;
    let pool = Pool::started_now();
    let node_ca = cleave_gateway::nodetls::node_ca(data)?;
    pool.set_enroller(Arc::new(cleave_gateway::nodetls::ControlEnroller::new(data, node_ca.clone())?));
    let targets = cleave_gateway::nodetls::target_credentials(&node_ca, pool.clone())?;
    let autoconfig_addr = start_autoconfig(&control, secret, pool.clone()).await?;
    let FrontEnds { nbd, nbd_advertise, iscsi, http } = front;
    if let Some(host) = nbd_advertise.as_deref().and_then(advertised_host) {
        tls_names_extra.push(host);
    }
    let nbd = match nbd {
        Some(a) => Some(bind_nbd(a, nbd_advertise, data).await?),
        None => None,
    };
    let http_listener = TcpListener::bind(http).await.with_context(|| format!("admin API on {http}"))?;
    let http_addr = http_listener.local_addr()?;
    let hierarchy = crate::hierarchy::start(&control.hierarchy, data, secret, node_ca, pool.clone(), http_addr)?;
    let export = nbd.as_ref().map(|n| n.export.clone());
    let nbd_addr = export.as_ref().map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |e| e.addr);
    let gw = Arc::new(Gateway::new(GatewayConfig {
        stores,
        pool,
        hierarchy,
        targets,
        cache_bytes: cache_size.0,
        nbd: export,
        appliance,
    }));
    gw.start_forwarding()?;
    gw.start(nbd.is_some()).await?;
    gw.start_webhook(Arc::new(crate::webhook::HttpPoster::new()));
    let names = tls_names(nbd_addr, tls_names_extra);
    if let Some(m) = mirror {
        let engine = gw.start_mirror(m, &names).await?;
        println!("Mirror listener: {}", engine.listen());
    }
    let nbd_task = spawn_nbd(&gw, nbd, &names)?;
    let iscsi_task = spawn_iscsi(&gw, iscsi).await?;
    let https = control.http_tls.enabled(http_addr);
    let http_task = spawn_http(&gw, http_listener, https, names)?;
    print_addresses(&gw, autoconfig_addr, http_addr, https);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: destaging and shutting down"),
        _ = tokio::signal::ctrl_c() => info!("interrupt: destaging and shutting down"),
        r = nbd_task => error!(result = ?r, "NBD server stopped"),
        r = iscsi_task => error!(result = ?r, "iSCSI server stopped"),
        r = http_task => error!(result = ?r, "admin API stopped"),
    }
    gw.hierarchy().leave().await;
    gw.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_on_off_loopback() {
        let at = |a: &str| a.parse::<SocketAddr>().unwrap();
        assert!(!HttpTls::Auto.enabled(at("127.0.0.1:8080")));
        assert!(!HttpTls::Auto.enabled(at("[::1]:8080")));
        assert!(HttpTls::Auto.enabled(at("0.0.0.0:8080")));
        assert!(HttpTls::Auto.enabled(at("10.1.2.3:8080")));
        assert!(HttpTls::On.enabled(at("127.0.0.1:1")) && !HttpTls::Off.enabled(at("10.0.0.1:1")));
    }
}
