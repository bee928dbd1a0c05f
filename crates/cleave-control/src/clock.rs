//! Wall-clock times as the control plane records and numbers them.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (event and last-seen times).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Microseconds since the Unix epoch: where sequence numbers start, so that a
/// restarted sender's numbers still exceed those it used before.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}
