//! A storage node (`node://host:port`) as a target, over its HTTP share API
//! (`cleave-node`). Requests go through a pooled keep-alive HTTP/1 client and carry the
//! cluster's access token, which never appears in names, errors or `Debug` output.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, RANGE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::error::check_key;
use crate::{Target, TargetError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response body accepted (the node refuses objects over 80 MiB).
const MAX_BODY: usize = 128 << 20;

#[derive(Clone)]
pub struct NodeTarget {
    addr: String,
    name: String,
    authorization: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for NodeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTarget").field("name", &self.name).finish()
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error and its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The node's `{"error": "..."}` message, or the start of whatever it sent.
fn message(body: &[u8]) -> String {
    let inner = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string));
    let mut msg = inner.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    if msg.len() > 300 {
        let mut end = 300;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
    }
    msg
}

impl NodeTarget {
    /// `addr` is `host:port`; `token` is the node access token derived from the cluster secret.
    pub fn new(addr: String, token: String) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector);
        NodeTarget { name: format!("node://{addr}"), addr, authorization: format!("Bearer {token}"), client }
    }

    /// One request; Ok((status, body)) for a 2xx answer, the matching error otherwise.
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        key: &str,
        range: Option<String>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), TargetError> {
        let what = if key.is_empty() { self.name.clone() } else { format!("{}/{key}", self.name) };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path_and_query}", self.addr))
            .header(AUTHORIZATION, &self.authorization);
        if let Some(range) = range {
            req = req.header(RANGE, range);
        }
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, "application/octet-stream");
        }
        let req = req.body(Full::new(body)).map_err(|e| TargetError::InvalidUri(format!("{what}: {e}")))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| TargetError::Unavailable(format!("{what}: {}", chain(&e))))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| TargetError::Unavailable(format!("{what}: reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, TargetError>((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| {
            TargetError::Unavailable(format!("{what}: no answer within {} s", REQUEST_TIMEOUT.as_secs()))
        })??;
        if status.is_success() {
            return Ok((status, body));
        }
        let detail = message(&body);
        Err(match status {
            StatusCode::NOT_FOUND => TargetError::NotFound(what),
            StatusCode::CONFLICT => TargetError::AlreadyExists(what),
            StatusCode::INSUFFICIENT_STORAGE => TargetError::Full(format!("{what}: {detail}")),
            StatusCode::BAD_REQUEST => TargetError::InvalidKey(key.to_string()),
            _ => TargetError::Unavailable(format!("{what}: {status}: {detail}")),
        })
    }

    fn object(key: &str) -> String {
        format!("/v1/objects/{}", encode(key))
    }
}

#[async_trait::async_trait]
impl Target for NodeTarget {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), TargetError> {
        check_key(key)?;
        self.call(Method::PUT, &Self::object(key), key, None, data).await.map(|_| ())
    }

    async fn get(&self, key: &str) -> Result<Bytes, TargetError> {
        check_key(key)?;
        Ok(self.call(Method::GET, &Self::object(key), key, None, Bytes::new()).await?.1)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, TargetError> {
        check_key(key)?;
        if range.end <= range.start {
            // Still reports a missing object.
            self.call(Method::GET, &Self::object(key), key, Some("bytes=0-0".into()), Bytes::new()).await?;
            return Ok(Bytes::new());
        }
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let (status, body) = self.call(Method::GET, &Self::object(key), key, Some(header), Bytes::new()).await?;
        if status == StatusCode::PARTIAL_CONTENT {
            return Ok(body);
        }
        // A server that ignored the range sent the whole object.
        let len = body.len() as u64;
        let (start, end) = (range.start.min(len), range.end.min(len));
        Ok(body.slice(start as usize..end.max(start) as usize))
    }

    async fn delete(&self, key: &str) -> Result<(), TargetError> {
        check_key(key)?;
        match self.call(Method::DELETE, &Self::object(key), key, None, Bytes::new()).await {
            Ok(_) => Ok(()),
            Err(TargetError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, TargetError> {
        let path = format!("/v1/list?prefix={}", encode(prefix));
        let (_, body) = self.call(Method::GET, &path, "", None, Bytes::new()).await?;
        let mut keys: Vec<String> = serde_json::from_slice(&body)
            .map_err(|e| TargetError::Corrupt(format!("{}: list of {prefix:?}: {e}", self.name)))?;
        keys.sort();
        Ok(keys)
    }

    async fn health(&self) -> Result<(), TargetError> {
        self.call(Method::GET, "/v1/health", "", None, Bytes::new()).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefixes_are_encoded() {
        assert_eq!(encode("vol/chunks/1/a-b_c.d~"), "vol/chunks/1/a-b_c.d~");
        assert_eq!(encode("a b?c#d%e&f=g+h"), "a%20b%3Fc%23d%25e%26f%3Dg%2Bh");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn error_messages_are_extracted() {
        assert_eq!(message(br#"{"error":"node full: 2 bytes"}"#), "node full: 2 bytes");
        assert_eq!(message(b"plain"), "plain");
        assert!(message(&[b'x'; 1000]).len() <= 300);
    }

    #[test]
    fn debug_hides_the_token() {
        let t = NodeTarget::new("127.0.0.1:1".into(), "sekrit-token".into());
        assert!(!format!("{t:?}").contains("sekrit"));
        assert_eq!(t.name(), "node://127.0.0.1:1");
    }

    #[tokio::test]
    async fn unreachable_node_is_unavailable_without_the_token() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let t = NodeTarget::new(format!("127.0.0.1:{port}"), "sekrit-token".into());
        let err = t.get("k").await.unwrap_err();
        assert!(matches!(err, TargetError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains(&format!("node://127.0.0.1:{port}/k")), "{err}");
        assert!(!err.to_string().contains("sekrit"));
    }
}
