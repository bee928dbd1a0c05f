//! The standby's side: a primary's changes to one volume, kept in a file of this gateway
//! until the primary's targets hold them. The primary writes it through NBD (a device that
//! takes changes and FLUSH, and serves no reads); a takeover reads it back, in order.
//!
//! A record is `kind (1) | offset (8) | len (4) | data (len, writes only) | sum (16)`, the sum
//! a BLAKE3 hash of the rest keyed by the session. Reading stops at the first record that is
//! short or does not match its sum: a tail torn by a crash held nothing a FLUSH had
//! acknowledged.
//!
//! A log no longer needed becomes a spare, and the next session writes over it from the start
//! rather than growing a new file: overwriting blocks a file already has makes FLUSH (an
//! fdatasync) cheaper, and no new page-cache pages are needed. What is left of the old
//! session past the new one's end cannot pass as the new session's: its sums are keyed by
//! another session.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cleave_mirror::Op;
use cleave_nbd::{BlockDevice, BlockError};

const WRITE: u8 = 1;
const ZERO: u8 = 2;
const TRIM: u8 = 3;
const HEAD: usize = 1 + 8 + 4;
const SUM: usize = 16;
/// Larger than any NBD request: a record claiming more is damage.
const MAX_DATA: usize = 64 << 20;

/// Spare logs a gateway keeps for the next sessions to write over.
const SPARES: usize = 2;

/// The key of a session's record sums.
pub(crate) fn session_key(session: &str) -> [u8; 32] {
    *blake3::hash(session.as_bytes()).as_bytes()
}

/// One record, ready to append (a FLUSH has none: it makes the file durable).
pub(crate) fn encode(op: &Op, key: &[u8; 32]) -> Option<Vec<u8>> {
    let (kind, offset, len, data) = match op {
        Op::Write { offset, data, .. } => (WRITE, *offset, data.len() as u32, &data[..]),
        Op::Zero { offset, len, .. } => (ZERO, *offset, *len, &[][..]),
        Op::Trim { offset, len } => (TRIM, *offset, *len, &[][..]),
        Op::Flush => return None,
    };
    let mut rec = Vec::with_capacity(HEAD + data.len() + SUM);
    rec.push(kind);
    rec.extend_from_slice(&offset.to_be_bytes());
    rec.extend_from_slice(&len.to_be_bytes());
    rec.extend_from_slice(data);
    let sum = blake3::keyed_hash(key, &rec);
    rec.extend_from_slice(&sum.as_bytes()[..SUM]);
    Some(rec)
}

/// The changes of a log, in order, up to the first record that is torn or damaged; and
/// whether the whole log was read.
pub(crate) fn decode(log: &[u8], key: &[u8; 32]) -> (Vec<Op>, bool) {
    let mut r = LogReader { source: log, key: *key, used: 0 };
    let ops: Vec<Op> = std::iter::from_fn(|| r.next_change()).collect();
    (ops, r.used == log.len())
}

fn decode_one(log: &[u8], key: &[u8; 32]) -> Option<(Op, usize)> {
    let head = log.get(..HEAD)?;
    let kind = head[0];
    let offset = u64::from_be_bytes(head[1..9].try_into().ok()?);
    let len = u32::from_be_bytes(head[9..13].try_into().ok()?);
    let data_len = if kind == WRITE { len as usize } else { 0 };
    if data_len > MAX_DATA {
        return None;
    }
    let body = log.get(..HEAD + data_len)?;
    let sum = log.get(HEAD + data_len..HEAD + data_len + SUM)?;
    if blake3::keyed_hash(key, body).as_bytes()[..SUM] != *sum {
        return None;
    }
    let op = match kind {
        WRITE => Op::Write { offset, data: Bytes::copy_from_slice(&body[HEAD..]), fua: false },
        ZERO => Op::Zero { offset, len, fua: false },
        TRIM => Op::Trim { offset, len },
        _ => return None,
    };
    Some((op, HEAD + data_len + SUM))
}

