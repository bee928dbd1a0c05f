//! The command line as people and scripts meet it: help for every command and flag, what it
//! says when the server is not there, what a refusal prints, exit statuses, pipes closed
//! early and no terminal escapes where there is no terminal.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};

use common::*;

/// `cleave ARGS -h`, which must succeed.
fn help(path: &[String]) -> String {
    run(Command::new(CLEAVE).args(path).arg("-h"))
}

/// One entry of a help section: its name (`volume`, `--size <SIZE>`, `<NAME>`) and description.
struct Entry {
    section: String,
    name: String,
    description: String,
}

/// The entries of a help page, by section (`Commands`, `Arguments`, `Options`).
fn entries(page: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut section = None;
    for line in page.lines() {
        if !line.starts_with(' ') {
            // Free text (such as `Environment:`) is no entry.
            section =
                line.strip_suffix(':').filter(|s| ["Commands", "Arguments", "Options"].contains(s)).map(str::to_string);
            continue;
        }
        let Some(section) = &section else { continue };
        let text = line.trim_start();
        let indent = line.len() - text.len();
        match out.last_mut() {
            // A description written on the lines below its entry.
            Some(last) if indent > 6 && last.description.is_empty() => last.description = text.to_string(),
            _ => {
                let (name, description) = text.split_once("  ").unwrap_or((text, ""));
                out.push(Entry {
                    section: section.clone(),
                    name: name.to_string(),
                    description: description.trim().to_string(),
                });
            }
        }
    }
    out
}

/// Every subcommand, recursively, has a description of its own, and so does every flag and
/// argument: no empty one, and none shared by two subcommands or by two flags of one command.
#[test]
fn every_command_and_flag_is_described_once() {
    let mut commands: HashMap<String, String> = HashMap::new();
    let mut pending = vec![Vec::<String>::new()];
    let mut pages = 0;
    while let Some(path) = pending.pop() {
        let page = help(&path);
        pages += 1;
        let mut flags: HashMap<String, String> = HashMap::new();
        for e in entries(&page) {
            let at = format!("cleave {} {}", path.join(" "), e.name);
            assert!(!e.description.is_empty(), "{at} has no description:\n{page}");
            if e.section == "Commands" {
                if e.name == "help" {
                    continue;
                }
                if let Some(other) = commands.insert(e.description.clone(), at.clone()) {
                    panic!("{at} and {other} have the same description: {:?}", e.description);
                }
                pending.push([path.clone(), vec![e.name]].concat());
            } else if let Some(other) = flags.insert(e.description.clone(), e.name.clone()) {
                panic!("{at} and {other} have the same description: {:?}", e.description);
            }
        }
    }
    assert!(pages > 30, "only {pages} help pages were walked");
    // The descriptions that once leaked from a shared struct into five subcommands.
    assert!(!commands.contains_key("How the CLI finds the server"), "{commands:?}");
}

#[test]
fn connection_refused_names_the_address_and_how_to_change_it() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "x").unwrap();
    let url = format!("http://127.0.0.1:{port}");
    for (args, env) in [(vec!["--server", url.as_str()], None), (vec![], Some(url.as_str()))] {
        let mut cmd = Command::new(CLEAVE);
        cmd.args(["volume", "list", "--token-file"]).arg(&token).args(&args).env_remove("CLEAVE_SERVER");
        if let Some(url) = env {
            cmd.env("CLEAVE_SERVER", url);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for want in [url.as_str(), "connection refused", "--server", "CLEAVE_SERVER"] {
            assert!(err.contains(want), "{want:?} missing from: {err}");
        }
        assert!(out.stdout.is_empty(), "{out:?}");
    }
}

