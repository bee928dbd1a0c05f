//! A configuration store that stalls, as etcd may: what must not wait for it.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cleave_control::config::{ConfigError, ConfigStore, Entry, Guard, Lease, PutMode, RedbStore, Version, Watch};

use crate::appliance::Appliance;
use crate::data_dir::DataDir;
use crate::gateway::{local_config, Gateway, Stores, Unopened};

/// A configuration store whose calls, once it is stalled, wait until it is let go: etcd
/// that stopped answering, without its timeout.
#[derive(Debug)]
struct Stalling {
    inner: RedbStore,
    state: Mutex<Stall>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Stall {
    stalled: bool,
    /// Calls waiting now.
    waiting: usize,
    /// Let go by the watchdog rather than by the test.
    by_watchdog: bool,
}

impl Stalling {
    fn hold(&self) {
        let mut s = self.state.lock().unwrap();
        s.waiting += 1;
        self.changed.notify_all();
        while s.stalled {
            s = self.changed.wait(s).unwrap();
        }
        s.waiting -= 1;
    }

    fn set(&self, stalled: bool, by_watchdog: bool) {
        let mut s = self.state.lock().unwrap();
        s.stalled = stalled;
        s.by_watchdog |= by_watchdog && !stalled;
        self.changed.notify_all();
    }

    /// Waits, on the calling thread, until a call waits in the stalled store.
    fn wait_for_a_call(&self) {
        let mut s = self.state.lock().unwrap();
        while s.waiting == 0 {
            s = self.changed.wait(s).unwrap();
        }
    }

    fn let_go_by_watchdog(&self) -> bool {
        self.state.lock().unwrap().by_watchdog
    }
}

impl ConfigStore for Stalling {
    fn get(&self, key: &str) -> Result<Option<Entry>, ConfigError> {
        self.hold();
        self.inner.get(key)
    }
    fn put_opts(&self, key: &str, value: &[u8], mode: PutMode) -> Result<Version, ConfigError> {
        self.hold();
        self.inner.put_opts(key, value, mode)
    }
    fn delete(&self, key: &str) -> Result<bool, ConfigError> {
        self.hold();
        self.inner.delete(key)
    }
    fn delete_if(&self, key: &str, version: Version) -> Result<(), ConfigError> {
        self.hold();
        self.inner.delete_if(key, version)
    }
    fn put_guarded(&self, key: &str, value: &[u8], guard: &Guard) -> Result<Version, ConfigError> {
        self.hold();
        self.inner.put_guarded(key, value, guard)
    }
    fn delete_guarded(&self, key: &str, guard: &Guard) -> Result<(), ConfigError> {
        self.hold();
        self.inner.delete_guarded(key, guard)
    }
    fn scan(&self, prefix: &str) -> Result<Vec<Entry>, ConfigError> {
        self.hold();
        self.inner.scan(prefix)
    }
    fn watch(&self, prefix: &str) -> Result<Watch, ConfigError> {
        self.hold();
        self.inner.watch(prefix)
    }
    fn create_leased(&self, key: &str, value: &[u8], lease: Option<Lease>) -> Result<Version, ConfigError> {
        self.hold();
        self.inner.create_leased(key, value, lease)
    }
}

/// Gateway `g1` of an appliance whose configuration database is `store`.
fn gateway_in_appliance(root: &std::path::Path, store: Arc<Stalling>) -> Arc<Gateway> {
    let data = DataDir::with_config(root.to_path_buf(), store.clone()).unwrap();
    let appliance = Appliance::join(store, "g1".into(), Duration::from_secs(10)).unwrap();
    let config = local_config(Stores::load(data).unwrap(), 1 << 20, Some(Arc::new(appliance))).unwrap();
    Arc::new(Gateway::new(config))
}

/// Gateway `g1` of an appliance on a store that stalls, in `dir`.
fn stalling_gateway(dir: &std::path::Path) -> (Arc<Stalling>, Arc<Gateway>) {
    let inner = RedbStore::open(&dir.join("shared.redb")).unwrap();
    let store = Arc::new(Stalling { inner, state: Mutex::default(), changed: Condvar::new() });
    let gateway = gateway_in_appliance(&dir.join("g1"), store.clone());
    (store, gateway)
}

/// Stalls `store`, and lets it go after a while if the test has not: only so that a
/// failing test ends rather than hangs.
fn stall_with_watchdog(store: &Arc<Stalling>) {
    store.set(true, false);
    let watchdog = store.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        watchdog.set(false, true);
    });
}

// A runtime of one thread: a call to the store made on it would hold every task.
#[tokio::test(flavor = "current_thread")]
async fn the_background_rounds_wait_for_a_stalled_store_off_the_async_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (store, gateway) = stalling_gateway(dir.path());
    stall_with_watchdog(&store);
    tokio::spawn(gateway.clone().reopen_unavailable());
    let s = store.clone();
    // On a thread of its own; this task resumes only once the runtime's thread is free.
    tokio::task::spawn_blocking(move || s.wait_for_a_call()).await.unwrap();
    assert!(!store.let_go_by_watchdog(), "the runtime's thread waited in the stalled store");

    // Let go, the rounds go on: a volume another gateway stored is found.
    store.inner.put("volume/elsewhere", b"sealed elsewhere").unwrap();
    store.set(false, false);
    for _ in 0..100 {
        if gateway.unopened.read().unwrap().contains_key("elsewhere") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the volume stored by another gateway was never found");
}

// Listing volumes (every API call and console page that shows them) runs on an async worker.
#[tokio::test]
async fn listing_volumes_never_waits_for_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, gateway) = stalling_gateway(dir.path());
    let u = Unopened { sb: None, reason: "served by gateway g2".into(), primary: Some("g2".into()) };
    gateway.unopened.write().unwrap().insert("v".into(), u);
    stall_with_watchdog(&store);
    let views = gateway.views();
    assert!(!store.let_go_by_watchdog(), "listing the volumes waited in the stalled store");
    assert_eq!(views.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["v"]);
    assert_eq!(views[0].primary.as_deref(), Some("g2"));
    store.set(false, false);
}
