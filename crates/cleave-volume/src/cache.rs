//! The local cache of one volume: a sparse file the size of the volume, and a bitmap
//! of which chunks it holds.
//!
//! Ordering rules that keep flushed writes safe across a crash:
//! - a chunk's bit is persisted only after its data is (at flush: fdatasync the file,
//!   then write and sync the bitmap);
//! - a bit is cleared, and the bitmap synced, before the chunk's range is punched out;
//! - a marker file records a clean shutdown with nothing dirty. Without it, every
//!   chunk in the bitmap is treated as dirty and destaged again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The cache file and bitmap of one volume.
#[derive(Debug)]
pub struct Cache {
    file: Arc<File>,
    bitmap_path: PathBuf,
    clean_path: PathBuf,
    dir: PathBuf,
    chunk_size: u64,
    size: u64,
    large_writes: tokio::sync::Mutex<()>,
}

/// Writes at least this large take turns (see `write_at`).
const LARGE_WRITE: usize = 128 << 10;

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Cache {
    /// Opens (or creates) the cache of volume `uuid`. Returns the cache, the chunks
    /// it holds, and whether the last shutdown was clean.
    pub fn open(dir: &Path, uuid: &str, size: u64, chunk_size: u32) -> std::io::Result<(Self, Vec<u64>, bool)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{uuid}.cache"));
        // The cache holds plaintext: only the owner may read it, whatever the umask.
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path)?;
        file.set_len(size)?;
        let bitmap_path = dir.join(format!("{uuid}.present"));
        let clean_path = dir.join(format!("{uuid}.clean"));
        let clean = clean_path.exists();
        let chunks = size.div_ceil(chunk_size as u64);
        let mut present = Vec::new();
        if let Ok(bits) = std::fs::read(&bitmap_path) {
            for c in 0..chunks {
                if bits.get((c / 8) as usize).is_some_and(|b| b & (1 << (c % 8)) != 0) {
                    present.push(c);
                }
            }
        }
        if clean {
            // From now on the cache may hold dirty data again.
            std::fs::remove_file(&clean_path)?;
            sync_dir(dir)?;
        }
        let cache = Cache {
            file: Arc::new(file),
            bitmap_path,
            clean_path,
            dir: dir.to_path_buf(),
            chunk_size: chunk_size as u64,
            size,
            large_writes: tokio::sync::Mutex::new(()),
        };
        Ok((cache, present, clean))
    }

    /// Removes the cache files of a deleted volume.
    pub fn remove(dir: &Path, uuid: &str) -> std::io::Result<()> {
        for ext in ["cache", "present", "clean"] {
            match std::fs::remove_file(dir.join(format!("{uuid}.{ext}"))) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Byte range of chunk `c` within the volume.
    pub fn chunk_range(&self, c: u64) -> (u64, u64) {
        let start = c * self.chunk_size;
        (start, (start + self.chunk_size).min(self.size))
    }

    // Reads and writes call pread/pwrite directly: they hit the page cache (the
    // working set is the cache file), and a hop to the blocking pool cost more than
    // the copy itself (measured with bench/nbd-vs-nbdkit.sh). Syncs go to the pool.
    pub async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    pub async fn write_at(&self, offset: u64, data: bytes::Bytes) -> std::io::Result<()> {
        if data.len() >= LARGE_WRITE {
            // Buffered writes to one file serialize on its inode lock in the kernel, where a
            // second writer spins. Queue large ones here instead, so that worker can go on
            // receiving the next request.
            let _turn = self.large_writes.lock().await;
            return self.file.write_all_at(&data, offset);
        }
        self.file.write_all_at(&data, offset)
    }

    /// Deallocates a range: it reads as zeros and takes no space.
    pub async fn punch(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            // SAFETY: fallocate on a valid fd with in-range arguments; no memory is passed.
            let rc = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    len as libc::off_t,
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                // Filesystems without hole punching: write zeros instead.
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    file.write_all_at(&vec![0u8; len as usize], offset)
                } else {
                    Err(err)
                }
            }
        })
        .await
        .map_err(std::io::Error::other)?
    }

    pub async fn sync_data(&self) -> std::io::Result<()> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.sync_data()).await.map_err(std::io::Error::other)?
    }

    /// Atomically replaces the bitmap with one holding `present`.
    pub async fn persist_bitmap(&self, present: Vec<u64>) -> std::io::Result<()> {
        let chunks = self.size.div_ceil(self.chunk_size);
        let path = self.bitmap_path.clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut bits = vec![0u8; chunks.div_ceil(8) as usize];
            for c in present {
                bits[(c / 8) as usize] |= 1 << (c % 8);
            }
            let tmp = path.with_extension("present.tmp");
            let mut f = File::create(&tmp)?;
            f.write_all(&bits)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            sync_dir(&dir)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Records that the cache holds nothing dirty: its chunks are clean at next start.
    pub fn mark_clean(&self) -> std::io::Result<()> {
        self.file.sync_all()?;
        File::create(&self.clean_path)?.sync_all()?;
        sync_dir(&self.dir)
    }
}
