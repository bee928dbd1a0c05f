//! The dispatcher of one volume's mirror: one task that sends the queue in order, replays the
//! journal, starts region copies, and journals what the peer did not take.
//!
//! Rules that keep the mirror's image right:
//! - two changes to overlapping bytes are never in flight at once: the later waits;
//! - a flush (a barrier) goes alone, after everything before it, and nothing after it goes
//!   before it is answered: the mirror is crash-consistent between barriers;
//! - a change the peer did not answer is journaled again before any later one;
//! - while the journal is replayed, new changes go to its end, so nothing old lands on
//!   anything newer.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tracing::{info, warn};

use crate::backlog::REGION;
use crate::error::{MirrorError, Result};
use crate::primary::{Channel, Entry, Item, Phase, Primary, Queue, Source};
use crate::replica::EventKind;
use crate::state::{MirrorState, Mode};
use crate::wire::Op;

type Sent = BoxFuture<'static, (u64, Entry, Result<()>)>;

/// The dispatcher's own state.
#[derive(Default)]
struct Flight {
    futures: FuturesUnordered<Sent>,
    /// Tag, bytes, whether a barrier.
    ranges: Vec<(u64, Range<u64>, bool)>,
    next_tag: u64,
    /// Changes the peer did not take, to journal before anything queued.
    failed: Vec<Entry>,
    /// Journal records read ahead for replay.
    replay: VecDeque<Op>,
    consistent_queued: bool,
    last_flush: Option<Instant>,
    last_compaction: Option<Instant>,
    written_since_flush: bool,
    /// When the last lag event was recorded.
    lag_event: Option<Instant>,
    /// This lag episode had no event, so its end has none either.
    quiet_catch_up: bool,
    /// Since when changes wait to be sent together (async).
    gather_since: Option<Instant>,
}

const LAG_EVENT_EVERY: Duration = Duration::from_secs(60);

/// Runs the dispatcher of `p` until it is dropped.
pub(crate) fn start(p: &Arc<Primary>) {
    tokio::spawn(run(Arc::downgrade(p)));
}

