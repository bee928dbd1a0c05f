//! A pool simulated with the real placement code: many nodes on many sites, many volumes
//! placed one after the other as `volume create` places them, then a whole site lost and the
//! repair planned as a share move plans it. Deterministic for a seed; no I/O.

use std::collections::HashMap;

use crate::placement::{self, Request};
use crate::pool::{NodeInfo, NodeStatus};

const TIB: u64 = 1 << 40;
const GIB: u64 = 1 << 30;

/// What to simulate.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub nodes: usize,
    pub sites: usize,
    pub volumes: usize,
    pub m: u8,
    pub n: u8,
    pub seed: u64,
}

/// What a simulation measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub placed: usize,
    /// Volumes no set of N nodes had room for.
    pub refused: usize,
    /// Capacity-weighted mean fill (promised bytes over capacity), in percent.
    pub mean_fill: f64,
    /// The least and most full node, in percent of its capacity.
    pub min_fill: f64,
    pub max_fill: f64,
    /// Shares per site, site 0 first.
    pub shares_per_site: Vec<usize>,
    /// Volumes whose shares are on fewer distinct sites than min(N, sites).
    pub volumes_site_poor: usize,
    /// After losing site 0: volumes that lost shares, the most any volume lost, and the
    /// volumes that lost more than N - M (unreadable).
    pub volumes_hit: usize,
    pub max_lost: usize,
    pub volumes_lost: usize,
    /// The repair plan: shares moved, their bytes, and the shares no node could take.
    pub moves: usize,
    pub moved_bytes: u64,
    pub unplaceable: usize,
    /// The most full node after the repair, in percent.
    pub max_fill_after: f64,
}

fn pool(spec: &Spec, rng: &mut fastrand::Rng) -> Vec<NodeInfo> {
    (0..spec.nodes)
        .map(|i| {
            let capacity = [8, 12, 16, 24][rng.usize(..4)] * TIB;
            NodeInfo {
                id: format!("node-{i:04}"),
                address: format!("10.{}.{}.{}:7800", i / 65536, (i / 256) % 256, i % 256),
                site: format!("site-{:02}", i % spec.sites.max(1)),
                status: NodeStatus::Up,
                capacity_bytes: capacity,
                free_bytes: capacity,
                objects: 0,
                last_seen_unix_ms: 0,
            }
        })
        .collect()
}

/// Fill of every up node, in percent: (min, max, capacity-weighted mean).
fn fills(nodes: &[NodeInfo], reserved: &HashMap<String, u64>) -> (f64, f64, f64) {
    let up = nodes.iter().filter(|x| x.status == NodeStatus::Up);
    let fill = |x: &NodeInfo| reserved.get(&x.address).copied().unwrap_or(0) as f64 * 100.0 / x.capacity_bytes as f64;
    let (min, max) = up.clone().map(fill).fold((f64::MAX, 0.0f64), |(lo, hi), f| (lo.min(f), hi.max(f)));
    let promised: u64 = up.clone().map(|x| reserved.get(&x.address).copied().unwrap_or(0)).sum();
    let capacity: u64 = up.map(|x| x.capacity_bytes).sum();
    (min, max, promised as f64 * 100.0 / capacity.max(1) as f64)
}

/// Runs the simulation.
pub fn run(spec: Spec) -> Report {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let mut nodes = pool(&spec, &mut rng);
    let site_of: HashMap<String, usize> =
        nodes.iter().enumerate().map(|(i, x)| (x.address.clone(), i % spec.sites.max(1))).collect();
    let mut reserved: HashMap<String, u64> = HashMap::new();
    let mut report = Report { shares_per_site: vec![0; spec.sites], ..Default::default() };
    let mut volumes: Vec<(Request, Vec<String>)> = Vec::new();
    for _ in 0..spec.volumes {
        let req = Request { m: spec.m, n: spec.n, size_bytes: rng.u64(64..=1024) * GIB };
        match placement::choose(&nodes, &reserved, req) {
            Ok(placed) => {
                for a in &placed {
                    *reserved.entry(a.clone()).or_default() += req.per_share();
                    report.shares_per_site[site_of[a]] += 1;
                }
                let sites: std::collections::HashSet<usize> = placed.iter().map(|a| site_of[a]).collect();
                if sites.len() < (spec.n as usize).min(spec.sites) {
                    report.volumes_site_poor += 1;
                }
                volumes.push((req, placed));
            }
            Err(_) => report.refused += 1,
        }
    }
    report.placed = volumes.len();
    (report.min_fill, report.max_fill, report.mean_fill) = fills(&nodes, &reserved);
    lose_site_and_repair(&mut nodes, &mut reserved, &site_of, &volumes, &mut report);
    report
}

/// Site 0 goes down; every share it held is planned onto another node.
fn lose_site_and_repair(
    nodes: &mut [NodeInfo],
    reserved: &mut HashMap<String, u64>,
    site_of: &HashMap<String, usize>,
    volumes: &[(Request, Vec<String>)],
    report: &mut Report,
) {
    for x in nodes.iter_mut().filter(|x| site_of[&x.address] == 0) {
        x.status = NodeStatus::Down;
    }
    for (req, placed) in volumes {
        let lost: Vec<&String> = placed.iter().filter(|a| site_of[*a] == 0).collect();
        if lost.is_empty() {
            continue;
        }
        report.volumes_hit += 1;
        report.max_lost = report.max_lost.max(lost.len());
        if lost.len() > usize::from(req.n.saturating_sub(req.m)) {
            report.volumes_lost += 1;
            continue;
        }
        let mut holders: Vec<String> = placed.iter().filter(|a| site_of[*a] != 0).cloned().collect();
        for _ in lost {
            match placement::replacement(nodes, reserved, &holders, req.per_share()) {
                Some(to) => {
                    *reserved.entry(to.clone()).or_default() += req.per_share();
                    holders.push(to);
                    report.moves += 1;
                    report.moved_bytes += req.per_share();
                }
                None => report.unplaceable += 1,
            }
        }
    }
    report.max_fill_after = fills(nodes, reserved).1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_fills_evenly_and_survives_losing_a_site() {
        let spec = Spec { nodes: 120, sites: 6, volumes: 1500, m: 3, n: 5, seed: 7 };
        let r = run(spec);
        assert_eq!((r.placed, r.refused), (1500, 0), "{r:?}");
        // Every node within 5 points of the capacity-weighted mean, whatever its size.
        assert!(r.max_fill - r.mean_fill <= 5.0 && r.mean_fill - r.min_fill <= 5.0, "{r:?}");
        assert_eq!(r.volumes_site_poor, 0, "{r:?}");
        assert_eq!(r.shares_per_site.iter().sum::<usize>(), 1500 * 5);
        // One share per site: losing a site costs each volume at most one share.
        assert!(r.volumes_hit > 0 && r.max_lost == 1 && r.volumes_lost == 0, "{r:?}");
        assert_eq!((r.moves, r.unplaceable), (r.volumes_hit, 0), "{r:?}");
        assert!(r.max_fill_after <= 100.0, "{r:?}");
    }

    #[test]
    fn fewer_sites_than_shares_still_loses_no_volume_with_enough_sites() {
        // Three sites for five shares: two sites hold two shares of a volume; losing one of
        // them costs at most N - M = 2 shares.
        let r = run(Spec { nodes: 60, sites: 3, volumes: 300, m: 3, n: 5, seed: 3 });
        assert_eq!(r.refused, 0, "{r:?}");
        assert!(r.max_lost <= 2 && r.volumes_lost == 0, "{r:?}");
    }
}
