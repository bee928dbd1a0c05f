//! `cleave-node`: a storage node. It stores shares in a directory (through the
//! `file` target: fsync before acknowledging, create-only, nothing half-written),
//! serves them over HTTP inside mutual TLS, and reports its capacity and free space.
//!
//! Credentials ([`tls::NodeCredentials`]): the node makes its own key pair; control certifies
//! it at registration with its node CA, and the node accepts only clients with a client
//! certificate from that CA (the gateway's). Node certificates are for serving only, so one
//! node's credential opens no other node. Until it holds a certificate, the node serves nobody.
//!
//! HTTP API (inside TLS with a gateway certificate):
//! - `PUT /v1/objects/{key}`: 201; 409 if it exists; 507 if the node or its disk is full; 400 on a bad key.
//! - `GET /v1/objects/{key}`: 200, or 206 for `Range: bytes=a-b`; 404 if missing.
//! - `DELETE /v1/objects/{key}`: 204, also when missing.
//! - `GET /v1/list?prefix=p`: the keys starting with `p`, sorted, as a JSON array.
//! - `GET /v1/health`: [`NodeStats`] as JSON.
//!
//! Errors are JSON: `{"error": "..."}`.

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cleave_target::file::FileTarget;
use cleave_target::{Target, TargetError};
use serde::{Deserialize, Serialize};

/// Largest object a node accepts.
pub const MAX_OBJECT: usize = 80 << 20;

pub mod tls;

pub struct NodeConfig {
    pub data: PathBuf,
    pub listen: SocketAddr,
    /// Space offered; None: the filesystem's size.
    pub capacity: Option<u64>,
    pub site: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node data directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("node storage: {0}")]
    Target(#[from] TargetError),
    #[error("node credentials: {0}")]
    Credentials(String),
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeStats {
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub objects: u64,
}

/// Space accounting. Signed: a delete may account for an object before the put that
/// created it has.
#[derive(Default)]
struct Usage {
    used: i64,
    objects: i64,
    /// Bytes admitted for puts still in flight.
    reserved: u64,
}

struct Inner {
    store: FileTarget,
    objects_dir: PathBuf,
    capacity: Option<u64>,
    site: String,
    credentials: Arc<tls::NodeCredentials>,
    usage: Mutex<Usage>,
    /// Deletes one at a time, so each object's size is subtracted exactly once.
    deletes: tokio::sync::Mutex<()>,
}

/// A storage node; cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("objects_dir", &self.inner.objects_dir).field("site", &self.inner.site).finish()
    }
}

/// (bytes, objects) stored below `dir`; removes temporary files an interrupted put left.
fn scan(dir: &FsPath) -> std::io::Result<(u64, u64)> {
    let (mut bytes, mut count) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let meta = e.metadata()?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if meta.is_dir() {
                stack.push(e.path());
            } else if name.starts_with(".tmp-") || name.starts_with(".health-") {
                tracing::info!(path = %e.path().display(), "removing a leftover temporary file");
                std::fs::remove_file(e.path())?;
            } else if !name.starts_with('.') {
                bytes += meta.len();
                count += 1;
            }
        }
    }
    Ok((bytes, count))
}

/// (size, free) of the filesystem holding `dir`.
fn statvfs(dir: &FsPath) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return (0, 0) };
    // SAFETY: a zeroed plain-data out-struct, filled by statvfs.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a valid pointer to the out-struct.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return (0, 0);
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    let (blocks, avail, frsize) = (s.f_blocks as u64, s.f_bavail as u64, s.f_frsize as u64);
    (blocks.saturating_mul(frsize), avail.saturating_mul(frsize))
}

/// The same rule as the targets': a relative '/'-separated name without empty, `.`-led or `..` parts.
fn key_ok(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('/')
        && !key.contains('\\')
        && !key.contains('\0')
        && key.split('/').all(|c| !c.is_empty() && !c.starts_with('.'))
}

