//! A storage node (`node://host:port`) as a target, over its HTTP share API.
//! Requests run on the blocking pool with a pooled keep-alive HTTP/1 client.

// ureq's error is large, but it lives only on the error path of a network call.
#![allow(clippy::result_large_err)]

use std::io::Read as _;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::check_key;
use crate::{Target, TargetError};

#[derive(Clone)]
pub struct NodeTarget {
    base: String,
    name: String,
    token: Arc<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for NodeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTarget").field("name", &self.name).finish()
    }
}

impl NodeTarget {
    pub fn new(addr: String, token: String) -> Self {
        let agent =
            ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5)).timeout(Duration::from_secs(60)).build();
        NodeTarget { base: format!("http://{addr}/v1"), name: format!("node://{addr}"), token: Arc::new(token), agent }
    }

    async fn call<T: Send + 'static>(
        &self,
        key: &str,
        f: impl FnOnce(&NodeTarget) -> Result<T, ureq::Error> + Send + 'static,
    ) -> Result<T, TargetError> {
        let me = self.clone();
        let key = key.to_string();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            f(&me).map_err(|e| match e {
                ureq::Error::Status(404, _) => TargetError::NotFound(format!("{name}/{key}")),
                ureq::Error::Status(409, _) => TargetError::AlreadyExists(format!("{name}/{key}")),
                ureq::Error::Status(507, r) => {
                    TargetError::Full(format!("{name}/{key}: {}", r.into_string().unwrap_or_default()))
                }
                ureq::Error::Status(400, _) => TargetError::InvalidKey(key.clone()),
                ureq::Error::Status(code, r) => {
                    TargetError::Unavailable(format!("{name}/{key}: {code} {}", r.into_string().unwrap_or_default()))
                }
                ureq::Error::Transport(t) => TargetError::Unavailable(format!("{name}/{key}: {t}")),
            })
        })
        .await
        .map_err(|e| TargetError::Io(format!("{}: {e}", self.name)))?
    }

    fn req(&self, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
    }
}

/// Larger bodies are refused rather than cut short: a truncated share would look like corruption.
const MAX_BODY: u64 = 128 << 20;

fn read_body(r: ureq::Response) -> Result<Bytes, ureq::Error> {
    let mut v = Vec::new();
    r.into_reader().take(MAX_BODY + 1).read_to_end(&mut v).map_err(ureq::Error::from)?;
    if v.len() as u64 > MAX_BODY {
        let e = std::io::Error::other(format!("response body larger than {MAX_BODY} bytes"));
        return Err(ureq::Error::from(e));
    }
    Ok(Bytes::from(v))
}

#[async_trait::async_trait]
impl Target for NodeTarget {
    fn name(&self) -> &str {
        &self.name
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), TargetError> {
        check_key(key)?;
        let path = format!("/objects/{key}");
        self.call(key, move |t| t.req("PUT", &path).send_bytes(&data).map(|_| ())).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, TargetError> {
        check_key(key)?;
        let path = format!("/objects/{key}");
        self.call(key, move |t| read_body(t.req("GET", &path).call()?)).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, TargetError> {
        check_key(key)?;
        if range.end <= range.start {
            return Ok(Bytes::new());
        }
        let path = format!("/objects/{key}");
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        self.call(key, move |t| read_body(t.req("GET", &path).set("Range", &header).call()?)).await
    }
    async fn delete(&self, key: &str) -> Result<(), TargetError> {
        check_key(key)?;
        let path = format!("/objects/{key}");
        self.call(key, move |t| t.req("DELETE", &path).call().map(|_| ())).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, TargetError> {
        let prefix = prefix.to_string();
        self.call("", move |t| {
            let r = t.req("GET", "/list").query("prefix", &prefix).call()?;
            r.into_json::<Vec<String>>().map_err(ureq::Error::from)
        })
        .await
    }
    async fn health(&self) -> Result<(), TargetError> {
        self.call("", move |t| t.req("GET", "/health").call().map(|_| ())).await
    }
}
