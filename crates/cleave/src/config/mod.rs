//! `--config FILE`: the settings of `cleave serve`, `cleave control` and `cleave node` in a
//! TOML file.
//!
//! One file has a table per command, `[serve]`, `[control]` and `[node]`, and each command reads
//! its own. A host that runs a gateway and a storage node keeps their settings side by side in
//! one file (one `CLEAVE_CONFIG` for all its processes), yet no process takes a setting meant
//! for another: a key of another command's flag in its table is refused. A file for a single
//! process holds just its table. Every long flag of a command is a setting of its table, under
//! its long name with `_` for `-` (`-` is accepted too); a list flag takes an array.
//!
//! The flags stay the one definition: the file is checked against them (unknown keys, another
//! command's keys and wrongly typed values are refused), and what it sets becomes flags again.
//! A flag given on the command line wins, then an environment variable, then the file, then
//! the built-in default. docs/cleave.example.toml lists every setting.

mod file;
mod mask;

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use anyhow::Result;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, Parser};
use tracing::info;

/// The clap id of `--config`.
const CONFIG_ID: &str = "config";
/// The global flag that makes the command line client print JSON.
const CLIENT_OUTPUT_ID: &str = "json";

/// `--config`, on each command that runs a server process.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigFlag {
    /// A TOML file whose [serve], [control] or [node] table sets this command's flags, by long
    /// name (`data_dir = "/srv/cleave"`). A flag or its environment variable overrides the
    /// file. Every setting is listed in docs/cleave.example.toml.
    #[arg(id = CONFIG_ID, long = "config", env = "CLEAVE_CONFIG", value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// The commands that run a server process and read a configuration file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    Serve,
    Control,
    Node,
}

impl Daemon {
    pub const ALL: [Daemon; 3] = [Daemon::Serve, Daemon::Control, Daemon::Node];

    /// The subcommand, and the name of its table in a file.
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Serve => "serve",
            Daemon::Control => "control",
            Daemon::Node => "node",
        }
    }

    fn named(name: &str) -> Option<Daemon> {
        Daemon::ALL.into_iter().find(|d| d.name() == name)
    }

    fn tables() -> String {
        let names: Vec<String> = Daemon::ALL.iter().map(|d| format!("[{}]", d.name())).collect();
        names.join(", ")
    }

    /// The command that `matches` runs, if it is a server process: `cleave node list` is not.
    fn of(matches: &ArgMatches) -> Option<(Daemon, &ArgMatches)> {
        let (name, sub) = matches.subcommand()?;
        let daemon = Daemon::named(name)?;
        sub.subcommand().is_none().then_some((daemon, sub))
    }

    /// The flags of this command in `cli`: its own and the global ones (`--log-format`).
    fn flags(self, cli: &Command) -> Vec<&Arg> {
        let own = cli.find_subcommand(self.name()).into_iter().flat_map(|c| c.get_arguments());
        own.chain(cli.get_arguments().filter(|a| a.is_global_set()))
            .filter(|a| a.get_long().is_some())
            .filter(|a| !matches!(a.get_action(), ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong))
            .filter(|a| !matches!(a.get_action(), ArgAction::Version))
            // How the command line client prints: nothing a server does.
            .filter(|a| a.get_id() != CLIENT_OUTPUT_ID)
            .collect()
    }
}

/// Where a setting's value came from, in order of precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Flag => "flag",
            Source::Env => "env",
            Source::File => "file",
            Source::Default => "default",
        })
    }
}

/// One setting as the process runs with it; `value` has its secrets masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
    pub source: Source,
}

/// The configuration a server process runs with.
#[derive(Debug)]
pub struct Effective {
    pub daemon: Daemon,
    pub settings: Vec<Setting>,
}

