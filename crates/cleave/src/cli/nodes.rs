//! `cleave node list` and `cleave control list`.

use anyhow::Result;
use clap::Subcommand;
use cleave_gateway::ByteSize;

use super::client::{Client, ServerArgs};

#[derive(Subcommand, Debug)]
pub enum NodeSub {
    /// List storage nodes known to control: status, site, capacity.
    List {
        /// Also the nodes of child control servers, with the control that holds each.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum ControlSub {
    /// List the child control servers registered with this one: status and pool summary.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `cleave node list`: one line per node.
pub fn list_nodes(all: bool, server: &ServerArgs) -> Result<()> {
    let list = Client::new(server)?.get(if all { "/nodes?all=true" } else { "/nodes" })?;
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

/// `cleave control list`.
pub fn list_controls(server: &ServerArgs) -> Result<()> {
    print_controls(&Client::new(server)?.get("/controls")?);
    Ok(())
}

/// `cleave control list`: one line per child control.
fn print_controls(list: &serde_json::Value) {
    for c in list.as_array().into_iter().flatten() {
        let s = &c["summary"];
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        println!(
            "{:<14} {:<16} {:<10} {:<5} {:<28} nodes {} up {} down, {:>10} free of {:>10}",
            c["id"].as_str().unwrap_or("?"),
            c["name"].as_str().unwrap_or("?"),
            c["site"].as_str().unwrap_or("?"),
            c["status"].as_str().unwrap_or("?"),
            c["api"].as_str().unwrap_or("?"),
            n("nodes_up"),
            n("nodes_down"),
            ByteSize(n("free_bytes")).to_string(),
            ByteSize(n("capacity_bytes")).to_string()
        );
    }
}
