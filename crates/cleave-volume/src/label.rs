//! Target labels: each target of a volume holds `<uuid>/label`, naming the volume and the
//! share index the target holds, authenticated under the volume's integrity subkey. A
//! target without its label (an empty disk, an unmounted mount point, a folder moved
//! away and recreated) is *replaced*, not empty: its shares must be rebuilt.
//!
//! ```text
//! offset size field
//!      0    4 magic "CLVL"
//!      4    1 format version (1)
//!      5    1 share index
//!      6    4 key id (LE): the volume key version of the MAC
//!     10   16 volume uuid
//!     26   32 MAC: keyed BLAKE3 of the bytes before it, under the integrity subkey
//! ```

use bytes::Bytes;
use cleave_split::Keyring;
use cleave_target::{DynTarget, TargetError};

const MAGIC: &[u8; 4] = b"CLVL";
const VERSION: u8 = 1;
const BODY_LEN: usize = 26;
const LEN: usize = BODY_LEN + 32;
const CONTEXT: &str = "cleave target label v1";

/// What a target says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelState {
    /// The label names this volume and this share index.
    Valid,
    /// No label: a new, emptied or replaced target.
    Missing,
    /// A label that does not authenticate, or names another index.
    Wrong(String),
    /// The target did not answer.
    Unreachable(String),
}

pub fn key(uuid: &str) -> String {
    format!("{uuid}/label")
}

pub fn encode(keys: &Keyring, volume: [u8; 16], index: u8) -> Vec<u8> {
    let key = keys.current();
    let mut out = Vec::with_capacity(LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(index);
    out.extend_from_slice(&key.id().to_le_bytes());
    out.extend_from_slice(&volume);
    let mac = key.integrity_mac(CONTEXT, &out);
    out.extend_from_slice(&mac);
    out
}

/// Checks a stored label against the volume and the index the target should hold.
pub fn verify(bytes: &[u8], keys: &Keyring, volume: [u8; 16], index: u8) -> Result<(), String> {
    if bytes.len() != LEN || &bytes[..4] != MAGIC || bytes[4] != VERSION {
        return Err(format!("not a version {VERSION} target label ({} bytes)", bytes.len()));
    }
    let key_id = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
    let key = keys.get(key_id).ok_or_else(|| format!("label under unknown key version {key_id}"))?;
    let mac = key.integrity_mac(CONTEXT, &bytes[..BODY_LEN]);
    if !cleave_split::constant_time_eq(&mac, &bytes[BODY_LEN..]) {
        return Err("label does not authenticate (another volume, or tampered)".into());
    }
    if bytes[10..26] != volume {
        return Err("label names another volume".into());
    }
    if bytes[5] != index {
        return Err(format!("label says share {}, expected {index} (targets swapped?)", bytes[5]));
    }
    Ok(())
}

/// Reads and checks the label of every target (target i must hold share i).
pub async fn check_all(targets: &[DynTarget], keys: &Keyring, uuid: &str, volume: [u8; 16]) -> Vec<LabelState> {
    let checks = targets.iter().enumerate().map(|(i, t)| check_one(t, keys, uuid, volume, i as u8));
    futures::future::join_all(checks).await
}

/// Reads and checks one target's label against the share index it should hold.
pub async fn check_one(target: &DynTarget, keys: &Keyring, uuid: &str, volume: [u8; 16], index: u8) -> LabelState {
    match target.get(&key(uuid)).await {
        Ok(bytes) => match verify(&bytes, keys, volume, index) {
            Ok(()) => LabelState::Valid,
            Err(e) => LabelState::Wrong(e),
        },
        Err(TargetError::NotFound(_)) => LabelState::Missing,
        Err(e) => LabelState::Unreachable(e.to_string()),
    }
}

async fn holds_superblock(target: &DynTarget, uuid: &str) -> bool {
    target.list(&crate::meta::names::superblock_prefix(uuid)).await.is_ok_and(|k| !k.is_empty())
}

/// Which targets the journal may trust (by position), and which were replaced.
///
/// A valid label is trusted. A missing or wrong one means replaced, with one exception:
/// a volume from before labels existed has none anywhere, and then a target holding the
/// volume's superblock is one of its own (it gets its label at open).
pub async fn classify(targets: &[DynTarget], uuid: &str, labels: &[LabelState]) -> (Vec<bool>, Vec<usize>) {
    let any_valid = labels.contains(&LabelState::Valid);
    let mut trusted = vec![false; labels.len()];
    let mut replaced = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        match l {
            LabelState::Valid => trusted[i] = true,
            LabelState::Unreachable(_) => {}
            LabelState::Missing if !any_valid && holds_superblock(&targets[i], uuid).await => trusted[i] = true,
            LabelState::Missing | LabelState::Wrong(_) => replaced.push(i),
        }
    }
    (trusted, replaced)
}

