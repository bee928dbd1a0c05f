//! The `cleave` binary: command line, configuration and wiring of the library crates.

/// `cleave bench`.
mod bench;
/// The command line client.
mod cli;
/// `--config FILE` of the server processes.
mod config;
/// Flags and start-up of the control hierarchy.
mod hierarchy;
/// `cleave node`: a storage node.
mod node;
/// `cleave serve` and `cleave control`: wiring, signals.
mod serve;
/// `cleave sim`: simulations with the real code.
mod sim;
/// The webhook's HTTP client.
mod webhook;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::cli::client::ServerArgs;
use crate::cli::nodes::{ControlSub, NodeSub};
use crate::cli::offline::KeyCommand;
use crate::cli::output::{Format, Outcome};
use crate::cli::task::TaskCommand;
use crate::cli::volume::VolumeCommand;

#[derive(Parser, Debug)]
#[command(name = "cleave", version, about = "Secure dispersed block storage")]
struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one object per line,
    /// with its spans) for log collectors. CLEAVE_LOG sets the level (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CLEAVE_LOG_FORMAT")]
    log_format: LogFormat,
    /// Print the API's answers as JSON, for scripts, instead of tables and summaries.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logging to stderr in `format`, at the level CLEAVE_LOG names; colours only on a terminal
