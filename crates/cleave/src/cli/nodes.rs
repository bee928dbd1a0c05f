//! `cleave node list` and `cleave control list`.

use anyhow::Result;
use clap::Subcommand;
use cleave_api::model::{ChildControl, NodeStatus, TreeNode};
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
    // Without `all` the nodes name no control: `TreeNode` reads them with an empty one.
    let list: Vec<TreeNode> = Client::new(server)?.get(if all { "/nodes?all=true" } else { "/nodes" })?;
    for TreeNode { node: n, control } in list {
        if all {
            print!("{control:<14} ");
        }
        println!(
            "{:<14} {:<22} {:<10} {:<5} {:>10} free of {:>10}",
            n.id,
            n.address,
            n.site,
            status(n.status),
            ByteSize(n.free_bytes).to_string(),
            ByteSize(n.capacity_bytes).to_string()
        );
    }
    Ok(())
}

/// `cleave control list`.
pub fn list_controls(server: &ServerArgs) -> Result<()> {
    print_controls(&Client::new(server)?.get::<Vec<ChildControl>>("/controls")?);
    Ok(())
}

/// A node's or control's status, as the API spells it.
fn status(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Up => "up",
        NodeStatus::Down => "down",
    }
}

/// `cleave control list`: one line per child control.
fn print_controls(list: &[ChildControl]) {
    for c in list {
        let s = &c.summary;
        println!(
            "{:<14} {:<16} {:<10} {:<5} {:<28} nodes {} up {} down, {:>10} free of {:>10}",
            c.id,
            c.name,
            c.site,
            status(c.status),
            c.api,
            s.nodes_up,
            s.nodes_down,
            ByteSize(s.free_bytes).to_string(),
            ByteSize(s.capacity_bytes).to_string()
        );
    }
}
