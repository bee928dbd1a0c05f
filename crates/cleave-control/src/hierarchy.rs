//! The control hierarchy (SEEDS 004): a control server registers with a parent
//! control server by the same auto-configuration protocol as a storage node, as
//! a member of kind `control`, and reports a summary of its pool.
//!
//! Child side ([`Hierarchy::join_parent`]): STARTUP → NEED_INFO → INFO, then
//! HEARTBEATs, SHUTDOWN on a clean stop, re-registration when the parent comes
//! back; every body carries `"kind": "control"`. INFO says where the child's REST
//! API is, its name and site, and a [`PoolSummary`]; HEARTBEAT refreshes the
//! summary. Nothing secret is sent.
//!
//! Parent side: the listener records child controls next to nodes (separate
//! table, separate sequence numbers), marks them down on SHUTDOWN or when their
//! heartbeats stop, and raises `control_up` / `control_down` events. The parent
//! reads a child's nodes from the child's API ([`Hierarchy::all_nodes`]), with a
//! per-child read-only token that both derive from the cluster secret they share
//! ([`parent_token`]): the parent computes it from the secret its listener uses,
//! the child from the secret it registers with, and the child accepts it only
//! while it has a parent and only for reads. A child never acts on its parent's
//! pool or on a sibling's: its placement sees only its own nodes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::AUTHORIZATION;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::autoconfig::agent::{run_member, Member};
use crate::autoconfig::packet::MessageType;
use crate::ca::{Ca, CaError};
pub use crate::children::{valid_api, ChildControl, MAX_FIELD};
use crate::pool::{NodeInfo, NodeStatus, Pool};
use crate::users::Role;

/// How deep `all_nodes` descends by default (a guard against a misconfigured cycle).
pub const MAX_DEPTH: u32 = 8;
/// Header naming the child controls whose nodes are missing from a merged list.
pub const INCOMPLETE_HEADER: &str = "cleave-incomplete";
/// Time allowed for one child to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a child to answer a forwarded call (volume creation places and writes).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest node list accepted from a child.
const MAX_BODY: usize = 16 << 20;

/// How long a parent's token is accepted after it was made (either side of the child's clock).
pub const TOKEN_LIFETIME_SECS: u64 = 300;
const TOKEN_PREFIX: &str = "cleave-parent-v2";

/// What a parent's token allows at a child: reading (the tree views) or acting (forwarded calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParentRole {
    Read,
    Act,
}

impl ParentRole {
    fn as_str(self) -> &'static str {
        match self {
            ParentRole::Read => "read",
            ParentRole::Act => "act",
        }
    }
}

fn token_message(role: ParentRole, child_id: &str, unix_secs: u64) -> Vec<u8> {
    format!("cleave parent v2\0{}\0{child_id}\0{unix_secs}", role.as_str()).into_bytes()
}

/// A parent's token for the child `child_id`: `cleave-parent-v2.ROLE.TIME.SIGNATURE`, signed by
/// the parent's CA key, which the child learned when it first registered (docs/control.md). Only
/// the parent can make one: the cluster secret, which every node holds, gives nothing here.
pub fn parent_token(ca: &Ca, role: ParentRole, child_id: &str, unix_secs: u64) -> Result<String, CaError> {
    let sig = ca.sign(&token_message(role, child_id, unix_secs))?;
    Ok(format!("{TOKEN_PREFIX}.{}.{unix_secs}.{}", role.as_str(), hex::encode(sig)))
}

/// Whether `token` is a parent token for `role` at `child_id`, signed by `parent_key` and made
/// within [`TOKEN_LIFETIME_SECS`] of `now_secs`.
pub fn check_parent_token(parent_key: &[u8], role: ParentRole, child_id: &str, token: &str, now_secs: u64) -> bool {
    let mut parts = token.split('.');
    let (Some(TOKEN_PREFIX), Some(r), Some(t), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(t), Ok(sig)) = (t.parse::<u64>(), hex::decode(sig)) else { return false };
    r == role.as_str()
        && t.abs_diff(now_secs) <= TOKEN_LIFETIME_SECS
        && crate::ca::verify(parent_key, &token_message(role, child_id, t), &sig)
}

fn now_secs() -> u64 {
    crate::clock::now_ms() / 1000
}

