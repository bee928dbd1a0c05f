//! `cleave volume` and `cleave scrub`.

use std::path::PathBuf;

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use clap::Subcommand;
use cleave_api::model::{CreateVolume, CreatedVolume, Durability, Health, ScrubReport, VolumeOrder, VolumeView};
use cleave_gateway::ByteSize;

use super::client::{Client, ServerArgs};
use super::output::{ago, list_or_none, note, out, print_json, Fields, Format, Outcome, Table};

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume (all or nothing) and print what it is.
    Create {
        /// The volume's name, also its NBD export name: 1-64 letters, digits, '-', '_' or '.'.
        name: String,
        /// Size of the virtual disk, such as 20GiB (a multiple of 512 bytes).
        #[arg(long)]
        size: ByteSize,
        /// Shares any chunk can be rebuilt from, M of M-of-N (default: chosen with N, N-2 from 4
        /// shares up, 2 of 3).
        #[arg(long)]
        m: Option<u8>,
        /// Shares each chunk is split into, one per target, N of M-of-N (default: the targets
        /// named, or up to 5 nodes with room, or 5).
        #[arg(long)]
        n: Option<u8>,
        /// Unit of caching, encryption and dispersal: a power of two from 4KiB to 64MiB.
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
    /// List volumes: size, layout, health and NBD URI.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show a volume: health, dirty bytes, cache use, last destage, targets.
    Show {
        /// The volume's name.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// In an appliance: put gateways first among those that take the volume over when its
    /// primary goes, in this order (none: placement alone decides).
    Order {
        /// The volume's name.
        name: String,
        /// Gateway names, as `volume show` prints them.
        gateways: Vec<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a volume and everything it stored (a crypto-erase).
    Delete {
        /// The volume's name.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub fn run(cmd: VolumeCommand, format: Format) -> Result<()> {
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
            match format {
                Format::Json => print_json(&created.volume),
                Format::Human => show(&created.volume),
            }
        }
        VolumeCommand::List { server } => {
            let list = Client::new(&server)?.get::<Vec<VolumeView>>("/volumes")?;
            match format {
                Format::Json => print_json(&list),
                Format::Human => print_list(&list),
            }
        }
        VolumeCommand::Show { name, server } => {
            let v = Client::new(&server)?.get::<VolumeView>(&format!("/volumes/{name}"))?;
            match format {
                Format::Json => print_json(&v),
                Format::Human => show(&v),
            }
        }
        VolumeCommand::Order { name, gateways, server } => {
            let v: VolumeView =
                Client::new(&server)?.put(&format!("/volumes/{name}/order"), &VolumeOrder { gateways })?;
            match format {
                Format::Json => print_json(&v),
                Format::Human => show(&v),
            }
        }
        VolumeCommand::Delete { name, server } => {
            Client::new(&server)?.delete(&format!("/volumes/{name}"))?;
            note(&format!("deleted {name}"));
            Ok(())
        }
    }
}

fn print_list(list: &[VolumeView]) -> Result<()> {
    let mut table = Table::new(&["NAME", "SIZE", "LAYOUT", "HEALTH", "DURABILITY", "NBD URI"]);
    for v in list {
        table.row(vec![
            v.name.clone(),
            ByteSize(v.size_bytes).to_string(),
            format!("{}-of-{}", v.m, v.n),
            health_state(&v.health).to_string(),
            durability(v.durability).to_string(),
            v.nbd_uri.clone(),
        ]);
    }
    table.print("no volumes")?;
    for v in list {
        if let Some(why) = &v.open_error {
            note(&format!("{}: cannot open (retrying): {why}", v.name));
        }
    }
    Ok(())
}

fn durability(d: Durability) -> &'static str {
    match d {
        Durability::Local => "local",
        Durability::Dispersed => "dispersed",
    }
}

/// `volume show` for people: one field a line, the missing shares summed up.
fn show(v: &VolumeView) -> Result<()> {
    let mut t = Fields::default();
    t.add("name", &v.name);
    t.add("uuid", &v.uuid);
    t.add(
        "size",
        format!(
            "{} ({} chunks of {} hold data)",
            ByteSize(v.size_bytes),
            v.mapped_chunks,
            ByteSize(v.chunk_size.into())
        ),
    );
    t.add("layout", format!("{}-of-{}, write quorum {}", v.m, v.n, v.write_quorum));
    let flush = match (v.durability, v.flush_reaches_targets, &v.standby) {
        (Durability::Local, true, _) => " (a FLUSH reaches the targets: another gateway may serve it next)".into(),
        (Durability::Local, false, Some(g)) => format!(" (a FLUSH reaches this cache and gateway {g}'s standby log)"),
        _ => String::new(),
    };
    t.add("durability", format!("{}{flush}", durability(v.durability)));
    t.add("health", health_summary(&v.health));
    if let Some(primary) = &v.primary {
        let epoch = v.epoch.map(|e| format!(" (this gateway, epoch {e})")).unwrap_or_default();
        t.add("primary", format!("{primary}{epoch}"));
    }
    if !v.secondaries.is_empty() {
        t.add("secondaries", v.secondaries.join(", "));
    }
    if let Some(why) = &v.open_error {
        t.add("open error", format!("{why} (retrying)"));
    }
    t.add(
        "cache",
        format!(
            "{} dirty, {} held of {}",
            ByteSize(v.dirty_bytes),
            ByteSize(v.cache_bytes),
            ByteSize(v.cache_limit_bytes)
        ),
    );
    // The API gives Unix seconds; people read an age.
    let destage = match v.last_destage_unix.as_deref().map(str::parse::<u64>) {
        None => "never".to_string(),
        Some(Ok(secs)) => ago(secs.saturating_mul(1000)),
        Some(Err(_)) => v.last_destage_unix.clone().unwrap_or_default(),
    };
    match &v.last_destage_error {
        Some(e) => t.add("last destage", format!("{destage}, error: {e}")),
        None => t.add("last destage", destage),
    }
    t.add("journal seq", v.journal_seq.to_string());
    t.add("groups", list_or_none(&v.groups));
    for (i, target) in v.targets.iter().enumerate() {
        t.add(if i == 0 { "targets" } else { "" }, format!("{i}  {target}"));
    }
    t.add("nbd", &v.nbd_uri);
    t.add("nbds", &v.nbds_uri);
    out(&t.render())
}

