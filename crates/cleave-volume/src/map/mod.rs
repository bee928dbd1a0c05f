//! The chunk map (chunk → generation), paged so that memory and metadata writes grow with
//! what changes, not with the volume.
//!
//! - The last checkpoint's **directory** names each non-empty page's stored version.
//! - Changes since that checkpoint live in the **delta**, which every lookup reads first;
//!   the journal records since the checkpoint hold the same changes on the targets.
//! - Stored pages are read on demand into a **bounded cache** (least recently used out).
//! - A checkpoint writes only the pages the delta touches, as new versions (see
//!   `volume::checkpoint`), then a new directory.
//!
//! This module holds no I/O: the volume reads pages (`Journal::read_page`) and calls
//! [`ChunkMap::insert_page`] when [`ChunkMap::get`] asks for one.

pub mod page;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use page::{page_of, Mapping, Page, StoredPage, PAGE_CHUNKS};

/// A stored page version, as a directory lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRef {
    pub version: u64,
    /// Mapped chunks in it.
    pub count: u64,
    /// On all N targets (else the next checkpoint with every target up writes it again).
    pub full: bool,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The mapping (None: zeros, nothing stored).
    Found(Option<Mapping>),
    /// The page must be read from the targets first.
    Load { page: u64, version: u64 },
}

struct Cached {
    version: u64,
    page: Arc<Page>,
    last_use: u64,
}

/// A page as the next checkpoint must write it.
#[derive(Debug)]
pub struct PagePlan {
    pub page: u64,
    /// The stored version to start from (None: the page is new).
    pub base: Option<PageRef>,
    pub changes: Vec<(u64, Option<Mapping>)>,
}

/// The outcome of writing one page of a checkpoint (None: it became empty).
pub type WrittenPage = (u64, Option<(PageRef, Arc<Page>)>);

pub struct ChunkMap {
    directory: BTreeMap<u64, PageRef>,
    /// Changes since the last checkpoint (None: zeros).
    delta: BTreeMap<u64, Option<Mapping>>,
    cache: HashMap<u64, Cached>,
    cached_entries: usize,
    /// Most mapped entries the cache holds (a page read alone may exceed it).
    cache_limit: usize,
    tick: u64,
    /// Mapped chunks in the stored pages, and the delta's effect on that count.
    stored_mapped: u64,
    delta_mapped: i64,
    /// Page versions replaced by checkpoints not yet on all N targets.
    obsolete: Vec<(u64, u64)>,
    /// Write every page at the next checkpoint: some target may lack the stored ones.
    rewrite_all: bool,
}

impl ChunkMap {
    pub fn new(directory: BTreeMap<u64, PageRef>, cache_limit: usize) -> Self {
        let stored_mapped = directory.values().map(|r| r.count).sum();
        ChunkMap {
            directory,
            delta: BTreeMap::new(),
            cache: HashMap::new(),
            cached_entries: 0,
            cache_limit,
            tick: 0,
            stored_mapped,
            delta_mapped: 0,
            obsolete: Vec::new(),
            rewrite_all: false,
        }
    }

    /// The mapping of `chunk`, or which page to read first.
    pub fn get(&mut self, chunk: u64) -> Lookup {
        if let Some(now) = self.delta.get(&chunk) {
            return Lookup::Found(*now);
        }
        let page = page_of(chunk);
        let Some(r) = self.directory.get(&page) else { return Lookup::Found(None) };
        self.tick += 1;
        match self.cache.get_mut(&page) {
            Some(c) if c.version == r.version => {
                c.last_use = self.tick;
                Lookup::Found(c.page.get(&chunk).copied())
            }
            _ => Lookup::Load { page, version: r.version },
        }
    }

    /// A page read from the targets; kept if it is still the version the directory names.
    pub fn insert_page(&mut self, page: u64, version: u64, data: Arc<Page>) {
        if self.directory.get(&page).is_none_or(|r| r.version != version) {
            return;
        }
        self.cache_page(page, version, data);
        self.evict(page);
    }

    /// Puts a page version into the cache as the most recently used (no eviction).
    fn cache_page(&mut self, page: u64, version: u64, data: Arc<Page>) {
        self.tick += 1;
        self.cached_entries += data.len();
        if let Some(old) = self.cache.insert(page, Cached { version, page: data, last_use: self.tick }) {
            self.cached_entries -= old.page.len();
        }
    }

    /// Drops least recently used pages (never `keep`) until the cache is within its limit.
    fn evict(&mut self, keep: u64) {
        while self.cached_entries > self.cache_limit && self.cache.len() > 1 {
            let Some(victim) =
                self.cache.iter().filter(|(p, _)| **p != keep).min_by_key(|(_, c)| c.last_use).map(|(p, _)| *p)
            else {
                return;
            };
            if let Some(c) = self.cache.remove(&victim) {
                self.cached_entries -= c.page.len();
            }
        }
    }