impl Node {
    /// Opens (creating it if needed) the node's data directory and counts what it holds.
    pub fn open(config: NodeConfig) -> Result<Node, NodeError> {
        let objects_dir = config.data.join("objects");
        std::fs::create_dir_all(&objects_dir)?;
        let store = FileTarget::new(objects_dir.clone())?;
        let (used, objects) = scan(&objects_dir)?;
        tracing::info!(
            data = %config.data.display(),
            site = %config.site,
            capacity = ?config.capacity,
            used,
            objects,
            "storage node opened"
        );
        Ok(Node {
            inner: Arc::new(Inner {
                store,
                objects_dir,
                capacity: config.capacity,
                site: config.site,
                credentials: Arc::new(tls::NodeCredentials::load(&config.data)?),
                usage: Mutex::new(Usage { used: used as i64, objects: objects as i64, reserved: 0 }),
                deletes: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The node's key pair and, once control has issued it, its certificate.
    pub fn credentials(&self) -> &Arc<tls::NodeCredentials> {
        &self.inner.credentials
    }

    /// The failure domain given at start.
    pub fn site(&self) -> &str {
        &self.inner.site
    }

    pub fn stats(&self) -> NodeStats {
        let (used, objects) = {
            let u = self.inner.usage.lock().unwrap();
            (u.used.max(0) as u64, u.objects.max(0) as u64)
        };
        let (fs_size, fs_free) = statvfs(&self.inner.objects_dir);
        let capacity = self.inner.capacity.unwrap_or(fs_size);
        NodeStats {
            capacity_bytes: capacity,
            free_bytes: capacity.saturating_sub(used).min(fs_free),
            used_bytes: used,
            objects,
        }
    }

    /// Admits a put of `len` bytes, or says why not.
    fn reserve(&self, len: u64) -> Result<Reservation, String> {
        let (fs_size, fs_free) = statvfs(&self.inner.objects_dir);
        let capacity = self.inner.capacity.unwrap_or(fs_size);
        let mut u = self.inner.usage.lock().unwrap();
        let committed = (u.used.max(0) as u64).saturating_add(u.reserved);
        if committed.saturating_add(len) > capacity {
            return Err(format!(
                "node full: {len} bytes offered, {} of {capacity} bytes free",
                capacity.saturating_sub(committed)
            ));
        }
        if len > fs_free.saturating_sub(u.reserved) {
            return Err(format!("node disk full: {len} bytes offered, {fs_free} bytes free on the filesystem"));
        }
        u.reserved += len;
        Ok(Reservation { node: self.clone(), len })
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/objects/{*key}", get(get_object).put(put_object).delete(delete_object))
            .route("/v1/list", get(list))
            .route("/v1/health", get(health))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route".into()) })
            .layer(DefaultBodyLimit::max(MAX_OBJECT))
            .with_state(self.clone())
    }

    /// Serves the HTTP API inside TLS on `listener` until `shutdown` completes. A connection
    /// is dropped unheard while the node has no certificate yet.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "storage node serving (TLS)");
        }
        let app = self.router();
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, say: pause so that it cannot spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(config) = self.inner.credentials.server_config() else {
                tracing::debug!(%peer, "connection dropped: no certificate from control yet");
                continue;
            };
            tokio::spawn(tls::serve_connection(tcp, peer, config, app.clone()));
        }
        tracing::info!("storage node stopped");
        Ok(())
    }
}

/// Bytes admitted for a put; released when dropped.
struct Reservation {
    node: Node,
    len: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut u = self.node.inner.usage.lock().unwrap();
        u.reserved = u.reserved.saturating_sub(self.len);
    }
}

fn error(status: StatusCode, msg: String) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

fn invalid_key(key: &str) -> Response {
    error(StatusCode::BAD_REQUEST, TargetError::InvalidKey(key.to_string()).to_string())
}

fn target_error(e: TargetError) -> Response {
    let status = match &e {
        TargetError::NotFound(_) => StatusCode::NOT_FOUND,
        TargetError::AlreadyExists(_) => StatusCode::CONFLICT,
        TargetError::InvalidKey(_) => StatusCode::BAD_REQUEST,
        TargetError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR || status == StatusCode::INSUFFICIENT_STORAGE {
        tracing::warn!(error = %e, "storage error");
    }
    error(status, e.to_string())
}

async fn put_object(
    State(node): State<Node>,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(Path(key)) = key else { return error(StatusCode::BAD_REQUEST, "invalid object path".into()) };
    if !key_ok(&key) {
        return invalid_key(&key);
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let msg = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                format!("object {key} too large: at most {MAX_OBJECT} bytes")
            } else {
                format!("object {key}: {}", e.body_text())
            };
            return error(e.status(), msg);
        }
    };
    let len = body.len() as u64;
    let _reservation = match node.reserve(len) {
        Ok(r) => r,
        Err(msg) => {
            tracing::warn!(%key, len, "put refused: {msg}");
            return error(StatusCode::INSUFFICIENT_STORAGE, msg);
        }
    };
    match node.inner.store.put(&key, body).await {
        Ok(()) => {
            {
                let mut u = node.inner.usage.lock().unwrap();
                u.used += len as i64;
                u.objects += 1;
            }
            tracing::debug!(%key, len, "stored");
            StatusCode::CREATED.into_response()
        }
        Err(e) => target_error(e),
    }
}

