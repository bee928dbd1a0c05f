//! Clients, groups and grants: the gateway's side (key slots, persistence) and the API
//! under `/api/v1/clients` and `/api/v1/groups`.
//!
//! A grant gives a group a key slot on the volume. Revoking the last group that can reach
//! a volume crypto-erases it, so that takes `erase=true` and then deletes the volume.

use anyhow::{bail, Context, Result};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use cleave_control::access::{Client, Grant, Group, Mode, Region, LOCAL_GROUP};
use cleave_volume::Superblock;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::server::{bad_request, ApiError, Gateway, Shared};

/// What a new client needs to connect: the CA that signs the server, its certificate and
/// its key. The key is shown once and not kept by control.
#[derive(Serialize, Deserialize)]
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
    pub fn add_client(&self, name: &str) -> Result<Credentials> {
        cleave_control::access::check_name(name)?;
        let issued = self.access.ca.issue_client(name)?;
        let client = Client {
            name: name.to_string(),
            fingerprint: issued.fingerprint.clone(),
            created_unix_ms: cleave_control::pool::now_ms(),
        };
        self.access.update(|r| Ok(r.add_client(client)?))?;
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
    pub(crate) fn ensure_client_group(&self, client: &str, group: &str) -> Result<Option<Credentials>> {
        let registry = self.access.snapshot();
        let credentials = if registry.clients.contains_key(client) { None } else { Some(self.add_client(client)?) };
        self.access.update(|r| {
            r.add_group(group)?;
            Ok(r.join(group, client)?)
        })?;
        Ok(credentials)
    }

    pub(crate) fn superblock(&self, volume: &str) -> Result<Superblock> {
        self.data
            .load_volumes(&self.master)?
            .into_iter()
            .find(|sb| sb.config.name == volume)
            .with_context(|| format!("no volume {volume:?}"))
    }

    /// Gives a group access to a volume: a key slot, then the grant.
    pub async fn grant(&self, group: &str, volume: &str, grant: Grant) -> Result<()> {
        let _admin = self.admin.lock().await;
        if !self.access.snapshot().groups.contains_key(group) {
            bail!("no group {group:?}");
        }
        let mut sb = self.superblock(volume)?;
        if !sb.has_group(group) {
            let gk = self.data.group_key(&self.master, group)?;
            sb.grant_group(&self.master, group, &gk)?;
            self.publish(&sb).await?;
        }
        self.access.update(|r| Ok(r.grant(group, volume, grant)?))?;
        info!(group, volume, "access granted");
        Ok(())
    }

    /// Takes a volume from a group: the grant, then the key slot. The last slot goes only
    /// with `erase`, and then the volume is deleted.
    pub async fn revoke(&self, group: &str, volume: &str, erase: bool) -> Result<bool> {
        let _admin = self.admin.lock().await;
        self.revoke_locked(group, volume, erase).await
    }

    async fn revoke_locked(&self, group: &str, volume: &str, erase: bool) -> Result<bool> {
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
        if group == LOCAL_GROUP {
            bail!("the {LOCAL_GROUP} group cannot be deleted");
        }
        let registry = self.access.snapshot();
        let g = registry.groups.get(group).with_context(|| format!("no group {group:?}"))?;
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
}

#[derive(Serialize)]
struct ClientView {
    name: String,
    fingerprint: String,
    created_unix_ms: u64,
    groups: Vec<String>,
}

async fn list_clients(State(gw): State<Shared>) -> Json<Vec<ClientView>> {
    let r = gw.access.snapshot();
    let views = r
        .clients
        .values()
        .map(|c| ClientView {
            name: c.name.clone(),
            fingerprint: c.fingerprint.clone(),
            created_unix_ms: c.created_unix_ms,
            groups: r.groups.iter().filter(|(_, g)| g.clients.contains(&c.name)).map(|(n, _)| n.clone()).collect(),
        })
        .collect();
    Json(views)
}

#[derive(Deserialize)]
struct NewName {
    name: String,
}

async fn add_client(State(gw): State<Shared>, Json(req): Json<NewName>) -> Result<Response, ApiError> {
    let c = gw.add_client(&req.name).map_err(bad_request)?;
    Ok((StatusCode::CREATED, Json(c)).into_response())
}

async fn remove_client(State(gw): State<Shared>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    gw.access.update(|r| Ok(r.remove_client(&name)?)).map_err(not_found_or_bad)?;
    info!(client = %name, "client removed; its certificate no longer opens anything");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct GroupView {
    name: String,
    #[serde(flatten)]
    group: Group,
}

async fn list_groups(State(gw): State<Shared>) -> Json<Vec<GroupView>> {
    let r = gw.access.snapshot();
    Json(r.groups.into_iter().map(|(name, group)| GroupView { name, group }).collect())
}

async fn add_group(State(gw): State<Shared>, Json(req): Json<NewName>) -> Result<StatusCode, ApiError> {
    gw.access.update(|r| Ok(r.add_group(&req.name)?)).map_err(bad_request)?;
    gw.data.group_key(&gw.master, &req.name).map_err(bad_request)?;
    Ok(StatusCode::CREATED)
}

#[derive(Deserialize)]
struct Erase {
    #[serde(default)]
    erase: bool,
}

async fn delete_group(
    State(gw): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<Erase>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let erased = gw.delete_group(&name, q.erase).await.map_err(not_found_or_bad)?;
    Ok(Json(serde_json::json!({ "erased_volumes": erased })))
}

async fn join(State(gw): State<Shared>, Path((group, client)): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    gw.access.update(|r| Ok(r.join(&group, &client)?)).map_err(not_found_or_bad)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn leave(
    State(gw): State<Shared>,
    Path((group, client)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    gw.access
        .update(|r| {
            if !r.group_mut(&group)?.clients.remove(&client) {
                bail!("client {client:?} is not in group {group:?}");
            }
            Ok(())
        })
        .map_err(not_found_or_bad)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct GrantBody {
    #[serde(default = "read_write")]
    mode: Mode,
    #[serde(default)]
    regions: Vec<Region>,
}
fn read_write() -> Mode {
    Mode::ReadWrite
}

async fn grant(
    State(gw): State<Shared>,
    Path((group, volume)): Path<(String, String)>,
    Json(body): Json<GrantBody>,
) -> Result<StatusCode, ApiError> {
    if gw.get(&volume).is_none() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no volume {volume:?}")));
    }
    gw.grant(&group, &volume, Grant { mode: body.mode, regions: body.regions }).await.map_err(not_found_or_bad)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke(
    State(gw): State<Shared>,
    Path((group, volume)): Path<(String, String)>,
    Query(q): Query<Erase>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let erased = gw.revoke(&group, &volume, q.erase).await.map_err(not_found_or_bad)?;
    Ok(Json(serde_json::json!({ "erased": erased })))
}

fn not_found_or_bad(e: anyhow::Error) -> ApiError {
    let text = format!("{e:#}");
    let status = if text.starts_with("no ") { StatusCode::NOT_FOUND } else { StatusCode::BAD_REQUEST };
    ApiError(status, text)
}

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/clients", get(list_clients).post(add_client))
        .route("/api/v1/clients/{name}", delete(remove_client))
        .route("/api/v1/groups", get(list_groups).post(add_group))
        .route("/api/v1/groups/{name}", delete(delete_group))
        .route("/api/v1/groups/{group}/clients/{client}", put(join).delete(leave))
        .route("/api/v1/groups/{group}/volumes/{volume}", put(grant).delete(revoke))
}
