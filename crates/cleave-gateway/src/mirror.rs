//! Mirroring at the gateway: the engine of `cleave-mirror` on this gateway's volumes, its
//! peers admitted by certificates from control's CA, its events in the event log, and the
//! administrator's operations with their errors sorted into kinds.
//!
//! A peer gateway is a client of this one in the group [`MIRROR_GROUP`]: `mirror
//! credentials NAME` issues its certificate, and only such clients reach the listener.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use cleave_control::ca;
use cleave_mirror::{
    Engine, EngineConfig, EventKind, Events, Host, MirrorError, MirrorView, Mode, OnFailure, Op, PeerCredentials,
    Replica,
};
use cleave_volume::Volume;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::error::{GatewayError, Result};
use crate::gateway::Gateway;
use crate::volumes::CreateVolume;

/// The group of the peer gateways that may mirror to and from this one.
pub const MIRROR_GROUP: &str = "mirror-peers";

/// How the mirror listener runs (`--mirror-*` flags).
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub listen: SocketAddr,
    /// How peers reach the listener, when it listens on every address.
    pub advertise: Option<String>,
    pub connections: usize,
    pub timing: cleave_mirror::Timing,
    pub settings: cleave_mirror::Settings,
}

/// Body of `POST /api/v1/mirrors`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateMirror {
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$", min_length = 1, max_length = 64)]
    pub volume: String,
    /// The peer gateway's mirror listener, `HOST:PORT`.
    pub peer: String,
    pub mode: Mode,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// From `mirror credentials` on the peer; needed the first time this peer is used.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub credentials: Option<PeerCredentials>,
}

fn mirror_error(e: MirrorError) -> GatewayError {
    match e {
        MirrorError::NotFound(v) => GatewayError::NotFound(format!("volume {v:?} has no mirror")),
        MirrorError::Invalid(m) => GatewayError::Invalid(m),
        MirrorError::SplitBrain(m) => GatewayError::Conflict(m),
        MirrorError::LinkDown(m) | MirrorError::Refused(m) => GatewayError::Unavailable(m),
        MirrorError::Local(m) => GatewayError::Internal(m),
    }
}

impl Gateway {
    /// Starts the mirror listener and the mirrors kept in `DIR/mirror`.
    pub async fn start_mirror(self: &Arc<Self>, c: MirrorConfig, tls_names: &[String]) -> Result<Arc<Engine>> {
        let advertise = c.advertise.clone().unwrap_or_else(|| c.listen.to_string());
        let mut names = tls_names.to_vec();
        names.push(c.listen.ip().to_string());
        if let Some((host, _)) = advertise.rsplit_once(':') {
            names.push(host.trim_start_matches('[').trim_end_matches(']').to_string());
        }
        let server_tls = self.access.mirror_tls_config(&names)?;
        let cfg = EngineConfig {
            dir: self.data.root.join("mirror"),
            listen: c.listen,
            advertise,
            server_tls,
            connections: c.connections,
            timing: c.timing,
            settings: c.settings,
        };
        let host = Arc::new(MirrorHost { gw: Arc::downgrade(self) });
        let engine = Engine::start(cfg, host).await.map_err(mirror_error)?;
        let _ = self.mirror.set(engine.clone());
        Ok(engine)
    }

    pub(crate) fn mirror_engine(&self) -> Result<&Arc<Engine>> {
        self.mirror
            .get()
            .ok_or_else(|| GatewayError::Invalid("this gateway has no mirror listener (--mirror-listen)".into()))
    }

    /// A volume's mirror, if it has one.
    pub fn mirror_of(&self, volume: &str) -> Option<MirrorView> {
        self.mirror.get()?.show(volume).ok()
    }

    pub fn mirrors(&self) -> Result<Vec<MirrorView>> {
        Ok(self.mirror_engine()?.list())
    }

    pub fn mirror_show(&self, volume: &str) -> Result<MirrorView> {
        self.mirror_engine()?.show(volume).map_err(mirror_error)
    }

    pub async fn mirror_create(&self, req: CreateMirror) -> Result<MirrorView> {
        self.served(&req.volume)?;
        let e = self.mirror_engine()?;
        e.create(&req.volume, &req.peer, req.mode, req.on_failure, req.credentials).await.map_err(mirror_error)
    }

    pub fn mirror_pause(&self, volume: &str) -> Result<MirrorView> {
        self.mirror_engine()?.pause(volume).map_err(mirror_error)
    }

    pub fn mirror_resume(&self, volume: &str) -> Result<MirrorView> {
        self.mirror_engine()?.resume(volume).map_err(mirror_error)
    }

    pub async fn mirror_remove(&self, volume: &str) -> Result<()> {
        self.mirror_engine()?.remove(volume).await.map_err(mirror_error)
    }

