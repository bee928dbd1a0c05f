//! The configuration database: an embedded, transactional key-value store (redb) in one file,
//! `DIR/config.redb`, mode 0600. Values are opaque bytes; callers keep JSON or sealed blobs.
//!
//! Keys in use: `access` (clients, groups, grants), `users`, `group-keys` (wrapped by the master
//! key) and `volume/NAME` (the sealed superblock of each volume).

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use redb::{Database, TableDefinition};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("config");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration database {path}: {source}")]
    Open { path: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("configuration database: {0}")]
    Db(Box<redb::Error>),
}

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

pub struct ConfigDb {
    db: Database,
}

impl std::fmt::Debug for ConfigDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigDb")
    }
}

impl ConfigDb {
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
        tx.open_table(TABLE)?;
        tx.commit()?;
        Ok(ConfigDb { db })
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ConfigError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TABLE)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Stores a value; durable when this returns.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<(), ConfigError> {
        let tx = self.db.begin_write()?;
        tx.open_table(TABLE)?.insert(key, value)?;
        tx.commit()?;
        Ok(())
    }

    /// Removes a key; whether it was there.
    pub fn delete(&self, key: &str) -> Result<bool, ConfigError> {
        let tx = self.db.begin_write()?;
        let existed = tx.open_table(TABLE)?.remove(key)?.is_some();
        tx.commit()?;
        Ok(existed)
    }

    /// Every key starting with `prefix`, in key order, with its value.
    pub fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, ConfigError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TABLE)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..)? {
            let (k, v) = entry?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_scan_by_prefix_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.redb");
        {
            let db = ConfigDb::open(&path).unwrap();
            db.put("volume/b", b"2").unwrap();
            db.put("volume/a", b"1").unwrap();
            db.put("volumes", b"not a volume").unwrap();
            db.put("users", b"{}").unwrap();
            assert!(db.delete("users").unwrap());
            assert!(!db.delete("users").unwrap());
            // One process at a time.
            assert!(ConfigDb::open(&path).is_err());
        }
        let db = ConfigDb::open(&path).unwrap();
        assert_eq!(db.get("volume/a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(db.get("users").unwrap(), None);
        let keys: Vec<String> = db.scan("volume/").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["volume/a", "volume/b"]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
