//! The work of the tasks that change where a volume lives: recover (serve a volume found on
//! its targets), re-replicate, and move a share to another target.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use cleave_control::access::{Grant, Mode, LOCAL_GROUP};
use cleave_control::placement;
use cleave_target::TargetUri;
use cleave_volume::meta::names;
use cleave_volume::Volume;
use tracing::info;

use crate::events::EventKind;
use crate::gateway::Gateway;
use crate::size::ByteSize;

impl Gateway {
    /// Serves a volume found on its targets: the newest superblock this master key opens,
    /// then the journal replayed from the targets (for a gateway that lost its data directory).
    pub(crate) async fn recover(
        &self,
        name: &str,
        given: Vec<(String, cleave_target::DynTarget)>,
        takeover: bool,
        progress: impl Fn(u64, u64),
    ) -> Result<serde_json::Value> {
        let _admin = self.admin.lock().await;
        if self.exists(name) {
            bail!("volume {name:?} is already exists here");
        }
        let handles: Vec<_> = given.iter().map(|(_, t)| t.clone()).collect();
        let mut sb = cleave_volume::recover::find_superblock(&handles, &self.master, name).await?;
        progress(1, 4);
        let keys = sb.unlock(&self.master).context("no key slot this master key opens (crypto-erased?)")?;
        // Serve from the targets given, each at the share index its label names.
        let placed =
            cleave_volume::label::place(&given, &keys, &sb.config.uuid, sb.config.uuid_bytes().context("uuid")?)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        if placed.iter().any(|(i, uri)| sb.config.targets.get(*i) != Some(uri)) {
            for (i, uri) in placed {
                *sb.config.targets.get_mut(i).context("label names a share index past N")? = uri;
            }
            sb.version += 1;
            self.publish(&sb).await?;
        } else {
            self.data.save_volume(&sb.seal(&self.master)?, name)?;
        }
        progress(2, 4);
        let v = match self.open_volume_with(&sb, takeover).await {
            Ok(v) => v,
            Err(e) => {
                let _ = self.data.discard_volume(name);
                return Err(e);
            }
        };
        progress(3, 4);
        if let Err(e) = cleave_volume::recover::check_against_journal(&v, &handles).await {
            v.close().await;
            let _ = self.data.discard_volume(name);
            return Err(anyhow::anyhow!("{e}"));
        }
        // Grants are control's records, not the volume's: the admin group gets its access back if
        // it holds a slot; other groups are granted again by the administrator.
        if sb.has_group(LOCAL_GROUP) {
            let full = Grant { mode: Mode::ReadWrite, regions: Vec::new() };
            self.access.update(|r| Ok(r.grant(LOCAL_GROUP, name, full.clone())?))?;
        }
        let status = v.status();
        self.volumes.write().expect("not poisoned").insert(name.to_string(), v);
        info!(volume = name, version = sb.version, "volume recovered from its targets");
        Ok(serde_json::json!({
            "volume": name,
            "superblock_version": sb.version,
            "journal_seq": status.journal_seq,
            "mapped_chunks": status.mapped_chunks,
            "key_slots": sb.slots.groups().collect::<Vec<_>>(),
        }))
    }

    /// Re-replication, then the superblock put back on every target that lacks it (a
    /// replaced target starts empty), so that any M targets hold one for `cleave recover`.
    pub(crate) async fn rereplicate(&self, v: &Volume, progress: impl Fn(u64, u64)) -> Result<serde_json::Value> {
        let report = v.rereplicate(progress).await?;
        let sb = self.superblock(&v.config().name)?;
        let key = names::superblock(&sb.config.uuid, sb.version);
        let sealed = Bytes::from(sb.seal(&self.master)?);
        for uri in &v.status().config.targets {
            let target = self.open_target(uri)?;
            match target.put(&key, sealed.clone()).await {
                Ok(()) => {
                    info!(volume = %sb.config.name, target = %uri, "superblock restored on a target that lacked it")
                }
                Err(cleave_target::TargetError::AlreadyExists(_)) => {}
                Err(e) => bail!("restoring the superblock on {uri}: {e}"),
            }
        }
        Ok(serde_json::to_value(&report)?)
    }