    pub async fn mirror_promote(&self, volume: &str, force: bool) -> Result<MirrorView> {
        self.mirror_engine()?.promote(volume, force).await.map_err(mirror_error)
    }

    /// Ends a split brain, discarding this side's changes since the split.
    pub fn mirror_resolve(&self, volume: &str) -> Result<MirrorView> {
        self.mirror_engine()?.resolve_discarding_local(volume).map_err(mirror_error)
    }

    /// Issues credentials for a peer gateway to reach this one's mirror listener (again, for
    /// a peer that has some: its old certificate stops working).
    pub fn mirror_credentials(&self, name: &str) -> Result<PeerCredentials> {
        cleave_control::access::check_name(name).map_err(|e| GatewayError::Invalid(e.to_string()))?;
        let registry = self.access.snapshot();
        let is_peer = registry.groups.get(MIRROR_GROUP).is_some_and(|g| g.clients.contains(name));
        if registry.clients.contains_key(name) && !is_peer {
            return Err(GatewayError::Conflict(format!(
                "{name:?} is a client of this gateway, not a mirror peer; choose another name"
            )));
        }
        self.issue_peer(name).map_err(|e| GatewayError::Internal(e.to_string()))
    }

    fn issue_peer(&self, name: &str) -> anyhow::Result<PeerCredentials> {
        if self.access.snapshot().clients.contains_key(name) {
            self.access.update(|r| Ok(r.remove_client(name).map(|_| ())?))?;
        }
        let c = self.issue_client(name)?;
        self.access.update(|r| {
            if !r.groups.contains_key(MIRROR_GROUP) {
                r.add_group(MIRROR_GROUP)?;
            }
            Ok(r.join(MIRROR_GROUP, name)?)
        })?;
        info!(peer = name, "mirror peer certificate issued");
        Ok(PeerCredentials { ca_pem: c.ca_pem, cert_pem: c.cert_pem, key_pem: c.key_pem })
    }
}

/// The gateway as the engine's host.
struct MirrorHost {
    gw: Weak<Gateway>,
}

impl Events for MirrorHost {
    fn event(&self, volume: &str, kind: EventKind, message: String) {
        if let Some(gw) = self.gw.upgrade() {
            let kind = serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            let what = if volume.is_empty() { message } else { format!("volume {volume}: {message}") };
            gw.pool.push_event(&format!("mirror-{kind}"), what);
        }
    }
}

#[async_trait::async_trait]
impl Host for MirrorHost {
    fn replica(&self, volume: &str) -> Option<Arc<dyn Replica>> {
        let v = self.gw.upgrade()?.get(volume)?;
        Some(Arc::new(VolumeReplica(v)))
    }

    async fn create_replica(&self, volume: &str, size: u64) -> std::result::Result<Arc<dyn Replica>, String> {
        let gw = self.gw.upgrade().ok_or("shutting down")?;
        match gw.get(volume) {
            Some(v) if v.size() == size => {}
            Some(v) => return Err(format!("volume {volume:?} exists here with another size ({} bytes)", v.size())),
            None => {
                gw.create(CreateVolume::sized(volume, size), true).await.map_err(|e| e.to_string())?;
            }
        }
        let v = gw.get(volume).ok_or_else(|| format!("volume {volume:?} could not be opened"))?;
        Ok(Arc::new(VolumeReplica(v)))
    }

    fn admit(&self, certificate: &[u8]) -> Option<String> {
        let gw = self.gw.upgrade()?;
        let registry = gw.access.snapshot();
        let client = registry.client_by_fingerprint(&ca::fingerprint(certificate))?;
        let member = registry.groups.get(MIRROR_GROUP).is_some_and(|g| g.clients.contains(&client.name));
        member.then(|| client.name.clone())
    }

    fn issue_credentials(&self, name: &str) -> std::result::Result<PeerCredentials, String> {
        let gw = self.gw.upgrade().ok_or("shutting down")?;
        gw.issue_peer(name).map_err(|e| e.to_string())
    }
}

/// A volume as the mirror engine reads and changes it.
pub(crate) struct VolumeReplica(pub(crate) Volume);

#[async_trait::async_trait]
impl Replica for VolumeReplica {
    fn size(&self) -> u64 {
        self.0.size()
    }
    async fn read(&self, offset: u64, len: u32) -> std::result::Result<Bytes, String> {
        self.0.read(offset, len).await.map_err(|e| e.to_string())
    }
    async fn apply(&self, op: Op) -> std::result::Result<(), String> {
        let r = match op {
            Op::Write { offset, data, fua } => self.0.write(offset, data, fua).await,
            Op::Zero { offset, len, fua } => self.0.write_zeroes(offset, len as u64, fua).await,
            Op::Trim { offset, len } => self.0.trim(offset, len as u64).await,
            Op::Flush => self.0.flush().await,
        };
        r.map_err(|e| e.to_string())
    }
}
