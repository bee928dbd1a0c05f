//! The listener: accepts connections, runs login, then the session, each on its own task.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

use crate::access::{Access, ReservationsAt};
use crate::login::{LoggedIn, Login, LoginConfig, Step};
use crate::negotiate::Limits;
use crate::pdu::Digests;
use crate::reinstate::Sessions;
use crate::scsi::{Lu, Names, Nexus, Shared, MAX_TRANSFER};
use crate::session::{read_pdu, Session};
use crate::task::TaskSet;
use crate::ConnError;

/// Login has this long to finish, so half-open connections do not pile up.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Data segments during login are bounded by the RFC's default MaxRecvDataSegmentLength.
const LOGIN_MAX_DATA: usize = 8192;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Target names are `<iqn_base>:cleave:<volume>`.
    pub iqn_base: String,
    pub limits: Limits,
    /// Commands each session may have outstanding.
    pub window: u32,
    /// Connections open at once; more are closed at once.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            iqn_base: "iqn.2025-01.invalid.cleave".into(),
            limits: Limits::default(),
            window: 64,
            max_connections: 256,
        }
    }
}

/// The iSCSI target: serves the volumes an [`Access`] hands out.
pub struct Server {
    access: Arc<dyn Access>,
    login: LoginConfig,
    connections: Arc<Semaphore>,
    max_connections: usize,
    next_tsih: AtomicU16,
    /// Per-volume state shared by its sessions; entries die with their last session.
    units: Mutex<HashMap<String, Weak<Shared>>>,
    /// Normal sessions by I_T nexus, for reinstatement.
    sessions: Arc<Sessions>,
}

impl Server {
    pub fn new(access: Arc<dyn Access>, config: ServerConfig) -> Server {
        let login = LoginConfig { iqn_base: config.iqn_base, limits: config.limits, window: config.window.max(1) };
        let max_connections = config.max_connections.max(1);
        Server {
            access,
            login,
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            next_tsih: AtomicU16::new(1),
            units: Mutex::default(),
            sessions: Arc::default(),
        }
    }

    /// The target name of a volume.
    pub fn target_name(&self, volume: &str) -> String {
        format!("{}:cleave:{volume}", self.login.iqn_base)
    }

    /// Accept loop; returns only on a listener error.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(a) => a,
                // Out of descriptors and the like: wait, do not spin.
                Err(e) => {
                    warn!(error = %e, "iSCSI accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                warn!(%peer, limit = self.max_connections, "iSCSI connection refused: too many open");
                continue;
            };
            let local = sock.local_addr().ok();
            let this = self.clone();
            let span = tracing::info_span!("iscsi", %peer);
            tokio::spawn(
                async move {
                    if let Err(e) = this.serve_connection(sock, Some(peer), local).await {
                        info!(error = %e, "iSCSI connection ended");
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }

    /// One connection over any stream: login, then the session. `local` is the portal
    /// address SendTargets reports.
    pub async fn serve_connection<S>(
        self: Arc<Self>,
        mut stream: S,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> Result<(), ConnError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tsih = self.next_tsih.fetch_add(1, Ordering::Relaxed).max(1);
        let logged = tokio::time::timeout(LOGIN_TIMEOUT, self.login(&mut stream, peer, tsih))
            .await
            .map_err(|_| ConnError::LoginTimeout)??;
        let Some(logged) = logged else { return Ok(()) };
        debug!(initiator = %logged.identity.initiator, kind = ?logged.kind, "iSCSI login complete");
        let registered = match &logged.volume {
            Some((volume, _)) => {
                let key = (logged.identity.initiator.clone(), logged.isid, volume.clone());
                Some(self.sessions.reinstate(key).await)
            }
            None => None,
        };
        let mut session = self.session(*logged, local);
        session.close = registered.as_ref().map(|r| r.close.clone());
        let served = session.run(stream).await;
        drop(registered);
        served
    }

    async fn login<S>(
        &self,
        stream: &mut S,
        peer: Option<SocketAddr>,
        tsih: u16,
    ) -> Result<Option<Box<LoggedIn>>, ConnError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut login = Login::new(self.access.as_ref(), &self.login, peer, tsih);
        loop {
            let Some(req) = read_pdu(stream, Digests::default(), LOGIN_MAX_DATA).await? else { return Ok(None) };
            let (resp, result) = match login.step(&req) {
                Step::Continue(r) => (r, None),
                Step::Done(r, logged) => (r, Some(Ok(logged))),
                Step::Fail(r, e) => (r, Some(Err(e))),
            };
            stream.write_all(&resp.encode(Digests::default())).await?;
            stream.flush().await?;
            match result {
                None => continue,
                Some(Ok(logged)) => return Ok(Some(logged)),
                Some(Err(e)) => return Err(ConnError::Login(e)),
            }
        }
    }

    /// Another gateway stored new reservations for `volume`: sessions here apply them from now
    /// on. Volumes without a session here read them when their first one starts.
    pub fn reservations_changed(&self, volume: &str, stored: ReservationsAt) {
        let unit = self.units.lock().unwrap_or_else(|e| e.into_inner()).get(volume).and_then(Weak::upgrade);
        if let Some(unit) = unit {
            unit.reservations_changed(stored);
        }
    }

    fn shared(&self, volume: &str) -> Arc<Shared> {
        let mut units = self.units.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = units.get(volume).and_then(Weak::upgrade) {
            return s;
        }
        units.retain(|_, w| w.strong_count() > 0);
        let s = Arc::new(Shared::new(self.access.reservations(volume).unwrap_or_default()));
        units.insert(volume.to_owned(), Arc::downgrade(&s));
        s
    }

    fn session(&self, logged: LoggedIn, portal: Option<SocketAddr>) -> Session {
        let port = format!("{},i,0x{}", logged.identity.initiator, hex::encode(logged.isid));
        let lu = logged.volume.as_ref().map(|(name, opened)| {
            let names = Names { volume: name.clone(), serial: opened.serial.clone(), target: self.target_name(name) };
            Arc::new(Lu::new(opened.device.clone(), opened.rights, names, self.access.clone(), self.shared(name)))
        });
        let window = self.login.window;
        // Data the session's commands may hold at once: a full window of bursts, and at least
        // one command of the largest size.
        let budget = (window as usize).saturating_mul(logged.params.max_burst as usize).max(MAX_TRANSFER as usize);
        Session {
            digests: Digests { header: logged.params.header_digest, data: logged.params.data_digest },
            max_recv: self.login.limits.max_recv_data as usize,
            params: logged.params,
            stat_sn: logged.stat_sn,
            exp_cmd_sn: logged.exp_cmd_sn,
            max_cmd_sn: logged.exp_cmd_sn.wrapping_add(window - 1),
            window,
            queued: BTreeMap::new(),
            tasks: TaskSet::new(budget),
            running: JoinSet::new(),
            by_id: HashMap::new(),
            fences: Vec::new(),
            logging_out: false,
            next_ttt: 1,
            kind: logged.kind,
            lu,
            nexus: Nexus { port, alua_seen: None },
            target: logged.volume.map(|(n, _)| n),
            identity: logged.identity,
            access: self.access.clone(),
            iqn_base: self.login.iqn_base.clone(),
            portal,
            out: Vec::new(),
            out_budget: Vec::new(),
            writer: None,
            close: None,
        }
    }
}