/// The `state` of a volume's health, as the API spells it.
fn health_state(h: &Health) -> &'static str {
    match h {
        Health::Clean => "clean",
        Health::Degraded { .. } => "degraded",
        Health::Unavailable { .. } => "unavailable",
    }
}

/// A volume's health in one line: the state, the targets down and which shares are missing,
/// without the per-chunk list (`--json` has it).
fn health_summary(h: &Health) -> String {
    let mut parts = Vec::new();
    let targets_down = match h {
        Health::Clean => return "clean".into(),
        Health::Degraded { targets_down, .. } | Health::Unavailable { targets_down } => targets_down,
    };
    if !targets_down.is_empty() {
        parts.push(format!("targets down: {}", targets_down.join(", ")));
    }
    if let Health::Degraded { chunks_missing_shares, missing, journal_degraded, .. } = h {
        if *chunks_missing_shares > 0 {
            let shares: BTreeSet<u8> = missing.iter().flat_map(|(_, s)| s.iter().copied()).collect();
            let shares: Vec<String> = shares.iter().map(u8::to_string).collect();
            parts.push(format!("{chunks_missing_shares} chunks miss shares (share {})", shares.join(", ")));
        }
        if *journal_degraded {
            parts.push("the journal is on fewer than N targets".into());
        }
    }
    match parts.is_empty() {
        true => health_state(h).to_string(),
        false => format!("{}: {}", health_state(h), parts.join("; ")),
    }
}

/// `cleave scrub`: verifies every share of a volume (and repairs with `repair`).
pub fn scrub(name: &str, repair: bool, server: &ServerArgs, format: Format) -> Result<Outcome> {
    let client = Client::new(server)?;
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("scrubbing {name}"));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let report: ScrubReport = client.post(&format!("/volumes/{name}/scrub?repair={repair}"), &serde_json::json!({}))?;
    spinner.finish_and_clear();
    match format {
        Format::Json => print_json(&report)?,
        Format::Human => print_scrub(&report)?,
    }
    let outcome = scrub_outcome(&report);
    if outcome == Outcome::Problems && !repair && format == Format::Human {
        note(&format!("run `cleave scrub {name} --repair` to restore full redundancy"));
    }
    Ok(outcome)
}

/// Chunks with a problem, and those of them a repair did not fix.
fn damaged_and_unrepaired(r: &ScrubReport) -> (usize, u64) {
    let damaged: BTreeSet<u64> =
        r.problems.iter().map(|p| p.chunk).chain(r.chunks_unrecoverable.iter().copied()).collect();
    (damaged.len(), (damaged.len() as u64).saturating_sub(r.chunks_repaired))
}

/// Problems that are still there after the scrub are what its exit status says.
pub fn scrub_outcome(r: &ScrubReport) -> Outcome {
    match damaged_and_unrepaired(r) {
        (_, 0) if r.chunks_unrecoverable.is_empty() => Outcome::Done,
        _ => Outcome::Problems,
    }
}

/// How many problem rows a human scrub report lists; `--json` has them all.
const PROBLEMS_SHOWN: usize = 20;

/// A scrub report for people: a summary line, then the problem shares only.
pub fn print_scrub(r: &ScrubReport) -> Result<()> {
    let (damaged, _) = damaged_and_unrepaired(r);
    out(&format!("scrub: {} chunks checked, {damaged} damaged, {} repaired", r.chunks_checked, r.chunks_repaired))?;
    if !r.chunks_unrecoverable.is_empty() {
        let chunks: Vec<String> = r.chunks_unrecoverable.iter().take(PROBLEMS_SHOWN).map(u64::to_string).collect();
        out(&format!(
            "lost: {} chunks have fewer than M good shares: {}",
            r.chunks_unrecoverable.len(),
            chunks.join(", ")
        ))?;
    }
    if r.problems.is_empty() {
        return Ok(());
    }
    let mut table = Table::new(&["CHUNK", "SHARE", "TARGET", "PROBLEM"]);
    for p in r.problems.iter().take(PROBLEMS_SHOWN) {
        table.row(vec![p.chunk.to_string(), p.share.to_string(), p.target.clone(), p.problem.clone()]);
    }
    out(&table.render())?;
    if r.problems.len() > PROBLEMS_SHOWN {
        out(&format!("… and {} more problem shares (--json lists them all)", r.problems.len() - PROBLEMS_SHOWN))?;
    }
    Ok(())
}
