//! Caches of the earlier layout: `<uuid>.cache`, a sparse file the size of the volume, and
//! `<uuid>.present`, a bitmap of the chunks it holds. Opening one moves its chunks into slots.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::index::SlotIndex;

/// The earlier layout's files of volume `uuid`.
pub(super) fn files(dir: &Path, uuid: &str) -> [PathBuf; 2] {
    [dir.join(format!("{uuid}.cache")), dir.join(format!("{uuid}.present"))]
}

/// Moves an earlier cache of `uuid` into the slot file at `slots_path` and its index, and
/// returns that index; `None` if there is none. The old files go only once the new ones are
/// durable, so a crash part-way starts the move again.
pub(super) fn migrate(
    dir: &Path,
    uuid: &str,
    size: u64,
    chunk_size: u64,
    slots_path: &Path,
    index_path: &Path,
) -> std::io::Result<Option<SlotIndex>> {
    let [old, bitmap] = files(dir, uuid);
    let Ok(old_file) = File::open(&old) else { return Ok(None) };
    let bits = match std::fs::read(&bitmap) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let chunks = size.div_ceil(chunk_size);
    let present: Vec<u64> =
        (0..chunks.min(bits.len() as u64 * 8)).filter(|c| bits[(c / 8) as usize] & (1 << (c % 8)) != 0).collect();
    let new = OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(slots_path)?;
    new.set_len(present.len() as u64 * chunk_size)?;
    let mut buf = vec![0u8; chunk_size as usize];
    let mut entries = Vec::with_capacity(present.len());
    for (slot, &c) in present.iter().enumerate() {
        let start = c * chunk_size;
        let len = chunk_size.min(size - start) as usize;
        old_file.read_exact_at(&mut buf[..len], start)?;
        super::write_in_pieces(&new, &buf[..len], slot as u64 * chunk_size)?;
        entries.push((slot as u32, c));
    }
    new.sync_all()?;
    let index = SlotIndex::new(present.len(), entries);
    index.write(index_path, chunk_size)?;
    File::open(dir)?.sync_all()?;
    for f in [old, bitmap] {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    File::open(dir)?.sync_all()?;
    tracing::info!(volume = uuid, chunks = present.len(), "cache moved to the slot layout");
    Ok(Some(index))
}
