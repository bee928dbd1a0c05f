//! Parts for unit tests of a primary: a volume of zeros, a silent event sink, a channel that
//! takes everything and remembers when, and a primary's record.

use std::sync::{Arc, Mutex};

use crate::backlog::REGION;
use crate::error::Result;
use crate::primary::Channel;
use crate::replica::{EventKind, Events, Replica};
use crate::state::{Mode, OnFailure, Record, Role};
use crate::wire::Op;

pub(crate) struct Zeros;

#[async_trait::async_trait]
impl Replica for Zeros {
    fn size(&self) -> u64 {
        8 * REGION
    }
    async fn read(&self, _: u64, len: u32) -> std::result::Result<bytes::Bytes, String> {
        Ok(vec![0; len as usize].into())
    }
    async fn apply(&self, _: Op) -> std::result::Result<(), String> {
        Ok(())
    }
}

pub(crate) struct Quiet;

impl Events for Quiet {
    fn event(&self, _: &str, _: EventKind, _: String) {}
}

/// Takes every change, and notes when each write came.
#[derive(Default)]
pub(crate) struct Taker {
    pub writes: Mutex<Vec<std::time::Instant>>,
}

#[async_trait::async_trait]
impl Channel for Taker {
    async fn send(&self, op: Op) -> Result<()> {
        if matches!(op, Op::Write { .. }) {
            self.writes.lock().unwrap().push(std::time::Instant::now());
        }
        Ok(())
    }
    async fn mark_consistent(&self, _: bool) -> Result<()> {
        Ok(())
    }
}

pub(crate) fn record(mode: Mode) -> Record {
    Record {
        volume: "v".into(),
        size: 8 * REGION,
        role: Role::Primary,
        peer: "127.0.0.1:9".into(),
        mode,
        on_failure: OnFailure::Degrade,
        generation: Record::new_generation(),
        history: Vec::new(),
        consistent: true,
        paused: false,
        discarding: None,
        sweep: None,
        origin: true,
    }
}

pub(crate) fn taker() -> Arc<Taker> {
    Arc::new(Taker::default())
}
