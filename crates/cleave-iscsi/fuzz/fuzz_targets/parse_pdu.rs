//! The PDU parser and text decoders on arbitrary bytes: never a panic, and what parses round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cleave_iscsi::fuzzing::parse_pdu(data));