/// A log read in order, one record in memory at a time: a log holds up to the rotation size
/// of changes and more.
pub(crate) struct LogReader<R = BufReader<File>> {
    source: R,
    key: [u8; 32],
    /// Bytes of the records read.
    used: usize,
}

impl<R: Read> LogReader<R> {
    /// The next change; None at the end, and at a record that is torn, damaged or not of
    /// this session (what an older session left in a reused file).
    pub(crate) fn next_change(&mut self) -> Option<Op> {
        let mut head = [0u8; HEAD];
        self.source.read_exact(&mut head).ok()?;
        let len = u32::from_be_bytes(head[9..13].try_into().ok()?) as usize;
        let data_len = if head[0] == WRITE { len } else { 0 };
        if data_len > MAX_DATA {
            return None;
        }
        let mut record = vec![0u8; HEAD + data_len + SUM];
        record[..HEAD].copy_from_slice(&head);
        self.source.read_exact(&mut record[HEAD..]).ok()?;
        let (op, used) = decode_one(&record, &self.key)?;
        self.used += used;
        Some(op)
    }
}

/// The standby logs of this gateway, in `DIR/standby` (private: they hold plaintext, as the
/// cache does).
pub(crate) struct Logs {
    dir: PathBuf,
    /// Sessions a primary is connected to now.
    open: Mutex<HashSet<String>>,
}

/// A session's name as the primary chose it: 32 hexadecimal digits.
pub(crate) fn is_session(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Logs {
    pub(crate) fn new(dir: PathBuf) -> std::io::Result<Arc<Logs>> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir.join("spare"))?;
        Ok(Arc::new(Logs { dir, open: Mutex::default() }))
    }

    fn spares(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("spare")) else { return Vec::new() };
        entries.flatten().map(|e| e.path()).collect()
    }

    /// A log no longer needed: kept as a spare, or removed when there are enough.
    fn retire(&self, path: &std::path::Path) {
        let spares = self.spares();
        let name = path.file_name().unwrap_or_default();
        if spares.len() >= SPARES || std::fs::rename(path, self.dir.join("spare").join(name)).is_err() {
            let _ = std::fs::remove_file(path);
        }
    }

    fn path(&self, session: &str) -> PathBuf {
        self.dir.join(format!("{session}.log"))
    }

    /// A new log for `session`, as the device its primary writes to.
    pub(crate) fn create(self: &Arc<Self>, session: &str, size: u64) -> std::io::Result<LogDevice> {
        assert!(is_session(session), "checked by the caller");
        let path = self.path(session);
        if path.exists() {
            return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a session's log is made once"));
        }
        let reused = self.spares().into_iter().find(|spare| std::fs::rename(spare, &path).is_ok());
        let file = match reused {
            Some(_) => OpenOptions::new().write(true).open(&path)?,
            None => OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?,
        };
        self.open.lock().expect("not poisoned").insert(session.to_string());
        let sync = Arc::new(file.try_clone()?);
        let key = session_key(session);
        Ok(LogDevice { logs: self.clone(), session: session.to_string(), size, key, file: Mutex::new((file, 0)), sync })
    }

    /// The changes `session`'s log holds, one record at a time (see [`decode`]).
    pub(crate) fn reader(&self, session: &str) -> std::io::Result<LogReader> {
        let source = BufReader::with_capacity(1 << 20, File::open(self.path(session))?);
        Ok(LogReader { source, key: session_key(session), used: 0 })
    }

    #[cfg(test)]
    fn read(&self, session: &str) -> std::io::Result<Vec<Op>> {
        let mut r = self.reader(session)?;
        Ok(std::iter::from_fn(|| r.next_change()).collect())
    }

    pub(crate) fn remove(&self, session: &str) {
        self.retire(&self.path(session));
    }

    /// Removes every log that is neither in `keep` (a primary's record names it) nor open,
    /// nor written within `quiet` (its record may be newer than `keep`).
    pub(crate) fn collect(&self, keep: &HashSet<String>, quiet: std::time::Duration) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let open = self.open.lock().expect("not poisoned").clone();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(session) = name.strip_suffix(".log") else { continue };
            let idle = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            if !keep.contains(session) && !open.contains(session) && idle.is_some_and(|i| i >= quiet) {
                self.retire(&e.path());
            }
        }
    }

    #[cfg(test)]
    fn sessions(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".log").map(str::to_string))
            .collect();
        v.sort();
        v
    }
}

