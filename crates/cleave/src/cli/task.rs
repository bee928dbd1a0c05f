//! `cleave task`: start, list, show and wait for tasks.

use anyhow::Result;
use clap::Subcommand;
use cleave_api::model::{NewTask, ScrubReport, TaskKind, TaskState, TaskView};

use super::client::{Client, ServerArgs};
use super::output::{ago, note, out, print_json, print_list, Fields, Format, Outcome};
use super::volume::{print_scrub, scrub_outcome};

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Start a task and print its id at once (`id=$(cleave task start repair db)`).
    Start {
        /// scrub, repair, delete, recover (serve a volume found on --target URIs), or move (--from)
        kind: String,
        /// The volume the task works on.
        volume: String,
        /// For recover: the volume's targets (at least M of them).
        #[arg(long = "target")]
        targets: Vec<String>,
        /// For move: the node (id or address) or target URI to move the volume off.
        #[arg(long)]
        from: Option<String>,
        /// For move: the target to move to (default: chosen among the nodes).
        #[arg(long)]
        to: Option<String>,
        /// For recover: serve the volume even though another gateway claims it; that
        /// gateway stops serving it at its next commit.
        #[arg(long)]
        takeover: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List tasks: kind, volume, state and progress.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one task: its state, and its result or why it failed.
    Show {
        /// The task's id, as `task start` printed it.
        id: u64,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Wait for a task with a progress bar, then show it; exits 3 if the task failed or a
    /// scrub left problems.
    Wait {
        /// The task's id, as `task start` printed it.
        id: u64,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub fn run(cmd: TaskCommand, format: Format) -> Result<Outcome> {
    match cmd {
        TaskCommand::Start { kind, volume, targets, from, to, takeover, server } => {
            let body = NewTask { kind: kind.parse()?, volume, targets, from, to, takeover };
            let t: TaskView = Client::new(&server)?.post("/tasks", &body)?;
            match format {
                Format::Json => print_json(&t)?,
                Format::Human => out(&t.id.to_string())?,
            }
        }
        TaskCommand::List { server } => {
            list(&Client::new(&server)?.get::<Vec<TaskView>>("/tasks")?, format)?;
        }
        TaskCommand::Show { id, server } => {
            let t: TaskView = Client::new(&server)?.get(&format!("/tasks/{id}"))?;
            return print_task(&t, format);
        }
        TaskCommand::Wait { id, server } => return wait(&Client::new(&server)?, id, format),
    }
    Ok(Outcome::Done)
}

fn list(list: &[TaskView], format: Format) -> Result<()> {
    print_list(list, format, &["ID", "KIND", "VOLUME", "STATE", "PROGRESS", "CREATED"], "no tasks", |t| {
        vec![
            t.id.to_string(),
            t.kind.as_str().to_string(),
            t.volume.clone(),
            state(t.state).to_string(),
            format!("{:.0}%", t.progress * 100.0),
            ago(t.created_unix_ms),
        ]
    })
}

/// A task's state, as the API spells it.
fn state(s: TaskState) -> &'static str {
    match s {
        TaskState::Queued => "queued",
        TaskState::Running => "running",
        TaskState::Succeeded => "succeeded",
        TaskState::Failed => "failed",
        TaskState::Interrupted => "interrupted",
    }
}

/// Whether the task's own work went wrong: it failed, or it is a scrub that left problems.
fn outcome(t: &TaskView) -> Outcome {
    match (t.state, scrub_result(t)) {
        (TaskState::Failed | TaskState::Interrupted, _) => Outcome::Problems,
        (_, Some(report)) => scrub_outcome(&report),
        _ => Outcome::Done,
    }
}

/// The result of a scrub or repair task, which is a scrub report.
fn scrub_result(t: &TaskView) -> Option<ScrubReport> {
    match t.kind {
        TaskKind::Scrub | TaskKind::Repair => serde_json::from_value(t.result.clone()?).ok(),
        _ => None,
    }
}

/// A task for people, or as the API shows it; and what the exit status should say.
fn print_task(t: &TaskView, format: Format) -> Result<Outcome> {
    if format == Format::Json {
        print_json(t)?;
        return Ok(outcome(t));
    }
    let mut f = Fields::default();
    f.add("task", t.id.to_string());
    f.add("kind", t.kind.as_str());
    f.add("volume", &t.volume);
    f.add("state", state(t.state));
    f.add("progress", format!("{:.0}%", t.progress * 100.0));
    f.add("created", ago(t.created_unix_ms));
    if let Some(e) = &t.error {
        f.add("error", e);
    }
    let report = scrub_result(t);
    if let (None, Some(result)) = (&report, &t.result) {
        f.add("result", summary(result));
    }
    out(&f.render())?;
    if let Some(r) = &report {
        print_scrub(r)?;
    }
    Ok(outcome(t))
}

/// A task result other than a scrub report, on one line: `key value` pairs, lists counted
/// when they are long.
fn summary(result: &serde_json::Value) -> String {
    let Some(fields) = result.as_object() else { return result.to_string() };
    let parts: Vec<String> = fields
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k} {s}"),
            serde_json::Value::Array(a) if a.len() > 8 => format!("{k} [{} items]", a.len()),
            other => format!("{k} {other}"),
        })
        .collect();
    parts.join(", ")
}

/// Follows a task until it ends, with a progress bar, then shows it.
fn wait(client: &Client, id: u64, format: Format) -> Result<Outcome> {
    let bar = indicatif::ProgressBar::new(1000);
    loop {
        let t: TaskView = client.get(&format!("/tasks/{id}"))?;
        bar.set_position((t.progress * 1000.0) as u64);
        bar.set_message(state(t.state).to_string());
        match t.state {
            TaskState::Succeeded | TaskState::Failed | TaskState::Interrupted => {
                bar.finish_and_clear();
                if let Some(e) = &t.error {
                    note(&format!("task {id} {}: {e}", state(t.state)));
                }
                return print_task(&t, format);
            }
            TaskState::Queued | TaskState::Running => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}
