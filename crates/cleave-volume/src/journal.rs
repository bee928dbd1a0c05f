//! The metadata journal: every destage round commits one record (chunk → generation),
//! encrypted under the volume's metadata subkey and split M-of-N like data. Every so
//! often a checkpoint holds the whole map, and older records are pruned.
//!
//! A record is written only after the previous one committed, so on replay the
//! first record that cannot be decoded ends the log.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use cleave_split::{ChunkId, Codec, Keyring, ShareKind};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::dispersal::Dispersal;
use crate::meta::names;
use crate::VolumeError;

/// Where a chunk's current generation lives. Generation 0 means all zeros: nothing stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub generation: u64,
    pub key_id: u32,
}

/// One committed update: (chunk, generation, key id); generation 0 = zero/trimmed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub entries: Vec<(u64, u64, u32)>,
}

/// The whole map as of record `seq`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub next_generation: u64,
    pub entries: Vec<(u64, u64, u32)>,
}

/// Record vs checkpoint objects are told apart by the generation field of their ChunkId.
const RECORD: u64 = 0;
const CHECKPOINT: u64 = 1;

/// The journal's view after replay.
#[derive(Debug, Default)]
pub struct Replayed {
    pub map: BTreeMap<u64, Mapping>,
    pub last_seq: u64,
    pub last_checkpoint: u64,
    pub next_generation: u64,
    pub records_since_checkpoint: u64,
}

pub struct Journal<'a> {
    pub dispersal: &'a Dispersal,
    pub codec: &'a Codec,
    pub keys: &'a Keyring,
    pub uuid: &'a str,
    pub volume: [u8; 16],
    pub quorum: usize,
    pub hedge_after: Duration,
    /// Delete leftovers of failed commits during replay (false for read-only recovery).
    pub prune: bool,
}

fn apply(map: &mut BTreeMap<u64, Mapping>, entries: &[(u64, u64, u32)]) {
    for &(chunk, generation, key_id) in entries {
        if generation == 0 {
            map.remove(&chunk);
        } else {
            map.insert(chunk, Mapping { generation, key_id });
        }
    }
}

