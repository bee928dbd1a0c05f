use std::ffi::OsString;

use clap::CommandFactory;
use toml::Table;

use super::file::{self, FileValue};
use super::{parse, Daemon, Source};
use crate::{Cli, Command as Sub};

const EXAMPLE: &str = include_str!("../../../../docs/cleave.example.toml");

fn table(text: &str) -> Table {
    text.parse().unwrap()
}

fn settings(text: &str, daemon: Daemon) -> anyhow::Result<Vec<FileValue>> {
    file::settings(&table(text), daemon, &Cli::command())
}

fn refusal(text: &str, daemon: Daemon) -> String {
    format!("{:#}", settings(text, daemon).expect_err(text))
}

/// The lines of the example's `[name]` table.
fn example_table(name: &str) -> Vec<&'static str> {
    let header = format!("[{name}]");
    EXAMPLE.lines().skip_while(|l| *l != header).skip(1).take_while(|l| !l.starts_with('[')).collect()
}

#[test]
fn the_example_names_every_setting_of_each_command() {
    let cli = Cli::command();
    for daemon in Daemon::ALL {
        let lines = example_table(daemon.name());
        for arg in daemon.flags(&cli).into_iter().filter(|a| a.get_id() != super::CONFIG_ID) {
            let key = file::setting_name(arg);
            let (set, commented) = (format!("{key} = "), format!("# {key} = "));
            assert!(
                lines.iter().any(|l| l.starts_with(&set) || l.starts_with(&commented)),
                "docs/cleave.example.toml: [{}] lacks `{key}`",
                daemon.name()
            );
        }
    }
}

#[test]
fn the_example_parses_and_gives_the_defaults() {
    let cli = Cli::command();
    for daemon in Daemon::ALL {
        let values = settings(EXAMPLE, daemon).unwrap();
        assert!(!values.is_empty());
        for v in values {
            let arg = daemon.flags(&cli).into_iter().find(|a| a.get_id() == v.id.as_str()).unwrap();
            let long = arg.get_long().unwrap();
            let defaults: Vec<OsString> =
                arg.get_default_values().iter().map(|d| format!("--{long}={}", d.to_string_lossy()).into()).collect();
            assert_eq!(
                v.args,
                defaults,
                "[{}] {}: the example shows another value than the default",
                daemon.name(),
                v.id
            );
        }
    }
}

#[test]
fn keys_take_underscores_or_dashes_and_lists_are_arrays() {
    let values = settings("[serve]\ndata-dir = \"/srv/a\"\ntls_name = [\"a\", \"b\"]\n", Daemon::Serve).unwrap();
    let args: Vec<OsString> = values.into_iter().flat_map(|v| v.args).collect();
    let expected: Vec<OsString> = ["--data-dir=/srv/a", "--tls-name=a", "--tls-name=b"].map(OsString::from).to_vec();
    assert_eq!(args, expected);
    assert!(refusal("[serve]\ndata-dir = \"a\"\ndata_dir = \"b\"\n", Daemon::Serve).contains("twice"));
}

#[test]
fn unknown_and_foreign_keys_are_refused_by_name() {
    let e = refusal("[serve]\nnbd_adress = \"127.0.0.1:1\"\n", Daemon::Serve);
    assert!(e.contains("[serve] nbd_adress: unknown setting") && e.contains("nbd, nbd_advertise, http"), "{e}");
    let e = refusal("[serve]\nlisten = \"127.0.0.1:1\"\n", Daemon::Serve);
    assert!(e.contains("listen: not a setting of `cleave serve`") && e.contains("[node]"), "{e}");
    assert!(refusal("[control]\ncache_size = \"1GiB\"\n", Daemon::Control).contains("it belongs in [serve]"));
    assert!(refusal("[serve]\nconfig = \"other.toml\"\n", Daemon::Serve).contains("cannot name another"));
    assert!(refusal("nbd = \"127.0.0.1:1\"\n", Daemon::Serve).contains("`nbd` is outside any table"));
    assert!(refusal("[gateway]\n", Daemon::Serve).contains("unknown table [gateway]"));
    assert!(refusal("[node]\nsite = \"a\"\n", Daemon::Serve).contains("no [serve] table"));
    // Another command's table is not this command's business.
    assert!(settings("[serve]\n[node]\nsite = \"a\"\n", Daemon::Serve).unwrap().is_empty());
}

#[test]
fn wrong_types_say_what_is_expected() {
    let cases = [
        ("nbd = 10809", "[serve] nbd: expected an address \"IP:PORT\" (a string), found integer"),
        ("nbd = \"gw1\"", "found \"gw1\" (invalid socket address syntax)"),
        ("http_tls = \"maybe\"", "expected one of \"auto\", \"on\", \"off\", found \"maybe\""),
        ("tls_name = \"a\"", "expected an array, each item a string, found string"),
        ("tls_name = [1]", "[serve] tls_name: expected a string, found integer"),
        ("cache_size = \"lots\"", "expected a size such as \"1GiB\""),
        ("heartbeat_timeout_secs = \"5\"", "expected a number, found string"),
        ("data_dir = true", "expected a path (a string), found boolean"),
    ];
    for (line, wanted) in cases {
        let e = refusal(&format!("[serve]\n{line}\n"), Daemon::Serve);
        assert!(e.contains(wanted), "{line}: {e}");
    }
    let e = refusal("[serve]\nheartbeat_timeout_secs = inf\n", Daemon::Serve);
    assert!(e.contains("found \"inf\" (seconds from 0 to 86400"), "{e}");
    // Whole numbers are numbers.
    assert_eq!(
        settings("[serve]\nheartbeat_timeout_secs = 2\n", Daemon::Serve).unwrap()[0].args,
        ["--heartbeat-timeout-secs=2"]
    );
}

#[test]
fn a_flag_beats_the_file_and_the_file_beats_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cleave.toml");
    std::fs::write(&path, "[serve]\nnbd = \"127.0.0.1:1111\"\nhttp = \"127.0.0.1:2222\"\nsite = \"east\"\n").unwrap();
    let argv: Vec<OsString> = ["cleave", "serve", "--http", "127.0.0.1:3333", "--config"]
        .into_iter()
        .map(OsString::from)
        .chain([path.clone().into_os_string()])
        .collect();
    let (cli, effective) = parse::<Cli>(argv).unwrap();
    let Sub::Serve(args) = cli.command else { panic!("not serve") };
    assert_eq!(args.http.port(), 3333);
    assert_eq!(args.nbd.port(), 1111);
    assert_eq!(args.control.hierarchy.site, "east");
    assert_eq!(args.cache_size.0, 1 << 30);
    let effective = effective.unwrap();
    let source = |key: &str| effective.settings.iter().find(|s| s.key == key).unwrap().source;
    assert_eq!(
        [source("http"), source("nbd"), source("cache_size"), source("config")],
        [Source::Flag, Source::File, Source::Default, Source::Flag]
    );
}

#[test]
fn other_commands_read_no_file() {
    let argv: Vec<OsString> = ["cleave", "volume", "list"].map(OsString::from).to_vec();
    assert!(parse::<Cli>(argv).unwrap().1.is_none());
}
