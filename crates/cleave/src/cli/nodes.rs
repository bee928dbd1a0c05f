//! `cleave node list` and `cleave control list`.

use anyhow::Result;
use clap::Subcommand;
use cleave_api::model::{ChildControl, NodeStatus, TreeNode};
use cleave_gateway::ByteSize;

use super::client::{Client, ServerArgs};
use super::output::{print_json, print_list, Format, Table};

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

/// `cleave node list`: one row per node.
pub fn list_nodes(all: bool, server: &ServerArgs, format: Format) -> Result<()> {
    // Without `all` the nodes name no control: `TreeNode` reads them with an empty one.
    let list: Vec<TreeNode> = Client::new(server)?.get(if all { "/nodes?all=true" } else { "/nodes" })?;
    if format == Format::Json {
        return print_json(&list);
    }
    let header = ["ID", "ADDRESS", "SITE", "STATUS", "FREE", "CAPACITY"];
    let mut table = Table::new(&if all { [&["CONTROL"][..], &header].concat() } else { header.to_vec() });
    for TreeNode { node: n, control, control_name } in list {
        let mut row = vec![
            n.id,
            n.address,
            n.site,
            status(n.status).to_string(),
            ByteSize(n.free_bytes).to_string(),
            ByteSize(n.capacity_bytes).to_string(),
        ];
        if all {
            // A control that names itself shows its name; an older one only its id.
            row.insert(0, if control_name.is_empty() { control } else { control_name });
        }
        table.row(row);
    }
    table.print("no nodes")
}

/// `cleave control list`: one row per child control.
pub fn list_controls(server: &ServerArgs, format: Format) -> Result<()> {
    let list = Client::new(server)?.get::<Vec<ChildControl>>("/controls")?;
    let header = ["ID", "NAME", "SITE", "STATUS", "API", "NODES UP", "NODES DOWN", "FREE", "CAPACITY"];
    print_list(&list, format, &header, "no child controls", |c| {
        let s = &c.summary;
        vec![
            c.id.clone(),
            c.name.clone(),
            c.site.clone(),
            status(c.status).to_string(),
            c.api.clone(),
            s.nodes_up.to_string(),
            s.nodes_down.to_string(),
            ByteSize(s.free_bytes).to_string(),
            ByteSize(s.capacity_bytes).to_string(),
        ]
    })
}

/// A node's or control's status, as the API spells it.
fn status(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Up => "up",
        NodeStatus::Down => "down",
    }
}
