//! The auto-configuration protocol end to end: a real listener and real agents
//! on loopback UDP sockets, in real tokio tasks. Timing assertions are generous
//! upper bounds only (poll until a deadline).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cleave_control::autoconfig::agent::{run_agent, AgentConfig};
use cleave_control::autoconfig::listener::run_listener;
use cleave_control::autoconfig::packet::{decode, encode, MessageType, Packet};
use cleave_control::pool::{DropCounters, NodeInfo, NodeStatus, Pool};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

const SECRET: [u8; 32] = [0x42; 32];
const HEARTBEAT: Duration = Duration::from_millis(200);

async fn listener_on(bind: SocketAddr, heartbeat_timeout: Duration) -> (SocketAddr, Arc<Pool>, JoinHandle<()>) {
    let socket = UdpSocket::bind(bind).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let pool = Pool::new();
    let task = tokio::spawn(run_listener(socket, SECRET, pool.clone(), heartbeat_timeout));
    (addr, pool, task)
}

async fn listener(heartbeat_timeout: Duration) -> (SocketAddr, Arc<Pool>, JoinHandle<()>) {
    listener_on("127.0.0.1:0".parse().unwrap(), heartbeat_timeout).await
}

struct Agent {
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

fn capacity_of(i: u64) -> u64 {
    (i + 1) << 30
}

fn agent(control: SocketAddr, i: u64) -> Agent {
    let (tx, rx) = oneshot::channel::<()>();
    let cfg = AgentConfig {
        control,
        secret: SECRET,
        id: format!("node-{i}"),
        address: format!("127.0.0.1:{}", 7800 + i),
        site: format!("site-{}", i % 2),
        heartbeat: HEARTBEAT,
        enroll: None,
    };
    let task = tokio::spawn(run_agent(cfg, move || (capacity_of(i), capacity_of(i) / 2, 10 + i), async move {
        let _ = rx.await;
    }));
    Agent { task, stop: Some(tx) }
}

impl Agent {
    /// A clean stop: the agent sends SHUTDOWN and returns.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        timeout(Duration::from_secs(5), self.task).await.expect("agent returns after shutdown").unwrap();
    }

    /// Like SIGKILL: the task disappears without a word.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn node(pool: &Pool, id: &str) -> Option<NodeInfo> {
    pool.nodes().into_iter().find(|n| n.id == id)
}

