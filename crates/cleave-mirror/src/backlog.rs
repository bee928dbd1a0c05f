//! What a primary keeps of the changes its mirror may lack, on disk, so that no write is ever
//! lost track of, whatever restarts:
//!
//! - [`Extents`]: the extents (64 MiB) with writes the mirror may not have made durable. An
//!   extent is written down (fsync, batched across concurrent writers) *before* a local
//!   write to it, and dropped only at a clean point, so after a crash every region of a
//!   listed extent is copied again. This is DRBD's activity log, coarse on purpose: a
//!   sequential writer pays one fsync per 64 MiB.
//! - [`Journal`]: the changes made while the mirror was unreachable, in order, so that the
//!   mirror replays them as a crash-consistent sequence. Bounded; past its bound it is
//!   dropped and its regions are copied instead (the dirty-region bitmap).
//! - [`CopySet`]: the regions to copy whole (journal overflow, a restart, a split brain's
//!   discarded changes, the initial sync as a sweep).

use std::collections::{BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::Op;

/// The unit of copying.
pub const REGION: u64 = 1 << 20;
/// The unit of the on-disk activity log.
pub const EXTENT: u64 = 64 << 20;

/// Regions overlapping a byte range.
pub fn regions(range: std::ops::Range<u64>) -> std::ops::Range<u64> {
    if range.is_empty() {
        return 0..0;
    }
    range.start / REGION..range.end.div_ceil(REGION)
}

fn extents(range: std::ops::Range<u64>) -> std::ops::Range<u64> {
    if range.is_empty() {
        return 0..0;
    }
    range.start / EXTENT..range.end.div_ceil(EXTENT)
}

/// The persistent set of extents the mirror may lack.
pub struct Extents {
    path: PathBuf,
    state: Mutex<ExtentState>,
    /// One writer at a time; waiters find their extents written by the one before them.
    file: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct ExtentState {
    persisted: HashSet<u64>,
    wanted: BTreeSet<u64>,
}

impl Extents {
    /// Opens (or creates) the log; returns it and the extents it lists.
    pub fn open(path: &Path) -> std::io::Result<(Extents, Vec<u64>)> {
        let mut listed = Vec::new();
        if let Ok(mut f) = File::open(path) {
            let mut b = Vec::new();
            f.read_to_end(&mut b)?;
            listed = b.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))).collect();
        }
        let state = ExtentState { persisted: listed.iter().copied().collect(), wanted: BTreeSet::new() };
        let e = Extents { path: path.to_path_buf(), state: Mutex::new(state), file: tokio::sync::Mutex::new(()) };
        Ok((e, listed))
    }

    /// Makes sure the extents of `range` are on disk before returning.
    pub async fn mark(&self, range: std::ops::Range<u64>) -> std::io::Result<()> {
        if !self.want(extents(range.clone())) {
            return Ok(());
        }
        let _writer = self.file.lock().await;
        let batch: Vec<u64> = {
            let s = self.state.lock().expect("not poisoned");
            s.wanted.iter().copied().collect()
        };
        if batch.is_empty() {
            return Ok(()); // the writer before us wrote ours
        }
        let path = self.path.clone();
        let b2 = batch.clone();
        tokio::task::spawn_blocking(move || append_extents(&path, &b2)).await.map_err(std::io::Error::other)??;
        let mut s = self.state.lock().expect("not poisoned");
        for e in batch {
            s.wanted.remove(&e);
            s.persisted.insert(e);
        }
        Ok(())
    }

    /// Adds the extents not yet on disk to `wanted`; whether there were any.
    fn want(&self, ex: std::ops::Range<u64>) -> bool {
        let mut s = self.state.lock().expect("not poisoned");
        let mut any = false;
        for e in ex {
            if !s.persisted.contains(&e) {
                s.wanted.insert(e);
                any = true;
            }
        }
        any
    }

    /// Rewrites the log with only the extents `keep` says to keep.
    pub async fn retain(&self, keep: impl Fn(u64) -> bool) -> std::io::Result<usize> {
        let _writer = self.file.lock().await;
        let (kept, dropped) = {
            let s = self.state.lock().expect("not poisoned");
            let kept: Vec<u64> = s.persisted.iter().copied().filter(|&e| keep(e)).collect();
            (kept.clone(), s.persisted.len() - kept.len())
        };
        if dropped == 0 {
            return Ok(0);
        }
        let path = self.path.clone();
        let k2 = kept.clone();
        tokio::task::spawn_blocking(move || rewrite_extents(&path, &k2)).await.map_err(std::io::Error::other)??;
        self.state.lock().expect("not poisoned").persisted = kept.into_iter().collect();
        Ok(dropped)
    }

    pub fn listed(&self) -> usize {
        self.state.lock().expect("not poisoned").persisted.len()
    }

    pub fn persisted(&self) -> Vec<u64> {
        self.state.lock().expect("not poisoned").persisted.iter().copied().collect()
    }
}

