//! A decrypted checkpoint body (JSON) into replay: never a panic; what parses round-trips, and its entries replayed again change nothing.
//! The body is `cleave_volume::fuzzing::checkpoint`, also run on stable by
//! `crates/cleave-volume/tests/fuzz_bodies.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cleave_volume::fuzzing::checkpoint(data));