    /// Records a change; `current` is what [`ChunkMap::get`] found for the chunk (it
    /// keeps the count of mapped chunks right).
    pub fn set(&mut self, chunk: u64, now: Option<Mapping>, current: Option<Mapping>) {
        self.delta_mapped += i64::from(now.is_some()) - i64::from(current.is_some());
        self.delta.insert(chunk, now);
    }

    /// How many chunks are mapped (hold stored data).
    pub fn mapped(&self) -> u64 {
        self.stored_mapped.saturating_add_signed(self.delta_mapped)
    }

    /// Changes waiting for a checkpoint.
    pub fn delta_len(&self) -> usize {
        self.delta.len()
    }

    /// The next checkpoint writes every page, not only changed ones.
    pub fn rewrite_all(&mut self) {
        self.rewrite_all = true;
    }

    /// Every page that holds or may hold mapped chunks, in order.
    pub fn pages(&self) -> Vec<u64> {
        let mut pages: Vec<u64> = self.directory.keys().copied().collect();
        pages.extend(self.delta.keys().map(|c| page_of(*c)));
        pages.sort_unstable();
        pages.dedup();
        pages
    }

    /// The stored version of `page`, if any.
    pub fn stored(&self, page: u64) -> Option<PageRef> {
        self.directory.get(&page).copied()
    }

    /// The changes since the last checkpoint within `page`.
    pub fn changes_in(&self, page: u64) -> Vec<(u64, Option<Mapping>)> {
        let first = page.saturating_mul(PAGE_CHUNKS);
        let last = first.saturating_add(PAGE_CHUNKS - 1);
        self.delta.range(first..=last).map(|(c, now)| (*c, *now)).collect()
    }

    /// The pages the next checkpoint writes: those changed, those stored on fewer than N
    /// targets (when `all_up`: else they would be short again), or all of them.
    pub fn plan(&self, all_up: bool) -> Vec<PagePlan> {
        let mut pages: Vec<u64> = self.delta.keys().map(|c| page_of(*c)).collect();
        pages.extend(self.directory.iter().filter(|(_, r)| self.rewrite_all || (all_up && !r.full)).map(|(p, _)| *p));
        pages.sort_unstable();
        pages.dedup();
        pages
            .into_iter()
            .map(|page| PagePlan { page, base: self.stored(page), changes: self.changes_in(page) })
            .collect()
    }

    /// The directory after `written` replaces its pages, as a checkpoint stores it.
    pub fn directory_with(&self, written: &[WrittenPage]) -> Vec<(u64, u64, u64, bool)> {
        let mut dir = self.directory.clone();
        for (page, w) in written {
            match w {
                Some((r, _)) => dir.insert(*page, *r),
                None => dir.remove(page),
            };
        }
        dir.into_iter().map(|(p, r)| (p, r.version, r.count, r.full)).collect()
    }

    /// A checkpoint holding `written` was committed: they become the stored pages and the
    /// delta is empty. Returns the page versions that may now be deleted: none unless the
    /// checkpoint is on all N targets, then all that older checkpoints named.
    pub fn checkpointed(&mut self, written: Vec<WrittenPage>, full: bool) -> Vec<(u64, u64)> {
        for (page, w) in written {
            let old = match w {
                Some((r, data)) => {
                    self.cache_page(page, r.version, data);
                    self.directory.insert(page, r)
                }
                None => {
                    if let Some(c) = self.cache.remove(&page) {
                        self.cached_entries -= c.page.len();
                    }
                    self.directory.remove(&page)
                }
            };
            self.obsolete
                .extend(old.filter(|o| names_other_version(&self.directory, page, o)).map(|o| (page, o.version)));
        }
        self.evict(u64::MAX);
        self.delta.clear();
        self.delta_mapped = 0;
        self.stored_mapped = self.directory.values().map(|r| r.count).sum();
        if !full {
            return Vec::new();
        }
        self.rewrite_all = false;
        std::mem::take(&mut self.obsolete)
    }

    /// Version `version` of `page`, if the cache holds it.
    pub fn cached(&self, page: u64, version: u64) -> Option<Arc<Page>> {
        self.cache.get(&page).filter(|c| c.version == version).map(|c| c.page.clone())
    }
}

/// Whether the directory now names another version of `page` than `old` (a page written
/// again at the same version is the same object).
fn names_other_version(directory: &BTreeMap<u64, PageRef>, page: u64, old: &PageRef) -> bool {
    directory.get(&page).is_none_or(|r| r.version != old.version)
}

/// Applies changes to a page: the page as the next checkpoint stores it.
pub fn apply_changes(base: Option<&Page>, changes: &[(u64, Option<Mapping>)]) -> Page {
    let mut out = base.cloned().unwrap_or_default();
    for (chunk, now) in changes {
        match now {
            Some(m) => out.insert(*chunk, *m),
            None => out.remove(chunk),
        };
    }
    out
}

#[cfg(test)]
mod tests;
