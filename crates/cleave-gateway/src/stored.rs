//! One record of the configuration database kept in memory ([`Stored`]): read from the
//! current value, changed by storing a changed copy first and making it current only once it
//! is stored.
//!
//! Several gateways may share the record (an appliance on etcd):
//! - a change is stored only if nobody stored another since this copy was read; otherwise the
//!   newer value is read and the change applied to it again, so no gateway's change is lost;
//! - [`Stored::follow`] keeps the copy current with the changes other gateways make.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use cleave_control::config::{ConfigStore, PutMode, Version};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::warn;

use crate::data_dir::DataDir;

/// Tries of a change that keeps meeting another gateway's newer one.
const TRIES: usize = 20;

pub struct Stored<T> {
    value: Arc<RwLock<T>>,
    /// The store's version of the value held; changed only under the value's write lock.
    version: Arc<AtomicU64>,
    db: Arc<dyn ConfigStore>,
    key: &'static str,
}

fn parse<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).with_context(|| format!("reading {key} from the configuration database"))
}

/// Makes the stored `bytes` at `version` the value held, under its write lock.
fn install<T: DeserializeOwned>(held: &mut T, at: &AtomicU64, key: &str, bytes: &[u8], version: Version) -> Result<()> {
    *held = parse(key, bytes)?;
    at.store(version.0, Ordering::Release);
    Ok(())
}

impl<T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static> Stored<T> {
    /// Loads the record `key`; on first run, stores what `first` makes.
    pub fn load(data: &DataDir, key: &'static str, first: impl FnOnce() -> Result<T>) -> Result<Self> {
        let db = data.config.clone();
        let (value, version) = match db.get(key)? {
            Some(e) => (parse(key, &e.value)?, e.version),
            None => {
                let v = first()?;
                match db.put_opts(key, &serde_json::to_vec(&v)?, PutMode::Create) {
                    Ok(version) => (v, version),
                    // Another gateway made it first: theirs it is.
                    Err(e) if e.is_conflict() => {
                        let e =
                            db.get(key)?.with_context(|| format!("{key} vanished from the configuration database"))?;
                        (parse(key, &e.value)?, e.version)
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let (value, version) = (Arc::new(RwLock::new(value)), Arc::new(AtomicU64::new(version.0)));
        Ok(Stored { value, version, db, key })
    }

    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.value.read().expect("not poisoned")
    }

    pub fn snapshot(&self) -> T {
        self.read().clone()
    }

    /// The store's version of the value held: it changes with every change, here or elsewhere.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Applies a change to a copy, stores it, then makes it current. On error nothing changes.
    /// If another gateway stored a newer value meanwhile, `f` runs again on that one.
    pub fn update<R>(&self, mut f: impl FnMut(&mut T) -> Result<R>) -> Result<R> {
        let mut guard = self.value.write().expect("not poisoned");
        for _ in 0..TRIES {
            let mut next = guard.clone();
            let out = f(&mut next)?;
            let held = Version(self.version.load(Ordering::Acquire));
            match self.db.put_opts(self.key, &serde_json::to_vec(&next)?, PutMode::Update(held)) {
                Ok(version) => {
                    *guard = next;
                    self.version.store(version.0, Ordering::Release);
                    return Ok(out);
                }
                Err(e) if e.is_conflict() => {
                    let e = self.db.get(self.key)?.with_context(|| format!("{} vanished", self.key))?;
                    install(&mut *guard, &self.version, self.key, &e.value, e.version)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("{} keeps changing on other gateways; try again", self.key)
    }

    /// Follows the changes other gateways store, from now on, in the background.
    pub fn follow(&self) {
        self.follow_with(|_| {});
    }

    /// [`Stored::follow`], calling `changed` with each newer value once it is installed.
    pub fn follow_with(&self, changed: impl Fn(&T) + Send + Sync + 'static) {
        let follower = Follower {
            value: self.value.clone(),
            version: self.version.clone(),
            db: self.db.clone(),
            key: self.key,
            changed: Box::new(changed),
        };
        tokio::spawn(follower.run());
    }
}

struct Follower<T> {
    value: Arc<RwLock<T>>,
    version: Arc<AtomicU64>,
    db: Arc<dyn ConfigStore>,
    key: &'static str,
    changed: Box<dyn Fn(&T) + Send + Sync>,
}

/// Hands `apply` every key under `prefix` as it is, then every change made to one by any
/// client of the store, from now on: watch, then scan (what changed before the watch began),
/// then what the watch tells; when the watch ends, again after a pause. A deleted key comes
/// without a value. A change may come twice: `apply` keeps the newest version.
pub(crate) async fn follow_prefix(
    db: Arc<dyn ConfigStore>,
    prefix: &'static str,
    apply: impl Fn(&str, Option<&[u8]>, Version),
) {
    loop {
        if let Ok(mut watch) = db.watch(prefix) {
            let store = db.clone();
            if let Ok(Ok(entries)) = tokio::task::spawn_blocking(move || store.scan(prefix)).await {
                entries.iter().for_each(|e| apply(&e.key, Some(&e.value), e.version));
            }
            while let Some(Ok(change)) = watch.next().await {
                apply(&change.key, change.value.as_deref(), change.version);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> Follower<T> {
    async fn run(self) {
        let (db, key) = (self.db.clone(), self.key);
        follow_prefix(db, key, |changed, value, version| {
            if let (true, Some(value)) = (changed == key, value) {
                self.apply(value, version);
            }
        })
        .await
    }

    fn apply(&self, bytes: &[u8], version: Version) {
        let mut guard = self.value.write().expect("not poisoned");
        if version.0 <= self.version.load(Ordering::Acquire) {
            return;
        }
        match install(&mut *guard, &self.version, self.key, bytes, version) {
            Ok(()) => (self.changed)(&guard),
            Err(e) => warn!(key = self.key, error = %format!("{e:#}"), "ignoring a stored value that does not parse"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cleave_control::config::RedbStore;

    /// Two gateways' copies of one record: neither change is lost, and a follower sees the
    /// other's change.
    #[tokio::test]
    async fn changes_from_two_copies_are_all_kept_and_followed() {
        let dir = tempfile::tempdir().unwrap();
        let db: Arc<dyn ConfigStore> = Arc::new(RedbStore::open(&dir.path().join("config.redb")).unwrap());
        let a_dir = DataDir::with_config(dir.path().join("a"), db.clone()).unwrap();
        let b_dir = DataDir::with_config(dir.path().join("b"), db.clone()).unwrap();
        let a: Stored<Vec<u32>> = Stored::load(&a_dir, "list", || Ok(vec![1])).unwrap();
        let b: Stored<Vec<u32>> = Stored::load(&b_dir, "list", || Ok(vec![99])).unwrap();
        assert_eq!(b.snapshot(), [1], "the first one stored wins");
        b.follow();
        a.update(|l| {
            l.push(2);
            Ok(())
        })
        .unwrap();
        // b's copy is older than the store: its change is applied to a's value.
        let mut runs = 0;
        b.update(|l| {
            runs += 1;
            l.push(3);
            Ok(())
        })
        .unwrap();
        assert!(runs <= 2);
        assert_eq!(b.snapshot(), [1, 2, 3]);
        let stored: Vec<u32> = serde_json::from_slice(&db.get_value("list").unwrap().unwrap()).unwrap();
        assert_eq!(stored, [1, 2, 3]);
        a.follow();
        let start = std::time::Instant::now();
        while a.snapshot() != [1, 2, 3] {
            assert!(start.elapsed() < Duration::from_secs(2), "a never saw b's change");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(a.version(), b.version());
    }
}