fn is(pool: &Pool, id: &str, status: NodeStatus) -> bool {
    node(pool, id).is_some_and(|n| n.status == status)
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

fn events(pool: &Pool, kind: &str, id: &str, detail: &str) -> usize {
    pool.events().iter().filter(|e| e.kind == kind && e.detail.contains(id) && e.detail.contains(detail)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_register_stop_crash_and_come_back() {
    let (addr, pool, _listener) = listener(Duration::from_secs(1)).await;
    let mut agents: Vec<Option<Agent>> = (0..3).map(|i| Some(agent(addr, i))).collect();

    wait_for("three nodes up", Duration::from_secs(5), || {
        (0..3).all(|i| node(&pool, &format!("node-{i}")).is_some_and(|n| n.status == NodeStatus::Up))
    })
    .await;
    for i in 0..3u64 {
        let n = node(&pool, &format!("node-{i}")).unwrap();
        assert_eq!(n.capacity_bytes, capacity_of(i));
        assert_eq!(n.free_bytes, capacity_of(i) / 2);
        assert_eq!(n.objects, 10 + i);
        assert_eq!(n.address, format!("127.0.0.1:{}", 7800 + i));
        assert_eq!(n.site, format!("site-{}", i % 2));
        assert_eq!(events(&pool, "node_up", &n.id, ""), 1, "{:?}", pool.events());
    }
    let json = serde_json::to_value(pool.nodes()).unwrap();
    assert_eq!(json[0]["status"], "up");

    // Heartbeats keep nodes up well past the timeout.
    sleep(Duration::from_millis(1600)).await;
    assert!((0..3).all(|i| is(&pool, &format!("node-{i}"), NodeStatus::Up)), "{:?}", pool.nodes());

    // A clean stop: down at once, with an event.
    agents[0].take().unwrap().stop().await;
    wait_for("cleanly stopped node down", Duration::from_millis(500), || is(&pool, "node-0", NodeStatus::Down)).await;
    assert_eq!(events(&pool, "node_down", "node-0", "clean stop"), 1, "{:?}", pool.events());

    // A crash (no SHUTDOWN): down after the heartbeat timeout, with an event.
    agents[1].take().unwrap().kill().await;
    wait_for("crashed node down", Duration::from_secs(3), || is(&pool, "node-1", NodeStatus::Down)).await;
    assert_eq!(events(&pool, "node_down", "node-1", "heartbeat timeout"), 1, "{:?}", pool.events());
    assert!(is(&pool, "node-2", NodeStatus::Up));

    // Restarted (same ids, fresh processes): up again.
    agents[0] = Some(agent(addr, 0));
    agents[1] = Some(agent(addr, 1));
    wait_for("restarted nodes up", Duration::from_secs(5), || {
        (0..3).all(|i| is(&pool, &format!("node-{i}"), NodeStatus::Up))
    })
    .await;
    assert_eq!(events(&pool, "node_up", "node-0", ""), 2);
    assert_eq!(events(&pool, "node_up", "node-1", ""), 2);
    assert_eq!(pool.counters(), DropCounters::default(), "genuine traffic is never dropped");
    for a in agents.into_iter().flatten() {
        a.stop().await;
    }
    wait_for("all down", Duration::from_secs(1), || pool.nodes().iter().all(|n| n.status == NodeStatus::Down)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_registers_again_when_control_comes_back() {
    let (addr, pool, listener_task) = listener(Duration::from_secs(1)).await;
    let a = agent(addr, 7);
    wait_for("node up", Duration::from_secs(5), || is(&pool, "node-7", NodeStatus::Up)).await;

    // Control goes away for longer than three heartbeats, then returns with an empty pool.
    listener_task.abort();
    let _ = listener_task.await;
    sleep(HEARTBEAT * 6).await;
    let (addr2, pool2, _listener2) = listener_on(addr, Duration::from_secs(1)).await;
    assert_eq!(addr2, addr);
    wait_for("node registered with the new control", Duration::from_secs(5), || is(&pool2, "node-7", NodeStatus::Up))
        .await;
    assert_eq!(node(&pool2, "node-7").unwrap().capacity_bytes, capacity_of(7));
    a.stop().await;
    wait_for("node down", Duration::from_secs(1), || is(&pool2, "node-7", NodeStatus::Down)).await;
}

/// A test socket playing a node by hand.
struct Hand {
    socket: UdpSocket,
    local: SocketAddr,
    control: SocketAddr,
    seq: u64,
}

impl Hand {
    async fn new(control: SocketAddr) -> Hand {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        Hand { socket, local, control, seq: 1_000 }
    }

    fn packet(&mut self, kind: MessageType, data: serde_json::Value, secret: &[u8; 32]) -> Vec<u8> {
        self.seq += 1;
        let p = Packet { kind, seq: self.seq, src: self.local, dst: self.control, data: data.to_string().into_bytes() };
        encode(&p, secret).unwrap()
    }

    async fn send(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.control).await.unwrap();
    }

    async fn reply(&self, within: Duration) -> Option<Packet> {
        let mut buf = [0u8; 2048];
        let (n, from) = timeout(within, self.socket.recv_from(&mut buf)).await.ok()?.unwrap();
        assert_eq!(from, self.control);
        Some(decode(&buf[..n], &SECRET).expect("control's replies decode"))
    }
}

fn snapshot(pool: &Pool) -> (serde_json::Value, serde_json::Value) {
    (serde_json::to_value(pool.nodes()).unwrap(), serde_json::to_value(pool.events()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_packets_change_nothing_and_are_counted() {
    let (addr, pool, _listener) = listener(Duration::from_secs(60)).await;
    let mut hand = Hand::new(addr).await;
    let hello = serde_json::json!({ "id": "h1" });

    // Register by hand, keeping the genuine datagrams.
    let startup = hand.packet(MessageType::Startup, hello.clone(), &SECRET);
    hand.send(&startup).await;
    let r = hand.reply(Duration::from_secs(2)).await.expect("NEED_INFO");
    assert_eq!(r.kind, MessageType::NeedInfo);
    assert_eq!(r.dst, hand.local);
    assert_eq!(node(&pool, "h1").expect("recorded on STARTUP").status, NodeStatus::Down);
    let info = serde_json::json!({
        "id": "h1", "address": "127.0.0.1:9999", "site": "x", "capacity_bytes": 1000, "free_bytes": 700, "objects": 3,
    });
    let info = hand.packet(MessageType::Info, info, &SECRET);
    hand.send(&info).await;
    assert_eq!(hand.reply(Duration::from_secs(2)).await.expect("ACK").kind, MessageType::Ack);
    assert!(is(&pool, "h1", NodeStatus::Up));
    let before = snapshot(&pool);

    // Replays of captured genuine datagrams.
    hand.send(&startup).await;
    hand.send(&info).await;
    // A genuine SHUTDOWN with an old sequence number (a replay of an earlier one, say).
    let mut old = Packet {
        kind: MessageType::Shutdown,
        seq: 5,
        src: hand.local,
        dst: addr,
        data: hello.to_string().into_bytes(),
    };
    hand.send(&encode(&old, &SECRET).unwrap()).await;
    // Forged: the right layout under the wrong secret.
    let forged = hand.packet(MessageType::Shutdown, hello.clone(), &[0x24; 32]);
    hand.send(&forged).await;
    // A bit flipped in a genuine packet.
    let mut flipped = hand.packet(MessageType::Shutdown, hello.clone(), &SECRET);
    flipped[60] ^= 0x01;
    hand.send(&flipped).await;
    // Garbage, and something that looks like a header but is not.
    hand.send(b"garbage").await;
    let mut fake = vec![1u8, 4];
    fake.extend_from_slice(&[0u8; 100]);
    hand.send(&fake).await;
    hand.send(&[]).await;
    // Oversized: 1500 and 4000 bytes.
    hand.send(&[1u8; 1500]).await;
    hand.send(&vec![0u8; 4000]).await;
    // Spoofed: a genuine SHUTDOWN naming this socket, sent from another address and port.
    old.seq = hand.seq + 100;
    let spoofed = encode(&old, &SECRET).unwrap();
    let other = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    other.send_to(&spoofed, addr).await.unwrap();
    let other_port = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    other_port.send_to(&spoofed, addr).await.unwrap();
    // Unexpected: control never receives NEED_INFO or ACK.
    let need = hand.packet(MessageType::NeedInfo, hello.clone(), &SECRET);
    hand.send(&need).await;

    let want = DropCounters { unauthenticated: 2, malformed: 3, replayed: 3, oversized: 2, spoofed: 2, unexpected: 1 };
    wait_for("every hostile packet counted", Duration::from_secs(3), || pool.counters() == want).await;
    assert!(hand.reply(Duration::from_millis(300)).await.is_none(), "dropped packets get no answer");
    assert_eq!(snapshot(&pool), before, "dropped packets change nothing");
    assert!(is(&pool, "h1", NodeStatus::Up));

    // The channel still works: a genuine SHUTDOWN with a fresh number is obeyed at once.
    hand.seq = old.seq;
    let shutdown = hand.packet(MessageType::Shutdown, hello.clone(), &SECRET);
    hand.send(&shutdown).await;
    wait_for("shut down", Duration::from_secs(1), || is(&pool, "h1", NodeStatus::Down)).await;
    assert_eq!(events(&pool, "node_down", "h1", "clean stop"), 1);
    // And a heartbeat afterwards asks it to register again.
    let beat = hand.packet(MessageType::Heartbeat, serde_json::json!({ "id": "h1", "free_bytes": 1 }), &SECRET);
    hand.send(&beat).await;
    assert_eq!(hand.reply(Duration::from_secs(2)).await.expect("NEED_INFO").kind, MessageType::NeedInfo);
    assert_eq!(pool.counters(), want);
}
