//! Long work as tasks: what a task is (kind, state, view, request). The queue that runs
//! them is in `queue.rs`.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{GatewayError, Result};

/// What a task does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Verify every share.
    Scrub,
    /// Verify every share and rebuild the missing and bad ones.
    Repair,
    /// Write what degraded writes missed, once the targets are back.
    Rereplicate,
    Delete,
    /// Serve a volume found on its targets.
    Recover,
    /// Move one share of a volume to another target.
    Move,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Scrub => "scrub",
            TaskKind::Repair => "repair",
            TaskKind::Rereplicate => "rereplicate",
            TaskKind::Delete => "delete",
            TaskKind::Recover => "recover",
            TaskKind::Move => "move",
        }
    }
}

impl FromStr for TaskKind {
    type Err = GatewayError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "scrub" => TaskKind::Scrub,
            "repair" => TaskKind::Repair,
            "rereplicate" => TaskKind::Rereplicate,
            "delete" => TaskKind::Delete,
            "recover" => TaskKind::Recover,
            "move" => TaskKind::Move,
            other => {
                return Err(GatewayError::Invalid(format!(
                    "unknown task kind {other:?}: use scrub, repair, rereplicate, delete, recover or move"
                )))
            }
        })
    }
}

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Queued,
    Running,
    Succeeded,
    Failed,
    /// The service stopped while the task was queued or running; it did not end.
    Interrupted,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Interrupted => "interrupted",
        }
    }
}

/// A task as `GET /api/v1/tasks/{id}` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskView {
    pub id: u64,
    pub kind: TaskKind,
    pub volume: String,
    pub state: TaskState,
    /// From 0 to 1.
    #[schema(minimum = 0, maximum = 1)]
    pub progress: f64,
    /// What the task found or did (for `scrub` and `repair`, a scrub report).
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_unix_ms: u64,
    #[serde(default)]
    pub started_unix_ms: Option<u64>,
    /// When it succeeded, failed, or was found interrupted.
    #[serde(default)]
    pub finished_unix_ms: Option<u64>,
}

/// Body of `POST /api/v1/tasks`. An unknown `kind` does not deserialize: the API refuses it
/// with 422, naming the kinds.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct NewTask {
    pub kind: TaskKind,
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$", min_length = 1, max_length = 64)]
    pub volume: String,
    /// For `recover`: the volume's targets.
    #[serde(default)]
    pub targets: Vec<String>,
    /// For `move`: the node (id or address) or target URI to move off.
    #[serde(default)]
    pub from: Option<String>,
    /// For `move`: where to (default: a node chosen like a new placement).
    #[serde(default)]
    pub to: Option<String>,
    /// For `recover`: serve it even though another gateway claims it (that one is fenced).
    #[serde(default)]
    pub takeover: bool,
}

impl NewTask {
    /// A task of `kind` on `volume`, with nothing else.
    pub fn new(kind: TaskKind, volume: &str) -> Self {
        NewTask { kind, volume: volume.to_string(), targets: Vec::new(), from: None, to: None, takeover: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_kind_does_not_deserialize() {
        let known: NewTask = serde_json::from_str(r#"{"kind":"repair","volume":"v"}"#).unwrap();
        assert_eq!(known.kind, TaskKind::Repair);
        let unknown = serde_json::from_str::<NewTask>(r#"{"kind":"polish","volume":"v"}"#).unwrap_err();
        assert!(unknown.to_string().contains("unknown variant `polish`"), "{unknown}");
    }
}
