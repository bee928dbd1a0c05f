//! Clients, groups and grants: the registry (clients, groups, grants), the key slots on
//! the volumes, and the keys of the groups.
//!
//! A grant gives a group a key slot on the volume. Revoking the last group that can reach
//! a volume crypto-erases it, so that takes `erase=true` and then deletes the volume.

use anyhow::bail;
use cleave_control::access::{Client, Grant, Group, LOCAL_GROUP};
use cleave_volume::Superblock;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::error::{GatewayError, Result};
use crate::gateway::Gateway;

/// What a new client needs to connect: the CA that signs the server, its certificate and
/// its key. The key is shown once and not kept by control.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct Credentials {
    pub client: String,
    pub fingerprint: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("client", &self.client).field("key_pem", &"<redacted>").finish()
    }
}

impl Gateway {
    /// Issues a client certificate and registers the client.
    pub fn add_client(&self, name: &str) -> Result<Credentials> {
        Ok(self.issue_client(name)?)
    }

    pub(crate) fn issue_client(&self, name: &str) -> anyhow::Result<Credentials> {
        cleave_control::access::check_name(name)?;
        let issued = self.access.ca.issue_client(name)?;
        let client = Client {
            name: name.to_string(),
            fingerprint: issued.fingerprint.clone(),
            created_unix_ms: cleave_control::pool::now_ms(),
            chap: None,
        };
        self.access.update(|r| Ok(r.add_client(client.clone())?))?;
        info!(client = name, fingerprint = %issued.fingerprint, "client certificate issued");
        Ok(Credentials {
            client: name.to_string(),
            fingerprint: issued.fingerprint,
            ca_pem: self.access.ca.cert_pem().to_string(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem.to_string(),
        })
    }

    /// For storage on demand: `client` (issued if new) in a new group named after the volume.
    /// An existing group is never joined this way (see `Gateway::groups_for`).
    pub(crate) fn ensure_client_group(&self, client: &str, group: &str) -> anyhow::Result<Option<Credentials>> {
        let registry = self.access.snapshot();
        let credentials = if registry.clients.contains_key(client) { None } else { Some(self.issue_client(client)?) };
        self.access.update(|r| {
            r.add_group(group)?;
            Ok(r.join(group, client)?)
        })?;
        Ok(credentials)
    }

    pub(crate) fn superblock(&self, volume: &str) -> anyhow::Result<Superblock> {
        let found = self.data.load_volumes(&self.master)?.into_iter().find(|sb| sb.config.name == volume);
        Ok(found.ok_or_else(|| GatewayError::NotFound(format!("no volume {volume:?}")))?)
    }

    /// Gives a group access to a served volume: a key slot, then the grant.
    pub async fn grant(&self, group: &str, volume: &str, grant: Grant) -> Result<()> {
        if self.get(volume).is_none() {
            return Err(GatewayError::NotFound(format!("no volume {volume:?}")));
        }
        let _admin = self.admin.lock().await;
        Ok(self.grant_locked(group, volume, grant).await?)
    }

    async fn grant_locked(&self, group: &str, volume: &str, grant: Grant) -> anyhow::Result<()> {
        if !self.access.snapshot().groups.contains_key(group) {
            bail!(GatewayError::NotFound(format!("no group {group:?}")));
        }
        let mut sb = self.superblock(volume)?;
        if !sb.has_group(group) {
            let gk = self.data.group_key(&self.master, group)?;
            sb.grant_group(&self.master, group, &gk)?;
            self.publish(&sb).await?;
        }
        self.access.update(|r| Ok(r.grant(group, volume, grant.clone())?))?;
        info!(group, volume, "access granted");
        Ok(())
    }

    /// Takes a volume from a group: the grant, then the key slot. The last slot goes only
    /// with `erase`, and then the volume is deleted.
    pub async fn revoke(&self, group: &str, volume: &str, erase: bool) -> Result<bool> {
        let _admin = self.admin.lock().await;
        Ok(self.revoke_locked(group, volume, erase).await?)
    }

    async fn revoke_locked(&self, group: &str, volume: &str, erase: bool) -> anyhow::Result<bool> {
        let mut sb = self.superblock(volume)?;
        let others = self.access.snapshot().groups_of_volume(volume).into_iter().filter(|g| g != group).count();
        let remaining = sb.clone().revoke_group(group);
        if remaining == 0 || others == 0 {
            if !erase {
                bail!(
                    "group {group:?} is the last that can reach volume {volume:?}: revoking it crypto-erases \
                     the volume; confirm with erase=true"
                );
            }
            self.delete_locked(volume).await?;
            info!(group, volume, "last group revoked: volume crypto-erased and deleted");
            return Ok(true);
        }
        self.access.update(|r| {
            r.group_mut(group)?.grants.remove(volume);
            Ok(())
        })?;
        let before = sb.version;
        sb.revoke_group(group);
        if sb.version != before {
            self.publish(&sb).await?;
        }
        info!(group, volume, "access revoked");
        Ok(false)
    }

    /// Deletes a group: every grant (the `erase` rule applies to each), then its key.
    pub async fn delete_group(&self, group: &str, erase: bool) -> Result<Vec<String>> {
        let _admin = self.admin.lock().await;
        Ok(self.delete_group_locked(group, erase).await?)
    }

    async fn delete_group_locked(&self, group: &str, erase: bool) -> anyhow::Result<Vec<String>> {
        if group == LOCAL_GROUP {
            bail!("the {LOCAL_GROUP} group cannot be deleted");
        }
        let registry = self.access.snapshot();
        let g = registry.groups.get(group).ok_or_else(|| GatewayError::NotFound(format!("no group {group:?}")))?;
        if !erase {
            for v in g.grants.keys() {
                if registry.groups_of_volume(v).len() == 1 {
                    bail!("group {group:?} is the last that can reach volume {v:?}; confirm with erase=true");
                }
            }
        }
        let mut erased = Vec::new();
        for v in g.grants.keys() {
            if self.revoke_locked(group, v, erase).await? {
                erased.push(v.clone());
            }
        }
        self.access.update(|r| {
            r.groups.remove(group);
            Ok(())
        })?;
        self.data.remove_group_key(group)?;
        info!(group, erased = ?erased, "group deleted");
        Ok(erased)
    }

    /// Removes a client: its certificate no longer opens anything.
    pub fn remove_client(&self, name: &str) -> Result<()> {
        self.access.update(|r| Ok(r.remove_client(name)?))?;
        info!(client = %name, "client removed; its certificate no longer opens anything");
        Ok(())
    }

    /// Adds a group, and makes its key.
    pub fn add_group(&self, name: &str) -> Result<()> {
        self.access.update(|r| Ok(r.add_group(name)?))?;
        self.data.group_key(&self.master, name)?;
        Ok(())
    }

    /// Puts a client in a group.
    pub fn join(&self, group: &str, client: &str) -> Result<()> {
        Ok(self.access.update(|r| Ok(r.join(group, client)?))?)
    }

    /// Takes a client out of a group.
    pub fn leave(&self, group: &str, client: &str) -> Result<()> {
        self.access.update(|r| {
            if !r.group_mut(group)?.clients.remove(client) {
                bail!(GatewayError::NotFound(format!("client {client:?} is not in group {group:?}")));
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Every client, with the groups it is in.
    pub fn clients(&self) -> Vec<ClientView> {
        let r = self.access.snapshot();
        r.clients
            .values()
            .map(|c| ClientView {
                name: c.name.clone(),
                fingerprint: c.fingerprint.clone(),
                created_unix_ms: c.created_unix_ms,
                groups: r.groups.iter().filter(|(_, g)| g.clients.contains(&c.name)).map(|(n, _)| n.clone()).collect(),
                chap: c
                    .chap
                    .as_ref()
                    .map(|chap| if chap.mutual.is_some() { ChapKind::Mutual } else { ChapKind::OneWay }),
                initiators: r
                    .initiators_of(&c.name)
                    .into_iter()
                    .map(|(name, i)| InitiatorView { name, chap: i.chap })
                    .collect(),
            })
            .collect()
    }

    /// Every group, with its clients and grants.
    pub fn groups(&self) -> Vec<GroupView> {
        self.access.snapshot().groups.into_iter().map(|(name, group)| GroupView { name, group }).collect()
    }
}

/// A client as `GET /api/v1/clients` shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClientView {
    pub name: String,
    pub fingerprint: String,
    pub created_unix_ms: u64,
    pub groups: Vec<String>,
    /// Whether the client has CHAP secrets for iSCSI, and which.
    #[serde(default)]
    pub chap: Option<ChapKind>,
    /// The iSCSI initiators that log in as this client.
    #[serde(default)]
    pub initiators: Vec<InitiatorView>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ChapKind {
    /// The initiator proves the client's secret.
    OneWay,
    /// And the gateway proves its own back.
    Mutual,
}

/// An iSCSI initiator of a client.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InitiatorView {
    pub name: String,
    /// Whether it must log in with CHAP.
    pub chap: bool,
}

/// A group as `GET /api/v1/groups` shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupView {
    pub name: String,
    #[serde(flatten)]
    pub group: Group,
}
