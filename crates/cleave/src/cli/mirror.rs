//! `cleave mirror …`: the CLI side of `/api/v1/mirrors` and `/api/v1/mirror-credentials`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use cleave_api::model::{
    CreateMirror, Discard, MirrorCredentials, MirrorMode, MirrorRole, MirrorState, MirrorView, NewName, OnFailure,
    PeerCredentials, Promote, Resolve,
};
use cleave_gateway::data_dir::write_private;
use cleave_gateway::ByteSize;

use super::client::{Client, ServerArgs};
use super::output::{note, out, print_json, print_list, Fields, Format};

#[derive(Subcommand, Debug)]
pub enum MirrorCommand {
    /// Mirror a volume to a peer gateway: the peer creates its side, then the initial copy starts.
    Create {
        /// The volume to mirror; this gateway becomes its primary.
        volume: String,
        /// The peer gateway's mirror listener, HOST:PORT.
        #[arg(long)]
        peer: String,
        /// sync: a write is answered once the mirror has it; async: once this gateway has it,
        /// the mirror following in order with a bounded lag.
        #[arg(long, value_enum)]
        mode: ModeArg,
        /// What a sync write does when the mirror cannot take it: fail (the host gets an I/O
        /// error) or degrade (answered, and journaled for the mirror). Default: degrade.
        #[arg(long, value_enum)]
        on_mirror_failure: Option<OnFailureArg>,
        /// The file `cleave mirror credentials` wrote on the peer; needed the first time this
        /// gateway mirrors to that peer.
        #[arg(long)]
        credentials: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List mirrors: role, state, peer, mode and lag.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show a mirror: state, lag, resync progress, journal, bitmap and generation.
    Show {
        /// The mirrored volume.
        volume: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop sending a volume's changes to its mirror (on the primary); they are journaled.
    Pause {
        /// The mirrored volume.
        volume: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Send a paused volume's changes to its mirror again, the journaled ones first.
    Resume {
        /// The mirrored volume.
        volume: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop mirroring a volume; both gateways keep their copies as plain volumes.
    Remove {
        /// The mirrored volume.
        volume: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Make this gateway, the mirror, the primary: a planned switchover (the primary sends what
    /// it has and becomes the mirror), or with --force a takeover.
    Promote {
        /// The mirrored volume.
        volume: String,
        /// Take over without the primary, with a new generation: also when the primary cannot
        /// be reached or this side is still copying.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// End a split brain, run on the gateway whose changes since the split are discarded: it
    /// becomes the mirror, and the peer copies over every region either side changed.
    Resolve {
        /// The mirrored volume.
        volume: String,
        /// Whose changes go: local, this gateway's (the one the command talks to).
        #[arg(long, value_enum)]
        discard: DiscardArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Issue credentials for a peer gateway to reach this one's mirror listener (issuing them
    /// again for a name replaces its certificate). Printed as JSON, or written to --out.
    Credentials {
        /// The peer's name here: 1-64 letters, digits, '-', '_' or '.'.
        name: String,
        /// Write them to this file (mode 0600) instead of printing them.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Sync,
    Async,
}

impl From<ModeArg> for MirrorMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Sync => MirrorMode::Sync,
            ModeArg::Async => MirrorMode::Async,
        }
    }
}

/// `--on-mirror-failure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnFailureArg {
    Fail,
    Degrade,
}

impl From<OnFailureArg> for OnFailure {
    fn from(f: OnFailureArg) -> Self {
        match f {
            OnFailureArg::Fail => OnFailure::Fail,
            OnFailureArg::Degrade => OnFailure::Degrade,
        }
    }
}

/// `--discard`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DiscardArg {
    Local,
}

impl From<DiscardArg> for Discard {
    fn from(d: DiscardArg) -> Self {
        match d {
            DiscardArg::Local => Discard::Local,
        }
    }
}

/// The path of one mirror's calls.
fn path(volume: &str, action: &str) -> String {
    format!("/mirrors/{volume}{action}")
}

pub fn run(cmd: MirrorCommand, format: Format) -> Result<()> {
    match cmd {
        MirrorCommand::Create { volume, peer, mode, on_mirror_failure, credentials, server } => {
            let credentials = credentials.map(|f| read_credentials(&f)).transpose()?;
            let body = CreateMirror {
                volume,
                peer,
                mode: mode.into(),
                on_failure: on_mirror_failure.map(OnFailure::from).unwrap_or_default(),
                credentials,
            };
            let view: MirrorView = Client::new(&server)?.post("/mirrors", &body)?;
            print_view(&view, format)
        }
        MirrorCommand::List { server } => {
            let list = Client::new(&server)?.get::<Vec<MirrorView>>("/mirrors")?;
            print_list(&list, format, &["VOLUME", "ROLE", "STATE", "PEER", "MODE", "LAG"], "no mirrors", |m| {
                vec![
                    m.volume.clone(),
                    role(m.role).to_string(),
                    state_words(m),
                    m.peer.clone(),
                    mode(m.mode).to_string(),
                    lag(m),
                ]
            })
        }
        MirrorCommand::Show { volume, server } => {
            let view: MirrorView = Client::new(&server)?.get(&path(&volume, ""))?;
            print_view(&view, format)
        }
        MirrorCommand::Pause { volume, server } => {
            let view: MirrorView = Client::new(&server)?.post(&path(&volume, "/pause"), &serde_json::json!({}))?;
            changed(&view, format, "paused")
        }
        MirrorCommand::Resume { volume, server } => {
            let view: MirrorView = Client::new(&server)?.post(&path(&volume, "/resume"), &serde_json::json!({}))?;
            changed(&view, format, "resumed")
        }
        MirrorCommand::Remove { volume, server } => {
            Client::new(&server)?.delete(&path(&volume, ""))?;
            note(&format!("mirror of {volume} removed; the volume stays here, and on the peer, as a plain volume"));
            Ok(())
        }
        MirrorCommand::Promote { volume, force, server } => {
            let view: MirrorView = Client::new(&server)?.post(&path(&volume, "/promote"), &Promote { force })?;
            print_view(&view, format)
        }
        MirrorCommand::Resolve { volume, discard, server } => {
            let body = Resolve { discard: discard.into() };
            let view: MirrorView = Client::new(&server)?.post(&path(&volume, "/resolve"), &body)?;
            print_view(&view, format)
        }
        MirrorCommand::Credentials { name, out: file, server } => {
            let c: MirrorCredentials = Client::new(&server)?.post("/mirror-credentials", &NewName { name })?;
            let text = serde_json::to_string_pretty(&c)?;
            match file {
                Some(f) => {
                    write_private(&f, format!("{text}\n").as_bytes())?;
                    note(&format!(
                        "credentials for peer {} in {} (mode 0600): on that peer, give them to `cleave mirror create \
                         --credentials`",
                        c.name,
                        f.display()
                    ));
                    Ok(())
                }
                None => out(&text),
            }
        }
    }
}

/// Credentials from `cleave mirror credentials` on the peer (its `name` is not needed here).
fn read_credentials(file: &std::path::Path) -> Result<PeerCredentials> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not the credentials `cleave mirror credentials` writes (ca_pem, cert_pem, key_pem)",
            file.display()
        )
    })
}