fn append_extents(path: &Path, batch: &[u64]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    let b: Vec<u8> = batch.iter().flat_map(|e| e.to_be_bytes()).collect();
    f.write_all(&b)?;
    f.sync_data()
}

fn rewrite_extents(path: &Path, kept: &[u64]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let b: Vec<u8> = kept.iter().flat_map(|e| e.to_be_bytes()).collect();
    let mut f = File::create(&tmp)?;
    f.write_all(&b)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The regions to copy whole: a set, and a sweep over a range (the initial sync).
#[derive(Debug, Default, Clone)]
pub struct CopySet {
    regions: BTreeSet<u64>,
    sweep: Option<std::ops::Range<u64>>,
}

impl CopySet {
    pub fn add_range(&mut self, r: std::ops::Range<u64>) {
        self.regions.extend(regions(r));
    }

    pub fn add_region(&mut self, r: u64) {
        self.regions.insert(r);
    }

    /// Copies every region below `end`, starting at `from`.
    pub fn sweep(&mut self, from: u64, end: u64) {
        self.sweep = (from < end).then_some(from..end);
    }

    /// Where the sweep stands, to resume it after a restart.
    pub fn sweep_position(&self) -> Option<u64> {
        self.sweep.as_ref().map(|s| s.start)
    }

    pub fn pop(&mut self) -> Option<u64> {
        if let Some(r) = self.regions.pop_first() {
            return Some(r);
        }
        let s = self.sweep.as_mut()?;
        let r = s.start;
        s.start += 1;
        if s.is_empty() {
            self.sweep = None;
        }
        Some(r)
    }

    pub fn len(&self) -> u64 {
        self.regions.len() as u64 + self.sweep.as_ref().map_or(0, |s| s.end - s.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a region of extent `e` is still to copy.
    pub fn touches_extent(&self, e: u64) -> bool {
        let per = EXTENT / REGION;
        let r = e * per..(e + 1) * per;
        self.regions.range(r.clone()).next().is_some()
            || self.sweep.as_ref().is_some_and(|s| s.start < r.end && r.start < s.end)
    }

    pub fn regions(&self) -> impl Iterator<Item = u64> + '_ {
        self.regions.iter().copied()
    }
}

/// The ordered changes made while the mirror was unreachable. Records are
/// `len u32 | kind u8 | offset u64 | fua u8 | data, or len u32 | checksum [8]`; a torn or
/// damaged tail (a crash while appending) ends the journal there.
pub struct Journal {
    path: PathBuf,
    file: File,
    bytes: u64,
    records: u64,
    /// Regions the records touch, to copy instead if the journal is dropped.
    touched: BTreeSet<u64>,
}

impl Journal {
    /// Opens the journal, keeping its valid records.
    pub fn open(path: &Path) -> std::io::Result<Journal> {
        let mut file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path)?;
        let mut j = Journal {
            path: path.to_path_buf(),
            file: file.try_clone()?,
            bytes: 0,
            records: 0,
            touched: BTreeSet::new(),
        };
        let mut all = Vec::new();
        file.read_to_end(&mut all)?;
        let mut at = 0usize;
        while let Some((op, used)) = decode_record(&all[at..]) {
            j.touched.extend(regions(op.range()));
            j.records += 1;
            at += used;
        }
        j.bytes = at as u64;
        j.file.set_len(j.bytes)?;
        j.file.seek(SeekFrom::End(0))?;
        Ok(j)
    }

    pub fn append(&mut self, op: &Op) -> std::io::Result<()> {
        self.append_all(std::slice::from_ref(op))
    }

    /// Appends records with one write.
    pub fn append_all(&mut self, ops: &[Op]) -> std::io::Result<()> {
        let mut all = BytesMut::with_capacity(ops.iter().map(record_len).sum());
        for op in ops {
            put_record(&mut all, op);
        }
        self.file.write_all(&all)?;
        for op in ops {
            self.touched.extend(regions(op.range()));
        }
        self.bytes += all.len() as u64;
        self.records += ops.len() as u64;
        Ok(())
    }

    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn touched(&self) -> impl Iterator<Item = u64> + '_ {
        self.touched.iter().copied()
    }

    /// Reads the records from byte `from`: up to `max` of them, and where the next starts.
    pub fn read_from(&self, from: u64, max: usize) -> std::io::Result<(Vec<Op>, u64)> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(from))?;
        let left = self.bytes.saturating_sub(from);
        // Enough for the first record whatever its size, else a bounded read-ahead.
        let mut head = [0u8; 4];
        let first = if left >= 4 {
            f.read_exact(&mut head)?;
            f.seek(SeekFrom::Start(from))?;
            4 + u64::from(u32::from_be_bytes(head))
        } else {
            0
        };
        let want = left.min(READ_AHEAD.max(first)) as usize;
        let mut buf = vec![0u8; want];
        f.read_exact(&mut buf)?;
        let (mut out, mut at) = (Vec::new(), 0usize);
        while out.len() < max {
            let Some((op, used)) = decode_record(&buf[at..]) else { break };
            out.push(op);
            at += used;
        }
        Ok((out, from + at as u64))
    }

    /// Empties the journal (replayed, or dropped for copying).
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.sync_data()?;
        self.bytes = 0;
        self.records = 0;
        self.touched.clear();
        Ok(())
    }
}

