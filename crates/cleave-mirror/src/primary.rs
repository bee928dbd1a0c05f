//! The primary side of one volume's mirror: the host path, the queue of changes in order,
//! the state, and attaching to and detaching from the peer. The dispatcher that sends the
//! queue, replays the journal and copies regions is in `crate::dispatch`.
//!
//! Order: a change takes the range lock of its bytes, is written down in the extents log,
//! gets its sequence number and its place in the queue, and is applied locally, all before
//! the range lock is released. Overlapping changes therefore reach the local volume and the
//! queue in the same order, and the dispatcher never has two overlapping changes in flight.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};

use crate::backlog::{regions, CopySet, Extents, Journal, SharedJournal, EXTENT, REGION};
use crate::error::{MirrorError, Result};
use crate::locks::RangeLocks;
use crate::replica::{EventKind, Events, Replica};
use crate::state::{MirrorState, MirrorView, Mode, OnFailure, Record};
use crate::wire::Op;

/// Bounds of one volume's mirror.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Async: past this many bytes waiting for the link, changes go to the journal (and
    /// hosts wait at twice this, while the journal takes them).
    pub max_lag_bytes: u64,
    /// Past this the journal is dropped and its regions are copied instead.
    pub journal_bytes: u64,
    /// Changes in flight to the mirror at once.
    pub window: usize,
    /// Regions read for copying at once.
    pub copy_parallel: usize,
    /// Async: how long a few changes wait for more to go with them (see `crate::dispatch`).
    pub gather_wait: std::time::Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_lag_bytes: 64 << 20,
            journal_bytes: 1 << 30,
            window: 64,
            copy_parallel: 4,
            gather_wait: std::time::Duration::from_millis(1),
        }
    }
}

/// A volume's link to its mirror while attached.
#[async_trait::async_trait]
pub trait Channel: Send + Sync {
    async fn send(&self, op: Op) -> Result<()>;
    /// Tells the mirror whether its image is crash-consistent from now on.
    async fn mark_consistent(&self, consistent: bool) -> Result<()>;
}

/// Where the queue's changes go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not attached: changes go to the journal (or the bitmap, past its bound).
    Behind,
    /// Attached, sending the journal from this byte; new changes go to its end.
    Replaying { next: u64 },
    /// Attached, sending changes and copying regions.
    Copying,
    /// Attached and in sync.
    Live,
}

/// Why a detached volume stays detached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hold {
    Paused,
    SplitBrain(String),
}

/// What a queued entry does.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Op(Op),
    /// A flush, then telling the mirror it is consistent: the end of a copy.
    Consistent,
    /// Telling the mirror it is not consistent: before regions are copied.
    Inconsistent,
}

/// Where an entry came from: a replayed one is still in the journal if it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Host,
    Copy,
    Replay,
}

pub(crate) struct Entry {
    pub seq: u64,
    pub item: Item,
    pub source: Source,
    pub waiter: Option<oneshot::Sender<Result<()>>>,
}

impl Entry {
    pub(crate) fn range(&self) -> std::ops::Range<u64> {
        match &self.item {
            Item::Op(op) => op.range(),
            _ => 0..0,
        }
    }
    /// Nothing is sent with it in flight, and it waits for everything before it.
    pub(crate) fn is_barrier(&self) -> bool {
        !matches!(self.item, Item::Op(Op::Write { .. } | Op::Zero { .. } | Op::Trim { .. }))
    }
    pub(crate) fn bytes(&self) -> u64 {
        match &self.item {
            Item::Op(op) => op.payload(),
            _ => 0,
        }
    }
}

pub(crate) struct Queue {
    pub next_seq: u64,
    pub pending: VecDeque<Entry>,
    pub pending_bytes: u64,
    pub inflight_bytes: u64,
    pub inflight_count: u64,
    pub phase: Phase,
    pub hold: Option<Hold>,
    pub channel: Option<Arc<dyn Channel>>,
    pub overflowed: bool,
    pub copy: CopySet,
    pub copy_total: u64,
    pub copy_done: u64,
    pub copiers: usize,
    /// The last sequence number written to each extent.
    pub extent_seq: HashMap<u64, u64>,
    pub detail: String,
    /// Shown while detached: the heartbeats' view of the peer.
    pub link: MirrorState,
}

