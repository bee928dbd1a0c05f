//! The local cache of one volume: a file of chunk-sized slots, as many as the cache holds
//! chunks (so its size follows `--cache-size`, never the volume's), and an index of which
//! chunk each slot holds.
//!
//! Ordering rules that keep flushed writes safe across a crash:
//! - a chunk enters the index only after its data is durable (the caller lists the chunks
//!   whose data is in the slot before it syncs the file, then persists the index);
//! - a slot leaves the index (persisted) before it is punched out or given to another chunk;
//! - a marker file records a clean shutdown with nothing dirty. Without it, every chunk in the
//!   index is treated as dirty and destaged again.
//!
//! Caches of the earlier layout (one sparse file the size of the volume and a bitmap of its
//! chunks) are moved into slots when they are opened.

mod index;
mod legacy;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use index::SlotIndex;

/// The cache file and index of one volume.
#[derive(Debug)]
pub struct Cache {
    file: Arc<File>,
    index_path: PathBuf,
    clean_path: PathBuf,
    dir: PathBuf,
    chunk_size: u64,
    size: u64,
    slots: Mutex<Slots>,
    large_writes: tokio::sync::Mutex<()>,
}

/// Which slot holds which chunk. A slot is free, holds a chunk, or is draining: its chunk was
/// dropped, but an index on disk may still name it until the next [`Cache::persist_index`].
#[derive(Debug)]
struct Slots {
    of_chunk: HashMap<u64, u32>,
    /// Slots in the cache file.
    count: u32,
    free: Vec<u32>,
    draining: Vec<u32>,
}

/// Writes at least this large take turns (see `write`).
const LARGE_WRITE: usize = 128 << 10;

/// The largest piece written to the cache file at once. Linux ext4 (6.16 on) gives a write a
/// page-cache folio as large as the write, and each later small write into that folio walks
/// every block of it: once chunks had come in whole, 4 KiB writes cost twice the CPU
/// (`ext4_block_write_begin`, 40% of a gateway's samples). 256 KiB caps the walk at 64 blocks
/// and cost sequential writes nothing measurable (README, "Mirroring").
const WRITE_PIECE: usize = 256 << 10;

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn file_names(dir: &Path, uuid: &str) -> (PathBuf, PathBuf, PathBuf) {
    (dir.join(format!("{uuid}.slots")), dir.join(format!("{uuid}.index")), dir.join(format!("{uuid}.clean")))
}

fn full(what: &str) -> std::io::Error {
    std::io::Error::other(format!("cache: {what}"))
}

