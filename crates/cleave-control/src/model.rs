//! Words the pool, the hierarchy and the auto-configuration protocol share.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Up,
    Down,
}

/// What registers by the auto-configuration protocol: a storage node, or a child
/// control server. Carried as `"kind"` in every message body; absent means node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberKind {
    #[default]
    Node,
    Control,
}

/// A pool at a glance: what a child control reports to its parent. It covers the
/// child's whole subtree: its own nodes plus the summaries of its child controls
/// that are up. Capacity and free space count nodes that are up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolSummary {
    pub nodes_up: u64,
    pub nodes_down: u64,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    #[serde(default)]
    pub controls_up: u64,
    #[serde(default)]
    pub controls_down: u64,
}

impl PoolSummary {
    pub(crate) fn add(&mut self, o: &PoolSummary) {
        self.nodes_up = self.nodes_up.saturating_add(o.nodes_up);
        self.nodes_down = self.nodes_down.saturating_add(o.nodes_down);
        self.capacity_bytes = self.capacity_bytes.saturating_add(o.capacity_bytes);
        self.free_bytes = self.free_bytes.saturating_add(o.free_bytes);
        self.controls_up = self.controls_up.saturating_add(o.controls_up);
        self.controls_down = self.controls_down.saturating_add(o.controls_down);
    }
}
