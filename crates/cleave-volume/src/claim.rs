//! Ownership claims: one gateway serves a volume at a time. Opening a volume writes
//! `<uuid>/claim/<epoch>` (create-only, on a write quorum of targets), naming the gateway
//! and the journal position it took over at; a clean shutdown writes a matching release.
//! Another gateway is refused while an unreleased claim of someone else is the newest,
//! unless it explicitly takes over with a higher epoch. Journal records carry the epoch of
//! their writer: a record written by an older owner after a newer claim is ignored by
//! replay, and an owner that finds a newer claim stops serving (it is fenced).
//!
//! Claims and releases are authenticated under the volume's integrity subkey, so a
//! target cannot forge one.

use bytes::Bytes;
use cleave_split::Keyring;
use cleave_target::{DynTarget, TargetError};
use serde::{Deserialize, Serialize};

use crate::VolumeError;

const CONTEXT: &str = "cleave volume claim v1";

/// One gateway's ownership of a volume from `epoch` on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub epoch: u64,
    /// The last journal record the claimer had replayed when it took over.
    pub after_seq: u64,
    pub owner: String,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    claim: Claim,
    key_id: u32,
    mac: String,
}

fn prefix(uuid: &str, kind: &str) -> String {
    format!("{uuid}/{kind}/")
}

fn name(uuid: &str, kind: &str, epoch: u64) -> String {
    format!("{uuid}/{kind}/{epoch:016x}")
}

fn mac(keys: &Keyring, key_id: u32, kind: &str, claim: &Claim) -> Option<String> {
    let body = serde_json::to_vec(&(kind, claim)).ok()?;
    Some(hex::encode(keys.get(key_id)?.integrity_mac(CONTEXT, &body)))
}

fn seal(keys: &Keyring, kind: &str, claim: &Claim) -> Result<Bytes, VolumeError> {
    let key_id = keys.current().id();
    let mac = mac(keys, key_id, kind, claim).ok_or_else(|| VolumeError::Metadata("sealing a claim".into()))?;
    let body = serde_json::to_vec(&Sealed { claim: claim.clone(), key_id, mac })
        .map_err(|e| VolumeError::Metadata(e.to_string()))?;
    Ok(Bytes::from(body))
}

/// Parses and authenticates a stored claim or release; None if it does not verify.
fn open(keys: &Keyring, kind: &str, epoch: u64, bytes: &[u8]) -> Option<Claim> {
    let sealed: Sealed = serde_json::from_slice(bytes).ok()?;
    let want = mac(keys, sealed.key_id, kind, &sealed.claim)?;
    (cleave_split::constant_time_eq(want.as_bytes(), sealed.mac.as_bytes()) && sealed.claim.epoch == epoch)
        .then_some(sealed.claim)
}

/// What the targets say about ownership.
#[derive(Clone, Debug, Default)]
pub struct Ownership {
    /// Every authentic claim, by epoch.
    pub claims: Vec<Claim>,
    /// Epochs whose owner released the volume.
    pub released: Vec<u64>,
}

impl Ownership {
    pub fn latest(&self) -> Option<&Claim> {
        self.claims.iter().max_by_key(|c| c.epoch)
    }
    /// Whether `owner` may open the volume without taking it over.
    pub fn free_for(&self, owner: &str) -> Result<(), VolumeError> {
        match self.latest() {
            Some(c) if c.owner != owner && !self.released.contains(&c.epoch) => {
                Err(VolumeError::Claimed { owner: c.owner.clone(), epoch: c.epoch })
            }
            _ => Ok(()),
        }
    }
    /// Whether a journal record of `epoch` at `seq` was written by an owner that had
    /// already been replaced (a newer claim was made before it).
    pub fn is_stale(&self, seq: u64, epoch: u64) -> bool {
        self.claims.iter().any(|c| c.epoch > epoch && c.after_seq < seq)
    }
}

