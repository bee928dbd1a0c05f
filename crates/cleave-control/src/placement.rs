//! Placement: which nodes hold a new volume's N shares. Pure: node descriptions and the
//! space already promised to other volumes in, addresses out; and, when a request names no
//! layout, which M-of-N the pool can hold ([`choose_layout`]); and in which order the gateways
//! of an appliance serve a volume ([`gateway_order`]).
//!
//! A node's room is what it reports free, but never more than its capacity minus what
//! volumes placed on it may still write: a volume that has not written yet takes no disk
//! space, and without this rule many of them could be promised the same free bytes.

use std::collections::HashMap;

use crate::pool::{NodeInfo, NodeStatus};

/// What a new volume needs.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub m: u8,
    pub n: u8,
    pub size_bytes: u64,
}

impl Request {
    /// Bytes one share of the whole volume takes on its node.
    pub fn per_share(&self) -> u64 {
        self.size_bytes.div_ceil(u64::from(self.m.max(1)))
    }
}

/// A layout the pool can place instead, as the caller would ask for it.
fn instead(fits: Option<(u8, u8)>) -> String {
    match fits {
        Some((m, n)) => format!("{m}-of-{n} would fit: pass --m {m} --n {n} (or add nodes)"),
        None => "no layout fits: add nodes, or free space on them".into(),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot place {m}-of-{n}: {up} nodes are up, {fit} with {per_share} bytes of room for a share (need {n}); {}", instead(*.fits))]
pub struct PlacementError {
    pub m: u8,
    pub n: u8,
    pub up: usize,
    pub fit: usize,
    pub per_share: u64,
    /// The largest layout of at most N shares the pool can place.
    pub fits: Option<(u8, u8)>,
}

/// Shares of a layout chosen for the caller: at most 5, the default of directory targets.
pub const DEFAULT_N: u8 = 5;
/// A layout is chosen for the caller only on this many nodes or more: below it, every
/// layout either lets one node rebuild a chunk alone (M = 1) or has no margin (M = N).
pub const MIN_CHOSEN_N: u8 = 3;

/// M for N shares, when the caller does not name it: two shares of margin from four shares
/// up (3-of-5, 2-of-4, as erasure-coded stores default to two parity shares on small sets),
/// one at three (2-of-3), and never M = 1 from three shares up, so that no single node holds
/// enough to rebuild a chunk.
pub fn default_m(n: u8) -> u8 {
    match n {
        0..=2 => 1,
        3 => 2,
        n => n - 2,
    }
}

/// Why no layout was chosen for a request that named none.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("{up} nodes are up, none with room for a share of this volume: add nodes, or free space on them")]
    NoRoom { up: usize },
    #[error("{up} nodes are up, {n} with room for a share: a layout is chosen only from {MIN_CHOSEN_N} nodes; pass --m {m} --n {n} to place it on these (no margin or one node holding a whole chunk), or add nodes")]
    TooFew { up: usize, m: u8, n: u8 },
}

/// The largest layout of at most `at_most` shares, with [`default_m`], that the up nodes
/// have room for.
pub fn fitting(nodes: &[NodeInfo], reserved: &HashMap<String, u64>, size_bytes: u64, at_most: u8) -> Option<(u8, u8)> {
    (1..=at_most).rev().map(|n| (default_m(n), n)).find(|&(m, n)| {
        let per_share = Request { m, n, size_bytes }.per_share();
        up_with_room(nodes, reserved, per_share).count() >= usize::from(n)
    })
}

/// The layout for a request that names none: N = the nodes with room, at most [`DEFAULT_N`],
/// and M = [`default_m`]; refused below [`MIN_CHOSEN_N`] nodes, with what to pass.
pub fn choose_layout(
    nodes: &[NodeInfo],
    reserved: &HashMap<String, u64>,
    size_bytes: u64,
) -> Result<(u8, u8), LayoutError> {
    let up = nodes.iter().filter(|x| x.status == NodeStatus::Up).count();
    match fitting(nodes, reserved, size_bytes, DEFAULT_N) {
        None => Err(LayoutError::NoRoom { up }),
        Some((m, n)) if n < MIN_CHOSEN_N => Err(LayoutError::TooFew { up, m, n }),
        Some(layout) => Ok(layout),
    }
}

fn up_with_room<'a>(
    nodes: &'a [NodeInfo],
    reserved: &'a HashMap<String, u64>,
    per_share: u64,
) -> impl Iterator<Item = &'a NodeInfo> {
    nodes.iter().filter(move |x| {
        x.status == NodeStatus::Up && room(x, reserved.get(&x.address).copied().unwrap_or(0)) >= per_share
    })
}

/// Room left on a node, given `reserved` bytes promised to volumes already placed there.
pub fn room(node: &NodeInfo, reserved: u64) -> u64 {
    node.free_bytes.min(node.capacity_bytes.saturating_sub(reserved))
}

