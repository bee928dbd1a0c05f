//! I/O forwarding in an appliance (docs/appliance.md): every gateway exports every volume,
//! and [`Routed`] takes each request to the volume's primary: to the volume served here when
//! this gateway is the primary, otherwise over TLS to the primary's NBD listener, where this
//! gateway presents its own certificate from the appliance's CA.
//!
//! When the primary changes (it died, was fenced, handed the volume over), requests wait for
//! the next primary and go there, after the changes acknowledged since the last FLUSH
//! ([`unflushed`]), which the old primary may have lost. A host sees a pause, not an error.

mod unflushed;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cleave_control::ca::Ca;
use cleave_mirror::{Op, PeerCredentials};
use cleave_nbd::{BlockDevice, BlockError, Client, ClientError};
use rustls_pki_types::ServerName;
use tracing::{info, warn};

use crate::appliance::{blocking, Appliance, Endpoint};
use unflushed::Unflushed;

/// The volumes this gateway serves itself, as the devices its own hosts get.
pub(crate) trait Served: Send + Sync {
    fn served_device(&self, volume: &str) -> Option<Arc<dyn BlockDevice>>;
}

/// How long a request waits for a primary before it fails.
const WAIT_FOR_PRIMARY: Duration = Duration::from_secs(60);
/// How often a waiting request looks for the primary again.
const RETRY_EVERY: Duration = Duration::from_millis(200);
/// An answer slower than this makes the forwarder check that its primary still is one.
const CHECK_AFTER: Duration = Duration::from_secs(2);
const CONNECT_WITHIN: Duration = Duration::from_secs(5);
/// Acknowledged changes kept for the next primary, at most; past this a FLUSH makes them
/// durable.
const UNFLUSHED_BOUND: u64 = 64 << 20;

/// This gateway's forwarding: its TLS identity towards the other gateways, and one device
/// per volume, shared by every connection to it (a FLUSH on one covers the others).
pub(crate) struct Forwarding {
    here: Weak<dyn Served>,
    appliance: Arc<Appliance>,
    tls: Arc<rustls::ClientConfig>,
    devices: Mutex<HashMap<String, Arc<Routed>>>,
}

impl Forwarding {
    /// A client certificate for this gateway from the appliance's CA, advertised with the
    /// NBD listener `nbd` so that the other gateways know it.
    pub(crate) fn start(here: Weak<dyn Served>, ca: &Ca, a: Arc<Appliance>, nbd: String) -> anyhow::Result<Forwarding> {
        let issued = ca.issue_client(&format!("gateway {}", a.me()))?;
        let credentials = PeerCredentials {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem: issued.cert_pem.clone(),
            key_pem: issued.key_pem.to_string(),
        };
        let tls = cleave_mirror::link::client_config(&credentials)?;
        a.advertise(Endpoint { nbd, fingerprint: issued.fingerprint.clone() })?;
        Ok(Forwarding { here, appliance: a, tls, devices: Mutex::default() })
    }

    /// This gateway's TLS identity towards the others.
    pub(crate) fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// The device of `volume` if a host has opened it here before.
    pub(crate) fn existing(&self, volume: &str) -> Option<Arc<Routed>> {
        self.devices.lock().expect("not poisoned").get(volume).cloned()
    }

    /// The device of `volume` (of `size` bytes; a volume deleted and made again with another
    /// size gets a new one).
    pub(crate) fn device(&self, volume: &str, size: u64) -> Arc<Routed> {
        let mut devices = self.devices.lock().expect("not poisoned");
        if devices.get(volume).is_some_and(|d| d.size != size) {
            devices.remove(volume);
        }
        let d = devices.entry(volume.to_string()).or_insert_with(|| {
            Arc::new(Routed {
                here: self.here.clone(),
                appliance: self.appliance.clone(),
                tls: self.tls.clone(),
                volume: volume.to_string(),
                size,
                current: std::sync::RwLock::new(None),
                making: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                unflushed: Mutex::default(),
            })
        });
        d.clone()
    }
}

/// A request as it is routed.
#[derive(Clone)]
enum Ask {
    Read { offset: u64, len: u32 },
    Change(Op),
}

/// Where requests go now.
enum Via {
    Here(Arc<dyn BlockDevice>),
    There { gateway: String, client: Arc<Client> },
}

struct Route {
    via: Via,
    /// The [`Routed::generation`] it was made in.
    generation: u64,
}

/// How a routed request failed.
enum Failure {
    /// The route no longer leads to the volume's primary: find the next one.
    Moved(String),
    /// The primary answered with an error: the host gets it.
    Final(BlockError),
}