/// Secrets that only the environment gives; shown as set or not, never their value.
const SECRET_ENV: [&str; 4] = ["CLEAVE_PASSPHRASE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

impl Effective {
    fn new(
        daemon: Daemon,
        cli: &Command,
        given: &ArgMatches,
        last: &ArgMatches,
        from_file: &[file::FileValue],
    ) -> Self {
        let mut settings: Vec<Setting> = daemon
            .flags(cli)
            .into_iter()
            .map(|arg| {
                let id = arg.get_id().as_str();
                let key = file::setting_name(arg);
                let source = match given.value_source(id) {
                    Some(ValueSource::CommandLine) => Source::Flag,
                    Some(ValueSource::EnvVariable) => Source::Env,
                    _ if from_file.iter().any(|v| v.id == id) => Source::File,
                    _ => Source::Default,
                };
                let values: Vec<String> = match last.try_get_raw(id) {
                    Ok(Some(raw)) => raw.map(|v| mask::value(&key, &v.to_string_lossy())).collect(),
                    _ => Vec::new(),
                };
                let value = match (arg.get_action(), values.as_slice()) {
                    (ArgAction::Append, v) => format!("[{}]", v.join(", ")),
                    (_, []) => "(none)".to_string(),
                    (_, v) => v.join(", "),
                };
                Setting { key, value, source }
            })
            .collect();
        if daemon != Daemon::Node {
            for name in SECRET_ENV {
                let set = std::env::var_os(name).is_some_and(|v| !v.is_empty());
                if set || name == "CLEAVE_PASSPHRASE" {
                    let (value, source) =
                        if set { (mask::MASK.into(), Source::Env) } else { ("(not set)".into(), Source::Default) };
                    settings.push(Setting { key: name.into(), value, source });
                }
            }
        }
        Effective { daemon, settings }
    }

    /// Logs every setting and where it came from.
    pub fn log(&self) {
        info!(command = self.daemon.name(), "effective configuration (from: flag, env, file or default)");
        for s in &self.settings {
            info!(setting = %s.key, value = %s.value, from = %s.source, "configuration");
        }
    }
}

/// The longest interval or timeout a flag takes, in seconds: a day.
const MAX_SECONDS: f64 = 86_400.0;

/// Parses a number of seconds (an interval or a timeout): anything that `Duration` can hold
/// without panicking, so 0 to a day.
pub fn seconds(text: &str) -> Result<f64, String> {
    let s: f64 = text.trim().parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=MAX_SECONDS).contains(&s) {
        return Err(format!("seconds from 0 to {MAX_SECONDS}, not {text}"));
    }
    Ok(s)
}

/// The command line without `required` on the servers' flags, which the file may give.
fn relaxed(mut cli: Command) -> Command {
    for daemon in Daemon::ALL {
        cli = cli.mut_subcommand(daemon.name(), |mut c| {
            let required: Vec<String> =
                c.get_arguments().filter(|a| a.is_required_set()).map(|a| a.get_id().to_string()).collect();
            for id in required {
                c = c.mut_arg(id, |a| a.required(false));
            }
            c
        });
    }
    cli
}

/// Parses `argv` as `P`, filling the settings of a server command that no flag or environment
/// variable gave from its configuration file. Returns the effective configuration of a server
/// process, and None for other commands. Like clap's own parse, exits on a usage error.
pub fn parse<P: Parser>(argv: Vec<OsString>) -> Result<(P, Option<Effective>)> {
    let cli = P::command();
    // First pass: what the command line and the environment give, and which file to read.
    let given = match relaxed(cli.clone()).try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(_) => cli.clone().get_matches_from(&argv),
    };
    let Some((daemon, given_sub)) = Daemon::of(&given) else {
        let parsed = P::from_arg_matches(&given).unwrap_or_else(|e| e.exit());
        return Ok((parsed, None));
    };
    let from_file = match given_sub.get_one::<PathBuf>(CONFIG_ID) {
        Some(path) => file::load(path, daemon, &cli)?,
        None => Vec::new(),
    };
    let mut full = argv;
    for v in &from_file {
        if !matches!(given_sub.value_source(&v.id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            full.extend(v.args.iter().cloned());
        }
    }
    let last = cli.clone().try_get_matches_from(&full).unwrap_or_else(|e| e.exit());
    let parsed = P::from_arg_matches(&last).unwrap_or_else(|e| e.exit());
    let last_sub = Daemon::of(&last).map_or(&last, |(_, m)| m);
    Ok((parsed, Some(Effective::new(daemon, &cli, given_sub, last_sub, &from_file))))
}

#[cfg(test)]
mod tests;
