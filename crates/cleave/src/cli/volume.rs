//! `cleave volume` and `cleave scrub`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use cleave_api::model::{CreateVolume, CreatedVolume, Health, ScrubReport, VolumeView};
use cleave_gateway::ByteSize;

use super::client::{Client, ServerArgs};
use super::print_json;

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume.
    Create {
        name: String,
        #[arg(long)]
        size: ByteSize,
        /// Shares needed to read (default: chosen with N, N-2 from 4 shares up, 2 of 3).
        #[arg(long)]
        m: Option<u8>,
        /// Shares written (default: the targets named, or up to 5 nodes with room, or 5).
        #[arg(long)]
        n: Option<u8>,
        #[arg(long, default_value = "1MiB")]
        chunk_size: ByteSize,
        /// local: FLUSH is durable in the local cache; dispersed: durable on the targets.
        #[arg(long, default_value = "local")]
        durability: cleave_volume::Durability,
        /// Shares a write needs before it counts, from M to N (default max(M, min(N-1, M+1))).
        #[arg(long)]
        write_quorum: Option<u8>,
        /// Store all-zero chunks like data (default: they store nothing, so a target can
        /// count the chunks that hold data, though not tell which they are).
        #[arg(long)]
        store_zero_chunks: bool,
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

pub fn run(cmd: VolumeCommand) -> Result<()> {
    match cmd {
        VolumeCommand::Create {
            name,
            size,
            m,
            n,
            chunk_size,
            durability,
            write_quorum,
            store_zero_chunks,
            targets,
            groups,
            client,
            out,
            server,
        } => {
            let api = Client::new(&server)?;
            let body = CreateVolume {
                chunk_size: Some(u32::try_from(chunk_size.0).context("chunk size too large")?),
                durability: Some(durability),
                write_quorum,
                store_zero_chunks,
                targets,
                groups,
                client,
                m,
                n,
                ..CreateVolume::sized(&name, size.0)
            };
            let created: CreatedVolume = api.post("/volumes", &body)?;
            if let Some(c) = created.credentials {
                let dir = out.unwrap_or_else(|| PathBuf::from(format!("{}-tls", c.client)));
                super::access::write_credentials(&c, &dir)?;
            }
            print_json(&created.volume)
        }
        VolumeCommand::List { server } => list(&Client::new(&server)?),
        VolumeCommand::Show { name, server } => {
            print_json(&Client::new(&server)?.get::<VolumeView>(&format!("/volumes/{name}"))?)
        }
        VolumeCommand::Delete { name, server } => {
            Client::new(&server)?.delete(&format!("/volumes/{name}"))?;
            eprintln!("deleted {name}");
            Ok(())
        }
    }
}

fn list(client: &Client) -> Result<()> {
    for v in client.get::<Vec<VolumeView>>("/volumes")? {
        println!(
            "{:<20} {:>10} {}-of-{} {:<10} {}",
            v.name,
            ByteSize(v.size_bytes).to_string(),
            v.m,
            v.n,
            health_state(&v.health),
            v.nbd_uri
        );
        if let Some(why) = &v.open_error {
            println!("{:<20} cannot open (retrying): {why}", "");
        }
    }
    Ok(())
}

/// The `state` of a volume's health, as the API spells it.
fn health_state(h: &Health) -> &'static str {
    match h {
        Health::Clean => "clean",
        Health::Degraded { .. } => "degraded",
        Health::Unavailable { .. } => "unavailable",
    }
}

/// `cleave scrub`: verifies every share of a volume (and repairs with `repair`).
pub fn scrub(name: &str, repair: bool, server: &ServerArgs) -> Result<()> {
    let client = Client::new(server)?;
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("scrubbing {name}"));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let report: ScrubReport = client.post(&format!("/volumes/{name}/scrub?repair={repair}"), &serde_json::json!({}))?;
    spinner.finish_and_clear();
    print_json(&report)
}