impl Route {
    fn usable(&self) -> bool {
        match &self.via {
            Via::Here(_) => true,
            Via::There { client, .. } => !client.is_closed(),
        }
    }

    /// Runs `ask` on the volume here or at the primary (a failed connection, and a primary
    /// that no longer serves the volume, answer `Unavailable`).
    async fn call(&self, ask: &Ask) -> Result<Bytes, Failure> {
        let d: &dyn BlockDevice = match &self.via {
            Via::Here(d) => d.as_ref(),
            Via::There { client, .. } => client.as_ref(),
        };
        let done = Bytes::new();
        let answer = match ask.clone() {
            Ask::Read { offset, len } => d.read(offset, len).await,
            Ask::Change(Op::Write { offset, data, fua }) => d.write(offset, data, fua).await.map(|()| done),
            Ask::Change(Op::Zero { offset, len, fua }) => d.write_zeroes(offset, len, fua).await.map(|()| done),
            Ask::Change(Op::Trim { offset, len }) => d.trim(offset, len).await.map(|()| done),
            Ask::Change(Op::Flush) => d.flush().await.map(|()| done),
        };
        answer.map_err(|e| match e {
            BlockError::Unavailable(why) => Failure::Moved(why),
            e => Failure::Final(e),
        })
    }
}

/// Opens `export` on another gateway's NBD listener at `addr`, with this gateway's certificate.
pub(crate) async fn connect(addr: &str, tls: Arc<rustls::ClientConfig>, export: &str) -> Result<Client, ClientError> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| ClientError::Connection(e.to_string()))?;
    Client::connect(tcp, name, tls, export).await
}

/// Who the primary of a volume is, as etcd says.
struct Primary {
    appliance: Arc<Appliance>,
    volume: String,
}

impl Primary {
    async fn now(&self) -> Result<Option<String>, String> {
        let (a, volume) = (self.appliance.clone(), self.volume.clone());
        blocking(move || a.primary_of(&volume)).await.map_err(|e| e.to_string())
    }

    /// While the connection to `gateway` lives: when a request has waited for its answer
    /// longer than [`CHECK_AFTER`], checks that `gateway` is still the primary (one cut off
    /// answers nothing), and if not, ends the connection, so that the requests in flight go
    /// to the next primary.
    async fn watch(self, gateway: String, client: Weak<Client>) {
        loop {
            tokio::time::sleep(CHECK_AFTER).await;
            let Some(c) = client.upgrade().filter(|c| !c.is_closed()) else { return };
            if c.oldest_in_flight().is_none_or(|waited| waited < CHECK_AFTER) {
                continue;
            }
            match self.now().await {
                Ok(Some(p)) if p == gateway => {}
                Err(_) => {}
                Ok(_) => {
                    warn!(volume = %self.volume, gateway = %gateway, "no answer from a gateway that is no longer the primary");
                    c.close();
                    return;
                }
            }
        }
    }
}

/// A volume as every gateway of an appliance exports it.
pub(crate) struct Routed {
    here: Weak<dyn Served>,
    appliance: Arc<Appliance>,
    tls: Arc<rustls::ClientConfig>,
    volume: String,
    size: u64,
    /// The route requests take now.
    current: std::sync::RwLock<Option<Arc<Route>>>,
    /// Held while a route is made and the unflushed changes are sent again along it.
    making: tokio::sync::Mutex<()>,
    /// Raised each time a new route is being made.
    generation: AtomicU64,
    unflushed: Mutex<Unflushed>,
}