async fn run(weak: Weak<Primary>) {
    let mut f = Flight::default();
    loop {
        let Some(p) = weak.upgrade() else { return };
        let wake = p.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        if let Err(e) = step(&p, &mut f).await {
            warn!(error = %e, "mirror dispatcher");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let gather_since = f.gather_since;
        tokio::select! {
            Some((tag, entry, result)) = f.futures.next(), if !f.futures.is_empty() => complete(&p, &mut f, tag, entry, result).await,
            _ = &mut wake => {}
            _ = gather_deadline(gather_since, p.settings.gather_wait), if gather_since.is_some() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => tick(&p, &mut f),
        }
    }
}

async fn gather_deadline(since: Option<Instant>, wait: Duration) {
    if let Some(since) = since {
        tokio::time::sleep_until((since + wait).into()).await;
    }
}

/// One round: journal, replay, send or copy, as the phase says.
async fn step(p: &Arc<Primary>, f: &mut Flight) -> Result<()> {
    let (phase, channel) = {
        let mut q = p.q.lock().expect("not poisoned");
        if q.channel.is_none() && q.phase != Phase::Behind {
            q.phase = Phase::Behind;
            f.replay.clear();
            f.consistent_queued = false;
        }
        (q.phase, q.channel.clone())
    };
    if phase != Phase::Live {
        f.gather_since = None;
    }
    match (phase, channel) {
        (Phase::Behind, _) | (_, None) => {
            if f.futures.is_empty() {
                journal_queued(p, f).await?;
            }
            Ok(())
        }
        (Phase::Replaying { next }, Some(ch)) => {
            // Changes sent before a spill go first: one that fails is journaled before these.
            if p.q.lock().expect("not poisoned").inflight_count == 0 {
                journal_queued(p, f).await?;
            }
            replay(p, f, next, &ch).await
        }
        (Phase::Copying | Phase::Live, Some(ch)) => {
            if spill_if_lagging(p, f) {
                return Ok(());
            }
            send_queued(p, f, &ch);
            copy_or_finish(p, f);
            Ok(())
        }
    }
}

/// Async and in sync, with more waiting than the lag bound: the waiting changes go to the
/// journal and are replayed from there in order, so hosts do not wait for the link.
fn spill_if_lagging(p: &Arc<Primary>, f: &mut Flight) -> bool {
    let mode = p.record.lock().expect("not poisoned").mode;
    let mut q = p.q.lock().expect("not poisoned");
    let lagging = mode == Mode::Async
        && q.phase == Phase::Live
        && q.pending_bytes > p.settings.max_lag_bytes
        && q.pending.iter().all(|e| matches!(e.item, Item::Op(_)));
    if !lagging {
        return false;
    }
    q.phase = Phase::Replaying { next: 0 };
    drop(q);
    // At most one event a minute: a link near its capacity may spill often.
    let quiet = f.lag_event.is_some_and(|t| t.elapsed() < LAG_EVENT_EVERY);
    f.quiet_catch_up = quiet;
    if !quiet {
        f.lag_event = Some(Instant::now());
        let why = format!(
            "the mirror lags by more than {} MiB; changes go to the journal until it catches up",
            p.settings.max_lag_bytes >> 20
        );
        p.events.event(&p.volume(), EventKind::Lagging, why);
    }
    p.wake.notify_one();
    true
}

fn can_send(f: &Flight, window: usize, range: &Range<u64>, barrier: bool) -> bool {
    if f.ranges.iter().any(|(_, _, b)| *b) {
        return false;
    }
    if barrier {
        return f.ranges.is_empty();
    }
    f.ranges.len() < window && !f.ranges.iter().any(|(_, r, _)| r.start < range.end && range.start < r.end)
}

fn launch(f: &mut Flight, ch: &Arc<dyn Channel>, entry: Entry) {
    let tag = f.next_tag;
    f.next_tag += 1;
    f.ranges.push((tag, entry.range(), entry.is_barrier()));
    let ch = ch.clone();
    f.futures.push(
        async move {
            let r = match &entry.item {
                Item::Op(op) => ch.send(op.clone()).await,
                Item::Consistent => match ch.send(Op::Flush).await {
                    Ok(()) => ch.mark_consistent(true).await,
                    Err(e) => Err(e),
                },
                Item::Inconsistent => ch.mark_consistent(false).await,
            };
            (tag, entry, r)
        }
        .boxed(),
    );
}

/// Async and in sync: fewer changes waiting than this, of fewer bytes, wait up to
/// `Settings::gather_wait` for more. Hosts do not wait for the mirror in async, so their changes come
/// one by one; sent so, each costs both sides a TLS record, a write and a wakeup, and the
/// peer's answers as many again. Async promises a bounded lag, not a prompt one.
const GATHER_CHANGES: usize = 32;
const GATHER_BYTES: u64 = 1 << 20;

/// Whether the changes waiting are too few to send yet, if the mode is async. A change
/// somebody waits for (a drain before a switchover) goes at once.
pub(crate) fn gathering(q: &Queue) -> bool {
    q.phase == Phase::Live
        && !q.pending.is_empty()
        && q.pending.len() < GATHER_CHANGES
        && q.pending_bytes < GATHER_BYTES
        && q.pending.iter().all(|e| e.waiter.is_none())
}

/// Sends queued changes in order while the rules allow.
fn send_queued(p: &Arc<Primary>, f: &mut Flight, ch: &Arc<dyn Channel>) {
    let mode = p.record.lock().expect("not poisoned").mode;
    let mut q = p.q.lock().expect("not poisoned");
    if mode == Mode::Async && gathering(&q) {
        let since = *f.gather_since.get_or_insert_with(Instant::now);
        if since.elapsed() < p.settings.gather_wait {
            return;
        }
    }
    f.gather_since = None;
    let mut sent_any = false;
    while let Some(head) = q.pending.front() {
        if !can_send(f, p.settings.window, &head.range(), head.is_barrier()) {
            break;
        }
        let entry = q.pending.pop_front().expect("has a head");
        q.pending_bytes -= entry.bytes();
        q.inflight_bytes += entry.bytes();
        q.inflight_count += 1;
        if matches!(entry.item, Item::Op(Op::Flush)) {
            f.last_flush = Some(Instant::now());
            f.written_since_flush = false;
        } else if entry.bytes() > 0 {
            f.written_since_flush = true;
        }
        launch(f, ch, entry);
        sent_any = true;
    }
    drop(q);
    if sent_any {
        p.room.notify_waiters();
    }
}

/// Copying: starts region copies; when none is left, queues the end of the resync.
fn copy_or_finish(p: &Arc<Primary>, f: &mut Flight) {
    let mut q = p.q.lock().expect("not poisoned");
    if q.phase == Phase::Live && !q.copy.is_empty() {
        q.phase = Phase::Copying;
        f.consistent_queued = false;
        drop(q);
        p.enqueue(Item::Inconsistent, Source::Copy, false);
        return;
    }
    if q.phase != Phase::Copying {
        return;
    }
    while q.copiers < p.settings.copy_parallel && q.pending_bytes < p.settings.max_lag_bytes / 2 {
        let Some(region) = q.copy.pop() else { break };
        q.copiers += 1;
        tokio::spawn(copy_region(p.clone(), region));
    }
    if q.copy.is_empty() && q.copiers == 0 && !f.consistent_queued {
        f.consistent_queued = true;
        drop(q);
        p.enqueue(Item::Consistent, Source::Copy, false);
    }
}

/// Reads one region locally, under its range lock, and queues it.
async fn copy_region(p: Arc<Primary>, region: u64) {
    let size = p.local.size();
    let start = region * REGION;
    let end = (start + REGION).min(size);
    if start < end {
        let _lock = p.ranges.lock(start..end).await;
        let len = (end - start) as u32;
        match p.local.read(start, len).await {
            Ok(data) if data.iter().all(|&b| b == 0) => {
                p.enqueue(Item::Op(Op::Zero { offset: start, len, fua: false }), Source::Copy, false);
            }
            Ok(data) => {
                p.enqueue(Item::Op(Op::Write { offset: start, data, fua: false }), Source::Copy, false);
            }
            Err(e) => {
                {
                    let mut q = p.q.lock().expect("not poisoned");
                    q.copy.add_region(region);
                    q.detail = format!("reading region {region} to copy it: {e}");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let mut q = p.q.lock().expect("not poisoned");
    q.copiers -= 1;
    q.copy_done += 1;
    let sweep = q.copy_done.is_multiple_of(256).then(|| q.copy.sweep_position());
    drop(q);
    if let Some(sweep) = sweep {
        let _ = p.update_record(|r| r.sweep = sweep);
    }
    p.wake.notify_one();
}

/// Replaying: sends journal records in order from byte `next`.
async fn replay(p: &Arc<Primary>, f: &mut Flight, next: u64, ch: &Arc<dyn Channel>) -> Result<()> {
    if f.replay.is_empty() {
        let j = p.journal.clone();
        let (ops, after) = tokio::task::spawn_blocking(move || j.lock().expect("not poisoned").read_from(next, 256))
            .await
            .map_err(|e| MirrorError::Local(e.to_string()))??;
        if ops.is_empty() {
            if f.futures.is_empty() {
                finish_replay(p, f).await?;
            }
            return Ok(());
        }
        f.replay.extend(ops);
        let mut q = p.q.lock().expect("not poisoned");
        if let Phase::Replaying { .. } = q.phase {
            q.phase = Phase::Replaying { next: after };
        }
    }
    while let Some(op) = f.replay.front() {
        let barrier = matches!(op, Op::Flush);
        if !can_send(f, p.settings.window, &op.range(), barrier) {
            break;
        }
        let op = f.replay.pop_front().expect("has a head");
        launch(f, ch, Entry { seq: 0, item: Item::Op(op), source: Source::Replay, waiter: None });
    }
    Ok(())
}

async fn finish_replay(p: &Arc<Primary>, f: &mut Flight) -> Result<()> {
    let j = p.journal.clone();
    tokio::task::spawn_blocking(move || j.lock().expect("not poisoned").clear())
        .await
        .map_err(|e| MirrorError::Local(e.to_string()))??;
    let mut q = p.q.lock().expect("not poisoned");
    q.phase = Phase::Copying;
    f.consistent_queued = false;
    if !q.copy.is_empty() {
        drop(q);
        p.enqueue(Item::Inconsistent, Source::Copy, false);
    }
    info!(volume = %p.volume(), "journal replayed");
    Ok(())
}

/// Detached (or replaying): moves the queue to the journal, failed changes first.
async fn journal_queued(p: &Arc<Primary>, f: &mut Flight) -> Result<()> {
    let mut entries = std::mem::take(&mut f.failed);
    entries.sort_by_key(|e| e.seq);
    {
        let mut q = p.q.lock().expect("not poisoned");
        q.pending_bytes = 0;
        entries.extend(q.pending.drain(..));
    }
    if entries.is_empty() {
        return Ok(());
    }
    p.room.notify_waiters();
    let limit = p.settings.journal_bytes;
    let j = p.journal.clone();
    let overflowed = p.q.lock().expect("not poisoned").overflowed;
    let ops: Vec<Op> =
        entries.iter().filter_map(|e| if let Item::Op(op) = &e.item { Some(op.clone()) } else { None }).collect();
    let outcome = tokio::task::spawn_blocking(move || journal_ops(&j, ops, overflowed, limit))
        .await
        .map_err(|e| MirrorError::Local(e.to_string()))?;
    let (to_copy, newly_overflowed) = outcome?;
    {
        let mut q = p.q.lock().expect("not poisoned");
        for r in to_copy {
            q.copy.add_region(r);
        }
        q.overflowed |= newly_overflowed;
    }
    if newly_overflowed {
        let why = format!("the journal passed {} MiB; the regions it touched will be copied instead", limit >> 20);
        p.events.event(&p.volume(), EventKind::JournalOverflow, why);
    }
    for e in entries {
        if let Some(w) = e.waiter {
            let _ = w.send(Err(MirrorError::LinkDown("journaled for the mirror".into())));
        }
    }
    Ok(())
}

/// Appends ops to the journal, or, past its bound, drops it: the regions to copy instead.
fn journal_ops(
    j: &crate::backlog::SharedJournal,
    ops: Vec<Op>,
    overflowed: bool,
    limit: u64,
) -> Result<(Vec<u64>, bool)> {
    let mut j = j.lock().expect("not poisoned");
    let mut to_copy = Vec::new();
    if overflowed {
        for op in &ops {
            to_copy.extend(crate::backlog::regions(op.range()));
        }
        return Ok((to_copy, false));
    }
    j.append_all(&ops)?;
    let flush = ops.iter().any(|op| matches!(op, Op::Flush));
    if j.bytes() > limit {
        to_copy.extend(j.touched());
        j.clear()?;
        return Ok((to_copy, true));
    }
    if flush {
        j.sync()?;
    }
    Ok((to_copy, false))
}

async fn complete(p: &Arc<Primary>, f: &mut Flight, tag: u64, entry: Entry, result: Result<()>) {
    f.ranges.retain(|(t, _, _)| *t != tag);
    {
        let mut q = p.q.lock().expect("not poisoned");
        if entry.source != Source::Replay {
            q.inflight_bytes -= entry.bytes();
            q.inflight_count -= 1;
        }
    }
    match result {
        Ok(()) => succeeded(p, f, entry).await,
        Err(e) => {
            p.detach(&e.to_string(), MirrorState::Disconnected);
            f.replay.clear();
            if entry.source != Source::Replay {
                f.failed.push(entry);
            }
        }
    }
}

async fn succeeded(p: &Arc<Primary>, f: &mut Flight, entry: Entry) {
    if let Some(w) = entry.waiter {
        let _ = w.send(Ok(()));
    }
    match entry.item {
        Item::Consistent => {
            let became_live = {
                let mut q = p.q.lock().expect("not poisoned");
                let live = q.phase == Phase::Copying && q.copy.is_empty() && q.copiers == 0;
                if live {
                    q.phase = Phase::Live;
                    q.detail.clear();
                }
                live
            };
            f.consistent_queued = false;
            if became_live {
                let _ = p.update_record(|r| r.sweep = None);
                p.degraded.store(false, std::sync::atomic::Ordering::Release);
                if !std::mem::take(&mut f.quiet_catch_up) {
                    p.events.event(&p.volume(), EventKind::InSync, "the mirror has every change".into());
                }
            }
        }
        Item::Op(Op::Flush) if entry.source == Source::Host => clean_point(p, f, entry.seq).await,
        _ => {}
    }
}

/// A flush answered while in sync: extents with no change since it are dropped from the log.
async fn clean_point(p: &Arc<Primary>, f: &mut Flight, seq: u64) {
    if f.last_compaction.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
        return;
    }
    let _gate = p.mark_gate.write().await;
    let keep: std::collections::HashSet<u64> = {
        let mut q = p.q.lock().expect("not poisoned");
        if q.phase != Phase::Live || !q.copy.is_empty() || !p.journal.lock().expect("not poisoned").is_empty() {
            return;
        }
        q.extent_seq.retain(|_, s| *s > seq);
        q.extent_seq.keys().copied().collect()
    };
    f.last_compaction = Some(Instant::now());
    if let Err(e) = p.extents.retain(|e| keep.contains(&e)).await {
        warn!(error = %e, "could not shrink the extents log");
    }
}

/// Every second: a flush to the mirror after writes, so that clean points come.
fn tick(p: &Arc<Primary>, f: &mut Flight) {
    let live = p.q.lock().expect("not poisoned").phase == Phase::Live;
    if live && f.written_since_flush && f.last_flush.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
        f.written_since_flush = false;
        p.enqueue(Item::Op(Op::Flush), Source::Host, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primary::Settings;
    use crate::testing::{record, taker, Quiet, Zeros};

    async fn live_async_primary(
        gather_wait: Duration,
    ) -> (tempfile::TempDir, Arc<Primary>, Arc<crate::testing::Taker>) {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings { gather_wait, ..Settings::default() };
        let p = Primary::open(dir.path(), record(Mode::Async), Arc::new(Zeros), Arc::new(Quiet), settings).unwrap();
        start(&p);
        let ch = taker();
        p.attach(ch.clone(), &[], false).await.unwrap();
        while p.q.lock().unwrap().phase != Phase::Live {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (dir, p, ch)
    }

    async fn host_writes(p: &Primary, count: u64) {
        for i in 0..count {
            let op = Op::Write { offset: i * 4096, data: vec![1u8; 4096].into(), fua: false };
            p.apply(op, |_| async { Ok::<(), ()>(()) }).await.unwrap().unwrap();
        }
    }

    async fn wait_for_writes(ch: &crate::testing::Taker, count: usize) -> Vec<Instant> {
        for _ in 0..30_000 {
            if ch.writes.lock().unwrap().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        ch.writes.lock().unwrap().clone()
    }

    /// Async changes that come one by one wait for more before they go.
    #[tokio::test]
    async fn a_few_async_changes_wait_for_more() {
        let wait = Duration::from_millis(300);
        let (_dir, p, ch) = live_async_primary(wait).await;
        let t0 = Instant::now();
        host_writes(&p, 5).await;
        let sent = wait_for_writes(&ch, 5).await;
        assert_eq!(sent.len(), 5);
        assert!(sent.iter().all(|t| *t - t0 >= wait), "sent after {:?}", sent[0] - t0);
    }

    /// A batch's worth of async changes goes without waiting.
    #[tokio::test]
    async fn a_batch_of_async_changes_goes_at_once() {
        let wait = Duration::from_secs(60);
        let (_dir, p, ch) = live_async_primary(wait).await;
        let t0 = Instant::now();
        host_writes(&p, GATHER_CHANGES as u64).await;
        let sent = wait_for_writes(&ch, GATHER_CHANGES).await;
        assert_eq!(sent.len(), GATHER_CHANGES);
        assert!(sent.iter().all(|t| *t - t0 < wait / 2));
    }
}