/// How full a node would be with `reserved` bytes promised, in millionths of its capacity.
fn fill_ppm(node: &NodeInfo, reserved: u64) -> u64 {
    let used = node.capacity_bytes.saturating_sub(room(node, reserved));
    (used as u128 * 1_000_000 / node.capacity_bytes.max(1) as u128) as u64
}

/// The up nodes with room for a share of `per_share` bytes, least full (as a fraction of
/// their capacity) first, so that nodes of any size fill at the same pace.
fn candidates<'a>(nodes: &'a [NodeInfo], reserved: &'a HashMap<String, u64>, per_share: u64) -> Vec<&'a NodeInfo> {
    let promised = |x: &NodeInfo| reserved.get(&x.address).copied().unwrap_or(0);
    let mut fit: Vec<&NodeInfo> = up_with_room(nodes, reserved, per_share).collect();
    fit.sort_by_cached_key(|x| (fill_ppm(x, promised(x)), x.id.clone()));
    fit
}

/// N up nodes with room for a share, spread over the sites as evenly as they allow, least
/// full first.
/// `reserved` maps a node address to the bytes promised to volumes placed on it.
pub fn choose(
    nodes: &[NodeInfo],
    reserved: &HashMap<String, u64>,
    req: Request,
) -> Result<Vec<String>, PlacementError> {
    let n = req.n as usize;
    let per_share = req.per_share();
    let fit = candidates(nodes, reserved, per_share);
    if fit.len() < n {
        let up = nodes.iter().filter(|x| x.status == NodeStatus::Up).count();
        let fits = fitting(nodes, reserved, req.size_bytes, req.n);
        return Err(PlacementError { m: req.m, n: req.n, up, fit: fit.len(), per_share, fits });
    }
    // Round after round, one node per site and round: a site holds at most one share more
    // than any other, so losing a site costs each volume as few shares as the sites allow.
    let mut chosen: Vec<&NodeInfo> = Vec::new();
    let mut per_site: HashMap<&str, usize> = HashMap::new();
    for round in 0.. {
        for x in &fit {
            let count = per_site.entry(x.site.as_str()).or_default();
            if chosen.len() < n && *count == round && !chosen.iter().any(|c| c.id == x.id) {
                *count += 1;
                chosen.push(x);
            }
        }
        if chosen.len() == n {
            break;
        }
    }
    Ok(chosen.iter().map(|x| x.address.clone()).collect())
}

/// Where a share of `per_share` bytes goes when its node is lost: an up node with room that
/// holds none of the volume's other shares (`holders`, addresses), on a site none of them
/// uses if there is one, least full first. `None` if no node qualifies.
pub fn replacement(
    nodes: &[NodeInfo],
    reserved: &HashMap<String, u64>,
    holders: &[String],
    per_share: u64,
) -> Option<String> {
    let fit = candidates(nodes, reserved, per_share);
    let sites: Vec<&str> = nodes.iter().filter(|x| holders.contains(&x.address)).map(|x| x.site.as_str()).collect();
    let mut free = fit.iter().filter(|x| !holders.contains(&x.address));
    let best = free.clone().find(|x| !sites.contains(&x.site.as_str())).or_else(|| free.next());
    best.map(|x| x.address.clone())
}