impl Routed {
    /// Runs `ask` at the primary, waiting for one (and following it) up to [`WAIT_FOR_PRIMARY`].
    async fn run(&self, ask: &Ask) -> Result<(Bytes, u64), BlockError> {
        let since = Instant::now();
        loop {
            // Without its lease this gateway cannot tell who the primary is: the host hears
            // so at once (and may take another path) rather than wait.
            if !self.appliance.holds() {
                return Err(BlockError::Io(format!(
                    "volume {}: this gateway lost its lease in the configuration database",
                    self.volume
                )));
            }
            let why = match self.route().await {
                Ok(route) => match route.call(ask).await {
                    Ok(b) => return Ok((b, route.generation)),
                    Err(Failure::Final(e)) => return Err(e),
                    Err(Failure::Moved(why)) => {
                        self.forget(&route);
                        why
                    }
                },
                Err(why) => why,
            };
            if since.elapsed() > WAIT_FOR_PRIMARY {
                warn!(volume = %self.volume, reason = %why, "no primary answered in time");
                return Err(BlockError::Io(format!("volume {}: no gateway serves it: {why}", self.volume)));
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    async fn primary(&self) -> Result<Option<String>, String> {
        self.primary_watch().now().await
    }

    fn primary_watch(&self) -> Primary {
        Primary { appliance: self.appliance.clone(), volume: self.volume.clone() }
    }

    fn usable_route(&self) -> Option<Arc<Route>> {
        self.current.read().expect("not poisoned").as_ref().filter(|r| r.usable()).cloned()
    }

    /// The route to the primary, made (and the unflushed changes sent along it) if needed.
    async fn route(&self) -> Result<Arc<Route>, String> {
        if let Some(r) = self.usable_route() {
            return Ok(r);
        }
        let _making = self.making.lock().await;
        if let Some(r) = self.usable_route() {
            return Ok(r);
        }
        // Raised before the changes to send again are read: a change acknowledged along an
        // older route and recorded after this sees the new generation and is sent again.
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let route = Route { via: self.establish().await?, generation };
        let again = self.unflushed.lock().expect("not poisoned").replay();
        if !again.is_empty() {
            info!(volume = %self.volume, changes = again.len(), "sending the unflushed changes to the new primary");
        }
        for op in again {
            match route.call(&Ask::Change(op)).await {
                Ok(_) => {}
                Err(Failure::Moved(why)) => return Err(why),
                Err(Failure::Final(e)) => return Err(format!("the new primary refused an unflushed change: {e}")),
            }
        }
        let route = Arc::new(route);
        if let Via::There { gateway, client } = &route.via {
            tokio::spawn(self.primary_watch().watch(gateway.clone(), Arc::downgrade(client)));
        }
        *self.current.write().expect("not poisoned") = Some(route.clone());
        Ok(route)
    }

    fn forget(&self, route: &Arc<Route>) {
        let mut current = self.current.write().expect("not poisoned");
        if current.as_ref().is_some_and(|r| Arc::ptr_eq(r, route)) {
            *current = None;
        }
    }

    async fn establish(&self) -> Result<Via, String> {
        let primary = self.primary().await?.ok_or("no gateway serves it yet")?;
        if primary == self.appliance.me() {
            let here = self.here.upgrade().ok_or("the gateway is stopping")?;
            return Ok(Via::Here(here.served_device(&self.volume).ok_or("it is being opened here")?));
        }
        let (a, p) = (self.appliance.clone(), primary.clone());
        let endpoint = blocking(move || a.endpoint_of(&p))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("gateway {primary} advertises no endpoint"))?;
        let client = tokio::time::timeout(CONNECT_WITHIN, self.connect(&endpoint.nbd))
            .await
            .map_err(|_| format!("gateway {primary} at {}: no answer in time", endpoint.nbd))?
            .map_err(|e| format!("gateway {primary} at {}: {e}", endpoint.nbd))?;
        info!(volume = %self.volume, primary = %primary, "forwarding to the primary");
        Ok(Via::There { gateway: primary, client: Arc::new(client) })
    }

    async fn connect(&self, addr: &str) -> Result<Client, ClientError> {
        connect(addr, self.tls.clone(), &self.volume).await
    }

    /// A change: acknowledged once the primary took it, and kept until a FLUSH covers it.
    async fn change(&self, op: Op) -> Result<(), BlockError> {
        if op == Op::Flush {
            return self.flush_all().await;
        }
        let ask = Ask::Change(op.clone());
        let (_, generation) = self.run(&ask).await?;
        let over = {
            let mut u = self.unflushed.lock().expect("not poisoned");
            u.record(op);
            u.bytes() > UNFLUSHED_BOUND
        };
        // Taken by a primary that has been replaced since, perhaps after the replacement
        // was sent the unflushed changes: send it again.
        if self.generation.load(Ordering::Acquire) != generation {
            self.run(&ask).await?;
        }
        if over {
            self.flush_all().await?;
        }
        Ok(())
    }

    async fn flush_all(&self) -> Result<(), BlockError> {
        let mark = self.unflushed.lock().expect("not poisoned").mark();
        self.run(&Ask::Change(Op::Flush)).await?;
        self.unflushed.lock().expect("not poisoned").flushed(mark);
        Ok(())
    }
}

#[async_trait::async_trait]
impl BlockDevice for Routed {
    fn size(&self) -> u64 {
        self.size
    }
    fn can_multi_conn(&self) -> bool {
        // One device per volume on this gateway, and FLUSH covers the whole volume at the primary.
        true
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        self.run(&Ask::Read { offset, len }).await.map(|(b, _)| b)
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.change(Op::Write { offset, data, fua }).await
    }
    async fn flush(&self) -> Result<(), BlockError> {
        self.flush_all().await
    }
    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.change(Op::Trim { offset, len }).await
    }
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        self.change(Op::Zero { offset, len, fua }).await
    }
}