impl Journal<'_> {
    fn id(&self, seq: u64, kind: u64) -> ChunkId {
        ChunkId { volume: self.volume, kind: ShareKind::Journal, chunk: seq, generation: kind }
    }

    async fn write(&self, key: &str, id: ChunkId, body: Vec<u8>) -> Result<(), VolumeError> {
        let shares = self.codec.encode(self.keys.current(), &id, &body)?;
        let outcome = self.dispersal.put_all(key, shares.into_iter().map(Bytes::from).collect()).await;
        if outcome.stored.len() >= self.quorum {
            return Ok(());
        }
        // Leave nothing half-written that a later replay could mistake for a commit.
        self.dispersal.delete_all(key).await;
        Err(VolumeError::Quorum(format!(
            "journal {key}: stored on {} targets, need {}; {:?}",
            outcome.stored.len(),
            self.quorum,
            outcome.failed
        )))
    }

    /// Commits one record. Ok means a quorum of targets holds it.
    pub async fn commit(&self, record: &Record) -> Result<(), VolumeError> {
        let body = serde_json::to_vec(record).map_err(|e| VolumeError::Metadata(e.to_string()))?;
        self.write(&names::journal(self.uuid, record.seq), self.id(record.seq, RECORD), body).await
    }

    /// Writes a checkpoint of the whole map, then prunes what it covers.
    pub async fn checkpoint(&self, cp: &Checkpoint, previous: u64) -> Result<(), VolumeError> {
        let body = serde_json::to_vec(cp).map_err(|e| VolumeError::Metadata(e.to_string()))?;
        self.write(&names::checkpoint(self.uuid, cp.seq), self.id(cp.seq, CHECKPOINT), body).await?;
        for seq in previous.saturating_add(1)..=cp.seq {
            self.dispersal.delete_all(&names::journal(self.uuid, seq)).await;
        }
        if previous > 0 && previous < cp.seq {
            self.dispersal.delete_all(&names::checkpoint(self.uuid, previous)).await;
        }
        Ok(())
    }

    async fn read<T: for<'de> Deserialize<'de>>(&self, key: &str, id: ChunkId) -> Result<T, String> {
        let (body, _) = self.dispersal.read_decoded(key, self.codec, self.keys, &id, self.hedge_after).await?;
        serde_json::from_slice(&body).map_err(|e| format!("{key}: {e}"))
    }

    /// Numbered names under `prefix` on every target that answers, with how many
    /// targets hold each.
    async fn list_numbers(&self, prefix: &str) -> Result<BTreeMap<u64, usize>, VolumeError> {
        let lists = futures::future::join_all(self.dispersal.targets().iter().map(|t| t.list(prefix))).await;
        let answered = lists.iter().filter(|l| l.is_ok()).count();
        if answered < self.codec.m() {
            return Err(VolumeError::Unavailable {
                chunk: 0,
                reason: format!("only {answered} targets answered listing {prefix}, need {}", self.codec.m()),
            });
        }
        let mut numbers = BTreeMap::new();
        for key in lists.into_iter().flatten().flatten() {
            if let Some(n) = names::trailing_number(&key) {
                *numbers.entry(n).or_insert(0) += 1;
            }
        }
        Ok(numbers)
    }

    /// Rebuilds the map from the newest readable checkpoint and the records after it.
    ///
    /// A record held by fewer than M targets can never be decoded: it is the leftover
    /// of a commit that failed (a commit needs M+1), so it is skipped and deleted. A
    /// record held by M or more that does not decode means damage or an outage; the
    /// volume is then not opened, rather than opened with a stale map.
    pub async fn replay(&self) -> Result<Replayed, VolumeError> {
        let m = self.codec.m();
        let mut out = Replayed { next_generation: 1, ..Default::default() };
        let checkpoints = self.list_numbers(&names::checkpoint_prefix(self.uuid)).await?;
        for (&seq, _) in checkpoints.iter().rev() {
            match self.read::<Checkpoint>(&names::checkpoint(self.uuid, seq), self.id(seq, CHECKPOINT)).await {
                Ok(cp) => {
                    apply(&mut out.map, &cp.entries);
                    out.last_seq = cp.seq;
                    out.last_checkpoint = cp.seq;
                    out.next_generation = cp.next_generation;
                    break;
                }
                Err(e) => warn!(seq, error = %e, "checkpoint unreadable, trying an older one"),
            }
        }
        let records = self.list_numbers(&names::journal_prefix(self.uuid)).await?;
        for (seq, holders) in records.into_iter().filter(|(s, _)| *s > out.last_checkpoint) {
            match self.read::<Record>(&names::journal(self.uuid, seq), self.id(seq, RECORD)).await {
                Ok(r) if r.seq == seq => {
                    apply(&mut out.map, &r.entries);
                    let max_gen = r.entries.iter().map(|e| e.1).max().unwrap_or(0);
                    out.next_generation = out.next_generation.max(max_gen + 1);
                    out.last_seq = seq;
                    out.records_since_checkpoint += 1;
                }
                Ok(_) => {
                    return Err(VolumeError::Metadata(format!("journal record {seq} holds another sequence number")))
                }
                Err(e) if holders < m => {
                    debug!(seq, holders, error = %e, "skipping the leftover of a failed journal commit");
                    if self.prune {
                        self.dispersal.delete_all(&names::journal(self.uuid, seq)).await;
                    }
                    out.last_seq = out.last_seq.max(seq);
                }
                Err(e) => {
                    return Err(VolumeError::Unavailable {
                        chunk: 0,
                        reason: format!("journal record {seq} is on {holders} targets but cannot be read: {e}"),
                    })
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entries() -> impl Strategy<Value = Vec<(u64, u64, u32)>> {
        prop::collection::vec((0u64..32, 0u64..6, 1u32..3), 0..8)
    }

    proptest! {
        /// Replaying a checkpoint taken at any record, then the records after it, gives
        /// the same map as applying every record from the start.
        #[test]
        fn checkpoint_then_tail_equals_full_replay(
            records in prop::collection::vec(entries(), 1..40),
            cut in 0usize..40,
        ) {
            let cut = cut.min(records.len());
            let mut full = BTreeMap::new();
            for r in &records {
                apply(&mut full, r);
            }
            let mut at_cut = BTreeMap::new();
            for r in &records[..cut] {
                apply(&mut at_cut, r);
            }
            let checkpoint: Vec<(u64, u64, u32)> =
                at_cut.iter().map(|(c, m)| (*c, m.generation, m.key_id)).collect();
            let mut replayed = BTreeMap::new();
            apply(&mut replayed, &checkpoint);
            for r in &records[cut..] {
                apply(&mut replayed, r);
            }
            prop_assert_eq!(replayed, full.clone());
            // Generation 0 never appears in a map: it means "zero, nothing stored".
            prop_assert!(full.values().all(|m| m.generation != 0));
        }

        /// Records survive their JSON encoding exactly.
        #[test]
        fn records_round_trip(seq in any::<u64>(), entries in entries()) {
            let r = Record { seq, entries };
            let bytes = serde_json::to_vec(&r).unwrap();
            prop_assert_eq!(serde_json::from_slice::<Record>(&bytes).unwrap(), r);
        }
    }
}
