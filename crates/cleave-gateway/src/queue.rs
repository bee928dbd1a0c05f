//! The task queue: tasks are checked, queued, then run one at a time: queued, running with
//! progress, then succeeded with their result or failed with their reason.

use std::sync::Arc;

use anyhow::Context;
use cleave_control::pool::now_ms;
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
        self.tasks.list()
    }

    pub fn task(&self, id: u64) -> Result<TaskView> {
        self.tasks.get(id).ok_or_else(|| GatewayError::NotFound(format!("no task {id}")))
    }

    /// Whether a task of `kind` on `volume` is queued or running.
    pub(crate) fn task_active(&self, volume: &str, kind: TaskKind) -> bool {
        self.tasks.active(volume, kind)
    }

    /// Checks a task and queues it; it runs in the background.
    pub fn start_task(self: &Arc<Self>, req: NewTask) -> Result<TaskView> {
        let kind = req.kind;
        let job = self.plan_job(kind, req)?;
        let task = self.tasks.queue(kind, &job.1)?;
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

    /// Waits for the task slot, runs the job, and records how it ended.
    async fn run_task(self: Arc<Self>, id: u64, kind: TaskKind, (job, volume): (Job, String)) {
        let Ok(_slot) = self.task_slot.clone().acquire_owned().await else { return };
        self.tasks.update(id, |t| {
            t.state = TaskState::Running;
            t.started_unix_ms = Some(now_ms());
        });
        let progress = |done: u64, total: u64| {
            let p = if total == 0 { 1.0 } else { done as f64 / total as f64 };
            self.tasks.progress(id, p);
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
            Ok(result) => self.tasks.update(id, |t| {
                t.state = TaskState::Succeeded;
                t.progress = 1.0;
                t.result = Some(result);
                t.finished_unix_ms = Some(now_ms());
            }),
            Err(e) => self.tasks.update(id, |t| {
                t.state = TaskState::Failed;
                t.error = Some(format!("{e:#}"));
                t.finished_unix_ms = Some(now_ms());
            }),
        }
        self.record(EventKind::TaskDone(kind), format!("task {id} on {volume}"));
    }
}
