//! Every parser of the mirroring engine on arbitrary bytes: frames, control requests,
//! journal records and heartbeats must never panic, and what parses must round-trip.
#![no_main]

use cleave_mirror::{backlog, control::Control, heartbeat, wire::Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = Frame::parse(bytes::Bytes::copy_from_slice(data)) {
        assert_eq!(Frame::parse(f.encode().slice(4..)).unwrap(), f);
    }
    let _ = serde_json::from_slice::<Control>(data);
    if let Some((op, used)) = backlog::decode_record(data) {
        assert_eq!(&backlog::encode_record(&op)[..], &data[..used]);
    }
    let _ = heartbeat::parse(data);
});