    /// Which share moves, and where to: `to`, or the least full up node (counting space
    /// promised to volumes) that the volume does not use yet, on a site it does not use
    /// yet if there is one: `placement::replacement`, as repair planning uses it.
    pub(crate) fn plan_move(&self, v: &Volume, from: &str, to: Option<String>) -> Result<(usize, String)> {
        let config = v.status().config;
        let nodes = self.pool.nodes();
        let from_addr = nodes.iter().find(|n| n.id == from).map_or(from.to_string(), |n| n.address.to_string());
        let index = config
            .targets
            .iter()
            .position(|u| u == from || *u == TargetUri::node(&from_addr).to_string())
            .with_context(|| format!("volume {:?} has no target {from:?}", config.name))?;
        if let Some(to) = to {
            if config.targets.contains(&to) {
                bail!("volume {:?} already uses {to}", config.name);
            }
            self.check_named_target(&to)?;
            return Ok((index, to));
        }
        let per_share = config.size.div_ceil(config.m.max(1) as u64);
        // The nodes of the volume's other shares.
        let others: Vec<String> = nodes
            .iter()
            .filter(|n| n.address != from_addr && config.targets.contains(&TargetUri::node(&n.address).to_string()))
            .map(|n| n.address.clone())
            .collect();
        // Placement's own choice, as `cleave sim placement` plans it; never the old node.
        let fit: Vec<_> = nodes.iter().filter(|n| n.address != from_addr).cloned().collect();
        let best = placement::replacement(&fit, &self.promised_on_nodes(), &others, per_share).with_context(|| {
            format!(
                "cannot move share {index} of {:?}: no other node is up with {} free",
                config.name,
                ByteSize(per_share)
            )
        })?;
        Ok((index, TargetUri::node(&best).to_string()))
    }

    /// Moves share `index` of a volume to target `to`: a new superblock naming it, the volume
    /// switched over, every chunk rewritten (repair) and a checkpoint, then the old target's
    /// objects removed if it can still be reached.
    pub(crate) async fn move_share(
        &self,
        v: &Volume,
        index: usize,
        to: String,
        progress: impl Fn(u64, u64),
    ) -> Result<serde_json::Value> {
        let name = v.config().name.clone();
        let handle = self.create_target(&to)?;
        let old = {
            let _admin = self.admin.lock().await;
            let mut sb = self.superblock(&name)?;
            let old = std::mem::replace(&mut sb.config.targets[index], to.clone());
            sb.version += 1;
            self.publish(&sb).await?;
            v.replace_target(index, to.clone(), handle).await?;
            old
        };
        info!(volume = %name, index, from = %old, to = %to, "share moved; rewriting chunks");
        let report = cleave_volume::scrub::scrub(v, true, |done, total| progress(done, total + 1)).await?;
        v.checkpoint_now().await?;
        let (removed, cleanup_error) = self.remove_old_share(&old, &v.config().uuid).await;
        self.record(EventKind::VolumeMoved, format!("{name}: share {index} from {old} to {to}"));
        Ok(serde_json::json!({
            "volume": name, "share": index, "from": old, "to": to,
            "chunks_rewritten": report.chunks_repaired,
            "chunks_unrecoverable": report.chunks_unrecoverable,
            "old_objects_removed": removed,
            "old_target_error": cleanup_error,
        }))
    }

    /// Removes a moved share's objects from its old target, if it can be reached: how many,
    /// and why not all.
    async fn remove_old_share(&self, old: &str, uuid: &str) -> (usize, Option<String>) {
        let t = match self.open_target(old) {
            Ok(t) => t,
            Err(e) => return (0, Some(e.to_string())),
        };
        match t.list(&format!("{uuid}/")).await {
            Ok(keys) => {
                let mut removed = 0usize;
                for k in keys {
                    if t.delete(&k).await.is_ok() {
                        removed += 1;
                    }
                }
                (removed, None)
            }
            Err(e) => (0, Some(e.to_string())),
        }
    }
}
