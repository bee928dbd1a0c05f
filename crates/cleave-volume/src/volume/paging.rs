//! The volume's side of the paged chunk map: lookups that read a page from the targets
//! when the cache lacks it, listings for scrub and re-replication, and the changes found
//! by replay applied at open.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};

use super::{Inner, State, Volume};
use crate::journal::Mapping;
use crate::map::{apply_changes, page_of, Lookup, Page};
use crate::VolumeError;

/// Pages read or written at once by open and checkpoints.
pub(super) const PAGE_PARALLEL: usize = 16;

impl Inner {
    /// The mapping of `chunk` (None: zeros), reading its page from the targets if needed.
    pub(super) async fn lookup(&self, chunk: u64) -> Result<Option<Mapping>, VolumeError> {
        self.with_mapping(chunk, |_, m| m).await
    }

    /// Calls `f` with the state locked and `chunk`'s mapping as of then, reading its page
    /// from the targets first if the cache lacks it.
    pub(super) async fn with_mapping<R>(
        &self,
        chunk: u64,
        f: impl FnOnce(&mut State, Option<Mapping>) -> R,
    ) -> Result<R, VolumeError> {
        let mut loaded = None;
        let mut f = Some(f);
        loop {
            let (page, version) = {
                let mut st = self.state.lock().expect("not poisoned");
                if let Some((page, version, Some(data))) = loaded.take() {
                    st.map.insert_page(page, version, data);
                }
                match st.map.get(chunk) {
                    Lookup::Found(m) => return Ok((f.take().expect("called once"))(&mut st, m)),
                    Lookup::Load { page, version } => (page, version),
                }
            };
            loaded = Some((page, version, self.read_named_page(page, version).await?));
        }
    }

    /// Reads a page version from the targets. `Ok(None)` if it failed because a checkpoint
    /// meanwhile named another version (and deleted this one): the caller looks again.
    async fn read_named_page(&self, page: u64, version: u64) -> Result<Option<Arc<Page>>, VolumeError> {
        match self.journal().read_page(page, version).await {
            Ok(data) => Ok(Some(data)),
            Err(_) if !self.names(page, version) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the last checkpoint names this version of `page`.
    fn names(&self, page: u64, version: u64) -> bool {
        self.state.lock().expect("not poisoned").map.stored(page).is_some_and(|r| r.version == version)
    }

    /// The stored content of `page` at `version`, from the cache or the targets.
    pub(super) async fn stored_page(&self, page: u64, version: u64) -> Result<Arc<Page>, VolumeError> {
        let cached = self.state.lock().expect("not poisoned").map.cached(page, version);
        match cached {
            Some(p) => Ok(p),
            None => self.journal().read_page(page, version).await,
        }
    }

    /// The mapped chunks of `page` as of now.
    pub(super) async fn mapped_in_page(&self, page: u64) -> Result<Page, VolumeError> {
        loop {
            let (stored, cached, changes) = {
                let st = self.state.lock().expect("not poisoned");
                let stored = st.map.stored(page);
                (stored, stored.and_then(|r| st.map.cached(page, r.version)), st.map.changes_in(page))
            };
            let base = match (stored, cached) {
                (_, Some(cached)) => Some(cached),
                (Some(r), None) => match self.read_named_page(page, r.version).await? {
                    Some(data) => Some(data),
                    // A checkpoint replaced the page meanwhile: look again.
                    None => continue,
                },
                (None, None) => None,
            };
            return Ok(apply_changes(base.as_deref(), &changes));
        }
    }

    /// Replay's changes since the checkpoint, entered into the map at open: the stored
    /// pages they touch are read (some at once) for what each chunk held before.
    pub(super) async fn apply_replayed(&self, delta: BTreeMap<u64, Option<Mapping>>) -> Result<(), VolumeError> {
        let mut by_page: BTreeMap<u64, Vec<(u64, Option<Mapping>)>> = BTreeMap::new();
        for (chunk, now) in delta {
            by_page.entry(page_of(chunk)).or_default().push((chunk, now));
        }
        stream::iter(by_page)
            .map(|(page, changes)| async move {
                let stored = self.state.lock().expect("not poisoned").map.stored(page);
                let base = match stored {
                    Some(r) => Some(self.stored_page(page, r.version).await?),
                    None => None,
                };
                let mut st = self.state.lock().expect("not poisoned");
                for (chunk, now) in changes {
                    let before = base.as_ref().and_then(|b| b.get(&chunk).copied());
                    st.map.set(chunk, now, before);
                }
                Ok::<_, VolumeError>(())
            })
            .buffer_unordered(PAGE_PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

impl Volume {
    /// Every page that may hold mapped chunks, for scrub.
    pub fn mapped_pages(&self) -> Vec<u64> {
        self.inner.state.lock().expect("not poisoned").map.pages()
    }

    /// The mapped chunks of one page (chunk → generation).
    pub async fn mapped_in_page(&self, page: u64) -> Result<Vec<(u64, Mapping)>, VolumeError> {
        Ok(self.inner.mapped_in_page(page).await?.into_iter().collect())
    }

    /// The whole committed map: for tests and small volumes (scrub goes page by page).
    pub async fn mapped(&self) -> Result<Vec<(u64, Mapping)>, VolumeError> {
        let mut out = Vec::new();
        for page in self.mapped_pages() {
            out.extend(self.mapped_in_page(page).await?);
        }
        Ok(out)
    }

    /// How many chunks hold stored data.
    pub fn mapped_count(&self) -> u64 {
        self.inner.state.lock().expect("not poisoned").map.mapped()
    }

    /// The generation a chunk maps to now (None: zeros, nothing stored).
    pub(crate) async fn current_generation(&self, chunk: u64) -> Result<Option<u64>, VolumeError> {
        Ok(self.inner.lookup(chunk).await?.map(|m| m.generation))
    }
}
