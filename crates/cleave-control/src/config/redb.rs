//! The embedded backend: redb, in one file (`DIR/config.redb`, mode 0600), one process at a
//! time. Watches see the changes made through this handle, which is every change: no other
//! process can open the file meanwhile.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use tokio::sync::mpsc::Sender;

use super::{check_key, Change, ConfigError, ConfigStore, Entry, Guard, PutMode, Version, Watch};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("config");
/// The version of each key's last write; a key in `config` has one here.
const VERSIONS: TableDefinition<&str, u64> = TableDefinition::new("versions");
/// `revision`: the store's version, raised by each write.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for ConfigError {
            fn from(e: $t) -> Self {
                ConfigError::Db(Box::new(e.into()))
            }
        }
    )*};
}
db_err!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

type Watcher = (String, Sender<Result<Change, ConfigError>>);

pub struct RedbStore {
    db: Database,
    watchers: Mutex<Vec<Watcher>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbStore")
    }
}

impl RedbStore {
    /// Opens the database, creating it (readable by its owner only) on first use. One process
    /// at a time: a second open of the same file fails with a clear error.
    pub fn open(path: &Path) -> Result<Self, ConfigError> {
        let open_err = |e: Box<dyn std::error::Error + Send + Sync>| ConfigError::Open {
            path: path.display().to_string(),
            source: e,
        };
        // Created empty with mode 0600 first: redb initialises an empty file in place.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| open_err(e.into()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| open_err(e.into()))?;
        let db = Database::create(path).map_err(|e| open_err(e.into()))?;
        let tx = db.begin_write()?;
        version_older_keys(&tx)?;
        tx.commit()?;
        Ok(RedbStore { db, watchers: Mutex::new(Vec::new()) })
    }

    /// Runs one write transaction: `f` changes `config` under the next version and says what
    /// changed; watchers hear of it once it is committed.
    fn write<R>(
        &self,
        key: &str,
        f: impl FnOnce(&WriteTransaction, Version) -> Result<(R, Option<Change>), ConfigError>,
    ) -> Result<R, ConfigError> {
        check_key(key)?;
        let tx = self.db.begin_write()?;
        let version = Version(current_revision(&tx)? + 1);
        let (out, change) = f(&tx, version)?;
        if change.is_some() {
            tx.open_table(META)?.insert("revision", version.0)?;
        }
        tx.commit()?;
        if let Some(change) = change {
            self.notify(change);
        }
        Ok(out)
    }

    /// Hands a change to every watcher of its key; a watcher too slow to keep up, or gone, is
    /// dropped (its stream ends, and its reader scans again).
    fn notify(&self, change: Change) {
        let mut watchers = self.watchers.lock().expect("not poisoned");
        watchers.retain(|(prefix, tx)| {
            !tx.is_closed() && (!change.key.starts_with(prefix.as_str()) || tx.try_send(Ok(change.clone())).is_ok())
        });
    }
}

fn current_revision(tx: &WriteTransaction) -> Result<u64, ConfigError> {
    Ok(tx.open_table(META)?.get("revision")?.map_or(0, |v| v.value()))
}

/// Gives every key without a version (files from before versions) one, and creates the tables.
fn version_older_keys(tx: &WriteTransaction) -> Result<(), ConfigError> {
    let table = tx.open_table(TABLE)?;
    let mut versions = tx.open_table(VERSIONS)?;
    if table.len()? == versions.len()? {
        return Ok(());
    }
    let revision = current_revision(tx)? + 1;
    for entry in table.iter()? {
        let (k, _) = entry?;
        if versions.get(k.value())?.is_none() {
            versions.insert(k.value(), revision)?;
        }
    }
    tx.open_table(META)?.insert("revision", revision)?;
    Ok(())
}

