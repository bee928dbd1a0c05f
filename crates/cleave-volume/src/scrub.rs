//! Scrub: read every share of every chunk, verify all of them, name what is missing,
//! damaged or misplaced. Repair writes such chunks again as a new generation, which
//! restores full redundancy.

use serde::{Deserialize, Serialize};

use cleave_target::TargetError;

use crate::journal::Mapping;
use crate::volume::Volume;
use crate::VolumeError;

/// One share that is not as it should be.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShareProblem {
    pub chunk: u64,
    pub share: usize,
    pub target: String,
    pub problem: String,
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScrubReport {
    pub chunks_checked: u64,
    pub chunks_healthy: u64,
    pub problems: Vec<ShareProblem>,
    pub chunks_repaired: u64,
    /// Chunks with fewer than M good shares: their data is lost.
    pub chunks_unrecoverable: Vec<u64>,
}

pub async fn scrub(volume: &Volume, repair: bool, progress: impl Fn(u64, u64)) -> Result<ScrubReport, VolumeError> {
    let total = volume.mapped_count();
    let mut report = ScrubReport::default();
    let mut done = 0;
    // Page by page: memory stays bounded whatever the volume's size.
    for page in volume.mapped_pages() {
        for (chunk, mapping) in volume.mapped_in_page(page).await? {
            progress(done.min(total), total);
            done += 1;
            scrub_chunk(volume, repair, chunk, mapping, &mut report).await?;
        }
    }
    progress(total, total);
    Ok(report)
}

/// Reads every share of one chunk generation, names what is wrong, repairs if asked.
async fn scrub_chunk(
    volume: &Volume,
    repair: bool,
    chunk: u64,
    mapping: Mapping,
    report: &mut ScrubReport,
) -> Result<(), VolumeError> {
    let dispersal = volume.dispersal();
    let codec = volume.codec();
    let (key, id) = volume.locate(chunk, mapping.generation);
    let results = futures::future::join_all((0..dispersal.targets().len()).map(|i| dispersal.get(i, &key))).await;
    let mut problems = Vec::new();
    let mut shares = Vec::new();
    let mut holders = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        let problem =
            |p: String| ShareProblem { chunk, share: i, target: dispersal.targets()[i].name().to_string(), problem: p };
        match r {
            Ok(bytes) => {
                if let Ok(label) = cleave_split::read_label(&bytes) {
                    if label.index as usize != i {
                        problems.push(problem(format!("holds share {} instead of {i} (swapped)", label.index)));
                    }
                }
                shares.push(bytes);
                holders.push(i);
            }
            Err(TargetError::NotFound(_)) => problems.push(problem("missing".into())),
            Err(e) => problems.push(problem(format!("unreadable: {e}"))),
        }
    }
    let refs: Vec<&[u8]> = shares.iter().map(|b| b.as_ref()).collect();
    let decoded = codec.decode_verify_all(volume.keys(), &id, &refs);
    let bad = match &decoded {
        Ok(d) => &d.report.bad,
        Err(cleave_split::DecodeError::NotEnoughShares { report, .. }) => &report.bad,
    };
    for b in bad {
        let i = holders[b.position];
        if !problems.iter().any(|p| p.share == i) {
            problems.push(ShareProblem {
                chunk,
                share: i,
                target: dispersal.targets()[i].name().to_string(),
                problem: b.fault.to_string(),
            });
        }
    }
    if volume.current_generation(chunk).await? != Some(mapping.generation) {
        // Rewritten while it was read (a destage or repair since the map was taken):
        // the old generation's shares may be gone already, which says nothing.
        return Ok(());
    }
    report.chunks_checked += 1;
    match decoded {
        Ok(d) if problems.is_empty() => {
            report.chunks_healthy += 1;
            volume.set_missing(chunk, mapping.generation, Vec::new()).await?;
            drop(d);
        }
        Ok(d) => {
            volume.set_missing(chunk, mapping.generation, problems.iter().map(|p| p.share as u8).collect()).await?;
            if repair && volume.rewrite(chunk, Some(mapping.generation), d.data).await? {
                report.chunks_repaired += 1;
            }
        }
        Err(_) => report.chunks_unrecoverable.push(chunk),
    }
    report.problems.extend(problems);
    Ok(())
}
