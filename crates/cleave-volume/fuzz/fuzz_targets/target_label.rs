//! A stored target label checked against a fixed volume key: never a panic, and a label verifies exactly when it is the one made for that volume and index.
//! The body is `cleave_volume::fuzzing::target_label`, also run on stable by
//! `crates/cleave-volume/tests/fuzz_bodies.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cleave_volume::fuzzing::target_label(data));
