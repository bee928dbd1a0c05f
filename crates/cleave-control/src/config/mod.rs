//! The configuration database behind one small trait, [`ConfigStore`], in the spirit of
//! `object_store`: keys are strings, values opaque bytes (callers keep JSON or sealed blobs).
//!
//! - [`RedbStore`]: embedded, one file, one process; the default of `cleave serve`.
//! - [`EtcdStore`]: etcd v3, shared by several gateways (the virtual appliance of HA).
//! - `testing` (feature `testing`): the conformance suite both pass, and real etcd processes.
//!
//! Keys in use: `access` (clients, groups, grants), `users`, `group-keys` (wrapped by the master
//! key), `volume/NAME` (the sealed superblock of each volume) and `task/ID` (the task history).
//!
//! Every write gets a [`Version`] from one counter for the whole store, rising with each write
//! (etcd's revision; redb keeps its own). Conditional writes compare it; watches report it, so a
//! reader can watch a prefix, then scan it, and skip the changes it already saw. The methods are
//! synchronous and may be called from inside a tokio runtime: docs/config-store.md says why.

mod etcd;
mod redb;
#[cfg(feature = "testing")]
pub mod testing;

pub use self::etcd::{EtcdOptions, EtcdStore, EtcdTls};
pub use self::redb::RedbStore;

/// What callers of the configuration database need, whatever holds it.
pub trait ConfigStore: Send + Sync + std::fmt::Debug {
    /// The current value of `key` and its version.
    fn get(&self, key: &str) -> Result<Option<Entry>, ConfigError>;

    /// Stores `value` under `key` as `mode` allows; durable when this returns. A lost
    /// condition is [`ConfigError::AlreadyExists`] or [`ConfigError::Precondition`].
    fn put_opts(&self, key: &str, value: &[u8], mode: PutMode) -> Result<Version, ConfigError>;

    /// Removes `key`; whether it was there.
    fn delete(&self, key: &str) -> Result<bool, ConfigError>;

    /// Removes `key` only while it is at `version`; otherwise [`ConfigError::Precondition`].
    fn delete_if(&self, key: &str, version: Version) -> Result<(), ConfigError>;

    /// Stores `value` under `key` only while `guard` is as it was read: the key an ownership
    /// hangs on (a volume's owner key, under its gateway's lease) at the version of the claim.
    /// A writer that lost the ownership writes nothing: [`ConfigError::Precondition`] naming
    /// the guard's key.
    fn put_guarded(&self, key: &str, value: &[u8], guard: &Guard) -> Result<Version, ConfigError>;

    /// Removes `key` only while `guard` is as it was read (see [`ConfigStore::put_guarded`]).
    fn delete_guarded(&self, key: &str, guard: &Guard) -> Result<(), ConfigError>;

    /// Every key starting with `prefix`, in key (byte) order.
    fn scan(&self, prefix: &str) -> Result<Vec<Entry>, ConfigError>;

    /// The changes to keys starting with `prefix` made after this returns, by any client of
    /// the store, in order. The stream ends (`None`) or yields an error when the store cannot
    /// follow any more (connection lost, reader too slow): watch again, then scan again.
    fn watch(&self, prefix: &str) -> Result<Watch, ConfigError>;

    /// Stores `value` under `key` whatever was there.
    fn put(&self, key: &str, value: &[u8]) -> Result<Version, ConfigError> {
        self.put_opts(key, value, PutMode::Overwrite)
    }

    /// The current value of `key`, without its version.
    fn get_value(&self, key: &str) -> Result<Option<Vec<u8>>, ConfigError> {
        Ok(self.get(key)?.map(|e| e.value))
    }

    /// A lease of `ttl`: keys created under it vanish when it is not renewed in time (etcd's
    /// leases). None when one process holds the whole store (redb): nothing can outlive it.
    fn grant_lease(&self, _ttl: std::time::Duration) -> Result<Option<Lease>, ConfigError> {
        Ok(None)
    }

    /// Renews `lease`; [`ConfigError::LeaseExpired`] once it has expired (its keys are gone).
    fn renew_lease(&self, _lease: Lease) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Ends `lease` now, and with it its keys.
    fn revoke_lease(&self, _lease: Lease) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Creates `key` (only if absent, as [`PutMode::Create`]), tied to `lease` when given.
    fn create_leased(&self, key: &str, value: &[u8], lease: Option<Lease>) -> Result<Version, ConfigError> {
        let _ = lease;
        self.put_opts(key, value, PutMode::Create)
    }
}

/// A key at the version a writer read it: what a guarded write depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub key: String,
    pub version: Version,
}

/// An etcd lease, by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease(pub i64);

/// One key with its value, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    /// The store's version at this key's last write.
    pub version: Version,
}

/// A point in the store's history: higher is later. Compare only versions of one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u64);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// When a put may happen (as `object_store::PutMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Whatever is there.
    Overwrite,
    /// Only if the key is absent.
    Create,
    /// Only if the key is present at this version: nobody wrote it since the caller read it.
    Update(Version),
}

/// One change seen by a [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    /// The new value; `None` when the key was deleted.
    pub value: Option<Vec<u8>>,
    /// The store's version at this change.
    pub version: Version,
}

/// The changes under a prefix, as they happen. Dropping it stops the watch.
#[derive(Debug)]
pub struct Watch {
    rx: tokio::sync::mpsc::Receiver<Result<Change, ConfigError>>,
}

/// Changes a watch holds before a slow reader loses it (redb) or etcd waits for the reader.
const WATCH_BUFFER: usize = 1024;

impl Watch {
    fn channel() -> (tokio::sync::mpsc::Sender<Result<Change, ConfigError>>, Watch) {
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        (tx, Watch { rx })
    }

    /// The next change; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<Change, ConfigError>> {
        self.rx.recv().await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration database {path}: {source}")]
    Open { path: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("configuration database: {0}")]
    Db(Box<::redb::Error>),
    #[error("configuration database at etcd {endpoints}: {source}")]
    Etcd { endpoints: String, source: Box<etcd_client::Error> },
    #[error("configuration database at etcd {endpoints}: cannot {op}: {reason} (is etcd up and reachable?)")]
    Unavailable { endpoints: String, op: &'static str, reason: String },
    #[error("configuration database at etcd {endpoints}: {reason}")]
    Protocol { endpoints: String, reason: String },
    #[error("configuration key {key:?} already exists")]
    AlreadyExists { key: String },
    #[error("configuration key {key:?} changed since it was read (or is gone)")]
    Precondition { key: String },
    #[error("configuration database lease {0:x} has expired")]
    LeaseExpired(i64),
    #[error("configuration key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("configuration database: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// Whether this is a lost condition (create of an existing key, or a stale version).
    pub fn is_conflict(&self) -> bool {
        matches!(self, ConfigError::AlreadyExists { .. } | ConfigError::Precondition { .. })
    }
}

/// Keys are non-empty: etcd has no empty key.
fn check_key(key: &str) -> Result<(), ConfigError> {
    if key.is_empty() {
        return Err(ConfigError::InvalidKey { key: key.to_string(), reason: "keys are not empty" });
    }
    Ok(())
}
