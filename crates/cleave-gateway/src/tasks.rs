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
}

/// Body of `POST /api/v1/tasks`. `kind` stays a string here so that an unknown kind is
/// refused with the list of kinds, not as a malformed body.
#[derive(Debug, Deserialize, Serialize, Default, utoipa::ToSchema)]
pub struct NewTask {
    /// A task kind; an unknown one is refused with 400.
    #[schema(value_type = TaskKind)]
    pub kind: String,
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
