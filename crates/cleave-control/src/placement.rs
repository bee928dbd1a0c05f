//! Placement: which nodes hold a new volume's N shares. Pure: node descriptions and the
//! space already promised to other volumes in, addresses out.
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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot place {m}-of-{n}: {up} nodes up, {fit} with {per_share} bytes of room for a share (need {n})")]
pub struct PlacementError {
    pub m: u8,
    pub n: u8,
    pub up: usize,
    pub fit: usize,
    pub per_share: u64,
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
fn candidates<'a>(nodes: &'a [NodeInfo], reserved: &HashMap<String, u64>, per_share: u64) -> Vec<&'a NodeInfo> {
    let promised = |x: &NodeInfo| reserved.get(&x.address).copied().unwrap_or(0);
    let mut fit: Vec<&NodeInfo> =
        nodes.iter().filter(|x| x.status == NodeStatus::Up && room(x, promised(x)) >= per_share).collect();
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
        return Err(PlacementError { m: req.m, n: req.n, up, fit: fit.len(), per_share });
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
}
