//! Reading a configuration file: its table for one command, checked key by key against that
//! command's flags, and turned into the flags it stands for.

use std::any::TypeId;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Arg, ArgAction, Command};
use cleave_gateway::ByteSize;
use toml::{Table, Value};

use super::Daemon;

/// One setting the file gives: the flag it stands for, as command-line arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileValue {
    /// The clap id of the flag.
    pub id: String,
    pub args: Vec<OsString>,
}

/// Reads `path` and returns what its table for `daemon` sets.
pub fn load(path: &Path, daemon: Daemon, cli: &Command) -> Result<Vec<FileValue>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the configuration file {}", path.display()))?;
    let table: Table = text.parse().map_err(|e| anyhow!("{}: {e}", path.display()))?;
    settings(&table, daemon, cli).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The flags `table`'s `[daemon]` table sets. Every top-level key must name one of the
/// commands' tables; keys are the flags' long names, with `_` or `-`.
pub fn settings(table: &Table, daemon: Daemon, cli: &Command) -> Result<Vec<FileValue>> {
    for (name, value) in table {
        match (Daemon::named(name), value) {
            (Some(_), Value::Table(_)) => {}
            (Some(_), _) => bail!("`{name}` must be a table, [{name}]"),
            (None, Value::Table(_)) => bail!("unknown table [{name}]; the tables are {}", Daemon::tables()),
            (None, _) => bail!("`{name}` is outside any table; settings go in {}", Daemon::tables()),
        }
    }
    let Some(Value::Table(own)) = table.get(daemon.name()) else {
        bail!("no [{0}] table: nothing in this file configures `cleave {0}`", daemon.name());
    };
    let flags = daemon.flags(cli);
    let mut out: Vec<FileValue> = Vec::new();
    for (key, value) in own {
        let name = key.replace('-', "_");
        let arg = match flags.iter().find(|a| setting_name(a) == name) {
            Some(arg) if arg.get_id() != super::CONFIG_ID => *arg,
            Some(_) => bail!("[{}] {key}: a configuration file cannot name another one", daemon.name()),
            None => bail!("{}", unknown(&name, daemon, cli)),
        };
        let id = arg.get_id().as_str().to_string();
        if out.iter().any(|v| v.id == id) {
            bail!("[{}] sets `{name}` twice (once with `-`, once with `_`)", daemon.name());
        }
        let args = flag_args(arg, value).map_err(|e| anyhow!("[{}] {key}: {e}", daemon.name()))?;
        out.push(FileValue { id, args });
    }
    Ok(out)
}

/// The name a flag has in the file: its long name with `_` for `-`.
pub fn setting_name(arg: &Arg) -> String {
    arg.get_long().unwrap_or_default().replace('-', "_")
}

/// Why `name` is not a setting of `daemon`: another command's, or nobody's.
fn unknown(name: &str, daemon: Daemon, cli: &Command) -> String {
    let table = daemon.name();
    let elsewhere: Vec<String> = Daemon::ALL
        .into_iter()
        .filter(|d| *d != daemon && d.flags(cli).iter().any(|a| setting_name(a) == name))
        .map(|d| format!("[{}]", d.name()))
        .collect();
    if !elsewhere.is_empty() {
        return format!(
            "[{table}] {name}: not a setting of `cleave {table}` (it belongs in {})",
            elsewhere.join(" or ")
        );
    }
    let known: Vec<String> =
        daemon.flags(cli).iter().filter(|a| a.get_id() != super::CONFIG_ID).map(|a| setting_name(a)).collect();
    format!("[{table}] {name}: unknown setting; the settings of `cleave {table}` are {}", known.join(", "))
}

/// What a flag takes from TOML: closed by the types the commands' flags parse into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    Integer,
    Boolean,
}

impl Kind {
    fn of(arg: &Arg) -> Kind {
        let t = arg.get_value_parser().type_id();
        if t == TypeId::of::<f64>() || t == TypeId::of::<f32>() {
            Kind::Number
        } else if [
            TypeId::of::<u64>(),
            TypeId::of::<u32>(),
            TypeId::of::<u16>(),
            TypeId::of::<usize>(),
            TypeId::of::<i64>(),
        ]
        .into_iter()
        .any(|id| t == id)
        {
            Kind::Integer
        } else if t == TypeId::of::<bool>() {
            Kind::Boolean
        } else {
            Kind::Text
        }
    }

    /// The value as it would be written on the command line, if TOML gave the right type.
    fn text(self, value: &Value) -> Option<String> {
        match (self, value) {
            (Kind::Text, Value::String(s)) => Some(s.clone()),
            (Kind::Number, Value::Float(f)) => Some(f.to_string()),
            (Kind::Number | Kind::Integer, Value::Integer(i)) => Some(i.to_string()),
            (Kind::Boolean, Value::Boolean(b)) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// What a flag expects, in words, for error messages.
fn expected(arg: &Arg) -> String {
    let choices: Vec<String> = arg.get_possible_values().iter().map(|p| format!("\"{}\"", p.get_name())).collect();
    if !choices.is_empty() {
        return format!("one of {}", choices.join(", "));
    }
    let t = arg.get_value_parser().type_id();
    if t == TypeId::of::<SocketAddr>() {
        return "an address \"IP:PORT\" (a string)".into();
    }
    if t == TypeId::of::<ByteSize>() {
        return "a size such as \"1GiB\" (a string)".into();
    }
    if t == TypeId::of::<PathBuf>() {
        return "a path (a string)".into();
    }
    match Kind::of(arg) {
        Kind::Text => "a string",
        Kind::Number => "a number",
        Kind::Integer => "an integer",
        Kind::Boolean => "true or false",
    }
    .into()
}

/// The command-line arguments that `value` stands for, or what was expected instead.
fn flag_args(arg: &Arg, value: &Value) -> Result<Vec<OsString>, String> {
    let long = arg.get_long().unwrap_or_default();
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => match value {
            Value::Boolean(b) if *b == matches!(arg.get_action(), ArgAction::SetTrue) => {
                Ok(vec![format!("--{long}").into()])
            }
            Value::Boolean(_) => Ok(Vec::new()),
            other => Err(format!("expected true or false, found {}", other.type_str())),
        },
        ArgAction::Append => match value {
            Value::Array(items) => items.iter().map(|v| Ok(format!("--{long}={}", scalar(arg, v)?).into())).collect(),
            other => Err(format!("expected an array, each item {}, found {}", expected(arg), other.type_str())),
        },
        ArgAction::Set => Ok(vec![format!("--{long}={}", scalar(arg, value)?).into()]),
        _ => Err("cannot be set in a configuration file".into()),
    }
}

/// One value of a flag, checked by the flag's own parser.
fn scalar(arg: &Arg, value: &Value) -> Result<String, String> {
    let text =
        Kind::of(arg).text(value).ok_or_else(|| format!("expected {}, found {}", expected(arg), value.type_str()))?;
    let probe = Command::new("config")
        .no_binary_name(true)
        .arg(Arg::new("value").long("value").action(ArgAction::Set).value_parser(arg.get_value_parser().clone()));
    match probe.try_get_matches_from([format!("--value={text}")]) {
        Ok(_) => Ok(text),
        Err(e) => match std::error::Error::source(&e) {
            Some(why) => Err(format!("expected {}, found {text:?} ({why})", expected(arg))),
            None => Err(format!("expected {}, found {text:?}", expected(arg))),
        },
    }
}
