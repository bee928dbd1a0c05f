//! A node served over real HTTP, used through the `node://` target.

use bytes::Bytes;
use cleave_node::{access_token, Node, NodeConfig};
use cleave_target::node::NodeTarget;
use cleave_target::{Target, TargetError};

const SECRET: [u8; 32] = [3; 32];

async fn start(capacity: Option<u64>) -> (tempfile::TempDir, Node, String) {
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
    tokio::spawn(node.clone().serve(listener, std::future::pending()));
    (dir, node, addr.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_and_serves_shares() {
    let (_dir, node, addr) = start(None).await;
    let t = NodeTarget::new(addr, access_token(&SECRET));
    t.health().await.unwrap();
    t.put("v/chunks/1/a", Bytes::from_static(b"share bytes")).await.unwrap();
    assert!(t.put("v/chunks/1/a", Bytes::from_static(b"x")).await.unwrap_err().is_already_exists());
    assert_eq!(&t.get("v/chunks/1/a").await.unwrap()[..], b"share bytes");
    assert_eq!(&t.get_range("v/chunks/1/a", 6..11).await.unwrap()[..], b"bytes");
    assert!(t.get("v/chunks/1/b").await.unwrap_err().is_not_found());
    assert_eq!(t.list("v/").await.unwrap(), vec!["v/chunks/1/a"]);
    assert!(matches!(t.put("../escape", Bytes::new()).await, Err(TargetError::InvalidKey(_))));
    assert_eq!(node.stats().objects, 1);
    assert_eq!(node.stats().used_bytes, 11);
    t.delete("v/chunks/1/a").await.unwrap();
    t.delete("v/chunks/1/a").await.unwrap();
    assert_eq!(node.stats().used_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_callers_without_the_token() {
    let (_dir, _node, addr) = start(None).await;
    let t = NodeTarget::new(addr, "not-the-token".into());
    let err = t.get("anything").await.unwrap_err();
    assert!(matches!(err, TargetError::Unavailable(ref m) if m.contains("401")), "{err}");
    assert!(t.put("k", Bytes::from_static(b"x")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_says_so_and_keeps_nothing() {
    let (dir, node, addr) = start(Some(1 << 20)).await;
    let t = NodeTarget::new(addr, access_token(&SECRET));
    t.put("small", Bytes::from(vec![1u8; 1000])).await.unwrap();
    let err = t.put("big", Bytes::from(vec![2u8; 2 << 20])).await.unwrap_err();
    assert!(matches!(err, TargetError::Full(ref m) if m.contains("full")), "{err}");
    assert!(t.get("big").await.unwrap_err().is_not_found());
    assert_eq!(t.list("").await.unwrap(), vec!["small"]);
    assert_eq!(node.stats().used_bytes, 1000);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("objects")).unwrap().flatten().collect();
    assert_eq!(leftovers.len(), 1, "no partial object or temp file");
    assert_eq!(node.stats().capacity_bytes, 1 << 20);
    assert_eq!(node.stats().free_bytes, (1 << 20) - 1000);
}
