//! `cleave client …` and `cleave group …`: the CLI side of `/api/v1/clients` and `/api/v1/groups`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use cleave_api::model::{
    ChangeUser, ClientView, Credentials, GrantBody, GroupView, IssuedToken, Mode, NewName, NewToken, NewUser, Region,
    Role, UserView,
};
use cleave_gateway::data_dir::{random_hex, write_private};
use cleave_gateway::ByteSize;

use super::client::{Client, ServerArgs};

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Issue a client certificate from control's CA. Writes DIR/ca-cert.pem, client-cert.pem and
    /// client-key.pem (the layout qemu's tls-creds-x509 and libnbd's tls-certificates read).
    Add {
        name: String,
        /// Where to write the credentials (default: ./NAME-tls).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a client: its certificate stops opening anything, on open connections too.
    Remove {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create a group (a community of interest) and its key.
    Add {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a group and its key. If it is the last group that can reach a volume, that volume
    /// is crypto-erased: this needs --erase.
    Delete {
        name: String,
        #[arg(long)]
        erase: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Put a client in a group.
    Join {
        group: String,
        client: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Take a client out of a group.
    Leave {
        group: String,
        client: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Give a group access to a volume (a key slot plus the grant).
    Grant {
        group: String,
        volume: String,
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
        group: String,
        volume: String,
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
    eprintln!("client {}: credentials in {} (fingerprint {})", c.client, dir.display(), c.fingerprint);
    Ok(())
}

pub fn client_command(cmd: ClientCommand) -> Result<()> {
    match cmd {
        ClientCommand::Add { name, out, server } => {
            let c: Credentials = Client::new(&server)?.post("/clients", &NewName { name: name.clone() })?;
            write_credentials(&c, &out.unwrap_or_else(|| PathBuf::from(format!("{name}-tls"))))
        }
        ClientCommand::List { server } => {
            for c in Client::new(&server)?.get::<Vec<ClientView>>("/clients")? {
                println!("{:<20} {} groups: {}", c.name, c.fingerprint, c.groups.join(","));
            }
            Ok(())
        }
        ClientCommand::Remove { name, server } => Client::new(&server)?.delete(&format!("/clients/{name}")),
    }
}

pub fn group_command(cmd: GroupCommand) -> Result<()> {
    match cmd {
        GroupCommand::Add { name, server } => Client::new(&server)?.post_only("/groups", &NewName { name }),
        GroupCommand::List { server } => super::print_json(&Client::new(&server)?.get::<Vec<GroupView>>("/groups")?),
        GroupCommand::Delete { name, erase, server } => {
            Client::new(&server)?.delete(&format!("/groups/{name}?erase={erase}"))
        }
        GroupCommand::Join { group, client, server } => {
            Client::new(&server)?.put_only(&format!("/groups/{group}/clients/{client}"), &serde_json::json!({}))
        }
        GroupCommand::Leave { group, client, server } => {
            Client::new(&server)?.delete(&format!("/groups/{group}/clients/{client}"))
        }
        GroupCommand::Grant { group, volume, read_only, regions, server } => {
            let regions = regions.iter().map(|r| parse_region(r)).collect::<Result<Vec<_>>>()?;
            let mode = if read_only { Mode::ReadOnly } else { Mode::ReadWrite };
            let body = GrantBody { mode, regions };
            Client::new(&server)?.put_only(&format!("/groups/{group}/volumes/{volume}"), &body)
        }
        GroupCommand::Revoke { group, volume, erase, server } => {
            Client::new(&server)?.delete(&format!("/groups/{group}/volumes/{volume}?erase={erase}"))
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user of the API and the console. The password is read from --password-file, or
    /// generated and printed once.
    Add {
        name: String,
        /// viewer (reads), operator (also volumes and tasks) or admin (also users, clients, groups).
        #[arg(long, default_value = "viewer")]
        role: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a user and its API tokens (not the last admin).
    Remove {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Change a user's role and/or password.
    Set {
        name: String,
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
        name: String,
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke one of a user's API tokens by its id (see `user list`).
    Revoke {
        name: String,
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// The password from a file, or a fresh one printed once.
fn password(file: Option<&Path>) -> Result<String> {
    match file {
        Some(f) if f != Path::new("-") => Ok(std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_string()),
        _ => {
            let p = random_hex(12)?;
            println!("password: {p}");
            Ok(p)
        }
    }
}

pub fn user_command(cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Add { name, role, password_file, server } => {
            let client = Client::new(&server)?;
            let role: Role = role.parse()?;
            let password = password(password_file.as_deref())?;
            let _: UserView = client.post("/users", &NewUser { name: name.clone(), role, password })?;
            println!("user {name} added ({role})");
        }
        UserCommand::List { server } => {
            for u in Client::new(&server)?.get::<Vec<UserView>>("/users")? {
                let tokens: Vec<String> = u.tokens.iter().map(|t| format!("{} {}", t.id, t.label)).collect();
                println!(
                    "{:<20} {:<9} tokens: {}",
                    u.name,
                    u.role.to_string(),
                    if tokens.is_empty() { "none".to_string() } else { tokens.join(", ") }
                );
            }
        }
        UserCommand::Remove { name, server } => {
            Client::new(&server)?.delete(&format!("/users/{name}"))?;
            println!("user {name} removed");
        }
        UserCommand::Set { name, role, password_file, server } => {
            let client = Client::new(&server)?;
            let role = role.map(|r| r.parse::<Role>()).transpose()?;
            let password = match password_file {
                Some(f) => Some(password(Some(f.as_path()))?),
                None => None,
            };
            client.put_only(&format!("/users/{name}"), &ChangeUser { role, password })?;
            println!("user {name} changed");
        }
        UserCommand::Token { name, label, server } => {
            let t: IssuedToken = Client::new(&server)?.post(&format!("/users/{name}/tokens"), &NewToken { label })?;
            println!("{}", t.token);
            eprintln!("token {} for {name}: shown once, keep it secret", t.id);
        }
        UserCommand::Revoke { name, id, server } => {
            Client::new(&server)?.delete(&format!("/users/{name}/tokens/{id}"))?;
            println!("token {id} of {name} revoked");
        }
    }
    Ok(())
}