/// For offline recovery, where targets come in any order: which of them carry a valid
/// label of this volume (for any share index), or, if none does, hold its superblock.
pub async fn trusted_any_index(targets: &[DynTarget], keys: &Keyring, uuid: &str, volume: [u8; 16]) -> Vec<bool> {
    let name = key(uuid);
    let reads = futures::future::join_all(targets.iter().map(|t| t.get(&name))).await;
    let valid: Vec<bool> = reads
        .iter()
        .map(|r| r.as_ref().is_ok_and(|b| b.len() == LEN && verify(b, keys, volume, b[5]).is_ok()))
        .collect();
    if valid.iter().any(|v| *v) {
        return valid;
    }
    let mut legacy = Vec::with_capacity(targets.len());
    for (t, r) in targets.iter().zip(&reads) {
        legacy.push(matches!(r, Err(TargetError::NotFound(_))) && holds_superblock(t, uuid).await);
    }
    legacy
}

/// Labels the targets of a new volume (target i holds share i); at least `quorum` must
/// take their label.
pub async fn write_all(
    targets: &[DynTarget],
    keys: &Keyring,
    uuid: &str,
    volume: [u8; 16],
    quorum: usize,
) -> Result<(), TargetError> {
    let writes = targets.iter().enumerate().map(|(i, t)| write(t, keys, uuid, volume, i as u8));
    let results = futures::future::join_all(writes).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    if ok >= quorum {
        return Ok(());
    }
    let errors: Vec<String> = results.into_iter().filter_map(|r| r.err().map(|e| e.to_string())).collect();
    Err(TargetError::Unavailable(format!("only {ok} targets took their label, need {quorum}: {}", errors.join("; "))))
}

/// Writes target `index`'s label, replacing a wrong one.
pub async fn write(
    target: &DynTarget,
    keys: &Keyring,
    uuid: &str,
    volume: [u8; 16],
    index: u8,
) -> Result<(), TargetError> {
    let body = Bytes::from(encode(keys, volume, index));
    match target.put(&key(uuid), body.clone()).await {
        Err(TargetError::AlreadyExists(_)) => {
            target.delete(&key(uuid)).await?;
            target.put(&key(uuid), body).await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_bind_volume_index_and_key() {
        let keys = Keyring::generate().unwrap();
        let other = Keyring::generate().unwrap();
        let v = [7u8; 16];
        let l = encode(&keys, v, 3);
        assert_eq!(verify(&l, &keys, v, 3), Ok(()));
        assert!(verify(&l, &keys, v, 2).unwrap_err().contains("swapped"));
        assert!(verify(&l, &keys, [8u8; 16], 3).is_err());
        assert!(verify(&l, &other, v, 3).is_err());
        for cut in [0, 4, 10, LEN - 1] {
            assert!(verify(&l[..cut], &keys, v, 3).is_err());
        }
        let mut bad = l.clone();
        bad[12] ^= 1;
        assert!(verify(&bad, &keys, v, 3).is_err());
    }
}