impl ConfigStore for RedbStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, ConfigError> {
        check_key(key)?;
        let tx = self.db.begin_read()?;
        let (table, versions) = (tx.open_table(TABLE)?, tx.open_table(VERSIONS)?);
        let Some(value) = table.get(key)? else { return Ok(None) };
        let version = Version(versions.get(key)?.map_or(0, |v| v.value()));
        Ok(Some(Entry { key: key.to_string(), value: value.value().to_vec(), version }))
    }

    fn put_opts(&self, key: &str, value: &[u8], mode: PutMode) -> Result<Version, ConfigError> {
        self.write(key, |tx, version| {
            let mut versions = tx.open_table(VERSIONS)?;
            let now = versions.get(key)?.map(|v| Version(v.value()));
            match (mode, now) {
                (PutMode::Create, Some(_)) => return Err(ConfigError::AlreadyExists { key: key.to_string() }),
                (PutMode::Update(want), now) if now != Some(want) => {
                    return Err(ConfigError::Precondition { key: key.to_string() })
                }
                _ => {}
            }
            tx.open_table(TABLE)?.insert(key, value)?;
            versions.insert(key, version.0)?;
            Ok((version, Some(Change { key: key.to_string(), value: Some(value.to_vec()), version })))
        })
    }

    fn delete(&self, key: &str) -> Result<bool, ConfigError> {
        self.write(key, |tx, version| {
            tx.open_table(VERSIONS)?.remove(key)?;
            let existed = tx.open_table(TABLE)?.remove(key)?.is_some();
            Ok((existed, existed.then(|| Change { key: key.to_string(), value: None, version })))
        })
    }

    fn delete_if(&self, key: &str, want: Version) -> Result<(), ConfigError> {
        self.write(key, |tx, version| {
            let mut versions = tx.open_table(VERSIONS)?;
            if versions.get(key)?.map(|v| v.value()) != Some(want.0) {
                return Err(ConfigError::Precondition { key: key.to_string() });
            }
            versions.remove(key)?;
            tx.open_table(TABLE)?.remove(key)?;
            Ok(((), Some(Change { key: key.to_string(), value: None, version })))
        })
    }

    fn put_guarded(&self, key: &str, value: &[u8], guard: &Guard) -> Result<Version, ConfigError> {
        self.write(key, |tx, version| {
            let mut versions = tx.open_table(VERSIONS)?;
            if versions.get(guard.key.as_str())?.map(|v| v.value()) != Some(guard.version.0) {
                return Err(ConfigError::Precondition { key: guard.key.clone() });
            }
            tx.open_table(TABLE)?.insert(key, value)?;
            versions.insert(key, version.0)?;
            Ok((version, Some(Change { key: key.to_string(), value: Some(value.to_vec()), version })))
        })
    }

    fn delete_guarded(&self, key: &str, guard: &Guard) -> Result<(), ConfigError> {
        self.write(key, |tx, version| {
            let mut versions = tx.open_table(VERSIONS)?;
            if versions.get(guard.key.as_str())?.map(|v| v.value()) != Some(guard.version.0) {
                return Err(ConfigError::Precondition { key: guard.key.clone() });
            }
            versions.remove(key)?;
            let existed = tx.open_table(TABLE)?.remove(key)?.is_some();
            Ok(((), existed.then(|| Change { key: key.to_string(), value: None, version })))
        })
    }

    fn scan(&self, prefix: &str) -> Result<Vec<Entry>, ConfigError> {
        let tx = self.db.begin_read()?;
        let (table, versions) = (tx.open_table(TABLE)?, tx.open_table(VERSIONS)?);
        let mut out = Vec::new();
        for entry in table.range(prefix..)? {
            let (k, v) = entry?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            let version = Version(versions.get(key)?.map_or(0, |v| v.value()));
            out.push(Entry { key: key.to_string(), value: v.value().to_vec(), version });
        }
        Ok(out)
    }

    fn watch(&self, prefix: &str) -> Result<Watch, ConfigError> {
        let (tx, watch) = Watch::channel();
        self.watchers.lock().expect("not poisoned").push((prefix.to_string(), tx));
        Ok(watch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_and_the_file_is_private_and_held_by_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.redb");
        let v = {
            let db = RedbStore::open(&path).unwrap();
            db.put("volume/a", b"1").unwrap();
            // One process at a time.
            assert!(RedbStore::open(&path).is_err());
            db.put("users", b"{}").unwrap()
        };
        let db = RedbStore::open(&path).unwrap();
        assert_eq!(db.get_value("volume/a").unwrap().as_deref(), Some(&b"1"[..]));
        // Versions go on rising across opens.
        assert_eq!(db.get("users").unwrap().unwrap().version, v);
        assert!(db.put("users", b"[]").unwrap() > v);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn files_from_before_versions_get_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.redb");
        {
            // What the previous version of this module wrote: one table, no versions.
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(TABLE).unwrap().insert("users", &b"{}"[..]).unwrap();
            tx.commit().unwrap();
        }
        let db = RedbStore::open(&path).unwrap();
        let e = db.get("users").unwrap().unwrap();
        assert!(e.version > Version(0));
        assert!(db.put_opts("users", b"[]", PutMode::Update(e.version)).is_ok());
    }
}
