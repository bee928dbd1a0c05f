//! The `cleave` binary: command line, configuration and wiring of the library crates.

mod bench;
mod size;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "cleave", version, about = "Secure dispersed block storage")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure performance.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Single-thread throughput of the splitting codec.
    Split(bench::SplitArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(BenchCommand::Split(args)) => {
            let report = bench::split(&args)?;
            bench::print(&report, args.json)
        }
    }
}
