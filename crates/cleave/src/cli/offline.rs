//! What works without a server: `cleave recover` (a volume image from its targets and the
//! master key) and `cleave key export`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

use super::output::note;
use super::progress_bar;

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Write the master key of a data directory as a plain key file (mode 0600) for
    /// `cleave recover`. Keep it offline, apart from the targets. A sealed key needs its
    /// passphrase (CLEAVE_PASSPHRASE, or typed when asked).
    Export {
        /// The server's data directory, which holds master.key or master.sealed.
        #[arg(long, default_value = "./cleave-data")]
        data_dir: PathBuf,
        /// Where to write it; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Rebuilds a volume image from any M of its targets.
pub fn recover(targets: &[String], key_file: &Path, volume: &str, output: &Path, accept_stale: bool) -> Result<()> {
    let master = cleave_gateway::data_dir::read_master_key(key_file)?;
    let handles = targets
        .iter()
        .map(|u| cleave_target::open(u).with_context(|| format!("target {u}")))
        .collect::<Result<Vec<_>>>()?;
    let bar = progress_bar(0, &format!("recovering {volume}"));
    let report = tokio::runtime::Runtime::new()?.block_on(cleave_volume::recover::export(
        handles,
        &master,
        volume,
        output,
        accept_stale,
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    ))?;
    bar.finish_and_clear();
    if let Some(why) = &report.stale {
        note(&format!("warning: the image is STALE, older than the last writes: {why}"));
    }
    note(&format!(
        "recovered {volume}: {} bytes, {} chunks stored, {} zero, written to {}",
        report.size,
        report.chunks_stored,
        report.chunks_zero,
        output.display()
    ));
    Ok(())
}

pub fn key(cmd: KeyCommand) -> Result<()> {
    match cmd {
        KeyCommand::Export { data_dir, out } => {
            cleave_gateway::data_dir::export_master_key(&data_dir, &out)?;
            note(&format!(
                "master key written to {} (mode 0600): keep it offline, apart from the targets",
                out.display()
            ));
            Ok(())
        }
    }
}