/// The order in which the gateways of an appliance serve a volume: first its primary, then
/// its secondaries. The gateways an administrator named come first, in that order, then the
/// others in an order of their own for each volume (rendezvous hashing), so volumes spread
/// over the gateways and every gateway computes the same order. Only `live` gateways count.
pub fn gateway_order(volume: &str, live: &[String], preferred: &[String]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for g in preferred {
        if live.contains(g) && !order.contains(g) {
            order.push(g.clone());
        }
    }
    let mut rest: Vec<(blake3::Hash, &String)> = live
        .iter()
        .filter(|g| !order.contains(g))
        .map(|g| (blake3::hash(format!("{volume}\0{g}").as_bytes()), g))
        .collect();
    rest.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(b.1)));
    rest.dedup_by(|a, b| a.1 == b.1);
    order.extend(rest.into_iter().map(|(_, g)| g.clone()));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: usize, site: &str, free: u64) -> NodeInfo {
        NodeInfo {
            id: format!("n{i}"),
            address: format!("10.0.0.{i}:7800"),
            site: site.into(),
            status: NodeStatus::Up,
            capacity_bytes: 2 << 30,
            free_bytes: free,
            objects: 0,
            last_seen_unix_ms: 0,
        }
    }

    #[test]
    fn promised_space_counts_before_it_is_written() {
        let nodes: Vec<NodeInfo> = (0..3).map(|i| node(i, &format!("s{i}"), 2 << 30)).collect();
        let req = Request { m: 2, n: 3, size_bytes: 2 << 30 }; // 1 GiB a share
        let mut reserved = HashMap::new();
        for _ in 0..2 {
            let placed = choose(&nodes, &reserved, req).unwrap();
            for a in placed {
                *reserved.entry(a).or_insert(0) += req.per_share();
            }
        }
        let err = choose(&nodes, &reserved, req).unwrap_err();
        assert_eq!(err.fit, 0, "two 2 GiB nodes' worth is promised: {err}");
    }

    #[test]
    fn one_per_site_first_then_most_room() {
        let nodes = vec![node(0, "a", 1 << 30), node(1, "a", 2 << 30), node(2, "b", 1 << 29)];
        let placed = choose(&nodes, &HashMap::new(), Request { m: 1, n: 2, size_bytes: 1 << 20 }).unwrap();
        assert_eq!(placed, vec!["10.0.0.1:7800".to_string(), "10.0.0.2:7800".to_string()]);
        let mut down = nodes.clone();
        down[1].status = NodeStatus::Down;
        assert!(choose(&down, &HashMap::new(), Request { m: 1, n: 3, size_bytes: 1 }).is_err());
    }

    #[test]
    fn a_chosen_layout_fits_the_pool_with_margin() {
        let pool = |k: usize| -> Vec<NodeInfo> { (0..k).map(|i| node(i, &format!("s{i}"), 2 << 30)).collect() };
        let none = HashMap::new();
        let chosen: Vec<_> = (3..=7).map(|k| choose_layout(&pool(k), &none, 1 << 20).unwrap()).collect();
        assert_eq!(chosen, [(2, 3), (2, 4), (3, 5), (3, 5), (3, 5)]);
        // Room counts: 1 GiB at 2-of-3 is 512 MiB a share, which only two of four nodes have.
        let mut four = pool(4);
        four[0].free_bytes = 256 << 20;
        four[1].free_bytes = 256 << 20;
        assert_eq!(choose_layout(&four, &none, 1 << 30), Err(LayoutError::TooFew { up: 4, m: 1, n: 2 }));
        let err = choose_layout(&pool(2), &none, 1 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "2 nodes are up, 2 with room for a share: a layout is chosen only from 3 nodes; pass --m 1 --n 2 \
             to place it on these (no margin or one node holding a whole chunk), or add nodes"
        );
        assert_eq!(choose_layout(&pool(3), &none, 8 << 30), Err(LayoutError::NoRoom { up: 3 }));
        let mut down = pool(4);
        down[3].status = NodeStatus::Down;
        assert_eq!(choose_layout(&down, &none, 1 << 20), Ok((2, 3)));
    }

    #[test]
    fn a_layout_the_pool_cannot_hold_is_refused_with_one_that_fits() {
        let nodes: Vec<NodeInfo> = (0..3).map(|i| node(i, &format!("s{i}"), 2 << 30)).collect();
        let err = choose(&nodes, &HashMap::new(), Request { m: 3, n: 5, size_bytes: 1 << 20 }).unwrap_err();
        assert_eq!((err.up, err.fit, err.fits), (3, 3, Some((2, 3))));
        assert!(err.to_string().ends_with("3 nodes are up, 3 with 349526 bytes of room for a share (need 5); 2-of-3 would fit: pass --m 2 --n 3 (or add nodes)"), "{err}");
    }

    #[test]
    fn gateways_are_ordered_alike_everywhere_and_named_ones_first() {
        let live: Vec<String> = ["g1", "g2", "g3", "g4"].map(String::from).to_vec();
        let mut shuffled = live.clone();
        shuffled.reverse();
        let order = gateway_order("db", &live, &[]);
        assert_eq!(order, gateway_order("db", &shuffled, &[]), "the order depends on who asks");
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, live);
        // Volumes spread: not every volume has the same first gateway.
        let firsts: std::collections::HashSet<String> =
            (0..32).map(|i| gateway_order(&format!("v{i}"), &live, &[])[0].clone()).collect();
        assert!(firsts.len() > 1, "{firsts:?}");
        // Named gateways lead, in their order; a named gateway that is not live is skipped.
        let preferred: Vec<String> = ["g3", "gone", "g1"].map(String::from).to_vec();
        let order = gateway_order("db", &live, &preferred);
        assert_eq!(&order[..2], ["g3", "g1"]);
        assert_eq!(order.len(), 4);
        // A gateway that leaves takes its place only: the others keep their relative order.
        let without: Vec<String> = live.iter().filter(|g| *g != "g2").cloned().collect();
        let kept: Vec<String> = gateway_order("db", &live, &[]).into_iter().filter(|g| g != "g2").collect();
        assert_eq!(gateway_order("db", &without, &[]), kept);
    }
}
