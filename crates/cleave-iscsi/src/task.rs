//! The task set of a session (SAM-5 §8): every SCSI command from its arrival to its response,
//! in arrival order, with its task attribute, its share of the session's byte budget and how
//! far it got. Which tasks may start is decided here; running them is [`crate::command`]'s.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::pdu::Pdu;
use crate::scsi::Outcome;
use crate::write::WriteTask;

/// What a task's run ends with: its outcome, and whether it had data-out.
pub type Done = (Outcome, bool);

/// A response that waits for aborted tasks to end.
pub(crate) struct Fence {
    pub(crate) waiting: Vec<u64>,
    pub(crate) response: Pdu,
    /// The connection closes once it is sent.
    pub(crate) close: bool,
}

/// The task attribute of a SCSI Command PDU (RFC 7143 §11.3.1). Untagged and ACA tasks are
/// treated as SIMPLE: NACA is not supported, so no ACA condition exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attr {
    Simple,
    Ordered,
    HeadOfQueue,
}

impl Attr {
    pub fn from_flags(flags: u8) -> Attr {
        match flags & 0x07 {
            2 => Attr::Ordered,
            3 => Attr::HeadOfQueue,
            _ => Attr::Simple,
        }
    }
}

/// How far a task got.
pub enum Stage {
    /// Data-Out still to come.
    Data(WriteTask),
    /// All its data: waits for its budget and its turn.
    Ready(Bytes),
    Running,
    /// Aborted while running: it ends on its own (a device call is never cut short), and
    /// nothing is sent for it.
    Aborted,
}

pub struct Task {
    pub itt: u32,
    pub lun: u64,
    pub cdb: [u8; 16],
    pub edtl: u32,
    pub attr: Attr,
    /// It came in CmdSN order (not immediate): MaxCmdSN moves on when it ends.
    pub slot: bool,
    /// Bytes of the session's budget it holds while it has data; 0 for none.
    pub need: u32,
    pub budget: Option<OwnedSemaphorePermit>,
    pub stage: Stage,
}

impl Task {
    pub fn granted(&self) -> bool {
        self.need == 0 || self.budget.is_some()
    }

