//! Rebuilding a volume from its targets and the master key alone: no gateway, no
//! data directory. Finds the superblock, replays the journal, decodes every chunk.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use cleave_split::keys::MasterKey;
use cleave_split::Codec;
use cleave_target::DynTarget;

use crate::dispersal::Dispersal;
use crate::journal::{Journal, Mapping};
use crate::label;
use crate::map::{ChunkMap, Lookup};
use crate::meta::{names, Superblock};
use crate::VolumeError;

/// Finds the newest superblock of volume `name` that the master key authenticates.
pub async fn find_superblock(targets: &[DynTarget], master: &MasterKey, name: &str) -> Result<Superblock, VolumeError> {
    let mut best: Option<Superblock> = None;
    let mut errors = Vec::new();
    for t in targets {
        let keys = match t.list("").await {
            Ok(k) => k,
            Err(e) => {
                errors.push(format!("{}: {e}", t.name()));
                continue;
            }
        };
        for key in keys.iter().filter(|k| k.split('/').nth(1) == Some("superblock")) {
            let Ok(bytes) = t.get(key).await else { continue };
            match Superblock::open(&bytes, master) {
                Ok(sb) if sb.config.name == name => {
                    if best.as_ref().is_none_or(|b| sb.version > b.version) {
                        best = Some(sb);
                    }
                }
                Ok(_) => {}
                Err(e) => errors.push(format!("{}/{key}: {e}", t.name())),
            }
        }
    }
    best.ok_or_else(|| {
        VolumeError::Metadata(format!(
            "no superblock for volume {name:?} that this key opens on the given targets{}",
            if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) }
        ))
    })
}

/// After a volume was opened from the targets given: fails if they hold chunk shares
/// while the journal maps no chunk at all (the wrong targets, or a journal lost).
pub async fn check_against_journal(volume: &crate::Volume, targets: &[DynTarget]) -> Result<(), VolumeError> {
    if volume.mapped_count() > 0 {
        return Ok(());
    }
    let uuid = &volume.config().uuid;
    // Chunk objects under either name layout (see `naming`).
    let prefixes = [names::chunk_prefix(uuid), crate::naming::opaque_prefix(uuid)];
    for t in targets {
        for prefix in &prefixes {
            if t.list(prefix).await.is_ok_and(|k| !k.is_empty()) {
                return Err(VolumeError::MetadataUnavailable(format!(
                    "{} holds chunk shares of volume {:?} but its journal, as read from the targets given, maps none",
                    t.name(),
                    volume.config().name
                )));
            }
        }
    }
    Ok(())
}

/// What `export` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct RecoverReport {
    pub size: u64,
    pub chunks_total: u64,
    pub chunks_stored: u64,
    pub chunks_zero: u64,
    /// With --accept-stale: why the image is older than the last commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
}

/// Writes the volume's exact image to `output` from whichever targets are given
/// (any M of the N suffice, in any order). `progress(done, total)` is called per chunk.
pub async fn export(
    targets: Vec<DynTarget>,
    master: &MasterKey,
    name: &str,
    output: &Path,
    accept_stale: bool,
    progress: impl Fn(u64, u64),
) -> Result<RecoverReport, VolumeError> {
    let sb = find_superblock(&targets, master, name).await?;
    let keys = sb.unlock(master)?;
    let config = &sb.config;
    let volume = config.uuid_bytes().expect("validated");
    let codec = Codec::new(config.m as usize, config.n as usize).map_err(|e| VolumeError::Config(e.to_string()))?;
    let trusted = label::trusted_any_index(&targets, &keys, &config.uuid, volume).await;
    if !trusted.iter().any(|t| *t) {
        return Err(VolumeError::MetadataUnavailable(format!(
            "none of the {} targets given carries volume {name:?}'s label",
            targets.len()
        )));
    }
    let ownership = crate::claim::read(&targets, &keys, &config.uuid).await;
    let dispersal = Dispersal::new(targets, Duration::from_secs(30));
    let hedge_after = Duration::from_millis(200);
    let journal = Journal {
        dispersal: &dispersal,
        codec: &codec,
        keys: &keys,
        uuid: &config.uuid,
        volume,
        quorum: config.write_quorum(),
        hedge_after,
        prune: false,
        accept_stale,
        trusted: &trusted,
        ownership: &ownership,
    };
    let replayed = journal.replay().await?;
    // The image is plaintext: only its owner may read it.
    let file = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new().write(true).create(true).truncate(true),
        0o600,
    )
    .open(output)?;
    file.set_len(config.size)?;
    let total = config.chunks();
    let mut report =
        RecoverReport { size: config.size, chunks_total: total, stale: replayed.stale.clone(), ..Default::default() };
    let mut map = ChunkMap::new(replayed.directory, 1 << 20);
    for (chunk, now) in replayed.delta {
        // Export reads each chunk once: what it held before does not matter.
        map.set(chunk, now, None);
    }
    for chunk in 0..total {
        progress(chunk, total);
        let Some(mapping) = lookup(&mut map, &journal, chunk).await? else {
            report.chunks_zero += 1;
            continue;
        };
        let (key, id) = crate::naming::chunk_object(&keys, &config.uuid, volume, chunk, mapping.generation);
        let (data, _) = dispersal
            .read_decoded(&key, &codec, &keys, &id, hedge_after)
            .await
            .map_err(|reason| VolumeError::Unavailable { chunk, reason })?;
        file.write_all_at(&data, chunk * config.chunk_size as u64)?;
        report.chunks_stored += 1;
    }
    progress(total, total);
    file.sync_all()?;
    Ok(report)
}

/// A chunk's mapping, reading its page from the targets when the map asks for it.
async fn lookup(map: &mut ChunkMap, journal: &Journal<'_>, chunk: u64) -> Result<Option<Mapping>, VolumeError> {
    loop {
        match map.get(chunk) {
            Lookup::Found(m) => return Ok(m),
            Lookup::Load { page, version } => map.insert_page(page, version, journal.read_page(page, version).await?),
        }
    }
}
