//! `cleave task`: start, list, show and wait for tasks.

use anyhow::Result;
use clap::Subcommand;
use cleave_api::model::{NewTask, TaskState, TaskView};

use super::client::{Client, ServerArgs};
use super::print_json;

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Start a task; prints its id at once.
    Start {
        /// scrub, repair, delete, recover (serve a volume found on --target URIs), or move (--from)
        kind: String,
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
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    Show {
        id: u64,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Wait for a task with a progress bar; fails if the task fails.
    Wait {
        id: u64,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub fn run(cmd: TaskCommand) -> Result<()> {
    match cmd {
        TaskCommand::Start { kind, volume, targets, from, to, takeover, server } => {
            let body = NewTask { kind: kind.parse()?, volume, targets, from, to, takeover };
            let t: TaskView = Client::new(&server)?.post("/tasks", &body)?;
            print_json(&t)
        }
        TaskCommand::List { server } => {
            for t in Client::new(&server)?.get::<Vec<TaskView>>("/tasks")? {
                println!(
                    "{:>4} {:<7} {:<20} {:<10} {:>5.0}%",
                    t.id,
                    t.kind.as_str(),
                    t.volume,
                    state(t.state),
                    t.progress * 100.0
                );
            }
            Ok(())
        }
        TaskCommand::Show { id, server } => {
            print_json(&Client::new(&server)?.get::<TaskView>(&format!("/tasks/{id}"))?)
        }
        TaskCommand::Wait { id, server } => wait(&Client::new(&server)?, id),
    }
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

/// Follows a task until it ends, with a progress bar.
fn wait(client: &Client, id: u64) -> Result<()> {
    let bar = indicatif::ProgressBar::new(1000);
    loop {
        let t: TaskView = client.get(&format!("/tasks/{id}"))?;
        bar.set_position((t.progress * 1000.0) as u64);
        bar.set_message(state(t.state).to_string());
        match t.state {
            TaskState::Succeeded => {
                bar.finish_and_clear();
                return print_json(&t);
            }
            TaskState::Failed | TaskState::Interrupted => {
                bar.finish_and_clear();
                anyhow::bail!("task {id} {}: {}", state(t.state), t.error.as_deref().unwrap_or("no reason given"));
            }
            TaskState::Queued | TaskState::Running => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}
