//! The task queue: tasks are checked, queued, then run one at a time: queued, running with
//! progress, then succeeded with their result or failed with their reason.

use std::sync::Arc;

use anyhow::Context;
use cleave_volume::Volume;

use crate::error::{GatewayError, Result};
use crate::events::EventKind;
use crate::gateway::Gateway;
use crate::tasks::{NewTask, TaskKind, TaskState, TaskView};

/// The work of a task, with what it was checked to need.
enum Job {
    Scrub { volume: Volume, repair: bool },
    Delete,
    Recover { targets: Vec<(String, cleave_target::DynTarget)>, takeover: bool },
    Move { volume: Volume, index: usize, to: String },
    Rereplicate { volume: Volume },
}

impl Gateway {
    /// Every task, oldest first.
    pub fn tasks(&self) -> Vec<TaskView> {
        self.tasks.lock().expect("not poisoned").values().cloned().collect()
    }

    pub fn task(&self, id: u64) -> Result<TaskView> {
        let tasks = self.tasks.lock().expect("not poisoned");
        tasks.get(&id).cloned().ok_or_else(|| GatewayError::NotFound(format!("no task {id}")))
    }

    /// Whether a task of `kind` on `volume` is queued or running.
    pub(crate) fn task_active(&self, volume: &str, kind: TaskKind) -> bool {
        let active = |t: &&TaskView| matches!(t.state, TaskState::Queued | TaskState::Running);
        self.tasks.lock().expect("not poisoned").values().filter(active).any(|t| t.volume == volume && t.kind == kind)
    }

    fn update_task(&self, id: u64, f: impl FnOnce(&mut TaskView)) {
        if let Some(t) = self.tasks.lock().expect("not poisoned").get_mut(&id) {
            f(t);
        }
    }

    /// Checks a task and queues it; it runs in the background.
    pub fn start_task(self: &Arc<Self>, req: NewTask) -> Result<TaskView> {
        let kind: TaskKind = req.kind.parse()?;
        let job = self.plan_job(kind, req)?;
        let task = self.queue(kind, &job.1);
        tokio::spawn(self.clone().run_task(task.id, kind, job));
        Ok(task)
    }

    /// What a task will do, checked before it is queued.
    fn plan_job(&self, kind: TaskKind, req: NewTask) -> Result<(Job, String)> {
        let NewTask { volume, targets, from, to, takeover, .. } = req;
        let job = match kind {
            TaskKind::Scrub | TaskKind::Repair => {
                Job::Scrub { volume: self.served(&volume)?, repair: kind == TaskKind::Repair }
            }
            TaskKind::Delete if !self.exists(&volume) => {
                return Err(GatewayError::NotFound(format!("no volume {volume:?}")));
            }
            TaskKind::Delete => Job::Delete,
            TaskKind::Recover => Job::Recover { targets: self.recover_targets(&volume, &targets)?, takeover },
            TaskKind::Rereplicate => {
                let v = self.get(&volume).ok_or_else(|| GatewayError::NotFound(format!("no volume {volume:?}")))?;
                Job::Rereplicate { volume: v }
            }
            TaskKind::Move => {
                let v = self.served(&volume)?;
                let from = from.context("move needs `from`: the node or target to move off")?;
                let (index, to) = self.plan_move(&v, &from, to)?;
                Job::Move { volume: v, index, to }
            }
        };
        Ok((job, volume))
    }

    /// The targets given to a recover task, opened.
    fn recover_targets(&self, volume: &str, targets: &[String]) -> Result<Vec<(String, cleave_target::DynTarget)>> {
        if self.exists(volume) {
            return Err(GatewayError::Conflict(format!(
                "volume {volume:?} is already served here, or known and unavailable"
            )));
        }
        if targets.is_empty() {
            return Err(GatewayError::Invalid("recover needs the volume's targets (at least M of them)".into()));
        }
        Ok(targets.iter().map(|u| Ok((u.clone(), self.open_target(u)?))).collect::<anyhow::Result<Vec<_>>>()?)
    }

    /// Records a new task as queued.
    fn queue(&self, kind: TaskKind, volume: &str) -> TaskView {
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
        };
        tasks.insert(id, t.clone());
        t
    }

    /// Waits for the task slot, runs the job, and records how it ended.
    async fn run_task(self: Arc<Self>, id: u64, kind: TaskKind, (job, volume): (Job, String)) {
        let Ok(_slot) = self.task_slot.clone().acquire_owned().await else { return };
        self.update_task(id, |t| t.state = TaskState::Running);
        let progress = |done: u64, total: u64| {
            let p = if total == 0 { 1.0 } else { done as f64 / total as f64 };
            self.update_task(id, |t| t.progress = p);
        };
        let outcome: anyhow::Result<serde_json::Value> = match job {
            Job::Scrub { volume, repair } => cleave_volume::scrub::scrub(&volume, repair, progress)
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| Ok(serde_json::to_value(&r)?)),
            Job::Delete => {
                self.delete(&volume).await.map(|()| serde_json::json!({ "deleted": volume })).map_err(Into::into)
            }
            Job::Recover { targets, takeover } => self.recover(&volume, targets, takeover, progress).await,
            Job::Move { volume, index, to } => self.move_share(&volume, index, to, progress).await,
            Job::Rereplicate { volume } => self.rereplicate(&volume, progress).await,
        };
        match outcome {
            Ok(result) => self.update_task(id, |t| {
                t.state = TaskState::Succeeded;
                t.progress = 1.0;
                t.result = Some(result);
            }),
            Err(e) => self.update_task(id, |t| {
                t.state = TaskState::Failed;
                t.error = Some(format!("{e:#}"));
            }),
        }
        self.record(EventKind::TaskDone(kind), format!("task {id} on {volume}"));
    }
}
