//! `cleave sim placement`: a large pool simulated with the real placement and repair planning
//! (`cleave_control::sim`), in this process; no server, no I/O.

use anyhow::{ensure, Result};
use cleave_control::sim::{self, Report, Spec};

use crate::cli::output::{out, print_json, Format};

#[derive(clap::Args, Debug)]
pub struct PlacementArgs {
    /// Storage nodes in the simulated pool (capacities of 8, 12, 16 or 24 TiB).
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Sites the nodes are spread over, round robin.
    #[arg(long, default_value_t = 10)]
    pub sites: usize,
    /// Volumes placed one after the other (64 GiB to 1 TiB each).
    #[arg(long, default_value_t = 10_000)]
    pub volumes: usize,
    /// Shares any chunk can be rebuilt from.
    #[arg(long, default_value_t = 3)]
    pub m: u8,
    /// Shares each chunk is split into.
    #[arg(long, default_value_t = 5)]
    pub n: u8,
    /// Seed of the sizes drawn: the same seed gives the same pool and volumes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn placement(args: &PlacementArgs, format: Format) -> Result<()> {
    ensure!(args.nodes > 0 && args.sites > 0, "--nodes and --sites must be at least 1");
    ensure!(args.m >= 1 && args.m <= args.n, "--m must be from 1 to --n");
    let spec =
        Spec { nodes: args.nodes, sites: args.sites, volumes: args.volumes, m: args.m, n: args.n, seed: args.seed };
    let report = sim::run(spec);
    if format == Format::Json {
        return print_json(&report);
    }
    out(&summary(&spec, &report))
}

fn summary(spec: &Spec, r: &Report) -> String {
    let per_site: Vec<String> = r.shares_per_site.iter().map(usize::to_string).collect();
    format!(
        "pool: {} nodes on {} sites; {} volumes {}-of-{} placed, {} refused\n\
         fill: {:.1}% to {:.1}% of each node (capacity-weighted mean {:.1}%; spread {:.1} points)\n\
         shares per site: {}\n\
         volumes on fewer sites than they could be: {}\n\
         site 0 lost: {} volumes lost shares, at most {} each, {} unreadable (more than N-M)\n\
         repair plan: {} shares move ({:.1} TiB), {} find no node; fullest node after: {:.1}%",
        spec.nodes,
        spec.sites,
        r.placed,
        spec.m,
        spec.n,
        r.refused,
        r.min_fill,
        r.max_fill,
        r.mean_fill,
        r.max_fill - r.min_fill,
        per_site.join(" "),
        r.volumes_site_poor,
        r.volumes_hit,
        r.max_lost,
        r.volumes_lost,
        r.moves,
        r.moved_bytes as f64 / (1u64 << 40) as f64,
        r.unplaceable,
        r.max_fill_after,
    )
}