    fn runnable(&self) -> bool {
        matches!(self.stage, Stage::Ready(_)) && self.granted()
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// The tasks of one session, by arrival sequence number, with the session's byte budget.
pub struct TaskSet {
    tasks: BTreeMap<u64, Task>,
    by_itt: HashMap<u32, u64>,
    next: u64,
    budget: Arc<Semaphore>,
    capacity: usize,
    /// Tasks waiting for budget, in arrival order: handing it out in that order means a task
    /// never waits for budget held by one that waits for it in turn.
    waiting: VecDeque<u64>,
    /// The wait of the first of them, when the budget ran out.
    pub grant: Option<Acquire>,
}

impl TaskSet {
    /// `budget`: bytes of data the session's tasks may hold at once.
    pub fn new(budget: usize) -> TaskSet {
        let capacity = budget.clamp(1, Semaphore::MAX_PERMITS);
        TaskSet {
            tasks: BTreeMap::new(),
            by_itt: HashMap::new(),
            next: 0,
            budget: Arc::new(Semaphore::new(capacity)),
            capacity,
            waiting: VecDeque::new(),
            grant: None,
        }
    }

    /// The whole budget: no task needs more.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether a task with this ITT is in the set.
    pub fn has_itt(&self, itt: u32) -> bool {
        self.by_itt.contains_key(&itt)
    }

    pub fn seq_of(&self, itt: u32) -> Option<u64> {
        self.by_itt.get(&itt).copied()
    }

    pub fn get_mut(&mut self, seq: u64) -> Option<&mut Task> {
        self.tasks.get_mut(&seq)
    }

    /// Adds a task (its ITT not in the set); one that needs budget queues for it.
    pub fn insert(&mut self, task: Task) -> u64 {
        let seq = self.next;
        self.next += 1;
        self.by_itt.insert(task.itt, seq);
        if task.need > 0 {
            self.waiting.push_back(seq);
        }
        self.tasks.insert(seq, task);
        seq
    }

    pub fn remove(&mut self, seq: u64) -> Option<Task> {
        let task = self.tasks.remove(&seq)?;
        self.by_itt.remove(&task.itt);
        if self.waiting.front() == Some(&seq) {
            self.grant = None;
        }
        self.waiting.retain(|&s| s != seq);
        Some(task)
    }

    /// Every task, in arrival order.
    pub fn seqs(&self) -> Vec<u64> {
        self.tasks.keys().copied().collect()
    }

    /// Hands out budget in arrival order while it lasts; returns the tasks that got theirs.
    /// When it runs out, `grant` waits for the first task's share.
    pub fn pump(&mut self) -> Vec<u64> {
        let mut granted = Vec::new();
        while self.grant.is_none() {
            let Some(&seq) = self.waiting.front() else { break };
            let Some(task) = self.tasks.get_mut(&seq) else {
                self.waiting.pop_front();
                continue;
            };
            match self.budget.clone().try_acquire_many_owned(task.need) {
                Ok(permit) => {
                    task.budget = Some(permit);
                    self.waiting.pop_front();
                    granted.push(seq);
                }
                Err(_) => self.grant = Some(Box::pin(self.budget.clone().acquire_many_owned(task.need))),
            }
        }
        granted
    }

    /// The first waiting task's share came: it is that task's. Returns it.
    pub fn granted(&mut self, permit: OwnedSemaphorePermit) -> Option<u64> {
        self.grant = None;
        let seq = self.waiting.pop_front()?;
        self.tasks.get_mut(&seq)?.budget = Some(permit);
        Some(seq)
    }

    /// Tasks that may start now (SAM-5 §8.6): HEAD OF QUEUE at once, SIMPLE once no ORDERED
    /// task before it is left, ORDERED once no task at all before it is.
    pub fn startable(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let (mut before, mut ordered_before) = (false, false);
        for (&seq, t) in &self.tasks {
            let turn = match t.attr {
                Attr::HeadOfQueue => true,
                Attr::Simple => !ordered_before,
                Attr::Ordered => !before,
            };
            if turn && t.runnable() {
                out.push(seq);
            }
            before = true;
            ordered_before |= t.attr == Attr::Ordered;
        }
        out
    }
}

/// Waits for `grant`, or forever when there is none (a `select!` branch).
pub async fn granted(grant: &mut Option<Acquire>) -> Option<OwnedSemaphorePermit> {
    match grant {
        // The semaphore is never closed.
        Some(g) => g.as_mut().await.ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(itt: u32, attr: Attr, need: u32, ready: bool) -> Task {
        let stage = if ready { Stage::Ready(Bytes::new()) } else { Stage::Running };
        Task { itt, lun: 0, cdb: [0; 16], edtl: need, attr, slot: true, need, budget: None, stage }
    }

    #[test]
    fn ordered_waits_for_all_before_and_holds_up_simple_after() {
        let mut set = TaskSet::new(1 << 20);
        let a = set.insert(task(1, Attr::Simple, 0, false));
        let b = set.insert(task(2, Attr::Ordered, 0, true));
        let c = set.insert(task(3, Attr::Simple, 0, true));
        let d = set.insert(task(4, Attr::HeadOfQueue, 0, true));
        assert_eq!(set.startable(), vec![d], "only HEAD OF QUEUE passes a running task and an ORDERED one");
        set.remove(d);
        set.remove(a);
        assert_eq!(set.startable(), vec![b], "ORDERED first once alone");
        set.get_mut(b).unwrap().stage = Stage::Running;
        assert!(set.startable().is_empty(), "SIMPLE waits while the ORDERED runs");
        set.remove(b);
        assert_eq!(set.startable(), vec![c]);
    }

    #[test]
    fn simple_tasks_start_together() {
        let mut set = TaskSet::new(1 << 20);
        let seqs: Vec<u64> = (0..3).map(|i| set.insert(task(i, Attr::Simple, 0, true))).collect();
        assert_eq!(set.startable(), seqs);
    }

    #[test]
    fn budget_goes_in_arrival_order_and_waits_when_out() {
        let mut set = TaskSet::new(100);
        let a = set.insert(task(1, Attr::Simple, 60, true));
        let b = set.insert(task(2, Attr::Simple, 60, true));
        let c = set.insert(task(3, Attr::Simple, 10, true));
        assert_eq!(set.pump(), vec![a]);
        assert!(set.grant.is_some(), "b waits, and c behind it though it would fit");
        assert_eq!(set.startable(), vec![a]);
        // a ends: its share goes to b, then c.
        set.remove(a);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let permit = rt.block_on(granted(&mut set.grant)).unwrap();
        assert_eq!(set.granted(permit), Some(b));
        assert_eq!(set.pump(), vec![c]);
        assert_eq!(set.startable(), vec![b, c]);
    }

    #[test]
    fn removing_the_first_waiting_task_drops_its_wait() {
        let mut set = TaskSet::new(100);
        let a = set.insert(task(1, Attr::Simple, 100, true));
        let b = set.insert(task(2, Attr::Simple, 50, true));
        assert_eq!(set.pump(), vec![a]);
        assert!(set.grant.is_some());
        set.remove(b);
        assert!(set.grant.is_none() && set.pump().is_empty());
        assert!(!set.has_itt(2) && set.has_itt(1));
    }
}
