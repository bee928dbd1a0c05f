//! Operational parameter negotiation (RFC 7143 §13): each key the initiator offers gets an
//! answer by the key's rule (minimum, maximum, OR, AND, list choice, or declaration).

use crate::text;

/// Values a session runs with, starting from the RFC defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// The initiator's declared receive limit: our Data-In and other PDUs stay under it.
    pub max_send_data: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_outstanding_r2t: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            max_send_data: 8192,
            max_burst: 262_144,
            first_burst: 65_536,
            immediate_data: true,
            initial_r2t: true,
            header_digest: false,
            data_digest: false,
            max_outstanding_r2t: 1,
            default_time2wait: 2,
            default_time2retain: 20,
        }
    }
}

/// The target's side of the negotiation.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Declared as our MaxRecvDataSegmentLength.
    pub max_recv_data: u32,
    pub max_burst: u32,
    pub first_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_recv_data: 262_144, max_burst: 1 << 20, first_burst: 65_536 }
    }
}

/// The valid range of the length keys (RFC 7143 §13.12-14).
const LEN_RANGE: std::ops::RangeInclusive<u64> = 512..=0xff_ffff;

fn yes(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_owned()
}

/// Picks CRC32C or None from an offered list, in the initiator's order.
fn digest(v: &str) -> Option<bool> {
    v.split(',').find_map(|d| match d {
        "CRC32C" => Some(true),
        "None" => Some(false),
        _ => None,
    })
}

/// Answers one offered operational key, updating `p`. None: the key needs no answer
/// (a declaration, or a login key the caller handles).
pub fn answer(key: &str, value: &str, p: &mut Params, lim: &Limits) -> Option<String> {
    let num = || text::number(value);
    let len = || num().filter(|n| LEN_RANGE.contains(n)).map(|n| n as u32);
    let reply = match key {
        "HeaderDigest" | "DataDigest" => match digest(value) {
            Some(on) => {
                *(if key == "HeaderDigest" { &mut p.header_digest } else { &mut p.data_digest }) = on;
                if on { "CRC32C" } else { "None" }.to_owned()
            }
            None => "Reject".to_owned(),
        },
        "MaxRecvDataSegmentLength" => {
            p.max_send_data = len().unwrap_or(8192);
            return None;
        }
        "MaxBurstLength" => len().map_or("Reject".into(), |n| {
            p.max_burst = n.min(lim.max_burst);
            p.first_burst = p.first_burst.min(p.max_burst);
            p.max_burst.to_string()
        }),
        "FirstBurstLength" => len().map_or("Reject".into(), |n| {
            p.first_burst = n.min(lim.first_burst).min(p.max_burst);
            p.first_burst.to_string()
        }),
        "ImmediateData" => yes(value).map_or("Reject".into(), |b| {
            p.immediate_data = b;
            yes_no(b)
        }),
        // OR with our "No": the initiator's choice stands.
        "InitialR2T" => yes(value).map_or("Reject".into(), |b| {
            p.initial_r2t = b;
            yes_no(b)
        }),
        "MaxOutstandingR2T" => num().filter(|&n| n >= 1).map_or("Reject".into(), |_| {
            p.max_outstanding_r2t = 1;
            "1".into()
        }),
        "DefaultTime2Wait" => num().filter(|&n| n <= 3600).map_or("Reject".into(), |n| {
            p.default_time2wait = (n as u32).max(p.default_time2wait);
            p.default_time2wait.to_string()
        }),
        "DefaultTime2Retain" => num().filter(|&n| n <= 3600).map_or("Reject".into(), |n| {
            p.default_time2retain = (n as u32).min(p.default_time2retain);
            p.default_time2retain.to_string()
        }),
        // One connection per session, error recovery level 0, data in order.
        "MaxConnections" => num().filter(|&n| n >= 1).map_or("Reject".into(), |_| "1".into()),
        "ErrorRecoveryLevel" => num().map_or("Reject".into(), |_| "0".into()),
        "DataPDUInOrder" | "DataSequenceInOrder" => yes(value).map_or("Reject".into(), |_| "Yes".into()),
        "IFMarker" | "OFMarker" => "No".into(),
        "IFMarkInt" | "OFMarkInt" => "Irrelevant".into(),
        "iSCSIProtocolLevel" => num().map_or("Reject".into(), |n| n.min(1).to_string()),
        "TaskReporting" => "RFC3720".into(),
        "InitiatorName" | "InitiatorAlias" | "TargetName" | "SessionType" | "AuthMethod" => return None,
        _ => "NotUnderstood".into(),
    };
    Some(reply)
}

/// Negotiates every pair, answering in order.
pub fn answer_all(pairs: &[(String, String)], p: &mut Params, lim: &Limits) -> text::Pairs {
    pairs.iter().filter_map(|(k, v)| answer(k, v, p, lim).map(|a| (k.clone(), a))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pairs: &[(&str, &str)]) -> (Params, Vec<(String, String)>) {
        let mut p = Params::default();
        let pairs: Vec<_> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let a = answer_all(&pairs, &mut p, &Limits::default());
        (p, a)
    }

    #[test]
    fn rfc_rules() {
        let (p, a) = run(&[
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "None,CRC32C"),
            ("MaxRecvDataSegmentLength", "65536"),
            ("MaxBurstLength", "16776192"),
            ("FirstBurstLength", "262144"),
            ("ImmediateData", "No"),
            ("InitialR2T", "No"),
            ("MaxConnections", "8"),
            ("ErrorRecoveryLevel", "2"),
            ("DefaultTime2Wait", "0"),
            ("DefaultTime2Retain", "0"),
            ("MaxOutstandingR2T", "8"),
            ("DataPDUInOrder", "No"),
            ("X-com.example.Foo", "1"),
        ]);
        assert!(p.header_digest && !p.data_digest && !p.immediate_data && !p.initial_r2t);
        assert_eq!((p.max_send_data, p.max_burst, p.first_burst), (65536, 1 << 20, 65536));
        assert_eq!((p.default_time2wait, p.default_time2retain), (2, 0));
        let get = |k: &str| a.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HeaderDigest"), Some("CRC32C"));
        assert_eq!(get("DataDigest"), Some("None"));
        assert_eq!(get("MaxRecvDataSegmentLength"), None);
        assert_eq!(get("MaxConnections"), Some("1"));
        assert_eq!(get("ErrorRecoveryLevel"), Some("0"));
        assert_eq!(get("MaxOutstandingR2T"), Some("1"));
        assert_eq!(get("DataPDUInOrder"), Some("Yes"));
        assert_eq!(get("X-com.example.Foo"), Some("NotUnderstood"));
    }

    #[test]
    fn invalid_values_are_rejected() {
        let (p, a) = run(&[("HeaderDigest", "MD5"), ("MaxBurstLength", "12"), ("ImmediateData", "maybe")]);
        assert_eq!(p, Params::default());
        assert!(a.iter().all(|(_, v)| v == "Reject"));
    }
}
