//! The command line client: each subcommand's flags and what it does, over the admin API
//! (`client`), or offline on targets and key files (`offline`).

/// Clients, groups and users.
pub mod access;
/// The admin API, as the CLI calls it.
pub mod client;
/// Mirrors of volumes to and from a peer gateway.
pub mod mirror;
/// Storage nodes and child controls.
pub mod nodes;
/// `recover` and `key export`: no server needed.
pub mod offline;
/// Tables, JSON, exit status.
pub mod output;
/// Tasks.
pub mod task;
/// Volumes and scrub.
pub mod volume;
/// The webhook that events are sent to.
pub mod webhook;

/// A progress bar counting chunks.
pub fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} chunks ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}
