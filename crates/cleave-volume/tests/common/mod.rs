//! What the engine tests share.

use std::path::Path;
use std::sync::Arc;

use cleave_target::FaultyTarget;

/// `n` directory targets `root/t0`, `root/t1`, ..., each wrapped in fault injection, with
/// their URIs.
pub fn faulty_dir_targets(root: &Path, n: usize) -> (Vec<Arc<FaultyTarget>>, Vec<String>) {
    let uris: Vec<String> = (0..n).map(|i| format!("file://{}/t{i}", root.display())).collect();
    let targets = uris.iter().map(|u| Arc::new(FaultyTarget::new(cleave_target::create(u).unwrap()))).collect();
    (targets, uris)
}
