//! The bodies of the fuzz targets in `fuzz/`, also run over random input by a stable test.

use crate::pdu::{self, Digests};

/// Parses arbitrary bytes as a PDU under every digest setting; what parses must re-encode to
/// the same bytes (up to the padding and reserved AHS bytes the encoder normalizes).
pub fn parse_pdu(data: &[u8]) {
    for (header, data_digest) in [(false, false), (true, false), (false, true), (true, true)] {
        let d = Digests { header, data: data_digest };
        if let Ok((p, used)) = pdu::parse(data, d, 1 << 16) {
            let again = pdu::parse(&p.encode(d), d, 1 << 16).expect("an encoded PDU parses");
            assert_eq!(again.0, p);
            assert!(used <= data.len());
        }
    }
    let _ = crate::text::parse(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::text::binary(s);
        let _ = crate::text::number(s);
    }
}
