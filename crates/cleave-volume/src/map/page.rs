//! One page of the chunk map as stored: the mapped chunks of a fixed range, encrypted and
//! split like a chunk. Pages are copy-on-write: a checkpoint writes a changed page as a
//! new version and never rewrites one in place.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::VolumeError;

/// Where a chunk's current generation lives. Generation 0 means all zeros: nothing stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub generation: u64,
    pub key_id: u32,
}

/// Chunks per page: 4 GiB of volume at 1 MiB chunks, at most ~130 KB of JSON when full.
pub const PAGE_CHUNKS: u64 = 4096;

/// The page that holds `chunk`'s mapping.
pub fn page_of(chunk: u64) -> u64 {
    chunk / PAGE_CHUNKS
}

/// A page's mapped chunks (generation 0, zeros, is never stored).
pub type Page = BTreeMap<u64, Mapping>;

/// A page as stored: which page and version it is (checked against the name it was read
/// under), and its entries (chunk, generation, key id) in chunk order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPage {
    pub page: u64,
    pub version: u64,
    pub entries: Vec<(u64, u64, u32)>,
}

impl StoredPage {
    pub fn new(page: u64, version: u64, map: &Page) -> Self {
        StoredPage { page, version, entries: map.iter().map(|(c, m)| (*c, m.generation, m.key_id)).collect() }
    }

    /// Parses a stored page and checks it is the one asked for and well formed: every
    /// chunk inside the page's range, in strictly rising order, none mapped to zeros.
    pub fn parse(body: &[u8], page: u64, version: u64) -> Result<Page, VolumeError> {
        let bad = |why: String| VolumeError::Metadata(format!("map page {page} version {version}: {why}"));
        let stored: StoredPage = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
        if (stored.page, stored.version) != (page, version) {
            return Err(bad(format!("holds page {} version {}", stored.page, stored.version)));
        }
        let first = page.checked_mul(PAGE_CHUNKS).ok_or_else(|| bad("page number out of range".into()))?;
        let mut out = Page::new();
        let mut last = None;
        for (chunk, generation, key_id) in stored.entries {
            if page_of(chunk) != page || chunk < first {
                return Err(bad(format!("chunk {chunk} is not in this page")));
            }
            if last.is_some_and(|l| chunk <= l) {
                return Err(bad(format!("chunk {chunk} out of order")));
            }
            if generation == 0 {
                return Err(bad(format!("chunk {chunk} mapped to generation 0")));
            }
            last = Some(chunk);
            out.insert(chunk, Mapping { generation, key_id });
        }
        Ok(out)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a page serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A page survives being stored and parsed, exactly.
        #[test]
        fn pages_round_trip(page in 0u64..1 << 40, version in any::<u64>(),
                            entries in prop::collection::btree_map(0u64..PAGE_CHUNKS, (1u64.., any::<u32>()), 0..64)) {
            let map: Page = entries.into_iter()
                .map(|(o, (generation, key_id))| (page * PAGE_CHUNKS + o, Mapping { generation, key_id }))
                .collect();
            let bytes = StoredPage::new(page, version, &map).to_bytes();
            prop_assert_eq!(StoredPage::parse(&bytes, page, version).unwrap(), map);
            prop_assert!(StoredPage::parse(&bytes, page + 1, version).is_err());
            prop_assert!(StoredPage::parse(&bytes, page, version ^ 1).is_err());
        }
    }

    #[test]
    fn malformed_pages_are_refused() {
        let parse = |entries: Vec<(u64, u64, u32)>| {
            StoredPage::parse(&StoredPage { page: 1, version: 7, entries }.to_bytes(), 1, 7)
        };
        assert!(parse(vec![(PAGE_CHUNKS, 3, 1)]).is_ok());
        assert!(parse(vec![(0, 3, 1)]).is_err(), "a chunk of another page");
        assert!(parse(vec![(2 * PAGE_CHUNKS, 3, 1)]).is_err(), "a chunk of the next page");
        assert!(parse(vec![(PAGE_CHUNKS + 2, 3, 1), (PAGE_CHUNKS + 1, 3, 1)]).is_err(), "out of order");
        assert!(parse(vec![(PAGE_CHUNKS + 2, 3, 1), (PAGE_CHUNKS + 2, 4, 1)]).is_err(), "twice");
        assert!(parse(vec![(PAGE_CHUNKS, 0, 1)]).is_err(), "generation 0");
        assert!(StoredPage::parse(b"{", 1, 7).is_err());
        let huge = StoredPage { page: u64::MAX, version: 1, entries: vec![(u64::MAX, 1, 1)] };
        assert!(StoredPage::parse(&huge.to_bytes(), u64::MAX, 1).is_err());
    }
}
