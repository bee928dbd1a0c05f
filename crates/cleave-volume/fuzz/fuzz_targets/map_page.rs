//! A decrypted map page body (JSON): never a panic; what parses is in its page's range, in order, without zeros, and round-trips.
//! The body is `cleave_volume::fuzzing::map_page`, also run on stable by
//! `crates/cleave-volume/tests/fuzz_bodies.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cleave_volume::fuzzing::map_page(data));