fn print_view(v: &MirrorView, format: Format) -> Result<()> {
    match format {
        Format::Json => print_json(v),
        Format::Human => show(v),
    }
}

/// A pause or resume: the view for scripts, one line for people.
fn changed(v: &MirrorView, format: Format, what: &str) -> Result<()> {
    match format {
        Format::Json => print_json(v),
        Format::Human => {
            note(&format!("mirror of {} {what}: {}", v.volume, state_words(v)));
            Ok(())
        }
    }
}

/// Which side this gateway is, as people say it.
pub fn role(r: MirrorRole) -> &'static str {
    match r {
        MirrorRole::Primary => "primary",
        MirrorRole::Secondary => "mirror",
    }
}

fn mode(m: MirrorMode) -> &'static str {
    match m {
        MirrorMode::Sync => "sync",
        MirrorMode::Async => "async",
    }
}

fn on_failure(f: OnFailure) -> &'static str {
    match f {
        OnFailure::Fail => "fail",
        OnFailure::Degrade => "degrade",
    }
}

/// The state as the API spells it.
fn state(s: MirrorState) -> &'static str {
    match s {
        MirrorState::InSync => "in-sync",
        MirrorState::Resyncing => "resyncing",
        MirrorState::Disconnected => "disconnected",
        MirrorState::Probation => "probation",
        MirrorState::SplitBrain => "split-brain",
        MirrorState::Paused => "paused",
    }
}

/// Resync progress: `done/total regions (percent%)`, or `none`.
fn progress(v: &MirrorView) -> String {
    match v.resync_total {
        0 => "none".into(),
        total => format!("{}/{total} regions ({}%)", v.resync_done, percent(v.resync_done, total)),
    }
}

/// Whole percent, rounded down (100 only when done).
fn percent(done: u64, total: u64) -> u64 {
    (u128::from(done.min(total)) * 100 / u128::from(total.max(1))) as u64
}

/// The state, with the progress of a resync.
fn state_words(v: &MirrorView) -> String {
    match v.state {
        MirrorState::Resyncing if v.resync_total > 0 => {
            format!("resyncing {}%", percent(v.resync_done, v.resync_total))
        }
        s => state(s).to_string(),
    }
}

fn lag(v: &MirrorView) -> String {
    format!("{}, {} changes", ByteSize(v.lag_bytes), v.lag_changes)
}

/// `mirror show` for people: one field a line.
fn show(v: &MirrorView) -> Result<()> {
    let mut t = Fields::default();
    t.add("volume", &v.volume);
    t.add("state", state(v.state));
    t.add("role", role(v.role));
    t.add("peer", &v.peer);
    t.add("mode", format!("{} (on mirror failure: {})", mode(v.mode), on_failure(v.on_failure)));
    t.add("lag", lag(v));
    t.add("resync", progress(v));
    let overflowed = if v.journal_overflowed { " (overflowed: its regions are copied instead)" } else { "" };
    t.add("journal", format!("{}, {} records{overflowed}", ByteSize(v.journal_bytes), v.journal_records));
    t.add("bitmap", format!("{} regions", v.bitmap_regions));
    t.add("generation", &v.generation);
    t.add("consistent", if v.consistent { "yes" } else { "no" });
    t.add("detail", if v.detail.is_empty() { "-" } else { v.detail.as_str() });
    out(&t.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_rounds_down_and_is_100_only_when_done() {
        assert_eq!(percent(0, 128), 0);
        assert_eq!(percent(37, 128), 28);
        assert_eq!(percent(127, 128), 99);
        assert_eq!(percent(128, 128), 100);
        assert_eq!(percent(5, 0), 0);
        assert_eq!(percent(u64::MAX - 1, u64::MAX), 99);
    }
}