/// A standby log as its primary writes it over NBD.
pub(crate) struct LogDevice {
    logs: Arc<Logs>,
    session: String,
    size: u64,
    key: [u8; 32],
    /// The file and where the next record goes.
    file: Mutex<(File, u64)>,
    sync: Arc<File>,
}

impl Drop for LogDevice {
    fn drop(&mut self) {
        self.logs.open.lock().expect("not poisoned").remove(&self.session);
    }
}

impl LogDevice {
    fn append(&self, op: &Op) -> Result<(), BlockError> {
        let Some(rec) = encode(op, &self.key) else { return Ok(()) };
        let mut file = self.file.lock().expect("not poisoned");
        let at = file.1;
        file.0.write_all_at(&rec, at).map_err(|e| io_error(&e))?;
        file.1 = at + rec.len() as u64;
        Ok(())
    }

    async fn sync(&self) -> Result<(), BlockError> {
        let f = self.sync.clone();
        match tokio::task::spawn_blocking(move || f.sync_data()).await {
            Ok(r) => r.map_err(|e| io_error(&e)),
            Err(e) => Err(BlockError::Io(e.to_string())),
        }
    }

    async fn change(&self, op: Op, fua: bool) -> Result<(), BlockError> {
        self.append(&op)?;
        if fua {
            self.sync().await?;
        }
        Ok(())
    }
}

fn io_error(e: &std::io::Error) -> BlockError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        BlockError::NoSpace(e.to_string())
    } else {
        BlockError::Io(e.to_string())
    }
}

#[async_trait::async_trait]
impl BlockDevice for LogDevice {
    fn size(&self) -> u64 {
        self.size
    }
    async fn read(&self, _offset: u64, _len: u32) -> Result<Bytes, BlockError> {
        Err(BlockError::Invalid("a standby log is written, never read".into()))
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.change(Op::Write { offset, data, fua }, fua).await
    }
    async fn flush(&self) -> Result<(), BlockError> {
        self.sync().await
    }
    async fn trim(&self, offset: u64, len: u32) -> Result<(), BlockError> {
        self.change(Op::Trim { offset, len }, false).await
    }
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), BlockError> {
        self.change(Op::Zero { offset, len, fua }, fua).await
    }
}

