//! `cleave-node`: a storage node. It stores shares in a directory (through the
//! `file` target: fsync before acknowledging, create-only, nothing half-written),
//! serves them over HTTP to callers holding the cluster's access token, and reports
//! its capacity and free space.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cleave_target::file::FileTarget;
use cleave_target::{Target, TargetError};
use serde::{Deserialize, Serialize};

/// The bearer token every caller presents, derived from the cluster secret.
pub fn access_token(secret: &[u8; 32]) -> String {
    hex::encode(blake3::keyed_hash(secret, b"cleave node access v1").as_bytes())
}

pub struct NodeConfig {
    pub data: PathBuf,
    pub listen: SocketAddr,
    /// Space offered; None: the filesystem's size.
    pub capacity: Option<u64>,
    pub site: String,
    pub secret: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node data directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("node storage: {0}")]
    Target(#[from] TargetError),
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeStats {
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub objects: u64,
}

struct Inner {
    store: FileTarget,
    objects_dir: PathBuf,
    capacity: Option<u64>,
    token: String,
    used: AtomicU64,
    objects: AtomicU64,
    /// Serializes the capacity check with the write it admits.
    admit: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

fn scan(dir: &std::path::Path) -> (u64, u64) {
    let (mut bytes, mut count) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                bytes += meta.len();
                count += 1;
            }
        }
    }
    (bytes, count)
}

/// (size, free) of the filesystem holding `dir`.
fn statvfs(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return (0, 0) };
    // SAFETY: a valid NUL-terminated path and a zeroed out-struct.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return (0, 0);
    }
    (s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize)
}

impl Node {
    pub fn open(config: NodeConfig) -> Result<Node, NodeError> {
        let objects_dir = config.data.join("objects");
        std::fs::create_dir_all(&objects_dir)?;
        let store = FileTarget::new(objects_dir.clone())?;
        let (used, objects) = scan(&objects_dir);
        Ok(Node {
            inner: Arc::new(Inner {
                store,
                objects_dir,
                capacity: config.capacity,
                token: access_token(&config.secret),
                used: AtomicU64::new(used),
                objects: AtomicU64::new(objects),
                admit: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn stats(&self) -> NodeStats {
        let i = &self.inner;
        let used = i.used.load(Ordering::Relaxed);
        let (fs_size, fs_free) = statvfs(&i.objects_dir);
        let capacity = i.capacity.unwrap_or(fs_size);
        NodeStats {
            capacity_bytes: capacity,
            free_bytes: capacity.saturating_sub(used).min(fs_free),
            used_bytes: used,
            objects: i.objects.load(Ordering::Relaxed),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/objects/{*key}", get(get_object).put(put_object).delete(delete_object))
            .route("/v1/list", get(list))
            .route("/v1/health", get(health))
            .layer(DefaultBodyLimit::max(80 << 20))
            .layer(middleware::from_fn_with_state(self.clone(), auth))
            .with_state(self.clone())
    }

    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router()).with_graceful_shutdown(shutdown).await
    }
}

fn error(status: StatusCode, msg: String) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

fn target_error(e: TargetError) -> Response {
    let status = match &e {
        TargetError::NotFound(_) => StatusCode::NOT_FOUND,
        TargetError::AlreadyExists(_) => StatusCode::CONFLICT,
        TargetError::InvalidKey(_) => StatusCode::BAD_REQUEST,
        TargetError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

async fn auth(State(node): State<Node>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    let want = node.inner.token.as_bytes();
    if !cleave_split::constant_time_eq(given.as_bytes(), want) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong access token".into());
    }
    next.run(req).await
}

async fn put_object(State(node): State<Node>, Path(key): Path<String>, body: Bytes) -> Response {
    let i = &node.inner;
    let _admit = i.admit.lock().await;
    let stats = node.stats();
    if body.len() as u64 > stats.free_bytes {
        return error(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("node full: {} bytes offered, {} free", body.len(), stats.free_bytes),
        );
    }
    let len = body.len() as u64;
    match i.store.put(&key, body).await {
        Ok(()) => {
            i.used.fetch_add(len, Ordering::Relaxed);
            i.objects.fetch_add(1, Ordering::Relaxed);
            StatusCode::CREATED.into_response()
        }
        Err(e) => target_error(e),
    }
}

async fn get_object(State(node): State<Node>, Path(key): Path<String>, headers: HeaderMap) -> Response {
    let range = headers
        .get(header::RANGE)
        .and_then(|h| h.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    match range {
        Some((a, b)) => match node.inner.store.get_range(&key, a..b.saturating_add(1)).await {
            Ok(bytes) => (StatusCode::PARTIAL_CONTENT, bytes).into_response(),
            Err(e) => target_error(e),
        },
        None => match node.inner.store.get(&key).await {
            Ok(bytes) => bytes.into_response(),
            Err(e) => target_error(e),
        },
    }
}

async fn delete_object(State(node): State<Node>, Path(key): Path<String>) -> Response {
    let i = &node.inner;
    let path = i.objects_dir.join(&key);
    let len = std::fs::metadata(&path).map(|m| m.len()).ok();
    match i.store.delete(&key).await {
        Ok(()) => {
            if let Some(len) = len {
                i.used.fetch_sub(len.min(i.used.load(Ordering::Relaxed)), Ordering::Relaxed);
                i.objects.fetch_sub(1.min(i.objects.load(Ordering::Relaxed)), Ordering::Relaxed);
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

async fn list(State(node): State<Node>, Query(q): Query<ListQuery>) -> Response {
    match node.inner.store.list(&q.prefix).await {
        Ok(keys) => Json(keys).into_response(),
        Err(e) => target_error(e),
    }
}

async fn health(State(node): State<Node>) -> Json<NodeStats> {
    Json(node.stats())
}