/// The primary side of one volume's mirror.
pub struct Primary {
    pub(crate) dir: PathBuf,
    pub(crate) record: Mutex<Record>,
    pub(crate) settings: Settings,
    pub(crate) local: Arc<dyn Replica>,
    pub(crate) events: Arc<dyn Events>,
    pub(crate) ranges: RangeLocks,
    pub(crate) extents: Extents,
    /// Held (shared) from writing an extent down to queueing the change; taken alone to
    /// drop clean extents, so none is dropped under a change not yet queued.
    pub(crate) mark_gate: tokio::sync::RwLock<()>,
    pub(crate) journal: SharedJournal,
    pub(crate) q: Mutex<Queue>,
    pub(crate) wake: Notify,
    pub(crate) room: Notify,
    /// A sync change went without the mirror since it was last in sync (one event).
    pub(crate) degraded: AtomicBool,
}

impl Primary {
    /// Opens a volume's primary side from its directory: the journal and the extents log as
    /// a crash left them (every region of a listed extent is copied again). Nothing is sent
    /// until `crate::dispatch::start` runs its dispatcher.
    pub fn open(
        dir: &Path,
        record: Record,
        local: Arc<dyn Replica>,
        events: Arc<dyn Events>,
        settings: Settings,
    ) -> Result<Arc<Primary>> {
        crate::files::private_dir(dir)?;
        record.store(&dir.join("record.json"))?;
        let (extents, listed) = Extents::open(&dir.join("extents"))?;
        let journal = Journal::open(&dir.join("journal"))?;
        let mut copy = CopySet::default();
        for e in listed {
            copy.add_range(e * EXTENT..((e + 1) * EXTENT).min(record.size));
        }
        if let Some(from) = record.sweep {
            copy.sweep(from, record.size.div_ceil(REGION));
        }
        let copy_total = copy.len();
        let q = Queue {
            next_seq: 1,
            pending: VecDeque::new(),
            pending_bytes: 0,
            inflight_bytes: 0,
            inflight_count: 0,
            phase: Phase::Behind,
            hold: record.paused.then_some(Hold::Paused),
            channel: None,
            overflowed: false,
            copy,
            copy_total,
            copy_done: 0,
            copiers: 0,
            extent_seq: HashMap::new(),
            detail: "not connected yet".into(),
            link: MirrorState::Disconnected,
        };
        let p = Arc::new(Primary {
            dir: dir.to_path_buf(),
            record: Mutex::new(record),
            settings,
            local,
            events,
            ranges: RangeLocks::default(),
            extents,
            mark_gate: tokio::sync::RwLock::new(()),
            journal: Arc::new(Mutex::new(journal)),
            q: Mutex::new(q),
            wake: Notify::new(),
            room: Notify::new(),
            degraded: AtomicBool::new(false),
        });
        Ok(p)
    }

    pub fn record(&self) -> Record {
        self.record.lock().expect("not poisoned").clone()
    }

    pub(crate) fn update_record(&self, f: impl FnOnce(&mut Record)) -> Result<()> {
        let mut r = self.record.lock().expect("not poisoned");
        f(&mut r);
        r.store(&self.dir.join("record.json"))?;
        Ok(())
    }

    pub(crate) fn volume(&self) -> String {
        self.record.lock().expect("not poisoned").volume.clone()
    }

    /// Applies a host's change: locally through `local`, and to the mirror as the mode says.
    /// The outer error is the mirror's (sync mode with policy `fail`); the inner one the
    /// local volume's.
    pub async fn apply<E, Fut>(&self, op: Op, local: impl FnOnce(Op) -> Fut) -> Result<Result<(), E>>
    where
        Fut: Future<Output = std::result::Result<(), E>>,
    {
        let (mode, on_failure) = {
            let r = self.record.lock().expect("not poisoned");
            (r.mode, r.on_failure)
        };
        self.wait_for_room(mode).await;
        let range = op.range();
        let _lock = if range.is_empty() { None } else { Some(self.ranges.lock(range.clone()).await) };
        let waiter = {
            let _gate = self.mark_gate.read().await;
            self.extents.mark(range.clone()).await?;
            let wants_ack = mode == Mode::Sync;
            self.enqueue(Item::Op(op.clone()), Source::Host, wants_ack)
        };
        let local = local(op).await;
        if local.is_err() && !range.is_empty() {
            // The mirror may get what the local volume did not take: copy it again.
            self.q.lock().expect("not poisoned").copy.add_range(range);
            self.wake.notify_one();
        }
        drop(_lock);
        let Some(waiter) = waiter else { return Ok(local) };
        match waiter.await.unwrap_or_else(|_| Err(MirrorError::LinkDown("the mirror stopped".into()))) {
            Ok(()) => Ok(local),
            Err(e) => {
                self.degraded(on_failure, &e);
                match on_failure {
                    OnFailure::Fail => Err(e),
                    OnFailure::Degrade => Ok(local),
                }
            }
        }
    }