/// `bytes=a-b` or `bytes=a-` as a half-open range; None for anything else.
fn parse_range(headers: &HeaderMap) -> Option<std::ops::Range<u64>> {
    let spec = headers.get(header::RANGE)?.to_str().ok()?.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start = a.trim().parse::<u64>().ok()?;
    let end = match b.trim() {
        "" => u64::MAX,
        b => b.parse::<u64>().ok()?.checked_add(1)?,
    };
    (end > start).then_some(start..end)
}

async fn get_object(
    State(node): State<Node>,
    key: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Path(key)) = key else { return error(StatusCode::BAD_REQUEST, "invalid object path".into()) };
    if !key_ok(&key) {
        return invalid_key(&key);
    }
    let octets = [(header::CONTENT_TYPE, "application/octet-stream")];
    match parse_range(&headers) {
        Some(range) => match node.inner.store.get_range(&key, range).await {
            Ok(bytes) => (StatusCode::PARTIAL_CONTENT, octets, bytes).into_response(),
            Err(e) => target_error(e),
        },
        None => match node.inner.store.get(&key).await {
            Ok(bytes) => (StatusCode::OK, octets, bytes).into_response(),
            Err(e) => target_error(e),
        },
    }
}

async fn delete_object(State(node): State<Node>, key: Result<Path<String>, PathRejection>) -> Response {
    let Ok(Path(key)) = key else { return error(StatusCode::BAD_REQUEST, "invalid object path".into()) };
    if !key_ok(&key) {
        return invalid_key(&key);
    }
    let i = &node.inner;
    let _one_at_a_time = i.deletes.lock().await;
    let len = tokio::fs::symlink_metadata(i.objects_dir.join(&key)).await.ok().filter(|m| m.is_file()).map(|m| m.len());
    match i.store.delete(&key).await {
        Ok(()) => {
            if let Some(len) = len {
                let mut u = i.usage.lock().unwrap();
                u.used -= len as i64;
                u.objects -= 1;
                tracing::debug!(%key, len, "deleted");
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => target_error(e),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
}

async fn list(State(node): State<Node>, q: Result<Query<ListQuery>, QueryRejection>) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match node.inner.store.list(&q.prefix).await {
        Ok(keys) => Json(keys).into_response(),
        Err(e) => target_error(e),
    }
}

async fn health(State(node): State<Node>) -> Json<NodeStats> {
    Json(node.stats())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::RANGE, v.parse().unwrap());
            parse_range(&m)
        };
        assert_eq!(h("bytes=6-10"), Some(6..11));
        assert_eq!(h("bytes=6-"), Some(6..u64::MAX));
        assert_eq!(h("bytes=10-6"), None);
        assert_eq!(h("bytes=-5"), None);
        assert_eq!(h("items=1-2"), None);
        assert_eq!(parse_range(&HeaderMap::new()), None);
    }

    #[test]
    fn keys() {
        assert!(key_ok("vol/chunks/1/a"));
        for bad in ["", "/abs", "a/../b", "a/.hidden", "a//b", "a\\b", "a\0b"] {
            assert!(!key_ok(bad), "{bad:?}");
        }
    }
}