/// Authentic claims (or releases) with an epoch above `above`: only those names are read.
async fn read_kind(targets: &[DynTarget], keys: &Keyring, uuid: &str, kind: &str, above: u64) -> Vec<Claim> {
    let under = prefix(uuid, kind);
    let listed = futures::future::join_all(targets.iter().map(|t| t.list(&under))).await;
    let mut epochs: Vec<u64> = listed
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|k| crate::meta::names::trailing_number(&k))
        .filter(|e| *e > above)
        .collect();
    epochs.sort_unstable();
    epochs.dedup();
    let mut out = Vec::new();
    for epoch in epochs {
        for t in targets {
            if let Ok(bytes) = t.get(&name(uuid, kind, epoch)).await {
                if let Some(c) = open(keys, kind, epoch, &bytes) {
                    out.push(c);
                    break;
                }
            }
        }
    }
    out
}

/// Reads every authentic claim and release from the targets that answer.
pub async fn read(targets: &[DynTarget], keys: &Keyring, uuid: &str) -> Ownership {
    let claims = read_kind(targets, keys, uuid, "claim", 0).await;
    let released = read_kind(targets, keys, uuid, "release", 0).await.into_iter().map(|c| c.epoch).collect();
    Ownership { claims, released }
}

/// The newest authentic claim above `epoch`, if any: what an owner checks before it commits.
/// Claims at or below its own are not read at all, so the check stays one listing per
/// target however many claims the volume has seen.
pub async fn newer(targets: &[DynTarget], keys: &Keyring, uuid: &str, epoch: u64) -> Option<Claim> {
    read_kind(targets, keys, uuid, "claim", epoch).await.into_iter().max_by_key(|c| c.epoch)
}

async fn put_all(targets: &[DynTarget], key: &str, body: Bytes) -> (usize, usize) {
    let results = futures::future::join_all(targets.iter().map(|t| t.put(key, body.clone()))).await;
    let stored = results.iter().filter(|r| r.is_ok()).count();
    let clashed = results.iter().filter(|r| matches!(r, Err(TargetError::AlreadyExists(_)))).count();
    (stored, clashed)
}

/// Claims the volume at `claim.epoch`: it must be stored on a majority of the targets, so
/// of two gateways claiming the same epoch at most one succeeds, while one target that lies
/// about the object existing cannot block a claim, nor can a minority of targets down.
pub async fn write(targets: &[DynTarget], keys: &Keyring, uuid: &str, claim: &Claim) -> Result<(), VolumeError> {
    let (stored, clashed) = put_all(targets, &name(uuid, "claim", claim.epoch), seal(keys, "claim", claim)?).await;
    let need = targets.len() / 2 + 1;
    if stored >= need {
        return Ok(());
    }
    if clashed > 0 {
        return Err(VolumeError::Claimed { owner: "another gateway (a concurrent claim)".into(), epoch: claim.epoch });
    }
    Err(VolumeError::Quorum(format!("claim {}: stored on {stored} targets, need {need}", claim.epoch)))
}

/// Records a clean hand-back of the claim (best effort: a missing release only means the
/// next gateway must take over explicitly).
pub async fn release(targets: &[DynTarget], keys: &Keyring, uuid: &str, claim: &Claim) {
    if let Ok(body) = seal(keys, "release", claim) {
        put_all(targets, &name(uuid, "release", claim.epoch), body).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_authenticate_and_order() {
        let keys = Keyring::generate().unwrap();
        let c = Claim { epoch: 3, after_seq: 10, owner: "a".into() };
        let sealed = seal(&keys, "claim", &c).unwrap();
        assert_eq!(open(&keys, "claim", 3, &sealed), Some(c.clone()));
        assert_eq!(open(&keys, "claim", 4, &sealed), None, "an epoch must match its name");
        assert_eq!(open(&keys, "release", 3, &sealed), None, "a claim is no release");
        assert_eq!(open(&Keyring::generate().unwrap(), "claim", 3, &sealed), None);
        assert_eq!(open(&keys, "claim", 3, b"{}"), None);
        let own = Ownership { claims: vec![c.clone()], released: vec![] };
        assert!(own.free_for("a").is_ok());
        assert!(own.free_for("b").is_err());
        assert!(own.is_stale(11, 2) && !own.is_stale(10, 2) && !own.is_stale(11, 3));
        let own = Ownership { claims: vec![c], released: vec![3] };
        assert!(own.free_for("b").is_ok());
    }
}