/// One journal record as stored.
pub fn encode_record(op: &Op) -> Bytes {
    let mut b = BytesMut::with_capacity(record_len(op));
    put_record(&mut b, op);
    b.freeze()
}

/// The bytes of `op`'s record.
fn record_len(op: &Op) -> usize {
    let body = match op {
        Op::Write { data, .. } => data.len(),
        Op::Zero { .. } | Op::Trim { .. } => 4,
        Op::Flush => 0,
    };
    4 + 1 + 8 + 1 + body + 8
}

/// Appends `op`'s record to `out`.
fn put_record(out: &mut BytesMut, op: &Op) {
    let start = out.len();
    out.put_u32(0);
    let (kind, offset, fua) = match op {
        Op::Write { offset, fua, .. } => (2u8, *offset, *fua),
        Op::Zero { offset, fua, .. } => (3, *offset, *fua),
        Op::Trim { offset, .. } => (4, *offset, false),
        Op::Flush => (5, 0, false),
    };
    out.put_u8(kind);
    out.put_u64(offset);
    out.put_u8(u8::from(fua));
    match op {
        Op::Write { data, .. } => out.put_slice(data),
        Op::Zero { len, .. } | Op::Trim { len, .. } => out.put_u32(*len),
        Op::Flush => {}
    }
    let sum = blake3::hash(&out[start + 4..]);
    out.put_slice(&sum.as_bytes()[..8]);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// One record and the bytes it used, or None at the end or at a damaged record.
pub fn decode_record(b: &[u8]) -> Option<(Op, usize)> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let rec = b.get(4..4 + len)?;
    if len < 18 {
        return None;
    }
    let (body, sum) = rec.split_at(len - 8);
    if &blake3::hash(body).as_bytes()[..8] != sum {
        return None;
    }
    let offset = u64::from_be_bytes(body[1..9].try_into().ok()?);
    let fua = body[9] != 0;
    let rest = &body[10..];
    let len32 = || Some(u32::from_be_bytes(rest.try_into().ok()?));
    let op = match body[0] {
        2 => Op::Write { offset, data: Bytes::copy_from_slice(rest), fua },
        3 => Op::Zero { offset, len: len32()?, fua },
        4 => Op::Trim { offset, len: len32()? },
        5 => Op::Flush,
        _ => return None,
    };
    Some((op, 4 + len))
}

/// How much of the journal one replay read takes (at least one whole record): about what the
/// records asked for hold, so small records are not read many times over.
const READ_AHEAD: u64 = 1 << 20;

