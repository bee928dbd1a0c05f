//! The cache's index on disk: which chunk each slot holds. Replaced atomically (a new file
//! renamed over the old one); read back whole at open.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const MAGIC: &[u8; 8] = b"CLVCIDX1";
/// Magic, chunk size, slot count, entry count.
const HEADER: usize = 8 + 8 + 8 + 8;
const ENTRY: usize = 4 + 8;
/// More slots than any cache has (64 TiB of 4 KiB chunks): a larger count is damage.
const MAX_SLOTS: u64 = 1 << 34;

/// The slots of a cache file and the chunks some of them hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct SlotIndex {
    slots: usize,
    entries: Vec<(u32, u64)>,
}

fn damaged(path: &Path, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "the cache index {} is damaged ({what}); move the volume's cache files away to read from the targets",
            path.display()
        ),
    )
}

fn word(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

impl SlotIndex {
    pub(super) fn new(slots: usize, entries: Vec<(u32, u64)>) -> Self {
        SlotIndex { slots, entries }
    }

    /// How many slots the file had.
    pub(super) fn slots(&self) -> usize {
        self.slots
    }

    /// (slot, chunk) pairs.
    pub(super) fn entries(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.entries.iter().copied()
    }

    /// Reads the index at `path`: empty if there is none; an error if it is damaged or names
    /// a chunk beyond the volume's `chunks`.
    pub(super) fn read(path: &Path, chunk_size: u64, chunks: u64) -> std::io::Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SlotIndex::default()),
            Err(e) => return Err(e),
        };
        Self::decode(&bytes, chunk_size, chunks).map_err(|what| damaged(path, what))
    }

    fn decode(bytes: &[u8], chunk_size: u64, chunks: u64) -> Result<Self, &'static str> {
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err("no index header");
        }
        if word(bytes, 8) != chunk_size {
            return Err("written for another chunk size");
        }
        let (slots, count) = (word(bytes, 16), word(bytes, 24));
        if slots > MAX_SLOTS || count > slots {
            return Err("impossible slot count");
        }
        if (bytes.len() - HEADER) as u64 != count * ENTRY as u64 {
            return Err("wrong length");
        }
        let mut seen_slots = std::collections::HashSet::new();
        let mut seen_chunks = std::collections::HashSet::new();
        let mut entries = Vec::with_capacity(count as usize);
        for e in bytes[HEADER..].chunks_exact(ENTRY) {
            let slot = u32::from_le_bytes(e[..4].try_into().expect("4 bytes"));
            let chunk = word(e, 4);
            if slot as u64 >= slots || chunk >= chunks {
                return Err("an entry out of range");
            }
            if !seen_slots.insert(slot) || !seen_chunks.insert(chunk) {
                return Err("a slot or chunk named twice");
            }
            entries.push((slot, chunk));
        }
        Ok(SlotIndex { slots: slots as usize, entries })
    }

    fn encode(&self, chunk_size: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.entries.len() * ENTRY);
        out.extend_from_slice(MAGIC);
        for w in [chunk_size, self.slots as u64, self.entries.len() as u64] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for (slot, chunk) in &self.entries {
            out.extend_from_slice(&slot.to_le_bytes());
            out.extend_from_slice(&chunk.to_le_bytes());
        }
        out
    }

    /// Replaces the index at `path` (durably, once the caller syncs the directory).
    pub(super) fn write(&self, path: &Path, chunk_size: u64) -> std::io::Result<()> {
        let tmp = path.with_extension("index.tmp");
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&self.encode(chunk_size))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_reads_back_and_damage_is_refused() {
        let index = SlotIndex::new(8, vec![(0, 5), (7, 1 << 30)]);
        let bytes = index.encode(65536);
        assert_eq!(SlotIndex::decode(&bytes, 65536, 1 << 31), Ok(index));
        assert_eq!(SlotIndex::decode(&bytes, 4096, 1 << 31), Err("written for another chunk size"));
        assert_eq!(SlotIndex::decode(&bytes, 65536, 1 << 20), Err("an entry out of range"));
        assert_eq!(SlotIndex::decode(&bytes[..bytes.len() - 1], 65536, 1 << 31), Err("wrong length"));
        let twice = SlotIndex::new(8, vec![(1, 5), (2, 5)]).encode(65536);
        assert_eq!(SlotIndex::decode(&twice, 65536, 1 << 31), Err("a slot or chunk named twice"));
        assert_eq!(SlotIndex::decode(b"garbage", 65536, 1 << 31), Err("no index header"));
    }
}