/// Why a call could not be forwarded to a child.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no child control {0:?}")]
    NoChild(String),
    /// Down, unreachable, or no answer in time.
    #[error("{0}")]
    Unavailable(String),
}

/// A child's answer to a forwarded call.
/// The header in which a parent names the role of the user it acts for.
pub const ROLE_HEADER: &str = "x-cleave-role";

#[derive(Debug)]
pub struct Forwarded {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// This control server's identity in the hierarchy.
pub struct HierarchyConfig {
    /// Stable id (kept in the data directory).
    pub id: String,
    pub name: String,
    pub site: String,
    /// This control's CA for the node plane: it signs the tokens this control presents to its
    /// child controls.
    pub ca: Arc<Ca>,
}

/// Keeps a key that was learned (writes it to the data directory).
pub type KeepKey = Box<dyn Fn(&[u8]) + Send + Sync>;

/// How to register with a parent.
pub struct ParentConfig {
    /// The parent's auto-configuration (UDP) address.
    pub parent: SocketAddr,
    /// The cluster secret shared with the parent.
    pub secret: [u8; 32],
    pub heartbeat: Duration,
    /// Where this control's REST API listens. An unspecified IP (0.0.0.0) is
    /// replaced by the address this control uses to reach the parent.
    pub api: SocketAddr,
    /// An explicit base URL to report instead (behind NAT or a proxy).
    pub advertise: Option<String>,
    /// The parent's signing key, if already known (kept from the first registration).
    pub parent_key: Option<Vec<u8>>,
    /// Called once with the parent's key when it is first learned, to keep it.
    pub keep_parent_key: KeepKey,
}

struct ParentLink {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A node of the whole tree, with the control that manages it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TreeNode {
    #[serde(flatten)]
    pub node: NodeInfo,
    /// Id of the control server whose pool holds the node.
    #[serde(default)]
    pub control: String,
    /// That control server's name (`--name`, by default its id).
    #[serde(default)]
    pub control_name: String,
}

/// Every node of this control and of the child controls below it.
#[derive(Debug, Default)]
pub struct TreeNodes {
    pub nodes: Vec<TreeNode>,
    /// Child controls whose nodes are missing (down, or did not answer), at any depth.
    pub incomplete: Vec<String>,
}

/// This control's place in the hierarchy: its child controls (in the pool) and,
/// when it has one, its link to a parent.
pub struct Hierarchy {
    cfg: HierarchyConfig,
    pool: Arc<Pool>,
    client: Client<HttpConnector, Full<Bytes>>,
    parent: Mutex<Option<ParentLink>>,
    /// While this control has a parent: the parent's signing key, once known.
    accepted: Mutex<Option<Option<Vec<u8>>>>,
}

impl std::fmt::Debug for Hierarchy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hierarchy").field("id", &self.cfg.id).field("name", &self.cfg.name).finish()
    }
}

