//! The `cleave` binary: command line, configuration and wiring of the library crates.

mod access;
mod access_cli;
mod bench;
mod client;
mod console;
mod groups;
mod hierarchy;
mod node;
mod server;
mod size;
mod state;
mod users;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::client::{Client, ServerArgs};
use crate::size::ByteSize;

#[derive(Parser, Debug)]
#[command(name = "cleave", version, about = "Secure dispersed block storage")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the embedded default: gateway, admin API and directory targets in one process.
    Serve(server::ServeArgs),
    /// Run control alone: the admin API and the node pool, without NBD; `cleave control list`
    /// lists the child controls registered with it.
    Control(ControlCommand),
    /// Run a storage node that registers itself with control; `cleave node list` lists them.
    Node(NodeCommand),
    /// Long-running work: start, list, show and wait for tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Manage volumes on a running server.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Hosts that attach disks over NBD with a client certificate.
    #[command(subcommand)]
    Client(access_cli::ClientCommand),
    /// Groups (communities of interest): their clients and their rights on volumes.
    #[command(subcommand)]
    Group(access_cli::GroupCommand),
    /// Users of the API and the console: roles (viewer, operator, admin), passwords, API tokens.
    #[command(subcommand)]
    User(access_cli::UserCommand),
    /// Verify every share of a volume; with --repair, restore full redundancy.
    Scrub {
        name: String,
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
        #[arg(long)]
        volume: String,
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
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Write the master key of a data directory as a plain key file (mode 0600) for
    /// `cleave recover`. Keep it offline, apart from the targets. A sealed key needs its
    /// passphrase (CLEAVE_PASSPHRASE, or typed when asked).
    Export {
        #[arg(long, default_value = "./cleave-data")]
        data_dir: PathBuf,
        /// Where to write it; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct NodeCommand {
    #[command(subcommand)]
    sub: Option<NodeSub>,
    #[command(flatten)]
    run: node::NodeArgs,
}

#[derive(Subcommand, Debug)]
enum TaskCommand {
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

#[derive(Subcommand, Debug)]
enum NodeSub {
    /// List storage nodes known to control: status, site, capacity.
    List {
        /// Also the nodes of child control servers, with the control that holds each.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct ControlCommand {
    #[command(subcommand)]
    sub: Option<ControlSub>,
    #[command(flatten)]
    run: server::ControlArgs,
}

#[derive(Subcommand, Debug)]
enum ControlSub {
    /// List the child control servers registered with this one: status and pool summary.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand, Debug)]
enum VolumeCommand {
    /// Create a volume.
    Create {
        name: String,
        #[arg(long)]
        size: ByteSize,
        #[arg(long, default_value_t = 3)]
        m: u8,
        #[arg(long, default_value_t = 5)]
        n: u8,
        #[arg(long, default_value = "1MiB")]
        chunk_size: ByteSize,
        /// local: FLUSH is durable in the local cache; dispersed: durable on the targets.
        #[arg(long, default_value = "local")]
        durability: cleave_volume::Durability,
        /// Shares a write needs before it counts, from M to N (default max(M, min(N-1, M+1))).
        #[arg(long)]
        write_quorum: Option<u8>,
        /// Target URIs in share order (default: directory targets in the server's data dir).
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Groups given read-write access (default: the local admin group).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Storage on demand for a host: a group named after the volume with this client in it.
        #[arg(long)]
        client: Option<String>,
        /// Where to write the new client's credentials (default: ./CLIENT-tls).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List volumes.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show a volume: health, dirty bytes, cache use, last destage.
    Show {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a volume and everything it stored.
    Delete {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Single-thread throughput of the splitting codec.
    Split(bench::SplitArgs),
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} chunks ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
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

fn main() -> Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLEAVE_LOG")
                .unwrap_or_else(|_| "info".into())
                // rustls warns about every client that sends an IP address as SNI (libnbd does).
                .add_directive("rustls=error".parse().expect("valid directive")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => {
            set_node_token(&args.data_dir)?;
            tokio::runtime::Runtime::new()?.block_on(server::serve(args))
        }
        Command::Control(ControlCommand { sub: None, run: args }) => {
            set_node_token(&args.data_dir)?;
            tokio::runtime::Runtime::new()?.block_on(server::control(args))
        }
        Command::Control(ControlCommand { sub: Some(ControlSub::List { server }), .. }) => {
            hierarchy::print_controls(&Client::new(&server)?.get("/controls")?);
            Ok(())
        }
        Command::Node(NodeCommand { sub: None, run }) => tokio::runtime::Runtime::new()?.block_on(node::run(run)),
        Command::Node(NodeCommand { sub: Some(NodeSub::List { all, server }), .. }) => {
            let list = Client::new(&server)?.get(if all { "/nodes?all=true" } else { "/nodes" })?;
            for n in list.as_array().into_iter().flatten() {
                if all {
                    print!("{:<14} ", n["control"].as_str().unwrap_or("?"));
                }
                println!(
                    "{:<14} {:<22} {:<10} {:<5} {:>10} free of {:>10}",
                    n["id"].as_str().unwrap_or("?"),
                    n["address"].as_str().unwrap_or("?"),
                    n["site"].as_str().unwrap_or("?"),
                    n["status"].as_str().unwrap_or("?"),
                    ByteSize(n["free_bytes"].as_u64().unwrap_or(0)).to_string(),
                    ByteSize(n["capacity_bytes"].as_u64().unwrap_or(0)).to_string()
                );
            }
            Ok(())
        }
        Command::Volume(cmd) => volume_command(cmd),
        Command::Client(cmd) => access_cli::client_command(cmd),
        Command::Group(cmd) => access_cli::group_command(cmd),
        Command::User(cmd) => access_cli::user_command(cmd),
        Command::Task(cmd) => task_command(cmd),
        Command::Scrub { name, repair, server } => {
            let client = Client::new(&server)?;
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_message(format!("scrubbing {name}"));
            spinner.enable_steady_tick(std::time::Duration::from_millis(200));
            let report = client.post(&format!("/volumes/{name}/scrub?repair={repair}"), json!({}))?;
            spinner.finish_and_clear();
            print_json(&report.unwrap_or_default())
        }
        Command::Recover { targets, key_file, volume, output, accept_stale } => {
            let master = state::read_master_key(&key_file)?;
            let handles = targets
                .iter()
                .map(|u| cleave_target::open(u).with_context(|| format!("target {u}")))
                .collect::<Result<Vec<_>>>()?;
            let bar = progress_bar(0, &format!("recovering {volume}"));
            let report = tokio::runtime::Runtime::new()?.block_on(cleave_volume::recover::export(
                handles,
                &master,
                &volume,
                &output,
                accept_stale,
                |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                },
            ))?;
            bar.finish_and_clear();
            if let Some(why) = &report.stale {
                eprintln!("warning: the image is STALE, older than the last writes: {why}");
            }
            eprintln!(
                "recovered {volume}: {} bytes, {} chunks stored, {} zero, written to {}",
                report.size,
                report.chunks_stored,
                report.chunks_zero,
                output.display()
            );
            Ok(())
        }
        Command::Key(KeyCommand::Export { data_dir, out }) => {
            state::export_master_key(&data_dir, &out)?;
            eprintln!("master key written to {} (mode 0600): keep it offline, apart from the targets", out.display());
            Ok(())
        }
        Command::Bench(BenchCommand::Split(args)) => {
            let report = bench::split(&args)?;
            bench::print(&report, args.json)
        }
    }
}

/// Node targets authenticate with a token derived from the cluster secret. It is put
/// in the environment before any thread starts, where `cleave_target::open` finds it.
fn set_node_token(data_dir: &std::path::Path) -> Result<()> {
    let secret = state::cluster_secret(data_dir)?;
    std::env::set_var("CLEAVE_NODE_TOKEN", cleave_node::access_token(&secret));
    Ok(())
}

fn task_command(cmd: TaskCommand) -> Result<()> {
    match cmd {
        TaskCommand::Start { kind, volume, targets, from, to, server } => {
            let body = json!({ "kind": kind, "volume": volume, "targets": targets, "from": from, "to": to });
            let t = Client::new(&server)?.post("/tasks", body)?;
            print_json(&t.unwrap_or_default())
        }
        TaskCommand::List { server } => {
            for t in Client::new(&server)?.get("/tasks")?.as_array().into_iter().flatten() {
                println!(
                    "{:>4} {:<7} {:<20} {:<10} {:>5.0}%",
                    t["id"],
                    t["kind"].as_str().unwrap_or("?"),
                    t["volume"].as_str().unwrap_or("?"),
                    t["state"].as_str().unwrap_or("?"),
                    t["progress"].as_f64().unwrap_or(0.0) * 100.0
                );
            }
            Ok(())
        }
        TaskCommand::Show { id, server } => print_json(&Client::new(&server)?.get(&format!("/tasks/{id}"))?),
        TaskCommand::Wait { id, server } => {
            let client = Client::new(&server)?;
            let bar = indicatif::ProgressBar::new(1000);
            loop {
                let t = client.get(&format!("/tasks/{id}"))?;
                bar.set_position((t["progress"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
                bar.set_message(t["state"].as_str().unwrap_or("?").to_string());
                match t["state"].as_str() {
                    Some("succeeded") => {
                        bar.finish_and_clear();
                        return print_json(&t);
                    }
                    Some("failed") => {
                        bar.finish_and_clear();
                        anyhow::bail!("task {id} failed: {}", t["error"].as_str().unwrap_or("no reason given"));
                    }
                    _ => std::thread::sleep(std::time::Duration::from_millis(200)),
                }
            }
        }
    }
}

fn volume_command(cmd: VolumeCommand) -> Result<()> {
    match cmd {
        VolumeCommand::Create {
            name,
            size,
            m,
            n,
            chunk_size,
            durability,
            write_quorum,
            targets,
            groups,
            client,
            out,
            server,
        } => {
            let api = Client::new(&server)?;
            let chunk = u32::try_from(chunk_size.0).context("chunk size too large")?;
            let body = json!({
                "name": name, "size_bytes": size.0, "m": m, "n": n,
                "chunk_size": chunk, "durability": durability, "write_quorum": write_quorum, "targets": targets,
                "groups": groups, "client": client,
            });
            let mut v = api.post("/volumes", body)?.unwrap_or_default();
            if let Some(c) = v.as_object_mut().and_then(|o| o.remove("credentials")) {
                let who = c["client"].as_str().unwrap_or("client").to_string();
                access_cli::write_credentials(&c, &out.unwrap_or_else(|| PathBuf::from(format!("{who}-tls"))))?;
            }
            print_json(&v)
        }
        VolumeCommand::List { server } => {
            let list = Client::new(&server)?.get("/volumes")?;
            for v in list.as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:>10} {}-of-{} {:<10} {}",
                    v["name"].as_str().unwrap_or("?"),
                    ByteSize(v["size_bytes"].as_u64().unwrap_or(0)).to_string(),
                    v["m"],
                    v["n"],
                    v["health"]["state"].as_str().unwrap_or("?"),
                    v["nbd_uri"].as_str().unwrap_or("")
                );
                if let Some(why) = v["open_error"].as_str() {
                    println!("{:<20} cannot open (retrying): {why}", "");
                }
            }
            Ok(())
        }
        VolumeCommand::Show { name, server } => print_json(&Client::new(&server)?.get(&format!("/volumes/{name}"))?),
        VolumeCommand::Delete { name, server } => {
            Client::new(&server)?.delete(&format!("/volumes/{name}"))?;
            eprintln!("deleted {name}");
            Ok(())
        }
    }
}
