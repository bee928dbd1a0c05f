//! A standby log as a peer gateway may have written it: reading it back never panics, and
//! what is read is whole records of the session.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cleave_gateway::fuzzing::read_standby_log(data));