/// and without NO_COLOR.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLEAVE_LOG")
        .unwrap_or_else(|_| "info".into())
        // rustls warns about every client that sends an IP address as SNI (libnbd does).
        .add_directive("rustls=error".parse().expect("valid directive"));
    let colours = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colours);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the embedded default: gateway, admin API and directory targets in one process.
    /// This is the gateway: it serves the volumes over NBD. Also `cleave gateway`: with
    /// --etcd, gateways on one etcd are one appliance (docs/appliance.md).
    #[command(after_help = serve::ENVIRONMENT, visible_alias = "gateway")]
    Serve(Box<serve::ServeArgs>),
    /// Run control alone: the admin API and the node pool, without NBD (with --etcd, on an
    /// appliance's configuration database); `cleave control list` lists the child controls
    /// registered with it.
    #[command(after_help = serve::ENVIRONMENT)]
    Control(ControlCommand),
    /// Run a storage node that registers itself with control; `cleave node list` lists them.
    Node(NodeCommand),
    /// Long-running work: start, list, show and wait for tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Manage volumes on a running server.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Mirror volumes to a peer gateway, synchronously or asynchronously; switch over, take
    /// over, and resolve a split brain.
    #[command(subcommand)]
    Mirror(cli::mirror::MirrorCommand),
    /// Hosts that attach disks over NBD with a client certificate.
    #[command(subcommand)]
    Client(cli::access::ClientCommand),
    /// Groups (communities of interest): their clients and their rights on volumes.
    #[command(subcommand)]
    Group(cli::access::GroupCommand),
    /// Users of the API and the console: roles (viewer, operator, admin), passwords, API tokens.
    #[command(subcommand)]
    User(cli::access::UserCommand),
    /// Send every event, signed, to a URL of the administrator's: set, show, remove.
    #[command(subcommand)]
    Webhook(cli::webhook::WebhookCommand),
    /// Verify every share of a volume; with --repair, restore full redundancy. Exits 3 when
    /// it leaves problems unrepaired.
    Scrub {
        /// The volume's name.
        name: String,
        /// Rebuild the missing and bad shares (otherwise only report them).
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Rebuild a volume image from any M of its targets and the master key. Needs no server.
    Recover {
        /// A target URI; give at least M of them, in any order.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// The master key: a key file (DIR/master.key, or one from `cleave key export`), or
        /// DIR/master.sealed with its passphrase in CLEAVE_PASSPHRASE or typed when asked.
        #[arg(long)]
        key_file: PathBuf,
        /// The volume's name, as it was created.
        #[arg(long)]
        volume: String,
        /// The image file to write (the volume's whole content).
        #[arg(long)]
        output: PathBuf,
        /// When some committed metadata cannot be read from the targets given, write the
        /// last state they hold in full instead of failing (older than the last writes).
        #[arg(long)]
        accept_stale: bool,
    },
    /// The master key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Measure performance.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Simulate a large pool with the real code, in this process.
    #[command(subcommand)]
    Sim(SimCommand),
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct NodeCommand {
    #[command(subcommand)]
    sub: Option<NodeSub>,
    #[command(flatten)]
    run: node::NodeArgs,
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct ControlCommand {
    #[command(subcommand)]
    sub: Option<ControlSub>,
    #[command(flatten)]
    run: serve::ControlArgs,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Single-thread throughput of the splitting codec.
    Split(bench::SplitArgs),
}

#[derive(Subcommand, Debug)]
enum SimCommand {
    /// Place many volumes on many nodes and sites, then lose a site and plan the repair.
    Placement(sim::PlacementArgs),
}

/// Chunk-sized buffers (1 MiB by default) are allocated per request. glibc would
/// serve each from a fresh mmap and page-fault it in; keeping them on the heap
/// measured 30% faster for sequential writes (bench/nbd-vs-nbdkit.sh).
fn tune_allocator() {
    // SAFETY: mallopt only adjusts allocator thresholds; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// A server's data directory holds keys, plaintext caches and the configuration, so
/// everything it creates there is private: directories 0700, files 0600.
fn private_files() {
    // SAFETY: umask only sets this process's file creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    // A server process reads its configuration file; its effective configuration is logged.
    let (cli, effective) = match config::parse::<Cli>(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(e) => {
            cli::output::note(&format!("error: {e:#}"));
            return ExitCode::FAILURE;
        }
    };
    init_logging(cli.log_format);
    if let Some(effective) = &effective {
        effective.log();
        private_files();
    }
    match run(cli) {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            cli::output::note(&format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<Outcome> {
    let format = if cli.json { Format::Json } else { Format::Human };
    let done = |r: Result<()>| r.map(|()| Outcome::Done);
    match cli.command {
        // The two whose exit status can say more than success or failure.
        Command::Scrub { name, repair, server } => cli::volume::scrub(&name, repair, &server, format),
        Command::Task(cmd) => cli::task::run(cmd, format),
        Command::Serve(args) => done(tokio::runtime::Runtime::new()?.block_on(serve::serve(*args))),
        Command::Control(ControlCommand { sub: None, run: args }) => {
            done(tokio::runtime::Runtime::new()?.block_on(serve::control(args)))
        }
        Command::Control(ControlCommand { sub: Some(ControlSub::List { server }), .. }) => {
            done(cli::nodes::list_controls(&server, format))
        }
        Command::Node(NodeCommand { sub: None, run }) => done(tokio::runtime::Runtime::new()?.block_on(node::run(run))),
        Command::Node(NodeCommand { sub: Some(NodeSub::List { all, server }), .. }) => {
            done(cli::nodes::list_nodes(all, &server, format))
        }
        Command::Volume(cmd) => done(cli::volume::run(cmd, format)),
        Command::Mirror(cmd) => done(cli::mirror::run(cmd, format)),
        Command::Client(cmd) => done(cli::access::client_command(cmd, format)),
        Command::Group(cmd) => done(cli::access::group_command(cmd, format)),
        Command::User(cmd) => done(cli::access::user_command(cmd, format)),
        Command::Webhook(cmd) => done(cli::webhook::run(cmd, format)),
        Command::Recover { targets, key_file, volume, output, accept_stale } => {
            done(cli::offline::recover(&targets, &key_file, &volume, &output, accept_stale))
        }
        Command::Key(cmd) => done(cli::offline::key(cmd)),
        Command::Bench(BenchCommand::Split(args)) => {
            let report = bench::split(&args)?;
            done(bench::print(&report, format == Format::Json))
        }
        Command::Sim(SimCommand::Placement(args)) => done(sim::placement(&args, format)),
    }
}
