//! The mirror side of one volume: applies the primary's changes to the local volume, and
//! decides at each attach, by generations, whether the two sides may go on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::control::Attached;
use crate::error::{MirrorError, Result};
use crate::replica::Replica;
use crate::state::{MirrorState, MirrorView, Record, Role};
use crate::wire::Op;

pub struct Secondary {
    dir: PathBuf,
    record: Mutex<Record>,
    pub(crate) local: Arc<dyn Replica>,
    applied: AtomicU64,
}

/// What the attach decided.
pub enum Verdict {
    Accept(Attached),
    SplitBrain(String),
}

impl Secondary {
    pub fn open(dir: &Path, record: Record, local: Arc<dyn Replica>) -> Result<Arc<Secondary>> {
        crate::files::private_dir(dir)?;
        record.store(&dir.join("record.json"))?;
        let dir = dir.to_path_buf();
        Ok(Arc::new(Secondary { dir, record: Mutex::new(record), local, applied: AtomicU64::new(0) }))
    }

    pub fn record(&self) -> Record {
        self.record.lock().expect("not poisoned").clone()
    }

    pub(crate) fn update_record(&self, f: impl FnOnce(&mut Record)) -> Result<()> {
        let mut r = self.record.lock().expect("not poisoned");
        f(&mut r);
        r.store(&self.dir.join("record.json"))?;
        Ok(())
    }

    /// Generations decide: the same one goes on; a primary that descends from ours (we
    /// missed a generation) gets a full copy; a side that was itself promoted refuses.
    pub fn attach(&self, generation: &str, history: &[String], keeps_order: bool, handle: u32) -> Result<Verdict> {
        let mut r = self.record.lock().expect("not poisoned");
        if let Some(discarded) = r.discarding.clone() {
            if r.generation != generation {
                let old = std::mem::replace(&mut r.generation, generation.to_string());
                r.history.push(old);
            }
            r.consistent = false;
            r.store(&self.dir.join("record.json"))?;
            return Ok(Verdict::Accept(Attached { handle, discarded, full_copy: false }));
        }
        if r.role == Role::Primary {
            return Ok(Verdict::SplitBrain(format!(
                "both sides are primary for volume {:?} (this side's generation {}, the peer's {generation}); \
                 run `cleave mirror resolve {} --discard local` on the side whose changes go",
                r.volume, r.generation, r.volume
            )));
        }
        let full_copy = if r.generation == generation {
            false
        } else if history.iter().any(|g| *g == r.generation) {
            let old = std::mem::replace(&mut r.generation, generation.to_string());
            r.history.push(old);
            true
        } else {
            return Ok(Verdict::SplitBrain(format!(
                "volume {:?}: the peer's generation {generation} does not descend from this side's {}",
                r.volume, r.generation
            )));
        };
        r.consistent = r.consistent && keeps_order && !full_copy;
        r.store(&self.dir.join("record.json"))?;
        Ok(Verdict::Accept(Attached { handle, discarded: Vec::new(), full_copy }))
    }

    pub fn set_consistent(&self, consistent: bool) -> Result<()> {
        self.update_record(|r| {
            r.consistent = consistent;
            if consistent {
                r.discarding = None;
            }
        })
    }

    pub async fn apply(&self, op: Op) -> Result<()> {
        let bytes = op.payload();
        self.local.apply(op).await.map_err(MirrorError::Refused)?;
        self.applied.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes applied since start.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    pub fn view(&self, link: MirrorState) -> MirrorView {
        let r = self.record();
        let state = match link {
            MirrorState::InSync if !r.consistent => MirrorState::Resyncing,
            s => s,
        };
        MirrorView {
            volume: r.volume.clone(),
            role: r.role,
            peer: r.peer.clone(),
            mode: r.mode,
            on_failure: r.on_failure,
            state,
            lag_bytes: 0,
            lag_changes: 0,
            resync_done: 0,
            resync_total: 0,
            journal_bytes: 0,
            journal_records: 0,
            bitmap_regions: 0,
            journal_overflowed: false,
            generation: r.generation.clone(),
            consistent: r.consistent,
            detail: if r.discarding.is_some() {
                "discarding this side's changes since the split".into()
            } else {
                String::new()
            },
        }
    }
}
