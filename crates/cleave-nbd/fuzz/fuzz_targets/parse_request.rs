//! Every pure parser on arbitrary bytes: must never panic, and encoders must round-trip.
#![no_main]

use cleave_nbd::proto::{self, ExportLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(b) = data.first_chunk::<{ proto::REQUEST_LEN }>() {
        if let Ok(req) = proto::parse_request(b) {
            assert_eq!(&proto::encode_request(&req), b);
            let size = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[0] % 64);
            let lim = ExportLimits { size, read_only: data[1] & 1 == 1, max_request: 1 << (data[2] % 32) };
            if proto::check_request(&req, &lim).is_ok() && req.command != proto::Command::Flush {
                // Anything we accept must be in bounds.
                assert!(req.command == proto::Command::Disc || req.offset + req.len as u64 <= size);
            }
        }
    }
    if let Some(b) = data.first_chunk::<{ proto::OPTION_HEADER_LEN }>() {
        if let Ok(h) = proto::parse_option_header(b) {
            assert_eq!(&proto::encode_option(h.option, &[])[..12], &b[..12]);
        }
    }
    if let Some(b) = data.first_chunk::<4>() {
        let _ = proto::parse_client_flags(b);
    }
    if let Some(b) = data.first_chunk::<{ proto::SIMPLE_REPLY_LEN }>() {
        let _ = proto::parse_simple_reply(b);
    }
    if let Ok(req) = proto::parse_info_request(data) {
        assert_eq!(proto::encode_info_request(&req.name, &req.infos), data);
    }
    if let Some((size, flags)) = proto::parse_info_export(data) {
        assert_eq!(proto::info_export(size, flags).as_slice(), data);
    }
    if let Some(b) = data.first_chunk::<{ proto::GREETING_LEN }>() {
        if let Ok(flags) = proto::parse_greeting(b) {
            assert_eq!(u16::from_be_bytes([b[16], b[17]]), flags);
        }
    }
    if let Ok(name) = proto::parse_export_name(data) {
        assert_eq!(name.as_bytes(), data);
    }
});
