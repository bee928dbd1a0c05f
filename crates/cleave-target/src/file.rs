//! A directory as a target. A put writes a temporary file, fsyncs it, publishes it
//! with `link` (which, unlike `rename`, fails if the name exists: create-only and
//! atomic), then fsyncs the directory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::check_key;
use crate::{Target, TargetError};

#[derive(Debug)]
pub struct FileTarget {
    root: PathBuf,
    name: String,
}

fn io(target: &str, key: &str, e: std::io::Error) -> TargetError {
    match e.kind() {
        std::io::ErrorKind::NotFound => TargetError::NotFound(format!("{target}/{key}")),
        std::io::ErrorKind::AlreadyExists => TargetError::AlreadyExists(format!("{target}/{key}")),
        _ if e.raw_os_error() == Some(28) || e.raw_os_error() == Some(122) => {
            TargetError::Full(format!("{target}/{key}: {e}"))
        }
        _ => TargetError::Io(format!("{target}/{key}: {e}")),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FileTarget {
    pub fn new(root: PathBuf) -> Result<Self, TargetError> {
        let name = format!("file://{}", root.display());
        std::fs::create_dir_all(&root).map_err(|e| io(&name, "", e))?;
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

fn put_sync(name: &str, root: &Path, path: &Path, key: &str, data: &[u8]) -> Result<(), TargetError> {
    let err = |e| io(name, key, e);
    let dir = path.parent().expect("keys are below the root");
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(err)?;
        // Make the new directories themselves durable, up to the root.
        let mut d = dir;
        while d != root {
            let parent = d.parent().expect("below root");
            sync_dir(parent).map_err(err)?;
            d = parent;
        }
    }
    let tmp = dir.join(format!(".tmp-{:016x}", fastrand::u64(..)));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(err)?;
    sync_dir(dir).map_err(err)
}

fn list_sync(root: &Path, prefix: &str) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    // Start from the deepest directory the prefix names, so listing one volume stays cheap.
    let base = match prefix.rfind('/') {
        Some(i) => root.join(&prefix[..i]),
        None => root.to_path_buf(),
    };
    let mut stack = vec![base];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(root) {
                let key = rel.to_string_lossy().to_string();
                if key.starts_with(prefix) {
                    out.push(key);
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
        let (name, key) = (self.name.clone(), key.to_string());
        self.blocking(move || std::fs::read(&path).map(Bytes::from).map_err(|e| io(&name, &key, e))).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, TargetError> {
        let path = self.path(key)?;
        let (name, key) = (self.name.clone(), key.to_string());
        self.blocking(move || {
            let err = |e| io(&name, &key, e);
            let mut f = File::open(&path).map_err(err)?;
            let len = f.metadata().map_err(err)?.len();
            let (start, end) = (range.start.min(len), range.end.min(len).max(range.start.min(len)));
            f.seek(SeekFrom::Start(start)).map_err(err)?;
            let mut buf = vec![0u8; (end - start) as usize];
            f.read_exact(&mut buf).map_err(err)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), TargetError> {
        let path = self.path(key)?;
        let (name, key) = (self.name.clone(), key.to_string());
        self.blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&name, &key, e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, TargetError> {
        let (name, root, prefix) = (self.name.clone(), self.root.clone(), prefix.to_string());
        self.blocking(move || list_sync(&root, &prefix).map_err(|e| io(&name, &prefix, e))).await
    }

    async fn health(&self) -> Result<(), TargetError> {
        let (name, root) = (self.name.clone(), self.root.clone());
        self.blocking(move || {
            let probe = root.join(format!(".health-{:016x}", fastrand::u64(..)));
            let r = std::fs::write(&probe, b"ok");
            let _ = std::fs::remove_file(&probe);
            r.map_err(|e| TargetError::Unavailable(format!("{name}: {e}")))
        })
        .await
    }
}
