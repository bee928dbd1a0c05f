//! Child control servers as their parent records them: what a child reports (INFO and
//! HEARTBEAT bodies) and the parent's table of children, changed only by the listener.

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::Uri;
use serde::{Deserialize, Serialize};

use crate::autoconfig::packet::MessageType;
use crate::model::{NodeStatus, PoolSummary};

/// Longest API URL, name or site a child may report.
pub const MAX_FIELD: usize = 256;

/// The parent's table of child controls, by id.
pub(crate) type Controls = BTreeMap<String, ChildControl>;

/// An event to record: (kind, detail).
pub(crate) type Event = (&'static str, String);

/// A child control as its parent sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ChildControl {
    pub id: String,
    pub name: String,
    pub site: String,
    /// Base URL of the child's REST API, such as `http://10.0.0.5:8080`.
    pub api: String,
    pub status: NodeStatus,
    pub summary: PoolSummary,
    pub last_seen_unix_ms: u64,
}

/// INFO from a child control.
#[derive(Deserialize)]
pub(crate) struct ControlInfo {
    pub id: String,
    pub name: String,
    pub site: String,
    pub api: String,
    pub summary: PoolSummary,
}

/// HEARTBEAT from a child control.
#[derive(Deserialize)]
pub(crate) struct ControlBeat {
    pub summary: PoolSummary,
}

fn plain(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

/// Whether `api` is an `http://host:port` base URL (no user-info, path or query).
pub fn valid_api(api: &str) -> bool {
    if !plain(api, MAX_FIELD) || api.contains('@') {
        return false;
    }
    let Ok(uri) = api.parse::<Uri>() else { return false };
    uri.scheme_str() == Some("http")
        && uri.authority().is_some_and(|a| a.port_u16().is_some())
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none()
}

impl ControlInfo {
    pub(crate) fn valid(&self) -> bool {
        plain(&self.name, MAX_FIELD) && plain(&self.site, MAX_FIELD) && valid_api(&self.api)
    }
}

// Listener side: called with the pool locked, after every check has passed. Each returns
// the events to record, as (kind, detail).

pub(crate) fn on_startup(controls: &mut Controls, id: String, now: u64) {
    let c = controls.entry(id.clone()).or_insert_with(|| ChildControl {
        id,
        name: String::new(),
        site: String::new(),
        api: String::new(),
        status: NodeStatus::Down,
        summary: PoolSummary::default(),
        last_seen_unix_ms: now,
    });
    c.last_seen_unix_ms = now;
}

pub(crate) fn on_info(controls: &mut Controls, info: ControlInfo, now: u64) -> (MessageType, Vec<Event>) {
    let was_up = controls.get(&info.id).is_some_and(|c| c.status == NodeStatus::Up);
    let detail = format!("control {} ({}, {}, site {})", info.id, info.name, info.api, info.site);
    controls.insert(
        info.id.clone(),
        ChildControl {
            id: info.id,
            name: info.name,
            site: info.site,
            api: info.api,
            status: NodeStatus::Up,
            summary: info.summary,
            last_seen_unix_ms: now,
        },
    );
    let events = if was_up { Vec::new() } else { vec![("control_up", detail)] };
    (MessageType::Ack, events)
}

pub(crate) fn on_beat(controls: &mut Controls, id: &str, beat: ControlBeat, now: u64) -> MessageType {
    match controls.get_mut(id) {
        Some(c) => {
            c.last_seen_unix_ms = now;
            c.summary = beat.summary;
            // Back after being marked down: register again.
            if c.status == NodeStatus::Up {
                MessageType::Ack
            } else {
                MessageType::NeedInfo
            }
        }
        None => MessageType::NeedInfo,
    }
}

pub(crate) fn on_shutdown(controls: &mut Controls, id: &str, now: u64) -> Vec<Event> {
    let mut events = Vec::new();
    if let Some(c) = controls.get_mut(id) {
        c.last_seen_unix_ms = now;
        if c.status == NodeStatus::Up {
            c.status = NodeStatus::Down;
            events.push(("control_down", format!("control {} ({}): clean stop", c.id, c.api)));
        }
    }
    events
}

pub(crate) fn expire(controls: &mut Controls, now: u64, timeout: Duration) -> Vec<Event> {
    let limit = timeout.as_millis() as u64;
    let mut gone = Vec::new();
    for c in controls.values_mut() {
        if c.status == NodeStatus::Up && now.saturating_sub(c.last_seen_unix_ms) > limit {
            c.status = NodeStatus::Down;
            let detail = format!("control {} ({}): heartbeat timeout (none for {timeout:?})", c.id, c.api);
            gone.push(("control_down", detail));
        }
    }
    gone
}
