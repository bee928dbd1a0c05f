//! Two engines on loopback, with TLS from two CAs, mirroring in-memory volumes: the initial
//! copy, sync and async changes, pause and journal replay, switchover, split brain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cleave_control::ca::{fingerprint, pem_to_der, Ca};
use cleave_mirror::{
    Engine, EngineConfig, EventKind, Events, Host, MirrorState, Mode, OnFailure, Op, PeerCredentials, Replica,
    Settings, Side, Timing,
};
use rustls_pki_types::pem::PemObject;

struct Mem(Mutex<Vec<u8>>);

#[async_trait::async_trait]
impl Replica for Mem {
    fn size(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, String> {
        let d = self.0.lock().unwrap();
        Ok(Bytes::copy_from_slice(&d[offset as usize..offset as usize + len as usize]))
    }
    async fn apply(&self, op: Op) -> Result<(), String> {
        let mut d = self.0.lock().unwrap();
        match op {
            Op::Write { offset, data, .. } => d[offset as usize..offset as usize + data.len()].copy_from_slice(&data),
            Op::Zero { offset, len, .. } | Op::Trim { offset, len } => {
                d[offset as usize..offset as usize + len as usize].fill(0)
            }
            Op::Flush => {}
        }
        Ok(())
    }
}

struct Site {
    ca: Ca,
    replicas: Mutex<HashMap<String, Arc<Mem>>>,
    clients: Mutex<HashMap<String, String>>,
    events: Mutex<Vec<(String, EventKind, String)>>,
}

impl Events for Site {
    fn event(&self, volume: &str, kind: EventKind, message: String) {
        self.events.lock().unwrap().push((volume.into(), kind, message));
    }
}

#[async_trait::async_trait]
impl Host for Site {
    fn replica(&self, volume: &str) -> Option<Arc<dyn Replica>> {
        self.replicas.lock().unwrap().get(volume).map(|r| r.clone() as Arc<dyn Replica>)
    }
    async fn create_replica(&self, volume: &str, size: u64) -> Result<Arc<dyn Replica>, String> {
        let r = Arc::new(Mem(Mutex::new(vec![0; size as usize])));
        self.replicas.lock().unwrap().insert(volume.into(), r.clone());
        Ok(r)
    }
    fn admit(&self, certificate: &[u8]) -> Option<String> {
        self.clients.lock().unwrap().get(&fingerprint(certificate)).cloned()
    }
    fn issue_credentials(&self, name: &str) -> Result<PeerCredentials, String> {
        let issued = self.ca.issue_client(name).map_err(|e| e.to_string())?;
        self.clients.lock().unwrap().insert(issued.fingerprint.clone(), name.into());
        Ok(PeerCredentials {
            ca_pem: self.ca.cert_pem().into(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem.to_string(),
        })
    }
}

fn server_tls(ca: &Ca) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().unwrap().into()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone()).build().unwrap();
    let issued = ca.issue_server(&["127.0.0.1".into()]).unwrap();
    let chain = vec![rustls_pki_types::CertificateDer::from(pem_to_der(&issued.cert_pem).unwrap())];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(c)
}

fn timing() -> Timing {
    Timing {
        interval: Duration::from_millis(100),
        down_after: Duration::from_millis(500),
        probation: Some(Duration::from_secs(1)),
    }
}

struct Gw {
    site: Arc<Site>,
    engine: Arc<Engine>,
    addr: String,
}

async fn gateway(dir: &std::path::Path, settings: Settings) -> Gw {
    let (ca, _) = Ca::generate("t").unwrap();
    let tls = server_tls(&ca);
    let site = Arc::new(Site { ca, replicas: Mutex::default(), clients: Mutex::default(), events: Mutex::default() });
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = EngineConfig {
        dir: dir.to_path_buf(),
        listen: addr.parse().unwrap(),
        advertise: addr.clone(),
        server_tls: tls,
        connections: 2,
        timing: timing(),
        settings,
    };
    let engine = Engine::start(cfg, site.clone()).await.unwrap();
    Gw { site, engine, addr }
}

