//! The task history: every task's record, in memory and in the configuration database
//! (`task/ID`), so that ids and outcomes outlive the process. A task that was queued or
//! running when the process stopped is loaded as `interrupted`; ids are never reused; the
//! last [`KEEP`] tasks are kept.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use cleave_control::config::ConfigStore;
use tracing::warn;

use crate::tasks::{TaskKind, TaskState, TaskView};

/// Tasks kept; older ones that have ended are forgotten as new ones come.
pub const KEEP: usize = 1000;

const PREFIX: &str = "task/";

/// Zero-padded, so that the database's key order is the order of the ids.
fn key(id: u64) -> String {
    format!("{PREFIX}{id:020}")
}

pub(crate) struct TaskHistory {
    tasks: Mutex<BTreeMap<u64, TaskView>>,
    db: Arc<dyn ConfigStore>,
}

impl TaskHistory {
    /// Loads the stored tasks; those the last process left queued or running are interrupted.
    pub(crate) fn load(db: Arc<dyn ConfigStore>) -> anyhow::Result<Self> {
        let mut tasks = BTreeMap::new();
        for entry in db.scan(PREFIX)? {
            let k = entry.key;
            let mut t: TaskView = serde_json::from_slice(&entry.value).with_context(|| format!("reading {k}"))?;
            if matches!(t.state, TaskState::Queued | TaskState::Running) {
                t.error = Some(format!("interrupted: the service stopped while the task was {}", t.state.as_str()));
                t.state = TaskState::Interrupted;
                t.finished_unix_ms = Some(cleave_control::pool::now_ms());
                db.put(&k, &serde_json::to_vec(&t)?)?;
            }
            tasks.insert(t.id, t);
        }
        Ok(TaskHistory { tasks: Mutex::new(tasks), db })
    }

    /// Every task, oldest first.
    pub(crate) fn list(&self) -> Vec<TaskView> {
        self.tasks.lock().expect("not poisoned").values().cloned().collect()
    }

    pub(crate) fn get(&self, id: u64) -> Option<TaskView> {
        self.tasks.lock().expect("not poisoned").get(&id).cloned()
    }

    /// Whether a task of `kind` on `volume` is queued or running.
    pub(crate) fn active(&self, volume: &str, kind: TaskKind) -> bool {
        let active = |t: &&TaskView| matches!(t.state, TaskState::Queued | TaskState::Running);
        self.tasks.lock().expect("not poisoned").values().filter(active).any(|t| t.volume == volume && t.kind == kind)
    }

    /// Records a new task as queued, with the next id, stored before it is returned.
    pub(crate) fn queue(&self, kind: TaskKind, volume: &str) -> anyhow::Result<TaskView> {
        let mut tasks = self.tasks.lock().expect("not poisoned");
        let id = tasks.keys().next_back().map_or(1, |k| k + 1);
        let t = TaskView {
            id,
            kind,
            volume: volume.to_string(),
            state: TaskState::Queued,
            progress: 0.0,
            result: None,
            error: None,
            created_unix_ms: cleave_control::pool::now_ms(),
            started_unix_ms: None,
            finished_unix_ms: None,
        };
        self.db.put(&key(id), &serde_json::to_vec(&t)?)?;
        tasks.insert(id, t.clone());
        self.forget_old(&mut tasks);
        Ok(t)
    }

    /// Changes a task and stores it.
    pub(crate) fn update(&self, id: u64, f: impl FnOnce(&mut TaskView)) {
        self.change(id, |t| {
            f(t);
            true
        });
    }

    /// Sets a task's progress, stored in steps of 5%: enough to see how far an interrupted
    /// task got, without a database write per chunk.
    pub(crate) fn progress(&self, id: u64, p: f64) {
        let step = |x: f64| (x * 20.0).floor();
        self.change(id, |t| {
            let store = step(p) != step(t.progress);
            t.progress = p;
            store
        });
    }

    /// Changes a task, and stores it if `f` says so. A failed write is logged: the task's
    /// work is done either way.
    fn change(&self, id: u64, f: impl FnOnce(&mut TaskView) -> bool) {
        let mut tasks = self.tasks.lock().expect("not poisoned");
        let Some(t) = tasks.get_mut(&id) else { return };
        if f(t) {
            let stored = serde_json::to_vec(t)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(self.db.put(&key(id), &b).map(drop)?));
            if let Err(e) = stored {
                warn!(task = id, error = %format!("{e:#}"), "cannot store the task's record");
            }
        }
    }

    /// Drops the oldest ended tasks beyond [`KEEP`]. The newest is never dropped, so the next
    /// id stays above every id given out.
    fn forget_old(&self, tasks: &mut BTreeMap<u64, TaskView>) {
        let ended = |t: &TaskView| !matches!(t.state, TaskState::Queued | TaskState::Running);
        let excess = tasks.len().saturating_sub(KEEP);
        let old: Vec<u64> = tasks.values().filter(|t| ended(t)).map(|t| t.id).take(excess).collect();
        for id in old {
            match self.db.delete(&key(id)) {
                Ok(_) => {
                    tasks.remove(&id);
                }
                Err(e) => warn!(task = id, error = %e, "cannot forget an old task"),
            }
        }
    }

    /// Counts tasks by kind and state, for the metrics.
    pub(crate) fn count(&self, kind: TaskKind, state: TaskState) -> usize {
        self.tasks.lock().expect("not poisoned").values().filter(|t| t.kind == kind && t.state == state).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cleave_control::config::RedbStore;

    fn open(dir: &std::path::Path) -> TaskHistory {
        TaskHistory::load(Arc::new(RedbStore::open(&dir.join("config.redb")).unwrap())).unwrap()
    }

    #[test]
    fn tasks_outlive_the_process_and_their_ids_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let h = open(dir.path());
            let done = h.queue(TaskKind::Scrub, "a").unwrap();
            h.update(done.id, |t| t.state = TaskState::Succeeded);
            let running = h.queue(TaskKind::Repair, "a").unwrap();
            h.update(running.id, |t| t.state = TaskState::Running);
            h.queue(TaskKind::Delete, "b").unwrap();
        }
        let h = open(dir.path());
        let states: Vec<(u64, TaskState)> = h.list().iter().map(|t| (t.id, t.state)).collect();
        assert_eq!(states, [(1, TaskState::Succeeded), (2, TaskState::Interrupted), (3, TaskState::Interrupted)]);
        assert!(h.get(2).unwrap().error.unwrap().contains("was running"));
        assert!(!h.active("a", TaskKind::Repair));
        assert_eq!(h.queue(TaskKind::Scrub, "a").unwrap().id, 4);
    }

    #[test]
    fn only_the_last_tasks_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let h = open(dir.path());
        let first = h.queue(TaskKind::Scrub, "a").unwrap();
        h.update(first.id, |t| t.state = TaskState::Running);
        for _ in 0..KEEP + 5 {
            let t = h.queue(TaskKind::Scrub, "a").unwrap();
            h.update(t.id, |t| t.state = TaskState::Failed);
        }
        drop(h);
        let h = open(dir.path());
        let ids: Vec<u64> = h.list().iter().map(|t| t.id).collect();
        // The running one stays (now interrupted), then the newest ended ones.
        assert_eq!(ids.len(), KEEP, "{:?}", &ids[..5]);
        assert_eq!((ids[0], ids[1], *ids.last().unwrap()), (1, 8, KEEP as u64 + 6));
    }
}
