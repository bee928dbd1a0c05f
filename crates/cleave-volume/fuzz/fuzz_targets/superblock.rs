//! A stored superblock opened under a fixed master key: never a panic; what parses as a superblock seals, opens again (unless its configuration is invalid), and never opens under another key.
//! The body is `cleave_volume::fuzzing::superblock`, also run on stable by
//! `crates/cleave-volume/tests/fuzz_bodies.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cleave_volume::fuzzing::superblock(data));
