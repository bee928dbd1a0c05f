//! Checkpoints: the pages the changes since the last one touched, written as new
//! versions, then a directory naming every stored page. One that is, with its pages, on
//! all N targets lets older records, checkpoints, page versions and superseded
//! generations go.

use std::sync::Arc;

use futures::stream::{self, StreamExt};
use tracing::debug;

use super::paging::PAGE_PARALLEL;
use super::Inner;
use crate::journal::{Checkpoint, Stored};
use crate::map::{apply_changes, PagePlan, PageRef, WrittenPage};
use crate::VolumeError;

impl Inner {
    /// Whether a checkpoint is due after a commit.
    pub(super) fn checkpoint_due(&self) -> bool {
        let st = self.state.lock().expect("not poisoned");
        st.records_since_checkpoint >= self.opts.checkpoint_every || st.map.delta_len() >= self.opts.map_delta_limit
    }

    /// Writes a checkpoint as of the last committed record. Caller holds `commit`.
    pub(super) async fn write_checkpoint(&self) -> Result<Stored, VolumeError> {
        let all_up = self.dispersal.up_count() == self.config.n as usize;
        let (mut cp, plans) = {
            let st = self.state.lock().expect("not poisoned");
            let cp = Checkpoint {
                seq: st.next_seq - 1,
                next_generation: st.next_generation,
                missing: st.missing.iter().map(|(c, v)| (*c, v.clone())).collect(),
                ..Default::default()
            };
            (cp, st.map.plan(all_up))
        };
        let written = self.write_pages(plans, cp.seq).await?;
        cp.pages = self.state.lock().expect("not poisoned").map.directory_with(&written);
        let pages_full = cp.pages.iter().all(|p| p.3);
        let stored = match self.journal().checkpoint(&cp, pages_full).await {
            Ok(s) => s,
            Err(e) => {
                self.delete_pages(written.iter().filter(|(_, w)| w.is_some()).map(|(p, _)| (*p, cp.seq))).await;
                return Err(e);
            }
        };
        let (freed, old) = {
            let mut st = self.state.lock().expect("not poisoned");
            st.last_checkpoint = cp.seq;
            st.records_since_checkpoint = 0;
            let freed = st.map.checkpointed(written, stored == Stored::Full);
            let mut old = Vec::new();
            if stored == Stored::Full {
                st.journal_degraded = false;
                let full: Vec<u64> = st.superseded.keys().filter(|c| !st.missing.contains_key(c)).copied().collect();
                for c in full {
                    old.extend(st.superseded.remove(&c).unwrap_or_default().into_iter().map(|g| (c, g)));
                }
            }
            (freed, old)
        };
        debug!(seq = cp.seq, pages = cp.pages.len(), freed = freed.len(), ?stored, "checkpoint written");
        self.delete_pages(freed).await;
        self.delete_old(old).await;
        Ok(stored)
    }

    /// Writes each planned page as version `version` (some at once). On any failure the
    /// pages written are deleted again (nothing names them) and the first error returned.
    async fn write_pages(&self, plans: Vec<PagePlan>, version: u64) -> Result<Vec<WrittenPage>, VolumeError> {
        let results: Vec<Result<WrittenPage, VolumeError>> = stream::iter(plans)
            .map(|plan| self.write_page(plan, version))
            .buffer_unordered(PAGE_PARALLEL)
            .collect()
            .await;
        let (written, first_error) = super::destage::successes(results);
        if let Some(e) = first_error {
            self.delete_pages(written.iter().filter(|(_, w)| w.is_some()).map(|(p, _)| (*p, version))).await;
            return Err(e);
        }
        Ok(written)
    }

    async fn write_page(&self, plan: PagePlan, version: u64) -> Result<WrittenPage, VolumeError> {
        let base = match plan.base {
            Some(r) => Some(self.stored_page(plan.page, r.version).await?),
            None => None,
        };
        let page = apply_changes(base.as_deref(), &plan.changes);
        if page.is_empty() {
            return Ok((plan.page, None));
        }
        let stored = self.journal().write_page(plan.page, version, &page).await?;
        let r = PageRef { version, count: page.len() as u64, full: stored == Stored::Full };
        Ok((plan.page, Some((r, Arc::new(page)))))
    }

    async fn delete_pages(&self, pages: impl IntoIterator<Item = (u64, u64)>) {
        let pages: Vec<(u64, u64)> = pages.into_iter().collect();
        stream::iter(pages)
            .map(|(page, version)| async move { self.journal().delete_page(page, version).await })
            .buffer_unordered(PAGE_PARALLEL)
            .collect::<Vec<()>>()
            .await;
    }
}
