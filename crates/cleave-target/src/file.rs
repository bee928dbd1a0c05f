//! A directory as a target. A put writes a temporary file, fsyncs it, publishes it
//! with `link` (which, unlike `rename`, fails if the name exists: create-only and
//! atomic), then fsyncs the directory.
//!
//! Keys are paths below the root, so a key cannot also be a "directory" of other keys
//! here (`a` and `a/b` cannot both exist); Cleave's key layout never needs that.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::check_key;
use crate::{Target, TargetError, TargetUri};

/// Temporary files start with this; `list` skips every name starting with '.', which keys cannot.
const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug)]
pub struct FileTarget {
    root: PathBuf,
    name: String,
}

/// Maps an I/O error on `key` to the error callers can act on (a full disk is not a bug).
pub(crate) fn io(target: &str, key: &str, e: std::io::Error) -> TargetError {
    match e.kind() {
        ErrorKind::NotFound => TargetError::NotFound(format!("{target}/{key}")),
        ErrorKind::AlreadyExists => TargetError::AlreadyExists(format!("{target}/{key}")),
        // 122 is Linux's EDQUOT; ErrorKind::QuotaExceeded is newer than our MSRV.
        _ if e.kind() == ErrorKind::StorageFull || e.raw_os_error() == Some(122) => {
            TargetError::Full(format!("{target}/{key}: {e}"))
        }
        ErrorKind::ReadOnlyFilesystem => TargetError::Unavailable(format!("{target}/{key}: {e}")),
        _ => TargetError::Io(format!("{target}/{key}: {e}")),
    }
}

/// Like [`io`], for reads and deletes: a key whose path runs into a file, or names a
/// directory, is simply not an object. But when the root itself is gone (unmounted, or
/// replaced by a file) every key would read as "not found": that is a target that is
/// down, not an empty one, and the volume must see it as such.
fn io_read(target: &str, root: &Path, key: &str, e: std::io::Error) -> TargetError {
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::IsADirectory if !root.is_dir() => {
            TargetError::Unavailable(format!("{target}: the target directory is missing"))
        }
        ErrorKind::NotADirectory | ErrorKind::IsADirectory => TargetError::NotFound(format!("{target}/{key}")),
        _ => io(target, key, e),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FileTarget {
    /// An existing target: its root is never created here, so a root that is gone
    /// (unmounted, moved away) reads as a target that is down, never as an empty one.
    pub fn open(root: PathBuf) -> Self {
        let name = TargetUri::file(&root).to_string();
        FileTarget { root, name }
    }

    /// A new target: creates `root` if needed, so a fresh target works without a setup step.
    pub fn new(root: PathBuf) -> Result<Self, TargetError> {
        let name = TargetUri::file(&root).to_string();
        std::fs::create_dir_all(&root)
            .map_err(|e| TargetError::Io(format!("{name}: cannot create the target directory: {e}")))?;
        if !root.is_dir() {
            return Err(TargetError::Io(format!("{name}: not a directory")));
        }
        Ok(FileTarget { root, name })
    }

    fn path(&self, key: &str) -> Result<PathBuf, TargetError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, TargetError> + Send + 'static,
    ) -> Result<T, TargetError> {
        tokio::task::spawn_blocking(f).await.map_err(|e| TargetError::Io(format!("{}: {e}", self.name)))?
    }
}

/// Creates the directories down to `dir`, fsyncing each new one's parent so the entry survives a crash.
fn create_dirs(root: &Path, dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| match e.kind() {
        // create_dir_all reports a file in the way as "exists", which would read as a key clash.
        ErrorKind::AlreadyExists | ErrorKind::NotADirectory => {
            std::io::Error::other(format!("{}: a parent of the key is a file, not a directory", dir.display()))
        }
        _ => e,
    })?;
    let mut d = dir;
    while d != root {
        let Some(parent) = d.parent() else { break };
        sync_dir(parent)?;
        d = parent;
    }
    Ok(())
}

fn put_sync(name: &str, root: &Path, path: &Path, key: &str, data: &[u8]) -> Result<(), TargetError> {
    let err = |e| io(name, key, e);
    if !root.is_dir() {
        return Err(TargetError::Unavailable(format!("{name}: the target directory is missing")));
    }
    let dir = path.parent().unwrap_or(root);
    create_dirs(root, dir).map_err(err)?;
    let tmp = dir.join(format!("{TMP_PREFIX}{:016x}", fastrand::u64(..)));
    let published = (|| {
        let mut f = File::create_new(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    published.map_err(err)?;
    // Until the directory is synced the new name may not survive a crash; on failure take it
    // back, so an error always means "not stored".
    if let Err(e) = sync_dir(dir) {
        let _ = std::fs::remove_file(path);
        return Err(err(e));
    }
    Ok(())
}

fn get_range_sync(path: &Path, range: Range<u64>) -> std::io::Result<Bytes> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let start = range.start.min(len);
    let end = range.end.clamp(start, len);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((end - start) as usize);
    f.take(end - start).read_to_end(&mut buf)?;
    if (buf.len() as u64) < end - start {
        return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "object shrank while reading"));
    }
    Ok(Bytes::from(buf))
}

