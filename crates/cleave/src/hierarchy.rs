//! Wiring of the control hierarchy (`cleave control --parent`, `cleave serve --parent`):
//! flags, start-up, and the two API handlers. The logic is in `cleave_control::hierarchy`;
//! docs/control.md describes the design.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cleave_control::hierarchy::{ForwardError, Hierarchy, HierarchyConfig, ParentConfig, INCOMPLETE_HEADER, MAX_DEPTH};
use cleave_control::pool::Pool;
use serde::Deserialize;

use crate::size::ByteSize;
use crate::state::DataDir;

#[derive(clap::Args, Debug, Clone)]
pub struct HierarchyFlags {
    /// Register this control server with a parent control server (its auto-configuration
    /// address, HOST:PORT); the parent then lists this pool and its nodes.
    #[arg(long)]
    pub parent: Option<SocketAddr>,
    /// The cluster secret shared with the parent (default: this server's DATA_DIR/cluster.secret,
    /// which then must be a copy of the parent's).
    #[arg(long, requires = "parent")]
    pub parent_secret_file: Option<PathBuf>,
    /// Heartbeat interval towards the parent.
    #[arg(long, default_value_t = 1.0)]
    pub parent_heartbeat_secs: f64,
    /// The API base URL to report to the parent (default: http://<this API's address>, with
    /// 0.0.0.0 replaced by the address used to reach the parent).
    #[arg(long, requires = "parent")]
    pub advertise_api: Option<String>,
    /// This control server's name, as its parent shows it (default: its id).
    #[arg(long)]
    pub name: Option<String>,
    /// This control server's site, as its parent shows it.
    #[arg(long, default_value = "default")]
    pub site: String,
}

/// A stable id per data directory, created on first run.
fn control_id(data: &DataDir) -> Result<String> {
    let path = data.root.join("control.id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        return Ok(id.trim().to_string());
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    crate::state::write_private(&path, id.as_bytes())?;
    Ok(id)
}

/// Sets up this control's place in the hierarchy and, with `--parent`, starts
/// registering with the parent. `api` is where this server's REST API listens.
pub fn start(
    flags: &HierarchyFlags,
    data: &DataDir,
    secret: [u8; 32],
    ca: Arc<cleave_control::ca::Ca>,
    pool: Arc<Pool>,
    api: SocketAddr,
) -> Result<Arc<Hierarchy>> {
    let id = control_id(data)?;
    let name = flags.name.clone().unwrap_or_else(|| id.clone());
    let h = Hierarchy::new(HierarchyConfig { id, name, site: flags.site.clone(), ca }, pool);
    if let Some(parent) = flags.parent {
        let parent_secret = match &flags.parent_secret_file {
            Some(f) => crate::node::read_secret(f)?,
            None => secret,
        };
        if let Some(a) = &flags.advertise_api {
            if !cleave_control::hierarchy::valid_api(a) {
                bail!("--advertise-api {a:?}: expected http://host:port");
            }
        }
        // The parent's signing key, kept from the first registration (trust on first use).
        let key_file = data.root.join("parent.key");
        let parent_key = match std::fs::read_to_string(&key_file) {
            Ok(text) => Some(hex::decode(text.trim()).with_context(|| format!("{}", key_file.display()))?),
            Err(_) => None,
        };
        h.join_parent(ParentConfig {
            parent,
            secret: parent_secret,
            heartbeat: Duration::from_secs_f64(flags.parent_heartbeat_secs.max(0.05)),
            api,
            advertise: flags.advertise_api.clone(),
            parent_key,
            keep_parent_key: Box::new(move |key| {
                if let Err(e) = crate::state::write_private(&key_file, hex::encode(key).as_bytes()) {
                    tracing::warn!(error = %format!("{e:#}"), "cannot keep the parent's signing key");
                }
            }),
        });
        println!("parent: udp://{parent} (this control: {})", h.id());
    }
    Ok(h)
}

/// Query of `GET /api/v1/nodes`.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NodesQuery {
    /// Also the nodes of every child control (each node then names its `control`).
    all: bool,
    /// How many levels of child controls to descend (with `all`).
    depth: Option<u32>,
}

/// `GET /api/v1/nodes[?all=true]`.
pub async fn list_nodes(h: &Hierarchy, q: NodesQuery) -> Response {
    if !q.all {
        return Json(h.pool().nodes()).into_response();
    }
    let tree = h.all_nodes(q.depth.unwrap_or(MAX_DEPTH).min(MAX_DEPTH)).await;
    let mut resp = Json(tree.nodes).into_response();
    if !tree.incomplete.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&tree.incomplete.join(",")) {
            resp.headers_mut().insert(INCOMPLETE_HEADER, v);
        }
    }
    resp
}

/// `GET /api/v1/controls`: the child control servers.
pub fn list_controls(h: &Hierarchy) -> Response {
    Json(h.controls()).into_response()
}

/// `cleave control list`: one line per child control.
pub fn print_controls(list: &serde_json::Value) {
    for c in list.as_array().into_iter().flatten() {
        let s = &c["summary"];
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        println!(
            "{:<14} {:<16} {:<10} {:<5} {:<28} nodes {} up {} down, {:>10} free of {:>10}",
            c["id"].as_str().unwrap_or("?"),
            c["name"].as_str().unwrap_or("?"),
            c["site"].as_str().unwrap_or("?"),
            c["status"].as_str().unwrap_or("?"),
            c["api"].as_str().unwrap_or("?"),
            n("nodes_up"),
            n("nodes_down"),
            ByteSize(n("free_bytes")).to_string(),
            ByteSize(n("capacity_bytes")).to_string()
        );
    }
}

/// `ANY /api/v1/controls/{id}/api/{*path}`: acts on a child control through its own API
/// (`/api/v1/{path}` there), with this parent's act token. The child's answer is returned as it is.
pub async fn forward(
    h: &Hierarchy,
    child: &str,
    method: axum::http::Method,
    path: &str,
    query: Option<&str>,
    role: cleave_control::users::Role,
    body: bytes::Bytes,
) -> Response {
    let path_and_query = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    match h.forward(child, method, &path_and_query, role, body).await {
        Ok(f) => {
            let status = axum::http::StatusCode::from_u16(f.status).unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
            let mut resp = (status, f.body).into_response();
            if let Some(ct) = f.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                resp.headers_mut().insert(axum::http::header::CONTENT_TYPE, ct);
            }
            resp
        }
        Err(e) => {
            let status = match e {
                ForwardError::NoChild(_) => axum::http::StatusCode::NOT_FOUND,
                ForwardError::Unavailable(_) => axum::http::StatusCode::BAD_GATEWAY,
            };
            (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
        }
    }
}
