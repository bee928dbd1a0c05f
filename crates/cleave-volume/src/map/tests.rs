use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

/// What a test does to the map, against a plain map as the model.
#[derive(Clone, Debug)]
enum Step {
    Set(u64, Option<u64>),
    Get(u64),
    Checkpoint { full: bool },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    // Chunks over a few pages, so pages fill, empty and are evicted.
    let chunk = prop_oneof![0u64..8, (0u64..4).prop_map(|p| p * PAGE_CHUNKS + 3), 0u64..4 * PAGE_CHUNKS];
    let step = prop_oneof![
        4 => (chunk.clone(), prop::option::of(1u64..1000)).prop_map(|(c, g)| Step::Set(c, g)),
        4 => chunk.prop_map(Step::Get),
        1 => any::<bool>().prop_map(|full| Step::Checkpoint { full }),
    ];
    prop::collection::vec(step, 1..200)
}

/// The test's stand-in for the targets: every page version ever written.
#[derive(Default)]
struct Stored(BTreeMap<(u64, u64), Arc<Page>>);

impl Stored {
    /// `get`, reading the page from the stand-in targets when asked.
    fn lookup(&self, map: &mut ChunkMap, chunk: u64) -> Option<Mapping> {
        loop {
            match map.get(chunk) {
                Lookup::Found(m) => return m,
                Lookup::Load { page, version } => map.insert_page(page, version, self.0[&(page, version)].clone()),
            }
        }
    }

    /// A checkpoint at `version`, as the volume writes one.
    fn checkpoint(&mut self, map: &mut ChunkMap, version: u64, full: bool) -> Vec<(u64, u64)> {
        let mut written = Vec::new();
        for plan in map.plan(true) {
            let base = plan.base.map(|r| self.0[&(plan.page, r.version)].clone());
            let page = apply_changes(base.as_deref(), &plan.changes);
            if page.is_empty() {
                written.push((plan.page, None));
                continue;
            }
            let page = Arc::new(page);
            self.0.insert((plan.page, version), page.clone());
            let r = PageRef { version, count: page.len() as u64, full };
            written.push((plan.page, Some((r, page))));
        }
        map.checkpointed(written, full)
    }
}

proptest! {
    /// Whatever the order of changes, lookups, checkpoints and evictions, the paged map
    /// answers as a plain map does; its count is right; a checkpoint on all N targets
    /// frees only page versions no longer named; and the directory alone (as open reads
    /// it) rebuilds the same map.
    #[test]
    fn paged_map_matches_a_plain_map(steps in steps(), limit in 0usize..20) {
        let mut map = ChunkMap::new(BTreeMap::new(), limit);
        let mut model: BTreeMap<u64, Mapping> = BTreeMap::new();
        let mut stored = Stored::default();
        let mut version = 0;
        for step in steps {
            match step {
                Step::Set(chunk, generation) => {
                    let now = generation.map(|generation| Mapping { generation, key_id: 1 });
                    let current = stored.lookup(&mut map, chunk);
                    prop_assert_eq!(current, model.get(&chunk).copied());
                    map.set(chunk, now, current);
                    match now {
                        Some(m) => model.insert(chunk, m),
                        None => model.remove(&chunk),
                    };
                }
                Step::Get(chunk) => prop_assert_eq!(stored.lookup(&mut map, chunk), model.get(&chunk).copied()),
                Step::Checkpoint { full } => {
                    version += 1;
                    let freed = stored.checkpoint(&mut map, version, full);
                    for (page, v) in freed {
                        prop_assert!(map.stored(page).is_none_or(|r| r.version != v), "a named page freed");
                        stored.0.remove(&(page, v));
                    }
                    prop_assert_eq!(map.delta_len(), 0);
                }
            }
            prop_assert_eq!(map.mapped(), model.len() as u64);
            prop_assert!(map.cached_entries <= limit.max(PAGE_CHUNKS as usize));
        }
        // Open: a new map from the directory alone, with the same delta.
        let directory = map.directory.clone();
        let mut reopened = ChunkMap::new(directory, limit);
        for (chunk, now) in &map.delta {
            let current = stored.lookup(&mut reopened, *chunk);
            reopened.set(*chunk, *now, current);
        }
        for chunk in model.keys().chain([0, 5, 3 * PAGE_CHUNKS + 3].iter()) {
            prop_assert_eq!(stored.lookup(&mut reopened, *chunk), model.get(chunk).copied());
        }
        prop_assert_eq!(reopened.mapped(), model.len() as u64);
    }
}

#[test]
fn only_changed_pages_are_planned() {
    let mut map = ChunkMap::new(BTreeMap::new(), 100);
    let m = |generation| Some(Mapping { generation, key_id: 1 });
    map.set(1, m(5), None);
    map.set(PAGE_CHUNKS * 7, m(6), None);
    let planned: Vec<u64> = map.plan(true).iter().map(|p| p.page).collect();
    assert_eq!(planned, vec![0, 7]);
    let mut stored = Stored::default();
    assert!(stored.checkpoint(&mut map, 1, true).is_empty());
    assert!(map.plan(true).is_empty(), "nothing changed since");
    let current = stored.lookup(&mut map, 2);
    map.set(2, m(9), current);
    let planned: Vec<u64> = map.plan(true).iter().map(|p| p.page).collect();
    assert_eq!(planned, vec![0]);
    assert_eq!(stored.checkpoint(&mut map, 2, true), vec![(0, 1)], "page 0's first version is freed");
    map.rewrite_all();
    assert_eq!(map.plan(true).len(), 2);
}

#[test]
fn pages_short_of_n_targets_are_written_again_once_all_are_up() {
    let mut map = ChunkMap::new(BTreeMap::new(), 100);
    map.set(1, Some(Mapping { generation: 5, key_id: 1 }), None);
    let mut stored = Stored::default();
    assert!(stored.checkpoint(&mut map, 1, false).is_empty(), "nothing freed by a partial checkpoint");
    assert!(map.plan(false).is_empty(), "a target is still down: writing it again would not help");
    assert_eq!(map.plan(true).len(), 1);
}