impl Cache {
    /// Opens (or creates) the cache of volume `uuid` with room for `capacity` chunks. Returns
    /// the cache, the chunks it holds, and whether the last shutdown was clean.
    pub fn open(
        dir: &Path,
        uuid: &str,
        size: u64,
        chunk_size: u32,
        capacity: usize,
    ) -> std::io::Result<(Self, Vec<u64>, bool)> {
        std::fs::create_dir_all(dir)?;
        let (path, index_path, clean_path) = file_names(dir, uuid);
        let chunk_size = chunk_size as u64;
        let chunks = size.div_ceil(chunk_size);
        let moved = legacy::migrate(dir, uuid, size, chunk_size, &path, &index_path)?;
        // The cache holds plaintext: only the owner may read it, whatever the umask.
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path)?;
        let stored = match moved {
            Some(index) => index,
            None => SlotIndex::read(&index_path, chunk_size, chunks)?,
        };
        // A smaller cache than last time keeps the slots in use until they are evicted.
        let count = capacity.max(stored.slots()).max(1);
        file.set_len(count as u64 * chunk_size)?;
        let of_chunk: HashMap<u64, u32> = stored.entries().map(|(slot, chunk)| (chunk, slot)).collect();
        let held: std::collections::HashSet<u32> = of_chunk.values().copied().collect();
        let free = (0..count as u32).rev().filter(|s| !held.contains(s)).collect();
        let slots = Slots { of_chunk, count: count as u32, free, draining: Vec::new() };
        let present: Vec<u64> = slots.of_chunk.keys().copied().collect();
        let clean = clean_path.exists();
        if clean {
            // From now on the cache may hold dirty data again.
            std::fs::remove_file(&clean_path)?;
            sync_dir(dir)?;
        }
        let cache = Cache {
            file: Arc::new(file),
            index_path,
            clean_path,
            dir: dir.to_path_buf(),
            chunk_size,
            size,
            slots: Mutex::new(slots),
            large_writes: tokio::sync::Mutex::new(()),
        };
        Ok((cache, present, clean))
    }

    /// Removes the cache files of a deleted volume.
    /// Whether a cache of volume `uuid` is in `dir`.
    pub fn exists(dir: &Path, uuid: &str) -> bool {
        let (slots, index, _) = file_names(dir, uuid);
        slots.exists() || index.exists() || legacy::files(dir, uuid).iter().any(|p| p.exists())
    }

    pub fn remove(dir: &Path, uuid: &str) -> std::io::Result<()> {
        let (slots, index, clean) = file_names(dir, uuid);
        for path in [slots, index, clean].into_iter().chain(legacy::files(dir, uuid)) {
            match std::fs::remove_file(path) {
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

    /// Gives chunk `c` a slot (it keeps the one it has); its bytes are undefined until written
    /// or zeroed. `false`: the free slots are all draining, persist the index first. Fills
    /// racing for the last slot grow the file by one slot each rather than fail.
    pub fn assign(&self, c: u64) -> std::io::Result<bool> {
        let mut s = self.slots.lock().expect("not poisoned");
        if s.of_chunk.contains_key(&c) {
            return Ok(true);
        }
        let slot = match s.free.pop() {
            Some(slot) => slot,
            None if !s.draining.is_empty() => return Ok(false),
            None => {
                let slot = s.count;
                self.file.set_len((slot as u64 + 1) * self.chunk_size)?;
                s.count += 1;
                slot
            }
        };
        s.of_chunk.insert(c, slot);
        Ok(true)
    }

    /// Drops chunk `c` from the cache. Its slot is reused only after the next persisted index.
    pub fn drop_chunk(&self, c: u64) {
        let mut s = self.slots.lock().expect("not poisoned");
        if let Some(slot) = s.of_chunk.remove(&c) {
            s.draining.push(slot);
        }
    }

    /// Position in the cache file of `offset` within chunk `c`.
    fn locate(&self, c: u64, offset: u64, len: u64) -> std::io::Result<u64> {
        let slot =
            *self.slots.lock().expect("not poisoned").of_chunk.get(&c).ok_or_else(|| full("chunk not cached"))?;
        if offset + len > self.chunk_size {
            return Err(full("range beyond the chunk"));
        }
        Ok(slot as u64 * self.chunk_size + offset)
    }

    // Reads and writes call pread/pwrite directly: they hit the page cache (the
    // working set is the cache file), and a hop to the blocking pool cost more than
    // the copy itself (measured with bench/nbd-vs-nbdkit.sh). Syncs go to the pool.
    /// Reads `len` bytes at `offset` within cached chunk `c`.
    pub async fn read(&self, c: u64, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let at = self.locate(c, offset, len as u64)?;
        read_fresh_at(&self.file, len, at)
    }

    /// Writes `data` at `offset` within cached chunk `c`.
    pub async fn write(&self, c: u64, offset: u64, data: bytes::Bytes) -> std::io::Result<()> {
        let at = self.locate(c, offset, data.len() as u64)?;
        if data.len() >= LARGE_WRITE {
            // Buffered writes to one file serialize on its inode lock in the kernel, where a
            // second writer spins. Queue large ones here instead, so that worker can go on
            // receiving the next request.
            let _turn = self.large_writes.lock().await;
            return write_in_pieces(&self.file, &data, at);
        }
        self.file.write_all_at(&data, at)
    }

    /// Writes a whole chunk fetched from the targets, in the blocking pool: first pages of a
    /// cache file cost about 1 ms per MiB to allocate, too long to hold up a runtime worker.
    pub async fn write_chunk(&self, c: u64, data: bytes::Bytes) -> std::io::Result<()> {
        let at = self.locate(c, 0, data.len() as u64)?;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || write_in_pieces(&file, &data, at)).await.map_err(std::io::Error::other)?
    }

    /// Makes cached chunk `c` read as zeros, taking no space.
    pub async fn zero(&self, c: u64) -> std::io::Result<()> {
        let at = self.locate(c, 0, self.chunk_size)?;
        self.punch(at, self.chunk_size).await
    }

    async fn punch(&self, offset: u64, len: u64) -> std::io::Result<()> {
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

    /// Atomically replaces the index with one holding `present` (chunks whose data is
    /// durable), then frees the slots of the chunks dropped before: no index names them now.
    pub async fn persist_index(&self, present: Vec<u64>) -> std::io::Result<()> {
        let (index, draining) = {
            let mut s = self.slots.lock().expect("not poisoned");
            let entries = present.iter().filter_map(|c| s.of_chunk.get(c).map(|slot| (*slot, *c))).collect();
            (SlotIndex::new(s.count as usize, entries), std::mem::take(&mut s.draining))
        };
        let (path, dir, chunk_size) = (self.index_path.clone(), self.dir.clone(), self.chunk_size);
        tokio::task::spawn_blocking(move || index.write(&path, chunk_size).and_then(|_| sync_dir(&dir)))
            .await
            .map_err(std::io::Error::other)??;
        for slot in &draining {
            // The data of dropped chunks takes no space and cannot be read back.
            self.punch(*slot as u64 * self.chunk_size, self.chunk_size).await?;
        }
        self.slots.lock().expect("not poisoned").free.extend(draining);
        Ok(())
    }

    /// Records that the cache holds nothing dirty: its chunks are clean at next start.
    pub fn mark_clean(&self) -> std::io::Result<()> {
        self.file.sync_all()?;
        File::create(&self.clean_path)?.sync_all()?;
        sync_dir(&self.dir)
    }
}

/// Writes `data` at `at` in pieces of at most [`WRITE_PIECE`].
fn write_in_pieces(file: &File, data: &[u8], at: u64) -> std::io::Result<()> {
    let mut offset = at;
    for piece in data.chunks(WRITE_PIECE) {
        file.write_all_at(piece, offset)?;
        offset += piece.len() as u64;
    }
    Ok(())
}

/// Reads `len` bytes at `at` into a new buffer without zeroing it first: the zeroing of a
/// reused heap buffer cost about 5% of a gateway's CPU while it served sequential reads.
fn read_fresh_at(file: &File, len: usize, at: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::<u8>::with_capacity(len);
    while buf.len() < len {
        let done = buf.len();
        let spare = buf.spare_capacity_mut();
        // SAFETY: pread writes at most `spare.len()` bytes into the spare capacity, which is
        // valid for writes; only the bytes it reports written are counted as initialised.
        let n = unsafe {
            libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), (at + done as u64) as libc::off_t)
        };
        match n {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // SAFETY: pread initialised the next `n` bytes (n <= spare.len()).
            n => unsafe { buf.set_len(done + n as usize) },
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u32 = 4096;

    fn chunk_bytes(c: u64) -> Vec<u8> {
        (0..CHUNK as u64).map(|i| (i * 3 + c * 11) as u8).collect()
    }

    #[test]
    fn a_fresh_read_returns_the_bytes_at_its_offset_or_fails_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(read_fresh_at(&file, 200_000, 77).unwrap(), bytes[77..200_077]);
        assert_eq!(read_fresh_at(&file, 0, 5).unwrap(), Vec::<u8>::new());
        let past = read_fresh_at(&file, 1000, 299_500).unwrap_err();
        assert_eq!(past.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_write_in_pieces_lands_whole_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let data: Vec<u8> = (0..3 * WRITE_PIECE + 123).map(|i| (i % 253) as u8).collect();
        write_in_pieces(&file, &data, 1000).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 1000 + data.len());
        assert!(back[..1000].iter().all(|b| *b == 7));
        assert_eq!(back[1000..], data[..]);
    }

    #[tokio::test]
    async fn an_earlier_cache_moves_into_slots_with_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let size = 10 * CHUNK as u64 - 100;
        let old = File::create(dir.path().join("u.cache")).unwrap();
        old.set_len(size).unwrap();
        for c in [3u64, 9] {
            let len = (CHUNK as u64).min(size - c * CHUNK as u64) as usize;
            old.write_all_at(&chunk_bytes(c)[..len], c * CHUNK as u64).unwrap();
        }
        std::fs::write(dir.path().join("u.present"), [0b0000_1000u8, 0b0000_0010]).unwrap();

        let (cache, mut present, clean) = Cache::open(dir.path(), "u", size, CHUNK, 4).unwrap();
        present.sort_unstable();
        assert_eq!((present.clone(), clean), (vec![3, 9], false));
        assert!(!dir.path().join("u.cache").exists() && !dir.path().join("u.present").exists());
        assert_eq!(cache.read(3, 0, CHUNK as usize).await.unwrap(), chunk_bytes(3));
        assert_eq!(cache.read(9, 0, (CHUNK - 100) as usize).await.unwrap(), chunk_bytes(9)[..(CHUNK - 100) as usize]);
        drop(cache);

        // The moved cache opens as it was left.
        let (cache, mut again, _) = Cache::open(dir.path(), "u", size, CHUNK, 4).unwrap();
        again.sort_unstable();
        assert_eq!(again, present);
        assert_eq!(cache.read(3, 0, CHUNK as usize).await.unwrap(), chunk_bytes(3));
    }

    #[tokio::test]
    async fn a_dropped_chunk_is_forgotten_on_disk_before_its_slot_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, _, _) = Cache::open(dir.path(), "u", 100 * CHUNK as u64, CHUNK, 1).unwrap();
        assert!(cache.assign(5).unwrap());
        cache.write(5, 0, bytes::Bytes::from(chunk_bytes(5))).await.unwrap();
        cache.persist_index(vec![5]).await.unwrap();
        cache.drop_chunk(5);
        // The only slot is draining: an index on disk still names chunk 5 in it.
        assert!(!cache.assign(6).unwrap());
        cache.persist_index(vec![]).await.unwrap();
        assert!(cache.assign(6).unwrap());
        // Punched out: the slot reads as zeros for its next chunk.
        assert_eq!(cache.read(6, 0, CHUNK as usize).await.unwrap(), vec![0u8; CHUNK as usize]);
        drop(cache);
        let (_, present, _) = Cache::open(dir.path(), "u", 100 * CHUNK as u64, CHUNK, 1).unwrap();
        assert!(present.is_empty(), "{present:?}");
    }
}
