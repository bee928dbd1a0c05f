//! `cleave client …` and `cleave group …`: the CLI side of `/api/v1/clients` and `/api/v1/groups`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use cleave_api::model::{
    ChangeUser, ChapKind, ChapSecrets, ClientView, Credentials, Grant, GrantBody, GroupView, InitiatorBody,
    IssuedToken, Mode, NewChap, NewName, NewToken, NewUser, Region, Role, UserView,
};
use cleave_gateway::data_dir::{random_hex, write_private};
use cleave_gateway::ByteSize;

use super::client::{Client, ServerArgs};
use super::output::{ago, list_or_none, note, out, print_json, print_list, Format};

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Issue a client certificate from control's CA. Writes DIR/ca-cert.pem, client-cert.pem and
    /// client-key.pem (the layout qemu's tls-creds-x509 and libnbd's tls-certificates read).
    Add {
        /// The client's name: 1-64 letters, digits, '-', '_' or '.'.
        name: String,
        /// Where to write the credentials (default: ./NAME-tls).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Make new iSCSI CHAP secrets for a client (shown once; the old ones stop working). Its
    /// initiators log in with CHAP name = the client's name and this secret.
    Chap {
        /// The client's name.
        name: String,
        /// Also a secret for the gateway to prove back (mutual CHAP; the gateway's name is "cleave").
        #[arg(long)]
        mutual: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Let an iSCSI initiator log in as a client, or stop it.
    #[command(subcommand)]
    Initiator(InitiatorCommand),
    /// List clients: certificate fingerprint, groups, CHAP and iSCSI initiators.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a client: its certificate stops opening anything, on open connections too.
    Remove {
        /// The client's name.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum InitiatorCommand {
    /// Allow an initiator (by its iSCSI name) to log in as the client, with the client's CHAP
    /// secret (make one with `cleave client chap`) or, with --no-chap, on its name alone.
    Add {
        /// The client's name.
        client: String,
        /// The initiator's name: iqn.…, eui.… or naa.…
        initiator: String,
        /// Without CHAP: any host that claims this name gets the client's rights.
        #[arg(long)]
        no_chap: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop an initiator logging in as the client.
    Remove {
        /// The client's name.
        client: String,
        /// The initiator's name.
        initiator: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create a group (a community of interest) and its key.
    Add {
        /// The group's name: 1-64 letters, digits, '-', '_' or '.'.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List groups: their clients and their grants on volumes.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a group and its key. If it is the last group that can reach a volume, that volume
    /// is crypto-erased: this needs --erase.
    Delete {
        /// The group's name.
        name: String,
        /// Confirm crypto-erasing the volumes that no other group can reach.
        #[arg(long)]
        erase: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Put a client in a group.
    Join {
        /// The group's name.
        group: String,
        /// The client's name.
        client: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Take a client out of a group.
    Leave {
        /// The group's name.
        group: String,
        /// The client's name.
        client: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Give a group access to a volume (a key slot plus the grant).
    Grant {
        /// The group's name.
        group: String,
        /// The volume's name.
        volume: String,
        /// Reads only: writes get EPERM (default: read-write).
        #[arg(long)]
        read_only: bool,
        /// Limit to bytes OFFSET..OFFSET+LENGTH, written OFFSET:LENGTH (e.g. 0:1GiB); repeatable.
        #[arg(long = "region")]
        regions: Vec<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Take a volume from a group. Revoking the last group crypto-erases the volume: needs --erase.
    Revoke {
        /// The group's name.
        group: String,
        /// The volume's name.
        volume: String,
        /// Confirm crypto-erasing the volume when this is the last group that can reach it.
        #[arg(long)]
        erase: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn parse_region(s: &str) -> Result<Region> {
    let (o, l) = s.split_once(':').with_context(|| format!("region {s:?}: write OFFSET:LENGTH"))?;
    let offset: ByteSize = o.parse().map_err(|e| anyhow::anyhow!("region offset {o:?}: {e}"))?;
    let length: ByteSize = l.parse().map_err(|e| anyhow::anyhow!("region length {l:?}: {e}"))?;
    Ok(Region { offset: offset.0, length: length.0 })
}

/// Writes credentials returned by the API; the key file is 0600.
pub fn write_credentials(c: &Credentials, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("ca-cert.pem"), &c.ca_pem)?;
    std::fs::write(dir.join("client-cert.pem"), &c.cert_pem)?;
    write_private(&dir.join("client-key.pem"), c.key_pem.as_bytes())?;
    note(&format!("client {}: credentials in {} (fingerprint {})", c.client, dir.display(), c.fingerprint));
    Ok(())
}

pub fn client_command(cmd: ClientCommand, format: Format) -> Result<()> {
    match cmd {
        ClientCommand::Add { name, out, server } => {
            let c: Credentials = Client::new(&server)?.post("/clients", &NewName { name: name.clone() })?;
            write_credentials(&c, &out.unwrap_or_else(|| PathBuf::from(format!("{name}-tls"))))
        }
        ClientCommand::Chap { name, mutual, server } => {
            let s: ChapSecrets = Client::new(&server)?.post(&format!("/clients/{name}/chap"), &NewChap { mutual })?;
            match format {
                Format::Json => print_json(&s),
                Format::Human => {
                    let mut lines = vec![format!("CHAP name:   {}", s.chap_name), format!("CHAP secret: {}", s.secret)];
                    if let (Some(n), Some(t)) = (&s.target_name, &s.target_secret) {
                        lines.push(format!("target name:   {n}"));
                        lines.push(format!("target secret: {t}"));
                    }
                    note("shown once: keep these secret");
                    out(&lines.join("\n"))
                }
            }
        }
        ClientCommand::Initiator(cmd) => initiator_command(cmd),
        ClientCommand::List { server } => {
            let list = Client::new(&server)?.get::<Vec<ClientView>>("/clients")?;
            let head = ["NAME", "FINGERPRINT", "GROUPS", "CHAP", "INITIATORS", "CREATED"];
            print_list(&list, format, &head, "no clients", |c| {
                let chap = match c.chap {
                    None => "-",
                    Some(ChapKind::OneWay) => "one-way",
                    Some(ChapKind::Mutual) => "mutual",
                };
                let initiators: Vec<String> = c
                    .initiators
                    .iter()
                    .map(|i| if i.chap { i.name.clone() } else { format!("{} (no CHAP)", i.name) })
                    .collect();
                vec![
                    c.name.clone(),
                    c.fingerprint.clone(),
                    list_or_none(&c.groups),
                    chap.into(),
                    list_or_none(&initiators),
                    ago(c.created_unix_ms),
                ]
            })
        }
        ClientCommand::Remove { name, server } => {
            Client::new(&server)?.delete(&format!("/clients/{name}"))?;
            note(&format!("client {name} removed"));
            Ok(())
        }
    }
}

fn initiator_command(cmd: InitiatorCommand) -> Result<()> {
    match cmd {
        InitiatorCommand::Add { client, initiator, no_chap, server } => {
            let path = format!("/clients/{client}/initiators/{initiator}");
            Client::new(&server)?.put_only(&path, &InitiatorBody { chap: !no_chap })?;
            let how = if no_chap { "without CHAP" } else { "with CHAP" };
            note(&format!("initiator {initiator} logs in as client {client}, {how}"));
        }
        InitiatorCommand::Remove { client, initiator, server } => {
            Client::new(&server)?.delete(&format!("/clients/{client}/initiators/{initiator}"))?;
            note(&format!("initiator {initiator} removed from client {client}"));
        }
    }
    Ok(())
}

/// The API asks to confirm a crypto-erase with `erase=true`; on the command line that is `--erase`.
fn in_cli_words(r: Result<()>) -> Result<()> {
    r.map_err(|e| anyhow::anyhow!("{}", format!("{e:#}").replace("confirm with erase=true", "confirm with --erase")))
}

/// A group's grant on one volume, in a few words.
fn grant_words(volume: &str, g: &Grant) -> String {
    let mut words = vec![volume.to_string()];
    if g.mode == Mode::ReadOnly {
        words.push("read-only".into());
    }
    words.extend(g.regions.iter().map(|r| format!("{}:{}", ByteSize(r.offset), ByteSize(r.length))));
    words.join(" ")
}

pub fn group_command(cmd: GroupCommand, format: Format) -> Result<()> {
    let (done, result) = match cmd {
        GroupCommand::Add { name, server } => {
            (format!("group {name} added"), Client::new(&server)?.post_only("/groups", &NewName { name: name.clone() }))
        }
        GroupCommand::List { server } => return list_groups(&server, format),
        GroupCommand::Delete { name, erase, server } => {
            (format!("group {name} deleted"), Client::new(&server)?.delete(&format!("/groups/{name}?erase={erase}")))
        }
        GroupCommand::Join { group, client, server } => (
            format!("client {client} joined group {group}"),
            Client::new(&server)?.put_only(&format!("/groups/{group}/clients/{client}"), &serde_json::json!({})),
        ),
        GroupCommand::Leave { group, client, server } => (
            format!("client {client} left group {group}"),
            Client::new(&server)?.delete(&format!("/groups/{group}/clients/{client}")),
        ),
        GroupCommand::Grant { group, volume, read_only, regions, server } => {
            let regions = regions.iter().map(|r| parse_region(r)).collect::<Result<Vec<_>>>()?;
            let mode = if read_only { Mode::ReadOnly } else { Mode::ReadWrite };
            let body = GrantBody { mode, regions };
            let path = format!("/groups/{group}/volumes/{volume}");
            (format!("group {group} granted {volume}"), Client::new(&server)?.put_only(&path, &body))
        }
        GroupCommand::Revoke { group, volume, erase, server } => {
            let path = format!("/groups/{group}/volumes/{volume}?erase={erase}");
            (format!("volume {volume} revoked from group {group}"), Client::new(&server)?.delete(&path))
        }
    };
    in_cli_words(result)?;
    note(&done);
    Ok(())
}

fn list_groups(server: &ServerArgs, format: Format) -> Result<()> {
    let list = Client::new(server)?.get::<Vec<GroupView>>("/groups")?;
    print_list(&list, format, &["NAME", "CLIENTS", "VOLUMES"], "no groups", |g| {
        let clients: Vec<String> = g.group.clients.iter().cloned().collect();
        let grants: Vec<String> = g.group.grants.iter().map(|(v, grant)| grant_words(v, grant)).collect();
        vec![g.name.clone(), list_or_none(&clients), list_or_none(&grants)]
    })
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user of the API and the console. The password is read from --password-file, or
    /// generated and printed once.
    Add {
        /// The user's name (the console's login): 1-64 letters, digits, '-', '_' or '.'.
        name: String,
        /// viewer (reads), operator (also volumes and tasks) or admin (also users, clients, groups).
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Read the password (at least 8 characters) from this file instead of generating one.
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List users: role and API token ids.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a user and its API tokens (not the last admin).
    Remove {
        /// The user's name.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Change a user's role and/or password.
    Set {
        /// The user's name.
        name: String,
        /// The new role: viewer, operator or admin.
        #[arg(long)]
        role: Option<String>,
        /// Set the password from this file; `-` generates one and prints it.
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Issue an API token for a user; printed once (use it as CLEAVE_TOKEN).
    Token {
        /// The user's name.
        name: String,
        /// A label to tell the token apart in `user list` (such as what uses it).
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke one of a user's API tokens by its id (see `user list`).
    Revoke {
        /// The user's name.
        name: String,
        /// The token's id, as `user list` shows it.
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// The password from a file, or a fresh one (`Generated`, to print once the server took it).
fn password(file: Option<&Path>) -> Result<Password> {
    match file {
        Some(f) if f != Path::new("-") => Ok(Password::Given(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        )),
        _ => Ok(Password::Generated(random_hex(12)?)),
    }
}

/// Where a password came from: only a generated one is ever printed.
enum Password {
    Given(String),
    Generated(String),
}

impl Password {
    fn text(&self) -> String {
        match self {
            Password::Given(p) | Password::Generated(p) => p.clone(),
        }
    }

    /// Prints a generated password, after the server accepted it (a refusal prints none).
    fn show(&self) -> Result<()> {
        match self {
            Password::Given(_) => Ok(()),
            Password::Generated(p) => out(&format!("password: {p}")),
        }
    }
}

pub fn user_command(cmd: UserCommand, format: Format) -> Result<()> {
    match cmd {
        UserCommand::Add { name, role, password_file, server } => {
            let client = Client::new(&server)?;
            let role: Role = role.parse()?;
            let password = password(password_file.as_deref())?;
            let user: UserView =
                client.post("/users", &NewUser { name: name.clone(), role, password: password.text() })?;
            match format {
                Format::Json => print_json(&user)?,
                Format::Human => note(&format!("user {name} added ({role})")),
            }
            password.show()?;
        }
        UserCommand::List { server } => return list_users(&server, format),
        UserCommand::Remove { name, server } => {
            Client::new(&server)?.delete(&format!("/users/{name}"))?;
            note(&format!("user {name} removed"));
        }
        UserCommand::Set { name, role, password_file, server } => {
            let client = Client::new(&server)?;
            let role = role.map(|r| r.parse::<Role>()).transpose()?;
            let password = password_file.map(|f| password(Some(f.as_path()))).transpose()?;
            client.put_only(
                &format!("/users/{name}"),
                &ChangeUser { role, password: password.as_ref().map(Password::text) },
            )?;
            note(&format!("user {name} changed"));
            password.map(|p| p.show()).transpose()?;
        }
        UserCommand::Token { name, label, server } => {
            let t: IssuedToken = Client::new(&server)?.post(&format!("/users/{name}/tokens"), &NewToken { label })?;
            match format {
                Format::Json => print_json(&t)?,
                Format::Human => out(&t.token)?,
            }
            note(&format!("token {} for {name}: shown once, keep it secret", t.id));
        }
        UserCommand::Revoke { name, id, server } => {
            Client::new(&server)?.delete(&format!("/users/{name}/tokens/{id}"))?;
            note(&format!("token {id} of {name} revoked"));
        }
    }
    Ok(())
}

fn list_users(server: &ServerArgs, format: Format) -> Result<()> {
    let list = Client::new(server)?.get::<Vec<UserView>>("/users")?;
    print_list(&list, format, &["NAME", "ROLE", "TOKENS"], "no users", |u| {
        let tokens: Vec<String> =
            u.tokens.iter().map(|t| format!("{} {}", t.id, t.label).trim_end().to_string()).collect();
        vec![u.name.clone(), u.role.to_string(), list_or_none(&tokens)]
    })
}
