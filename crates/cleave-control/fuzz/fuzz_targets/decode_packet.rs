//! Arbitrary datagrams into the auto-configuration codec: never a panic, and
//! whatever decodes re-encodes to exactly the same bytes.
#![no_main]

use cleave_control::autoconfig::packet::{decode, encode};
use libfuzzer_sys::fuzz_target;

const SECRET: [u8; 32] = [7; 32];

fn check(bytes: &[u8]) {
    if let Ok(p) = decode(bytes, &SECRET) {
        assert_eq!(encode(&p, &SECRET).expect("a decoded packet encodes").as_slice(), bytes);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // Also reach the paths behind the MAC: take the input as a body, fix the
    // length field (and, when the first byte is even, the version), sign it, decode.
    if data.len() >= 48 {
        let mut signed = data[..data.len().min(1400 - 32)].to_vec();
        let body_len = (signed.len() - 48) as u16;
        signed[46..48].copy_from_slice(&body_len.to_be_bytes());
        if signed[0] % 2 == 0 {
            signed[0] = 1;
        }
        signed.extend_from_slice(blake3::keyed_hash(&SECRET, &signed).as_bytes());
        check(&signed);
    }
});