impl Hierarchy {
    pub fn new(cfg: HierarchyConfig, pool: Arc<Pool>) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Arc::new(Hierarchy { cfg, pool, client, parent: Mutex::new(None), accepted: Mutex::new(None) })
    }

    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Child controls with their status and summaries.
    pub fn controls(&self) -> Vec<ChildControl> {
        self.pool.controls()
    }

    /// Starts registering with a parent; runs until [`Hierarchy::leave`].
    pub fn join_parent(self: &Arc<Self>, p: ParentConfig) {
        *self.accepted.lock().expect("not poisoned") = Some(p.parent_key.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let me = self.clone();
        let hello = json!({ "id": self.cfg.id, "kind": "control" });
        let info = {
            let me = me.clone();
            let (api, advertise) = (p.api, p.advertise.clone());
            move |local: SocketAddr| {
                let api = advertise.clone().unwrap_or_else(|| {
                    let ip = if api.ip().is_unspecified() { local.ip() } else { api.ip() };
                    format!("http://{}", SocketAddr::new(ip, api.port()))
                });
                json!({
                    "id": me.cfg.id, "kind": "control", "name": me.cfg.name, "site": me.cfg.site,
                    "api": api, "summary": me.pool.summary(),
                })
            }
        };
        let beat = {
            let me = me.clone();
            move || json!({ "id": me.cfg.id, "kind": "control", "summary": me.pool.summary() })
        };
        let keep = p.keep_parent_key;
        let on_reply = {
            let me = me.clone();
            move |kind: MessageType, body: &serde_json::Value| {
                if kind == MessageType::NeedInfo {
                    me.learn_parent_key(body, &keep);
                }
            }
        };
        let member =
            Member { control: p.parent, secret: p.secret, heartbeat: p.heartbeat, hello, info, beat, on_reply };
        info!(parent = %p.parent, id = %self.cfg.id, "registering with the parent control");
        let task = tokio::spawn(run_member(member, async move {
            let _ = stopped.await;
        }));
        let old = self.parent.lock().expect("not poisoned").replace(ParentLink { stop, task });
        if let Some(old) = old {
            old.task.abort();
        }
    }

    /// Keeps the parent's signing key from its first NEED_INFO; a different key later is refused
    /// (trust on first use: docs/control.md).
    fn learn_parent_key(&self, body: &serde_json::Value, keep: &(dyn Fn(&[u8]) + Send + Sync)) {
        let Some(key) = body.get("signer").and_then(|k| k.as_str()).and_then(|k| hex::decode(k).ok()) else {
            return;
        };
        let mut accepted = self.accepted.lock().expect("not poisoned");
        match &mut *accepted {
            Some(Some(known)) if *known != key => {
                warn!("the parent presents another signing key than the one kept; its tokens stay refused")
            }
            Some(slot @ None) => {
                info!("learned the parent's signing key");
                keep(&key);
                *slot = Some(key);
            }
            _ => {}
        }
    }

    /// Whether `given` is a valid token of this control's parent for `role`.
    pub fn accepts_parent_token(&self, given: &str, role: ParentRole) -> bool {
        match &*self.accepted.lock().expect("not poisoned") {
            Some(Some(key)) => check_parent_token(key, role, &self.cfg.id, given, now_secs()),
            _ => false,
        }
    }

    fn token_for(&self, role: ParentRole, child_id: &str) -> Result<String, String> {
        parent_token(&self.cfg.ca, role, child_id, now_secs()).map_err(|e| e.to_string())
    }

    /// Acts on a child control: sends `method` `/api/v1/{path_and_query}` with `body` (JSON) to
    /// the child's API with this parent's act token, on behalf of a caller with `role` (sent in
    /// [`ROLE_HEADER`]; the child grants no more than that), and returns the child's answer as
    /// it is.
    pub async fn forward(
        &self,
        child_id: &str,
        method: hyper::Method,
        path_and_query: &str,
        role: Role,
        body: Bytes,
    ) -> Result<Forwarded, ForwardError> {
        let c = self
            .controls()
            .into_iter()
            .find(|c| c.id == child_id || c.name == child_id)
            .ok_or_else(|| ForwardError::NoChild(child_id.to_string()))?;
        if c.status != NodeStatus::Up {
            return Err(ForwardError::Unavailable(format!("child control {} is down", c.id)));
        }
        if !valid_api(&c.api) {
            return Err(ForwardError::Unavailable(format!(
                "child control {} reports an unusable API address {:?}",
                c.id, c.api
            )));
        }
        let url = format!("{}/api/v1/{}", c.api.trim_end_matches('/'), path_and_query.trim_start_matches('/'));
        let req = Request::builder()
            .method(method)
            .uri(url)
            .header(
                AUTHORIZATION,
                format!("Bearer {}", self.token_for(ParentRole::Act, &c.id).map_err(ForwardError::Unavailable)?),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(ROLE_HEADER, role.to_string())
            .body(Full::new(body))
            .map_err(|e| ForwardError::Unavailable(e.to_string()))?;
        let call = async {
            let resp =
                self.client.request(req).await.map_err(|e| ForwardError::Unavailable(format!("{}: {e}", c.api)))?;
            let status = resp.status().as_u16();
            let content_type =
                resp.headers().get(hyper::header::CONTENT_TYPE).and_then(|h| h.to_str().ok()).map(str::to_string);
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| ForwardError::Unavailable(format!("{}: reading the answer: {e}", c.api)))?
                .to_bytes();
            Ok(Forwarded { status, content_type, body })
        };
        tokio::time::timeout(FORWARD_TIMEOUT, call).await.unwrap_or_else(|_| {
            Err(ForwardError::Unavailable(format!("child control {} did not answer within {FORWARD_TIMEOUT:?}", c.id)))
        })
    }

    /// Clean stop: tells the parent (SHUTDOWN) and waits for the link to end.
    pub async fn leave(&self) {
        let link = self.parent.lock().expect("not poisoned").take();
        *self.accepted.lock().expect("not poisoned") = None;
        if let Some(ParentLink { stop, task }) = link {
            let _ = stop.send(());
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                warn!("the link to the parent control did not stop in time");
            }
        }
    }

    /// This control's nodes and, down to `depth` levels, those of the child controls
    /// below it, read from their APIs in parallel. A child that is down or does not
    /// answer is listed in `incomplete`; its nodes are left out.
    pub async fn all_nodes(&self, depth: u32) -> TreeNodes {
        let mut out = TreeNodes {
            nodes: (self.pool.nodes().into_iter())
                .map(|node| TreeNode { node, control: self.cfg.id.clone(), control_name: self.cfg.name.clone() })
                .collect(),
            incomplete: Vec::new(),
        };
        if depth == 0 {
            out.incomplete.extend(self.controls().into_iter().map(|c| c.id));
            return out;
        }
        let children = self.controls();
        let fetches = children.iter().map(|c| async move {
            if c.status != NodeStatus::Up {
                return Err(format!("control {} is down", c.id));
            }
            tokio::time::timeout(FETCH_TIMEOUT, self.fetch_nodes(c, depth - 1))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")))
        });
        for (c, r) in children.iter().zip(futures::future::join_all(fetches).await) {
            match r {
                Ok(mut sub) => {
                    for n in &mut sub.nodes {
                        if n.control.is_empty() {
                            n.control = c.id.clone();
                        }
                    }
                    out.nodes.append(&mut sub.nodes);
                    out.incomplete.append(&mut sub.incomplete);
                }
                Err(e) => {
                    debug!(control = %c.id, error = %e, "child control's nodes not read");
                    out.incomplete.push(c.id.clone());
                }
            }
        }
        out
    }

    async fn fetch_nodes(&self, c: &ChildControl, depth: u32) -> Result<TreeNodes, String> {
        if !valid_api(&c.api) {
            return Err(format!("unusable API address {:?}", c.api));
        }
        let url = format!("{}/api/v1/nodes?all=true&depth={depth}", c.api.trim_end_matches('/'));
        let req = Request::get(url)
            .header(AUTHORIZATION, format!("Bearer {}", self.token_for(ParentRole::Read, &c.id)?))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| format!("{}: {e}", c.api))?;
        let status = resp.status();
        let incomplete: Vec<String> = resp
            .headers()
            .get(INCOMPLETE_HEADER)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
            .unwrap_or_default();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("{}: reading the answer: {e}", c.api))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!("{} answered {status}", c.api));
        }
        let nodes: Vec<TreeNode> = serde_json::from_slice(&body).map_err(|e| format!("{}: {e}", c.api))?;
        Ok(TreeNodes { nodes, incomplete })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolSummary;

    #[test]
    fn api_addresses() {
        assert!(valid_api("http://127.0.0.1:8080"));
        assert!(valid_api("http://[::1]:8080/"));
        assert!(valid_api("http://control.example:80"));
        for bad in [
            "",
            "127.0.0.1:8080",
            "http://127.0.0.1",
            "https://127.0.0.1:8443",
            "ftp://h:1",
            "http://u:p@h:1",
            "http://h:1/api",
            "http://h:1?x=1",
            "http://h:1\n",
        ] {
            assert!(!valid_api(bad), "{bad:?}");
        }
    }

    #[test]
    fn parent_tokens_are_per_child_per_role_per_parent_and_expire() {
        let (ca, _) = Ca::generate("parent").unwrap();
        let (other, _) = Ca::generate("parent").unwrap();
        let key = ca.public_key();
        let t = parent_token(&ca, ParentRole::Read, "c1", 1000).unwrap();
        assert!(check_parent_token(&key, ParentRole::Read, "c1", &t, 1000));
        assert!(check_parent_token(&key, ParentRole::Read, "c1", &t, 1000 + TOKEN_LIFETIME_SECS));
        assert!(!check_parent_token(&key, ParentRole::Read, "c1", &t, 1001 + TOKEN_LIFETIME_SECS));
        assert!(!check_parent_token(&key, ParentRole::Act, "c1", &t, 1000));
        assert!(!check_parent_token(&key, ParentRole::Read, "c2", &t, 1000));
        assert!(!check_parent_token(&other.public_key(), ParentRole::Read, "c1", &t, 1000));
        let forged = t.replace(".1000.", ".1001.");
        assert!(!check_parent_token(&key, ParentRole::Read, "c1", &forged, 1001));
        for bad in ["", "cleave-parent-v2", "a.b.c.d", "cleave-parent-v2.read.x.00", &format!("{t}.x")] {
            assert!(!check_parent_token(&key, ParentRole::Read, "c1", bad, 1000), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_child_accepts_its_parent_token_only_while_it_has_a_parent() {
        let (parent_ca, _) = Ca::generate("parent").unwrap();
        let (own, _) = Ca::generate("child").unwrap();
        let cfg = HierarchyConfig { id: "c1".into(), name: "c1".into(), site: "s".into(), ca: Arc::new(own) };
        let h = Hierarchy::new(cfg, Pool::new());
        let token = parent_token(&parent_ca, ParentRole::Read, "c1", now_secs()).unwrap();
        assert!(!h.accepts_parent_token(&token, ParentRole::Read), "no parent, no parent token");
        h.join_parent(ParentConfig {
            parent: "127.0.0.1:9".parse().unwrap(),
            secret: [1; 32],
            heartbeat: Duration::from_secs(1),
            api: "0.0.0.0:8080".parse().unwrap(),
            advertise: None,
            parent_key: None,
            keep_parent_key: Box::new(|_| {}),
        });
        assert!(!h.accepts_parent_token(&token, ParentRole::Read), "the parent's key is not known yet");
        h.learn_parent_key(&json!({ "signer": hex::encode(parent_ca.public_key()) }), &|_| {});
        assert!(h.accepts_parent_token(&token, ParentRole::Read));
        assert!(!h.accepts_parent_token(&token, ParentRole::Act));
        let other = parent_token(&parent_ca, ParentRole::Read, "c2", now_secs()).unwrap();
        assert!(!h.accepts_parent_token(&other, ParentRole::Read));
        // A later, different key does not replace the one kept.
        let (intruder, _) = Ca::generate("x").unwrap();
        h.learn_parent_key(&json!({ "signer": hex::encode(intruder.public_key()) }), &|_| {});
        let forged = parent_token(&intruder, ParentRole::Read, "c1", now_secs()).unwrap();
        assert!(!h.accepts_parent_token(&forged, ParentRole::Read));
        assert!(!h.accepts_parent_token("", ParentRole::Read));
        h.leave().await;
        assert!(!h.accepts_parent_token(&token, ParentRole::Read));
    }

    #[test]
    fn summaries_count_subtrees() {
        let pool = Pool::new();
        {
            let mut inner = pool.inner.lock().unwrap();
            for (id, up, cap) in [("a", true, 100), ("b", true, 50), ("c", false, 1000)] {
                inner.nodes.insert(
                    id.into(),
                    NodeInfo {
                        id: id.into(),
                        address: String::new(),
                        site: String::new(),
                        status: if up { NodeStatus::Up } else { NodeStatus::Down },
                        capacity_bytes: cap,
                        free_bytes: cap / 2,
                        objects: 0,
                        last_seen_unix_ms: 0,
                    },
                );
            }
            let child = |id: &str, status| ChildControl {
                id: id.into(),
                name: id.into(),
                site: String::new(),
                api: "http://127.0.0.1:1".into(),
                status,
                summary: PoolSummary {
                    nodes_up: 2,
                    nodes_down: 1,
                    capacity_bytes: 10,
                    free_bytes: 5,
                    controls_up: 1,
                    controls_down: 0,
                },
                last_seen_unix_ms: 0,
            };
            inner.controls.insert("x".into(), child("x", NodeStatus::Up));
            inner.controls.insert("y".into(), child("y", NodeStatus::Down));
        }
        let s = pool.summary();
        assert_eq!(
            s,
            PoolSummary {
                nodes_up: 4,
                nodes_down: 2,
                capacity_bytes: 160,
                free_bytes: 80,
                controls_up: 2,
                controls_down: 1
            }
        );
    }
}