    /// A sync change the mirror did not take: one event until the mirror is in sync again.
    fn degraded(&self, on_failure: OnFailure, e: &MirrorError) {
        if self.degraded.swap(true, Ordering::AcqRel) {
            return;
        }
        let what = match on_failure {
            OnFailure::Degrade => "sync writes are acknowledged without the mirror (policy degrade)",
            OnFailure::Fail => "sync writes fail while the mirror cannot take them (policy fail)",
        };
        let why = format!("{what}: {e}; the changes are kept for the mirror");
        self.events.event(&self.volume(), EventKind::Degraded, why);
    }

    /// Async mode: waits while changes not yet sent or journaled pass twice the lag bound
    /// (past the bound itself the dispatcher moves them to the journal).
    async fn wait_for_room(&self, mode: Mode) {
        if mode != Mode::Async {
            return;
        }
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.q.lock().expect("not poisoned").pending_bytes <= self.settings.max_lag_bytes * 2 {
                return;
            }
            notified.await;
        }
    }

    /// Queues an entry with the next sequence number; the receiver, if any, hears how it went.
    pub(crate) fn enqueue(&self, item: Item, source: Source, wants_ack: bool) -> Option<oneshot::Receiver<Result<()>>> {
        let (tx, rx) = if wants_ack {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let mut q = self.q.lock().expect("not poisoned");
        let seq = q.next_seq;
        q.next_seq += 1;
        let entry = Entry { seq, item, source, waiter: tx };
        for e in extent_span(entry.range()) {
            q.extent_seq.insert(e, seq);
        }
        // An async host change that joins others gathering to be sent needs no wakeup: the
        // dispatcher's timer or the change that fills the batch will come.
        let joins = source == Source::Host && entry.waiter.is_none() && !entry.is_barrier();
        q.pending_bytes += entry.bytes();
        q.pending.push_back(entry);
        let quiet = joins && q.pending.len() > 1 && crate::dispatch::gathering(&q);
        drop(q);
        if !quiet {
            self.wake.notify_one();
        }
        rx
    }

    /// What to send with the attach request: this side's generation.
    pub fn generation(&self) -> String {
        self.record.lock().expect("not poisoned").generation.clone()
    }

    /// Whether the mirror stays consistent through the coming resync (no region to copy).
    pub fn resync_keeps_order(&self) -> bool {
        let q = self.q.lock().expect("not poisoned");
        q.copy.is_empty() && !q.overflowed
    }

    /// Whether the engine should try to attach this volume.
    pub fn wants_attach(&self) -> bool {
        let q = self.q.lock().expect("not poisoned");
        q.channel.is_none() && q.phase == Phase::Behind && !matches!(q.hold, Some(Hold::Paused))
    }

    /// Attached: `discarded` are regions the peer wrote while it was split from us.
    /// With `full_copy`, every region is copied (the peer missed a generation).
    pub async fn attach(&self, channel: Arc<dyn Channel>, discarded: &[u64], full_copy: bool) -> Result<()> {
        if full_copy {
            self.update_record(|r| r.sweep = Some(0))?;
        }
        // The peer's numbers: only regions of this volume count.
        let regions = self.local.size().div_ceil(REGION);
        let discarded: Vec<u64> = discarded.iter().copied().filter(|&r| r < regions).collect();
        for &r in &discarded {
            self.extents.mark(r * REGION..(r * REGION + 1)).await?;
        }
        let mut q = self.q.lock().expect("not poisoned");
        for &r in &discarded {
            q.copy.add_region(r);
        }
        if full_copy {
            q.copy.sweep(0, self.local.size().div_ceil(REGION));
        }
        if q.overflowed {
            q.overflowed = false;
        }
        let replay = !self.journal.lock().expect("not poisoned").is_empty();
        q.phase = if replay { Phase::Replaying { next: 0 } } else { Phase::Copying };
        q.copy_total = q.copy.len();
        q.copy_done = 0;
        q.hold = None;
        q.channel = Some(channel);
        q.detail.clear();
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    /// The link is gone (or the peer refused): changes go to the journal again.
    pub fn detach(&self, why: &str, state: MirrorState) {
        let mut q = self.q.lock().expect("not poisoned");
        q.link = state;
        if q.channel.take().is_some() {
            q.detail = why.to_string();
            drop(q);
            self.events.event(&self.volume(), EventKind::Disconnected, why.to_string());
            self.wake.notify_one();
        }
    }

    /// What the heartbeats say of the peer while detached.
    pub fn set_link_state(&self, state: MirrorState, detail: &str) {
        let mut q = self.q.lock().expect("not poisoned");
        q.link = state;
        if q.channel.is_none() && !detail.is_empty() {
            q.detail = detail.to_string();
        }
    }

    pub fn split_brain(&self, why: &str) {
        let mut q = self.q.lock().expect("not poisoned");
        let first = !matches!(q.hold, Some(Hold::SplitBrain(_)));
        q.hold = Some(Hold::SplitBrain(why.to_string()));
        q.detail = why.to_string();
        drop(q);
        if first {
            self.events.event(&self.volume(), EventKind::SplitBrain, why.to_string());
        }
    }

    pub fn pause(&self) -> Result<()> {
        self.update_record(|r| r.paused = true)?;
        let mut q = self.q.lock().expect("not poisoned");
        q.hold = Some(Hold::Paused);
        q.channel = None;
        q.detail = "paused by an administrator".into();
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    pub fn resume(&self) -> Result<()> {
        self.update_record(|r| r.paused = false)?;
        let mut q = self.q.lock().expect("not poisoned");
        if q.hold == Some(Hold::Paused) {
            q.hold = None;
        }
        Ok(())
    }

    /// Waits until every change queued so far is on the mirror and durable there.
    pub async fn drain(&self) -> Result<()> {
        if self.q.lock().expect("not poisoned").phase != Phase::Live {
            return Err(MirrorError::Invalid("the mirror is not in sync".into()));
        }
        let rx = self.enqueue(Item::Op(Op::Flush), Source::Host, true).expect("asked for one");
        rx.await.unwrap_or_else(|_| Err(MirrorError::LinkDown("the mirror stopped".into())))
    }

    /// Regions this side changed that the peer may not have: what a split brain's
    /// discarded side gives the survivor to copy.
    pub fn changed_regions(&self) -> Vec<u64> {
        let q = self.q.lock().expect("not poisoned");
        let mut out: Vec<u64> = q.copy.regions().collect();
        out.extend(self.journal.lock().expect("not poisoned").touched());
        for e in self.extents.persisted() {
            out.extend(regions(e * EXTENT..(e + 1) * EXTENT));
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn view(&self) -> MirrorView {
        let r = self.record();
        let q = self.q.lock().expect("not poisoned");
        let j = self.journal.lock().expect("not poisoned");
        let state = match (&q.hold, q.phase) {
            (Some(Hold::Paused), _) => MirrorState::Paused,
            (Some(Hold::SplitBrain(_)), _) => MirrorState::SplitBrain,
            (None, Phase::Live) => MirrorState::InSync,
            (None, Phase::Replaying { .. } | Phase::Copying) => MirrorState::Resyncing,
            (None, Phase::Behind) => q.link,
        };
        MirrorView {
            volume: r.volume.clone(),
            role: r.role,
            peer: r.peer.clone(),
            mode: r.mode,
            on_failure: r.on_failure,
            state,
            lag_bytes: q.pending_bytes + q.inflight_bytes + j.bytes(),
            lag_changes: q.pending.len() as u64 + q.inflight_count + j.records(),
            resync_done: q.copy_done,
            resync_total: q.copy_total.max(q.copy_done),
            journal_bytes: j.bytes(),
            journal_records: j.records(),
            bitmap_regions: q.copy.len(),
            journal_overflowed: q.overflowed,
            generation: r.generation,
            consistent: true,
            detail: q.detail.clone(),
        }
    }
}

/// The extents of a byte range.
pub(crate) fn extent_span(range: std::ops::Range<u64>) -> std::ops::Range<u64> {
    if range.is_empty() {
        return 0..0;
    }
    range.start / EXTENT..range.end.div_ceil(EXTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{record, taker, Quiet, Zeros};

    /// A lying peer's region numbers beyond the volume are ignored, never multiplied into an
    /// overflow.
    #[tokio::test]
    async fn discarded_regions_beyond_the_volume_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = Primary::open(dir.path(), record(Mode::Sync), Arc::new(Zeros), Arc::new(Quiet), Settings::default())
            .unwrap();
        p.attach(taker(), &[3, 8, u64::MAX / 2, u64::MAX], false).await.unwrap();
        let regions: Vec<u64> = p.q.lock().unwrap().copy.regions().collect();
        assert_eq!(regions, vec![3]);
    }
}