/// Runs the CLI against `s` with `token` as CLEAVE_TOKEN.
fn cli_as(s: &Serve, token: &str, args: &[&str]) -> Output {
    Command::new(CLEAVE)
        .args(args)
        .args(["--server", &format!("http://127.0.0.1:{}", s.http_port)])
        .env("CLEAVE_TOKEN", token)
        .env("CLEAVE_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn refusals_print_no_secret_and_speak_in_flags() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "operator password\n").unwrap();
    s.cli_ok(&["user", "add", "otto", "--role", "operator", "--password-file", pw.to_str().unwrap()]);
    let otto = s.cli_ok(&["user", "token", "otto"]).trim().to_string();
    // An operator may not add users: refused, and no generated password is shown.
    let out = cli_as(&s, &otto, &["user", "add", "mallory", "--role", "admin"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("password") && !stderr.contains("password:"), "{out:?}");
    assert!(stderr.contains("403"), "{stderr}");
    // The same add by the admin prints the password it generated, once.
    let added = s.cli_ok(&["user", "add", "mallory", "--role", "viewer"]);
    assert_eq!(added.lines().filter(|l| l.starts_with("password: ")).count(), 1, "{added}");

    // Revoking the last group of a volume needs --erase, and says so in the CLI's words.
    s.cli_ok(&["volume", "create", "v", "--size", "4MiB", "--m", "1", "--n", "1"]);
    let out = s.cli(&["group", "revoke", "admin", "v"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--erase") && !err.contains("erase=true"), "{err}");
    s.cli_ok(&["volume", "show", "v"]);
}

#[test]
fn output_is_for_people_unless_json_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    let shown = s.cli_ok(&["volume", "show", "demo"]);
    assert!(shown.lines().any(|l| l.starts_with("health") && l.ends_with("clean")), "{shown}");
    assert!(serde_json::from_str::<serde_json::Value>(&shown).is_err(), "{shown}");
    assert_eq!(s.show("demo")["health"]["state"], "clean");
    // Every list is one table: a header in capitals, then a row per item.
    for list in [&["volume", "list"][..], &["group", "list"], &["user", "list"]] {
        let out = s.cli_ok(list);
        let header = out.lines().next().unwrap_or_default();
        assert!(header.starts_with("NAME  "), "{list:?}: {out}");
        let json: serde_json::Value = serde_json::from_str(&s.cli_ok(&[list, &["--json"]].concat())).unwrap();
        assert!(json.as_array().is_some_and(|a| !a.is_empty()), "{list:?}: {json}");
    }
    // `task start` prints the id alone, for `id=$(cleave task start ...)`; scrub sums up.
    let id = s.cli_ok(&["task", "start", "scrub", "demo"]).trim().to_string();
    assert!(id.parse::<u64>().is_ok(), "{id:?}");
    let waited = s.cli(&["task", "wait", &id]);
    assert_eq!(waited.status.code(), Some(0), "{waited:?}");
    assert!(String::from_utf8_lossy(&waited.stdout).contains("state     succeeded"), "{waited:?}");
    let scrub = s.cli_ok(&["scrub", "demo"]);
    assert!(scrub.starts_with("scrub: ") && scrub.contains("0 damaged, 0 repaired"), "{scrub}");
}

/// `cleave mirror`: credentials written private (or printed) as the JSON `mirror create
/// --credentials` reads back; refusals of a gateway without a mirror listener; flags that take
/// only their documented values.
#[test]
fn mirror_credentials_go_to_a_private_file_that_create_reads() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    let file = dir.path().join("gw-b.json");
    let out = s.cli(&["mirror", "credentials", "gw-b", "--out", file.to_str().unwrap()]);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("mirror create --credentials"), "{out:?}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(written["name"], "gw-b");
    assert!(written["key_pem"].as_str().unwrap().contains("PRIVATE KEY"), "{written}");
    // Without --out, the same JSON on stdout.
    let printed: serde_json::Value = serde_json::from_str(&s.cli_ok(&["mirror", "credentials", "gw-c"])).unwrap();
    assert_eq!(printed["name"], "gw-c");
    assert!(printed["cert_pem"].as_str().unwrap().contains("BEGIN CERTIFICATE"), "{printed}");

    // The file is read (a file that is not credentials is refused before any call); this
    // gateway has no mirror listener, which the refusal says.
    let create = ["mirror", "create", "demo", "--peer", "127.0.0.1:1", "--mode", "sync", "--credentials"];
    let out = s.cli(&[&create[..], &[file.to_str().unwrap()]].concat());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("400") && err.contains("no mirror listener"), "{err}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{}").unwrap();
    let out = s.cli(&[&create[..], &[bad.to_str().unwrap()]].concat());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the credentials"), "{out:?}");
    for args in [&["mirror", "list"][..], &["mirror", "show", "demo"], &["mirror", "promote", "demo", "--force"]] {
        let out = s.cli(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no mirror listener"), "{args:?}: {out:?}");
    }
    // Only the values the API takes: clap refuses the others (exit 2) before any call.
    for args in [
        &["mirror", "resolve", "demo", "--discard", "remote"][..],
        &["mirror", "resolve", "demo"],
        &["mirror", "create", "demo", "--peer", "127.0.0.1:1", "--mode", "eventually"],
        &["mirror", "create", "demo", "--peer", "127.0.0.1:1", "--mode", "async", "--on-mirror-failure", "ignore"],
    ] {
        assert_eq!(s.cli(args).status.code(), Some(2), "{args:?}");
    }
}

/// A reader that goes away early (`| head -0`) ends the output quietly: no panic, no
/// "Broken pipe" message, and the command's own exit status.
#[test]
fn a_pipe_closed_early_is_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("data"), &[]);
    for i in 0..40 {
        s.cli_ok(&["user", "add", &format!("user{i}"), "--role", "viewer"]);
    }
    for args in [&["volume", "list"][..], &["user", "list", "--json"], &["volume", "show", "demo"]] {
        let mut child = Command::new(CLEAVE)
            .args(args)
            .args(["--server", &format!("http://127.0.0.1:{}", s.http_port), "--token-file"])
            .arg(s.data.join("admin.token"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}: {status} {err}");
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
    }
    // The same through a shell pipeline into `head -1`.
    let line = run(Command::new("sh").arg("-c").arg(format!(
        "{CLEAVE} user list --server http://127.0.0.1:{} --token-file {} 2>&1 | head -1",
        s.http_port,
        s.data.join("admin.token").display()
    )));
    assert!(line.starts_with("NAME"), "{line}");
}

/// Log lines and messages carry no terminal escapes when stderr is not a terminal.
#[test]
fn no_escapes_without_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(CLEAVE)
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--nbd", &format!("127.0.0.1:{}", free_port())])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .args(["--autoconfig", &format!("127.0.0.1:{}", free_port())])
        .env("CLEAVE_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines {
        if line.unwrap().starts_with("API:") {
            break;
        }
    }
    child.kill().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    child.wait().unwrap();
    assert!(err.contains("INFO") || err.contains("WARN"), "no log line to check: {err}");
    assert!(!err.contains("\x1b["), "escapes in the log: {err:?}");
    // An error message from the CLI, too.
    let out = Command::new(CLEAVE)
        .args(["volume", "list", "--server", &format!("http://127.0.0.1:{}", free_port())])
        .env("CLEAVE_TOKEN", "x")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error:") && !err.contains("\x1b["), "{err:?}");
}

/// `cleave sim placement` runs the real placement over a simulated pool and reports what
/// losing a site costs, for people and as JSON.
#[test]
fn the_placement_simulation_reports_balance_and_a_lost_site() {
    let args = ["sim", "placement", "--nodes", "60", "--sites", "6", "--volumes", "400"];
    let text = run(Command::new(CLEAVE).args(args));
    assert!(text.contains("400 volumes 3-of-5 placed, 0 refused") && text.contains("site 0 lost"), "{text}");
    let report: serde_json::Value = serde_json::from_str(&run(Command::new(CLEAVE).arg("--json").args(args))).unwrap();
    assert_eq!((report["placed"].as_u64(), report["volumes_lost"].as_u64()), (Some(400), Some(0)), "{report}");
    assert_eq!(report["max_lost"], 1, "{report}");
    let refused = Command::new(CLEAVE).args(["sim", "placement", "--m", "6", "--n", "5"]).output().unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("--m must be"));
}