/// A journal shared between the dispatcher and status readers.
pub type SharedJournal = Arc<Mutex<Journal>>;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..1 << 30, proptest::collection::vec(any::<u8>(), 1..100), any::<bool>())
                .prop_map(|(o, d, fua)| Op::Write { offset: o, data: d.into(), fua }),
            (0u64..1 << 30, any::<u32>(), any::<bool>()).prop_map(|(o, len, fua)| Op::Zero { offset: o, len, fua }),
            (0u64..1 << 30, any::<u32>()).prop_map(|(o, len)| Op::Trim { offset: o, len }),
            Just(Op::Flush),
        ]
    }

    proptest! {
        /// Whatever is appended reads back in order, after a reopen too, and a torn tail
        /// ends the journal at the last whole record.
        #[test]
        fn journal_round_trips_and_survives_a_torn_tail(ops in proptest::collection::vec(op(), 1..20), cut in any::<u64>()) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("journal");
            let mut j = Journal::open(&p).unwrap();
            for o in &ops { j.append(o).unwrap(); }
            j.sync().unwrap();
            let (back, end) = j.read_from(0, usize::MAX).unwrap();
            prop_assert_eq!(&back, &ops);
            prop_assert_eq!(end, j.bytes());
            let last = encode_record(ops.last().unwrap()).len() as u64;
            let cut = 1 + cut % last; // somewhere inside the last record
            drop(j);
            let len = std::fs::metadata(&p).unwrap().len();
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(len - cut).unwrap();
            let j = Journal::open(&p).unwrap();
            let (back, _) = j.read_from(0, usize::MAX).unwrap();
            prop_assert_eq!(back.len(), ops.len() - 1);
            prop_assert_eq!(&back[..], &ops[..ops.len() - 1]);
        }
    }

    /// Read a few records at a time, records smaller and larger than a read ahead come back
    /// whole and in order.
    #[test]
    fn the_journal_reads_back_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("journal")).unwrap();
        let write = |offset: u64, len: usize| Op::Write { offset, data: vec![offset as u8; len].into(), fua: false };
        let ops: Vec<Op> =
            (0..600).map(|i| write(i * 4096, 4096)).chain([write(1 << 30, 3 << 20), Op::Flush, write(7, 1)]).collect();
        for op in &ops {
            assert_eq!(record_len(op), encode_record(op).len(), "{op:?}");
        }
        j.append_all(&ops[..300]).unwrap();
        for op in &ops[300..] {
            j.append(op).unwrap();
        }
        let (mut back, mut at) = (Vec::new(), 0);
        loop {
            let (got, next) = j.read_from(at, 256).unwrap();
            assert!(got.len() <= 256);
            if got.is_empty() {
                break;
            }
            back.extend(got);
            at = next;
        }
        assert_eq!(at, j.bytes());
        assert_eq!(back, ops);
        assert_eq!(j.records(), ops.len() as u64);
    }

    #[test]
    fn copy_set_pops_regions_then_the_sweep() {
        let mut c = CopySet::default();
        c.sweep(10, 13);
        c.add_range(5 * REGION..5 * REGION + 1);
        assert_eq!(c.len(), 4);
        assert!(c.touches_extent(0));
        assert!(!c.touches_extent(1));
        let all: Vec<u64> = std::iter::from_fn(|| c.pop()).collect();
        assert_eq!(all, vec![5, 10, 11, 12]);
        assert!(c.is_empty());
    }

    #[tokio::test]
    async fn extents_are_listed_after_reopen_and_dropped_by_retain() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("extents");
        let (e, listed) = Extents::open(&p).unwrap();
        assert!(listed.is_empty());
        e.mark(0..10).await.unwrap();
        e.mark(EXTENT * 3..EXTENT * 3 + 1).await.unwrap();
        e.mark(5..6).await.unwrap();
        drop(e);
        let (e, mut listed) = Extents::open(&p).unwrap();
        listed.sort();
        assert_eq!(listed, vec![0, 3]);
        assert_eq!(e.retain(|x| x == 3).await.unwrap(), 1);
        let (_, listed) = Extents::open(&p).unwrap();
        assert_eq!(listed, vec![3]);
    }
}
