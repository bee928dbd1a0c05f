//! Arbitrary datagrams into the auto-configuration codec: never a panic, and
//! whatever decodes re-encodes to the same bytes.
#![no_main]

use cleave_control::autoconfig::packet::{decode, encode};
use libfuzzer_sys::fuzz_target;

const SECRET: [u8; 32] = [7; 32];

fuzz_target!(|data: &[u8]| {
    let _ = decode(data, &SECRET);
    // Also reach the paths behind the MAC: sign the input as a body, then decode.
    if data.len() >= 48 {
        let mut signed = data[..data.len().min(1300)].to_vec();
        let body_len = (signed.len() - 48) as u16;
        signed[46..48].copy_from_slice(&body_len.to_be_bytes());
        signed[0] = 1;
        signed.extend_from_slice(blake3::keyed_hash(&SECRET, &signed).as_bytes());
        if let Ok(p) = decode(&signed, &SECRET) {
            assert_eq!(encode(&p, &SECRET).ok().as_deref().map(|b| b.len()), Some(signed.len()));
        }
    }
});