/// Where a log's file is, for the tests.
#[cfg(test)]
fn file_of(logs: &Logs, session: &str) -> PathBuf {
    logs.path(session)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(offset, d)| Op::Write {
                offset,
                data: Bytes::from(d),
                fua: false
            }),
            (any::<u64>(), any::<u32>()).prop_map(|(offset, len)| Op::Zero { offset, len, fua: false }),
            (any::<u64>(), any::<u32>()).prop_map(|(offset, len)| Op::Trim { offset, len }),
        ]
    }

    proptest! {
        #[test]
        fn a_log_reads_back_as_written_and_a_torn_tail_as_a_prefix(ops in proptest::collection::vec(op(), 0..20), cut in any::<usize>()) {
            let log: Vec<u8> = ops.iter().flat_map(|o| encode(o, &K).unwrap()).collect();
            prop_assert_eq!(decode(&log, &K), (ops.clone(), true));
            let cut = if log.is_empty() { 0 } else { cut % log.len() };
            let (prefix, whole) = decode(&log[..cut], &K);
            prop_assert!(ops.starts_with(&prefix));
            // Whole only when the cut falls between two records.
            let kept: usize = prefix.iter().map(|o| encode(o, &K).unwrap().len()).sum();
            prop_assert_eq!(whole, kept == cut);
        }

        #[test]
        fn any_bytes_decode_without_panic(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
            let (ops, _) = decode(&raw, &K);
            // A random record passes its sum only by chance of 2^-128.
            prop_assert!(ops.is_empty());
        }

        #[test]
        fn damage_is_never_read_as_a_change(ops in proptest::collection::vec(op(), 1..8), at in any::<usize>(), flip in 1u8..) {
            let mut log: Vec<u8> = ops.iter().flat_map(|o| encode(o, &K).unwrap()).collect();
            let at = at % log.len();
            log[at] ^= flip;
            let (read, _) = decode(&log, &K);
            // Everything read is what was written, in order: the damaged record and those after it are not.
            prop_assert!(ops.starts_with(&read) && read.len() < ops.len());
        }
    }

    fn logs() -> (tempfile::TempDir, Arc<Logs>) {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(dir.path().join("standby")).unwrap();
        (dir, logs)
    }

    const A: &str = "0123456789abcdef0123456789abcdef";
    const K: [u8; 32] = [7; 32];
    const B: &str = "fedcba9876543210fedcba9876543210";

    #[tokio::test]
    async fn a_device_keeps_changes_and_refuses_reads() {
        let (_dir, logs) = logs();
        let d = logs.create(A, 1 << 20).unwrap();
        d.write(4096, Bytes::from_static(b"hello"), false).await.unwrap();
        d.write_zeroes(0, 512, true).await.unwrap();
        d.trim(8192, 4096).await.unwrap();
        d.flush().await.unwrap();
        assert!(matches!(d.read(0, 512).await, Err(BlockError::Invalid(_))));
        let ops = logs.read(A).unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0], Op::Write { offset: 4096, data: Bytes::from_static(b"hello"), fua: false });
        assert!(logs.create(A, 1 << 20).is_err(), "a session's log is made once");
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(file_of(&logs, A)).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn collecting_keeps_named_and_open_logs() {
        let (_dir, logs) = logs();
        let a = logs.create(A, 4096).unwrap();
        drop(logs.create(B, 4096).unwrap());
        logs.collect(&HashSet::new(), Duration::from_secs(60));
        assert_eq!(logs.sessions(), vec![A.to_string(), B.to_string()], "written just now: both stay");
        logs.collect(&HashSet::new(), Duration::ZERO);
        assert_eq!(logs.sessions(), vec![A.to_string()], "the open one stays");
        drop(a);
        logs.collect(&HashSet::from([A.to_string()]), Duration::ZERO);
        assert_eq!(logs.sessions(), vec![A.to_string()], "the named one stays");
        logs.collect(&HashSet::new(), Duration::ZERO);
        assert!(logs.sessions().is_empty());
    }

    #[tokio::test]
    async fn a_new_session_writes_over_a_spare_and_reads_none_of_the_old_one() {
        let (_dir, logs) = logs();
        let a = logs.create(A, 1 << 20).unwrap();
        for i in 0..8 {
            a.write(i * 4096, Bytes::from(vec![i as u8; 4096]), false).await.unwrap();
        }
        drop(a);
        let inode = |s: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(file_of(&logs, s)).unwrap());
        let old = inode(A);
        logs.remove(A);
        assert!(logs.sessions().is_empty());
        let b = logs.create(B, 1 << 20).unwrap();
        assert_eq!(inode(B), old, "the spare is written over");
        b.write(0, Bytes::from_static(b"new"), false).await.unwrap();
        // The rest of the file is A's: its records are not B's.
        assert_eq!(logs.read(B).unwrap(), vec![Op::Write { offset: 0, data: Bytes::from_static(b"new"), fua: false }]);
    }
}
