//! Text keys (RFC 7143 §6): `key=value` pairs, each ended by a NUL, in Login and Text PDUs.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TextError {
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("pair {0:?} has no '='")]
    NoEquals(String),
    #[error("key {0:?} is empty or longer than 63 bytes")]
    BadKey(String),
    #[error("value of {0} is longer than 8192 bytes")]
    LongValue(String),
}

/// Ordered pairs, as received or to be sent.
pub type Pairs = Vec<(String, String)>;

/// Parses a data segment of pairs. A missing final NUL is tolerated (some initiators omit it).
pub fn parse(data: &[u8]) -> Result<Pairs, TextError> {
    let s = std::str::from_utf8(data).map_err(|_| TextError::NotUtf8)?;
    let mut out = Pairs::new();
    for item in s.split('\0').filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(|| TextError::NoEquals(item.to_owned()))?;
        if k.is_empty() || k.len() > 63 {
            return Err(TextError::BadKey(k.to_owned()));
        }
        if v.len() > 8192 {
            return Err(TextError::LongValue(k.to_owned()));
        }
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

pub fn encode(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Parses a numerical value: decimal, or hex with 0x (RFC 7143 §6.1).
pub fn number(v: &str) -> Option<u64> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Parses a binary value in hex (0x) or base64 (0b) form, as CHAP uses.
pub fn binary(v: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        let h = if h.len() % 2 == 1 { format!("0{h}") } else { h.to_owned() };
        return hex::decode(h).ok();
    }
    let b = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B"))?;
    base64::engine::general_purpose::STANDARD.decode(b).ok()
}

pub fn hex(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_and_errors() {
        let p = vec![("A".to_owned(), "1".to_owned()), ("B".to_owned(), "x=y".to_owned())];
        assert_eq!(parse(&encode(&p)).unwrap(), p);
        assert_eq!(parse(b"A=1").unwrap(), vec![("A".to_owned(), "1".to_owned())]);
        assert!(matches!(parse(b"A\0"), Err(TextError::NoEquals(_))));
        assert!(matches!(parse(b"=1\0"), Err(TextError::BadKey(_))));
        assert!(matches!(parse(&[0xff, b'=', 0]), Err(TextError::NotUtf8)));
    }

    #[test]
    fn numbers_and_binaries() {
        assert_eq!(number("8192"), Some(8192));
        assert_eq!(number("0x10"), Some(16));
        assert_eq!(number("x"), None);
        assert_eq!(binary("0x0aFF"), Some(vec![10, 255]));
        assert_eq!(binary("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(binary("0x0g"), None);
        assert_eq!(binary("12"), None);
        assert_eq!(hex(&[1, 0xab]), "0x01ab");
    }
}
