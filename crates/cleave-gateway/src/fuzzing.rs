//! The body of the fuzz target in `crates/cleave-gateway/fuzz`: a standby log, written by a
//! peer gateway over the network and read back at a takeover. Kept here so that the stable
//! test `tests/fuzz_bodies.rs` runs the very same code over generated inputs in CI, where
//! cargo fuzz (nightly) does not run.

use cleave_mirror::Op;

use crate::standby::log;

/// The session whose key the fuzzed logs are read with.
pub const SESSION: &str = "0123456789abcdef0123456789abcdef";

/// A log of `ops` as the standby writes it for [`SESSION`] (a FLUSH writes nothing).
pub fn standby_log(ops: &[Op]) -> Vec<u8> {
    let key = log::session_key(SESSION);
    ops.iter().filter_map(|op| log::encode(op, &key)).collect::<Vec<_>>().concat()
}

/// The changes a takeover would apply from `data`, read as a log of [`SESSION`].
pub fn changes_in(data: &[u8]) -> Vec<Op> {
    log::decode(data, &log::session_key(SESSION)).0
}

/// Arbitrary bytes as a standby log: never a panic; what is read is a run of whole records
/// from the start, each of which encodes back to the bytes it was read from.
pub fn read_standby_log(data: &[u8]) {
    let key = log::session_key(SESSION);
    let (ops, whole) = log::decode(data, &key);
    let again = standby_log(&ops);
    assert!(data.starts_with(&again), "a change read back does not encode to its record");
    assert_eq!(whole, again.len() == data.len());
}