fn image(g: &Gw, v: &str) -> Vec<u8> {
    g.site.replicas.lock().unwrap()[v].0.lock().unwrap().clone()
}

async fn write(g: &Gw, v: &str, offset: u64, byte: u8, len: usize) {
    let op = Op::Write { offset, data: Bytes::from(vec![byte; len]), fua: false };
    let local = g.site.replicas.lock().unwrap()[v].clone();
    match g.engine.side(v) {
        Some(Side::Primary(p)) => p.apply(op, |op| async move { local.apply(op).await }).await.unwrap().unwrap(),
        _ => local.apply(op).await.unwrap(),
    }
}

async fn wait_state(g: &Gw, v: &str, want: MirrorState) {
    let start = Instant::now();
    loop {
        let s = g.engine.show(v).unwrap();
        if s.state == want {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{v}: wanted {want:?}, still {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pair(settings: Settings, mode: Mode) -> (tempfile::TempDir, Gw, Gw) {
    pair_with(settings, mode, OnFailure::Degrade).await
}

async fn pair_with(settings: Settings, mode: Mode, on_failure: OnFailure) -> (tempfile::TempDir, Gw, Gw) {
    let dir = tempfile::tempdir().unwrap();
    let a = gateway(&dir.path().join("a"), settings).await;
    let b = gateway(&dir.path().join("b"), settings).await;
    a.site.create_replica("v", 8 << 20).await.unwrap();
    write(&a, "v", 3 << 20, 0xaa, 4096).await; // before the mirror: the initial copy brings it
    let creds = b.site.issue_credentials("site-a").unwrap();
    a.engine.create("v", &b.addr, mode, on_failure, Some(creds)).await.unwrap();
    wait_state(&a, "v", MirrorState::InSync).await;
    (dir, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mirror_has_every_acknowledged_write() {
    let (_d, a, b) = pair(Settings::default(), Mode::Sync).await;
    assert_eq!(image(&a, "v"), image(&b, "v"), "initial copy");
    for i in 0..50u64 {
        write(&a, "v", (i * 7919 * 512) % (8 << 20) / 512 * 512, i as u8, 4096).await;
        // Acknowledged means on the mirror: no waiting.
        assert_eq!(image(&a, "v"), image(&b, "v"), "after write {i}");
    }
    let s = b.engine.show("v").unwrap();
    assert!(s.consistent);
    assert!(matches!(b.engine.side("v"), Some(Side::Secondary(_))));
}

fn events_of(g: &Gw, kind: EventKind) -> usize {
    g.site.events.lock().unwrap().iter().filter(|e| e.1 == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_write_the_mirror_misses_is_an_event_and_fails_under_policy_fail() {
    for on_failure in [OnFailure::Degrade, OnFailure::Fail] {
        let (_d, a, b) = pair_with(Settings::default(), Mode::Sync, on_failure).await;
        a.engine.pause("v").unwrap(); // the mirror cannot take changes now
        let mut failed = 0;
        for i in 0..3u64 {
            let op = Op::Write { offset: i << 20, data: Bytes::from(vec![7; 4096]), fua: false };
            let local = a.site.replicas.lock().unwrap()["v"].clone();
            let Some(Side::Primary(p)) = a.engine.side("v") else { panic!("A is the primary") };
            let outcome = p.apply(op, |op| async move { local.apply(op).await }).await;
            failed += usize::from(outcome.is_err());
        }
        let want = if on_failure == OnFailure::Fail { 3 } else { 0 };
        assert_eq!(failed, want, "{on_failure:?}: writes reported failed to the host");
        assert_eq!(events_of(&a, EventKind::Degraded), 1, "{on_failure:?}: one event per episode");
        a.engine.resume("v").unwrap();
        wait_state(&a, "v", MirrorState::InSync).await;
        assert_eq!(image(&a, "v"), image(&b, "v"), "{on_failure:?}: the journal brought the writes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_lag_past_its_bound_goes_to_the_journal_with_an_event() {
    let settings = Settings { max_lag_bytes: 1 << 20, ..Settings::default() };
    let (_d, a, b) = pair(settings, Mode::Async).await;
    let a = Arc::new(a);
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..16u64 {
                write(&a, "v", ((t * 16 + i) % 8) << 20, (t * 16 + i) as u8, 256 << 10).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(events_of(&a, EventKind::Lagging) >= 1, "{:?}", a.site.events.lock().unwrap());
    let start = Instant::now();
    let s = loop {
        let s = a.engine.show("v").unwrap();
        if (s.state == MirrorState::InSync && s.lag_bytes == 0) || start.elapsed() > Duration::from_secs(30) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((s.state, s.journal_records, s.lag_bytes), (MirrorState::InSync, 0, 0), "{s:?}");
    assert_eq!(image(&a, "v"), image(&b, "v"));
    assert!(b.engine.show("v").unwrap().consistent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_changes_are_journaled_and_replayed_in_order() {
    let (_d, a, b) = pair(Settings::default(), Mode::Async).await;
    a.engine.pause("v").unwrap();
    for i in 0..40u64 {
        write(&a, "v", (i % 5) << 20, i as u8, 65536).await;
    }
    let start = Instant::now();
    let s = loop {
        let s = a.engine.show("v").unwrap();
        if s.journal_records >= 40 || start.elapsed() > Duration::from_secs(10) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(s.state, MirrorState::Paused);
    assert_eq!(s.journal_records, 40, "{s:?}");
    assert_eq!(s.lag_changes, 40, "{s:?}");
    assert_ne!(image(&a, "v"), image(&b, "v"));
    a.engine.resume("v").unwrap();
    wait_state(&a, "v", MirrorState::InSync).await;
    assert_eq!(image(&a, "v"), image(&b, "v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_past_its_bound_becomes_region_copies() {
    let settings = Settings { journal_bytes: 256 << 10, ..Settings::default() };
    let (_d, a, b) = pair(settings, Mode::Async).await;
    a.engine.pause("v").unwrap();
    for i in 0..20u64 {
        write(&a, "v", i * 300_000, i as u8 + 1, 65536).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = a.engine.show("v").unwrap();
    assert!(s.journal_overflowed, "{s:?}");
    assert!(s.bitmap_regions > 0, "{s:?}");
    assert!(a.site.events.lock().unwrap().iter().any(|e| e.1 == EventKind::JournalOverflow));
    a.engine.resume("v").unwrap();
    wait_state(&a, "v", MirrorState::InSync).await;
    assert_eq!(image(&a, "v"), image(&b, "v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_reverses_the_mirror() {
    let (_d, a, b) = pair(Settings::default(), Mode::Sync).await;
    write(&a, "v", 0, 1, 4096).await;
    b.engine.promote("v", false).await.unwrap();
    assert!(matches!(a.engine.side("v"), Some(Side::Secondary(_))), "the old primary is the mirror now");
    wait_state(&b, "v", MirrorState::InSync).await;
    write(&b, "v", 8192, 2, 4096).await;
    assert_eq!(image(&a, "v"), image(&b, "v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_brain_is_refused_then_resolved_by_discarding_one_side() {
    let (_d, a, b) = pair(Settings::default(), Mode::Sync).await;
    a.engine.pause("v").unwrap(); // stands in for a cut link
    b.engine.promote("v", true).await.unwrap();
    write(&a, "v", 1 << 20, 0xa1, 4096).await;
    write(&b, "v", 2 << 20, 0xb2, 4096).await;
    a.engine.resume("v").unwrap();
    wait_state(&a, "v", MirrorState::SplitBrain).await;
    assert!(a.site.events.lock().unwrap().iter().any(|e| e.1 == EventKind::SplitBrain));
    assert_ne!(image(&a, "v"), image(&b, "v"));
    // B's changes go: A copies every region either side changed.
    b.engine.resolve_discarding_local("v").unwrap();
    wait_state(&a, "v", MirrorState::InSync).await;
    assert_eq!(image(&a, "v"), image(&b, "v"));
    assert_eq!(image(&b, "v")[2 << 20], 0, "B's change is gone");
    assert_eq!(image(&b, "v")[1 << 20], 0xa1, "A's change is there");
}