fn list_sync(root: &Path, prefix: &str) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    // A missing root is a target that is down, not an empty one.
    if !root.is_dir() {
        return Err(std::io::Error::new(ErrorKind::NotFound, "the target directory is missing"));
    }
    // Start from the deepest directory the prefix names, so listing one volume stays cheap.
    // A directory part that is not a valid key matches nothing (and must not be joined to
    // the root: "../" or "/etc" would walk outside it).
    let base = match prefix.rfind('/') {
        Some(i) if check_key(&prefix[..i]).is_err() => return Ok(out),
        Some(i) => root.join(&prefix[..i]),
        None => root.to_path_buf(),
    };
    let mut stack = vec![base];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            // Skips temporaries, health probes and anything else no key can name.
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() {
                let Ok(rel) = path.strip_prefix(root) else { continue };
                let Some(key) = rel.to_str() else { continue };
                if key.starts_with(prefix) {
                    out.push(key.to_string());
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

#[async_trait::async_trait]
impl Target for FileTarget {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), TargetError> {
        let path = self.path(key)?;
        let (name, root, key) = (self.name.clone(), self.root.clone(), key.to_string());
        self.blocking(move || put_sync(&name, &root, &path, &key, &data)).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, TargetError> {
        let path = self.path(key)?;
        let (name, root, key) = (self.name.clone(), self.root.clone(), key.to_string());
        self.blocking(move || std::fs::read(&path).map(Bytes::from).map_err(|e| io_read(&name, &root, &key, e))).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, TargetError> {
        let path = self.path(key)?;
        let (name, root, key) = (self.name.clone(), self.root.clone(), key.to_string());
        self.blocking(move || get_range_sync(&path, range).map_err(|e| io_read(&name, &root, &key, e))).await
    }

    async fn delete(&self, key: &str) -> Result<(), TargetError> {
        let path = self.path(key)?;
        let (name, root, key) = (self.name.clone(), self.root.clone(), key.to_string());
        self.blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) => match io_read(&name, &root, &key, e) {
                TargetError::NotFound(_) => Ok(()),
                e => Err(e),
            },
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, TargetError> {
        let (name, root, prefix) = (self.name.clone(), self.root.clone(), prefix.to_string());
        self.blocking(move || {
            list_sync(&root, &prefix).map_err(|e| TargetError::Io(format!("{name}: listing {prefix:?}: {e}")))
        })
        .await
    }

    async fn health(&self) -> Result<(), TargetError> {
        let (name, root) = (self.name.clone(), self.root.clone());
        self.blocking(move || {
            if !root.is_dir() {
                return Err(TargetError::Unavailable(format!("{name}: the target directory is missing")));
            }
            let probe = root.join(format!("{TMP_PREFIX}health-{:016x}", fastrand::u64(..)));
            let r = std::fs::write(&probe, b"ok");
            let _ = std::fs::remove_file(&probe);
            r.map_err(|e| match io(&name, "", e) {
                TargetError::Full(m) => TargetError::Full(m),
                e => TargetError::Unavailable(format!("{name}: not writable: {e}")),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_and_quota_map_to_full() {
        for errno in [28 /* ENOSPC */, 122 /* EDQUOT */] {
            let e = io("file:///t", "k", std::io::Error::from_raw_os_error(errno));
            assert!(matches!(&e, TargetError::Full(m) if m.starts_with("file:///t/k")), "{e}");
        }
        let e = io("file:///t", "k", std::io::Error::from_raw_os_error(5 /* EIO */));
        assert!(matches!(e, TargetError::Io(_)), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = io_read("file:///t", dir.path(), "k", std::io::Error::from_raw_os_error(20 /* ENOTDIR */));
        assert!(e.is_not_found(), "{e}");
        // The root itself gone (or replaced by a file): the target is down, not empty.
        let gone = dir.path().join("gone");
        for errno in [2 /* ENOENT */, 20 /* ENOTDIR */] {
            let e = io_read("file:///t", &gone, "k", std::io::Error::from_raw_os_error(errno));
            assert!(matches!(e, TargetError::Unavailable(_)), "{e}");
        }
        std::fs::write(&gone, b"file").unwrap();
        assert!(list_sync(&gone, "").is_err());
    }

    #[test]
    fn failed_publish_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // The final name is taken (by a directory), so the link fails after the data was written.
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let e = put_sync("t", dir.path(), &dir.path().join("a/b"), "a/b", b"data").unwrap_err();
        assert!(e.is_already_exists(), "{e}");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn list_prefix_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(dir.path().join("outside"), b"x").unwrap();
        for prefix in ["../", "../o", "/", "/etc/", "a/../../"] {
            assert!(list_sync(&root, prefix).unwrap().is_empty(), "{prefix:?}");
        }
    }
}
