//! A node served over real HTTP on a loopback port, used through the `node://` target
//! (and, for what a target cannot send, raw HTTP over TCP).

use std::sync::Arc;

use bytes::Bytes;
use cleave_node::{access_token, Node, NodeConfig};
use cleave_target::node::NodeTarget;
use cleave_target::{DynTarget, Target, TargetError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: [u8; 32] = [3; 32];

struct Running {
    dir: tempfile::TempDir,
    node: Node,
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    fn target(&self) -> NodeTarget {
        NodeTarget::new(self.addr.clone(), access_token(&SECRET))
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.await.unwrap().unwrap();
    }
}

async fn start(capacity: Option<u64>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = Node::open(NodeConfig {
        data: dir.path().to_path_buf(),
        listen: addr,
        capacity,
        site: "a".into(),
        secret: SECRET,
    })
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(node.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    Running { dir, node, addr: addr.to_string(), stop: Some(stop), server }
}

/// One raw HTTP/1.1 request; returns the status code and the body.
async fn raw(addr: &str, request_head: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request_head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The conformance suite of `cleave-target/tests/targets.rs`.
async fn conformance(t: DynTarget) {
    t.health().await.unwrap();
    t.put("vol/chunks/1/a", Bytes::from_static(b"hello share")).await.unwrap();
    assert_eq!(&t.get("vol/chunks/1/a").await.unwrap()[..], b"hello share");
    // Create-only: the second put fails and the first content stays.
    let err = t.put("vol/chunks/1/a", Bytes::from_static(b"other")).await.unwrap_err();
    assert!(err.is_already_exists(), "{err}");
    assert_eq!(&t.get("vol/chunks/1/a").await.unwrap()[..], b"hello share");
    assert!(t.get("vol/chunks/1/missing").await.unwrap_err().is_not_found());
    assert_eq!(&t.get_range("vol/chunks/1/a", 6..11).await.unwrap()[..], b"share");
    assert_eq!(&t.get_range("vol/chunks/1/a", 6..100).await.unwrap()[..], b"share");
    for k in ["vol/journal/2", "vol/journal/1", "other/x"] {
        t.put(k, Bytes::from_static(b"j")).await.unwrap();
    }
    assert_eq!(t.list("vol/journal/").await.unwrap(), vec!["vol/journal/1", "vol/journal/2"]);
    assert_eq!(t.list("vol/").await.unwrap().len(), 3);
    t.delete("vol/journal/1").await.unwrap();
    t.delete("vol/journal/1").await.unwrap();
    assert!(t.get("vol/journal/1").await.unwrap_err().is_not_found());
    for bad in ["", "/abs", "a/../b", "a/.hidden", "a//b", "a\\b"] {
        assert!(matches!(t.put(bad, Bytes::new()).await, Err(TargetError::InvalidKey(_))), "{bad:?}");
    }
    // Concurrent puts of one key: exactly one wins.
    let results = futures::future::join_all((0..8).map(|i| {
        let t = t.clone();
        async move { t.put("race/key", Bytes::from(vec![i as u8; 1000])).await }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| e.is_already_exists()));
    // Many concurrent puts of distinct keys.
    let results = futures::future::join_all((0..100).map(|i| {
        let t = t.clone();
        async move { t.put(&format!("many/{i:03}"), Bytes::from(vec![i as u8; 4096])).await }
    }))
    .await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(t.list("many/").await.unwrap().len(), 100);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_target_conformance() {
    let n = start(None).await;
    let t: DynTarget = Arc::new(n.target());
    assert_eq!(t.name(), format!("node://{}", n.addr));
    conformance(t.clone()).await;
    // 1 + 3 - 1 + 1 + 100 objects.
    assert_eq!(n.node.stats().objects, 104);
    assert_eq!(t.list("").await.unwrap().len(), 104);
    let leftovers = walk(n.dir.path()).into_iter().filter(|p| p.contains(".tmp-")).count();
    assert_eq!(leftovers, 0, "no temporary files left behind");
    // Keys with characters that need encoding in a URL.
    t.put("odd/a b+c%d?e#f&g=h", Bytes::from_static(b"odd")).await.unwrap();
    assert_eq!(&t.get("odd/a b+c%d?e#f&g=h").await.unwrap()[..], b"odd");
    assert_eq!(t.list("odd/a b+").await.unwrap(), vec!["odd/a b+c%d?e#f&g=h"]);
    assert_eq!(&t.get_range("odd/a b+c%d?e#f&g=h", 5..5).await.unwrap()[..], b"");
    assert!(t.get_range("odd/missing", 5..5).await.unwrap_err().is_not_found());
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_follow_puts_and_deletes() {
    let n = start(None).await;
    let t = n.target();
    let before = n.node.stats();
    assert_eq!((before.used_bytes, before.objects), (0, 0));
    assert!(before.capacity_bytes > 0 && before.free_bytes > 0 && before.free_bytes <= before.capacity_bytes);
    t.put("v/chunks/1/a", Bytes::from_static(b"share bytes")).await.unwrap();
    t.put("v/chunks/1/b", Bytes::from(vec![9u8; 5000])).await.unwrap();
    let s = n.node.stats();
    assert_eq!((s.used_bytes, s.objects), (5011, 2));
    // A refused duplicate changes nothing.
    assert!(t.put("v/chunks/1/a", Bytes::from_static(b"x")).await.unwrap_err().is_already_exists());
    assert_eq!(n.node.stats().used_bytes, 5011);
    t.delete("v/chunks/1/a").await.unwrap();
    t.delete("v/chunks/1/a").await.unwrap();
    let s = n.node.stats();
    assert_eq!((s.used_bytes, s.objects), (5000, 1));
    // Concurrent deletes of one key subtract it once.
    let results = futures::future::join_all((0..8).map(|_| t.delete("v/chunks/1/b"))).await;
    assert!(results.iter().all(|r| r.is_ok()));
    let s = n.node.stats();
    assert_eq!((s.used_bytes, s.objects), (0, 0));

    // The health route reports the same numbers, as JSON.
    let token = access_token(&SECRET);
    t.put("k", Bytes::from_static(b"1234")).await.unwrap();
    let (status, body) = raw(
        &n.addr,
        &format!("GET /v1/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let stats: cleave_node::NodeStats = serde_json::from_str(&body).unwrap();
    assert_eq!((stats.used_bytes, stats.objects), (4, 1));
    assert!(stats.capacity_bytes >= stats.free_bytes);

    // Reopening the directory counts what is there.
    let data = n.dir.path().to_path_buf();
    std::fs::write(data.join("objects").join(".tmp-leftover"), b"half").unwrap();
    let again = Node::open(NodeConfig {
        data: data.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        capacity: None,
        site: "a".into(),
        secret: SECRET,
    })
    .unwrap();
    assert_eq!((again.stats().used_bytes, again.stats().objects), (4, 1));
    assert!(!data.join("objects").join(".tmp-leftover").exists(), "leftover temporary file removed");
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_callers_without_the_token() {
    let n = start(None).await;
    n.target().put("k", Bytes::from_static(b"x")).await.unwrap();
    let bad = NodeTarget::new(n.addr.clone(), "not-the-token".into());
    let err = bad.get("k").await.unwrap_err();
    assert!(matches!(err, TargetError::Unavailable(ref m) if m.contains("401")), "{err}");
    assert!(!err.is_not_found());
    assert!(!err.to_string().contains("not-the-token"), "token in an error");
    assert!(bad.put("k2", Bytes::from_static(b"x")).await.is_err());
    assert!(bad.delete("k").await.is_err());
    assert!(bad.list("").await.is_err());
    assert!(bad.health().await.is_err());
    // The object is still there and k2 was not written.
    assert_eq!(n.target().list("").await.unwrap(), vec!["k"]);

    // Raw requests: no header, a wrong scheme, a truncated token, a wrong token.
    let token = access_token(&SECRET);
    for auth in [
        "".to_string(),
        format!("Authorization: Basic {token}\r\n"),
        format!("Authorization: Bearer {}\r\n", &token[..63]),
        "Authorization: Bearer nope\r\n".to_string(),
    ] {
        for (method, path) in
            [("GET", "/v1/objects/k"), ("DELETE", "/v1/objects/k"), ("GET", "/v1/list"), ("GET", "/v1/health")]
        {
            let (status, body) =
                raw(&n.addr, &format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n")).await;
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {body}");
            assert!(body.contains("\"error\""), "{body}");
        }
    }
    let (status, _) =
        raw(&n.addr, "PUT /v1/objects/k3 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx").await;
    assert_eq!(status, 401);
    assert_eq!(n.target().list("").await.unwrap(), vec!["k"], "nothing written or deleted without the token");

    // With the token: the server itself rejects bad keys with 400 and serves ranges with 206.
    let (status, body) = raw(
        &n.addr,
        &format!(
            "PUT /v1/objects/a/.hidden HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 1\r\nConnection: close\r\n\r\nx"
        ),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (status, body) = raw(
        &n.addr,
        &format!(
            "GET /v1/objects/k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Range: bytes=0-0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!((status, body.as_str()), (206, "x"));
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_says_so_and_keeps_nothing() {
    let n = start(Some(1 << 20)).await;
    let t = n.target();
    t.put("small", Bytes::from(vec![1u8; 1000])).await.unwrap();
    let used = n.node.stats().used_bytes;
    assert_eq!(used, 1000);
    let err = t.put("big", Bytes::from(vec![2u8; 2 << 20])).await.unwrap_err();
    assert!(matches!(err, TargetError::Full(ref m) if m.contains("full")), "{err}");
    assert!(t.get("big").await.unwrap_err().is_not_found());
    assert_eq!(t.list("").await.unwrap(), vec!["small"]);
    assert_eq!(n.node.stats().used_bytes, used);
    let leftovers: Vec<_> = std::fs::read_dir(n.dir.path().join("objects")).unwrap().flatten().collect();
    assert_eq!(leftovers.len(), 1, "no partial object or temporary file");
    let s = n.node.stats();
    assert_eq!((s.capacity_bytes, s.free_bytes, s.objects), (1 << 20, (1 << 20) - 1000, 1));

    // Concurrent puts that together exceed the capacity: the admitted ones fit.
    let results = futures::future::join_all((0..6).map(|i| {
        let t = t.clone();
        async move { t.put(&format!("part/{i}"), Bytes::from(vec![3u8; 300 << 10])).await }
    }))
    .await;
    let stored = results.iter().filter(|r| r.is_ok()).count();
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, TargetError::Full(_))));
    assert_eq!(stored, 3, "{results:?}");
    assert!(n.node.stats().used_bytes <= 1 << 20);
    assert_eq!(t.list("part/").await.unwrap().len(), stored);

    // Space comes back with a delete.
    t.delete("part/0").await.unwrap();
    t.put("after-delete", Bytes::from(vec![4u8; 300 << 10])).await.unwrap();
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused() {
    let n = start(None).await;
    let t = n.target();
    let err = t.put("huge", Bytes::from(vec![0u8; (80 << 20) + 1])).await.unwrap_err();
    assert!(!err.is_not_found() && !matches!(err, TargetError::InvalidKey(_)), "{err}");
    assert!(t.list("").await.unwrap().is_empty());
    t.put("exactly-max", Bytes::from(vec![0u8; 80 << 20])).await.unwrap();
    assert_eq!(t.get("exactly-max").await.unwrap().len(), 80 << 20);
    n.shutdown().await;
}
