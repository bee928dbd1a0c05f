//! A decrypted journal record body (JSON) into replay's apply step: never a panic, and what parses round-trips and replays idempotently.
//! The body is `cleave_volume::fuzzing::journal_record`, also run on stable by
//! `crates/cleave-volume/tests/fuzz_bodies.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cleave_volume::fuzzing::journal_record(data));
