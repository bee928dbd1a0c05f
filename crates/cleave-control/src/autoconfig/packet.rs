//! The packet codec: pure, no I/O.
//!
//! ```text
//! version u8 | type u8 | sequence u64 | source IP 16 | destination IP 16 |
//! source port u16 | destination port u16 | data length u16 | data | MAC 32
//! ```
//! Big-endian. IPv4 addresses are carried IPv4-mapped. The MAC is keyed BLAKE3
//! under the cluster secret over everything before it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

pub const VERSION: u8 = 1;
pub const MAX_PACKET: usize = 1400;
const HEADER: usize = 1 + 1 + 8 + 16 + 16 + 2 + 2 + 2;
const MAC: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    Startup = 1,
    NeedInfo = 2,
    Info = 3,
    Shutdown = 4,
    Heartbeat = 5,
    Ack = 6,
}

impl MessageType {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => MessageType::Startup,
            2 => MessageType::NeedInfo,
            3 => MessageType::Info,
            4 => MessageType::Shutdown,
            5 => MessageType::Heartbeat,
            6 => MessageType::Ack,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub kind: MessageType,
    pub seq: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub data: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet too short ({0} bytes)")]
    TooShort(usize),
    #[error("packet too large ({0} bytes, limit {MAX_PACKET})")]
    Oversized(usize),
    #[error("unsupported version {0}")]
    BadVersion(u8),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("data length does not match the packet")]
    LengthMismatch,
    #[error("MAC does not verify")]
    BadMac,
}

fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn ip_from(b: &[u8]) -> IpAddr {
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes"));
    v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))
}

fn mac(secret: &[u8; 32], body: &[u8]) -> [u8; MAC] {
    *blake3::keyed_hash(secret, body).as_bytes()
}

pub fn encode(p: &Packet, secret: &[u8; 32]) -> Result<Vec<u8>, PacketError> {
    let len = HEADER + p.data.len() + MAC;
    if len > MAX_PACKET {
        return Err(PacketError::Oversized(len));
    }
    let mut out = Vec::with_capacity(len);
    out.push(VERSION);
    out.push(p.kind as u8);
    out.extend_from_slice(&p.seq.to_be_bytes());
    out.extend_from_slice(&ip16(p.src.ip()));
    out.extend_from_slice(&ip16(p.dst.ip()));
    out.extend_from_slice(&p.src.port().to_be_bytes());
    out.extend_from_slice(&p.dst.port().to_be_bytes());
    out.extend_from_slice(&(p.data.len() as u16).to_be_bytes());
    out.extend_from_slice(&p.data);
    let m = mac(secret, &out);
    out.extend_from_slice(&m);
    Ok(out)
}

pub fn decode(bytes: &[u8], secret: &[u8; 32]) -> Result<Packet, PacketError> {
    if bytes.len() > MAX_PACKET {
        return Err(PacketError::Oversized(bytes.len()));
    }
    if bytes.len() < HEADER + MAC {
        return Err(PacketError::TooShort(bytes.len()));
    }
    if bytes[0] != VERSION {
        return Err(PacketError::BadVersion(bytes[0]));
    }
    let data_len = u16::from_be_bytes([bytes[46], bytes[47]]) as usize;
    if HEADER + data_len + MAC != bytes.len() {
        return Err(PacketError::LengthMismatch);
    }
    let (body, tag) = bytes.split_at(bytes.len() - MAC);
    let want = mac(secret, body);
    if !cleave_split::constant_time_eq(&want, tag) {
        return Err(PacketError::BadMac);
    }
    let kind = MessageType::from_u8(bytes[1]).ok_or(PacketError::UnknownType(bytes[1]))?;
    let seq = u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes"));
    let src = SocketAddr::new(ip_from(&bytes[10..26]), u16::from_be_bytes([bytes[42], bytes[43]]));
    let dst = SocketAddr::new(ip_from(&bytes[26..42]), u16::from_be_bytes([bytes[44], bytes[45]]));
    Ok(Packet { kind, seq, src, dst, data: bytes[HEADER..HEADER + data_len].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: [u8; 32] = [9; 32];

    fn packet(data: Vec<u8>) -> Packet {
        Packet {
            kind: MessageType::Info,
            seq: 42,
            src: "127.0.0.1:7800".parse().unwrap(),
            dst: "[::1]:7700".parse().unwrap(),
            data,
        }
    }

    #[test]
    fn round_trip_and_rejections() {
        let p = packet(b"{\"id\":\"n1\"}".to_vec());
        let bytes = encode(&p, &SECRET).unwrap();
        assert_eq!(decode(&bytes, &SECRET).unwrap(), p);
        assert_eq!(decode(&bytes, &[8; 32]), Err(PacketError::BadMac));
        let mut flipped = bytes.clone();
        flipped[5] ^= 1;
        assert_eq!(decode(&flipped, &SECRET), Err(PacketError::BadMac));
        assert_eq!(decode(&bytes[..20], &SECRET), Err(PacketError::TooShort(20)));
        assert_eq!(decode(&vec![1u8; 1500], &SECRET), Err(PacketError::Oversized(1500)));
        assert!(encode(&packet(vec![0; 1400]), &SECRET).is_err());
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(decode(&v2, &SECRET), Err(PacketError::BadVersion(2)));
    }

    #[test]
    fn layout_is_big_endian_in_field_order() {
        let p = Packet {
            kind: MessageType::Heartbeat,
            seq: 0x0102_0304_0506_0708,
            src: "10.1.2.3:4660".parse().unwrap(),
            dst: "[2001:db8::1]:22136".parse().unwrap(),
            data: b"xyz".to_vec(),
        };
        let b = encode(&p, &SECRET).unwrap();
        assert_eq!(b.len(), 48 + 3 + 32);
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 5);
        assert_eq!(&b[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[10..26], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]);
        assert_eq!(&b[26..42], &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(&b[42..44], &[0x12, 0x34]);
        assert_eq!(&b[44..46], &[0x56, 0x78]);
        assert_eq!(&b[46..48], &[0, 3]);
        assert_eq!(&b[48..51], b"xyz");
        assert_eq!(&b[51..], blake3::keyed_hash(&SECRET, &b[..51]).as_bytes());
    }

    #[test]
    fn size_limits() {
        // The largest packet that fits exactly, and one byte more.
        let fits = packet(vec![7; MAX_PACKET - HEADER - MAC]);
        let bytes = encode(&fits, &SECRET).unwrap();
        assert_eq!(bytes.len(), MAX_PACKET);
        assert_eq!(decode(&bytes, &SECRET).unwrap(), fits);
        assert_eq!(encode(&packet(vec![7; MAX_PACKET - HEADER - MAC + 1]), &SECRET), Err(PacketError::Oversized(1401)));
        assert_eq!(decode(&[0u8; 1401], &SECRET), Err(PacketError::Oversized(1401)));
        assert_eq!(decode(&[], &SECRET), Err(PacketError::TooShort(0)));
        assert_eq!(decode(&[1u8; HEADER + MAC - 1], &SECRET), Err(PacketError::TooShort(79)));
        // The smallest valid packet: no data.
        let empty = packet(Vec::new());
        assert_eq!(decode(&encode(&empty, &SECRET).unwrap(), &SECRET).unwrap(), empty);
    }

    #[test]
    fn length_field_must_match() {
        let bytes = encode(&packet(b"abcd".to_vec()), &SECRET).unwrap();
        let mut longer = bytes.clone();
        longer[47] = 5;
        assert_eq!(decode(&longer, &SECRET), Err(PacketError::LengthMismatch));
        let mut truncated = bytes.clone();
        truncated.pop();
        assert_eq!(decode(&truncated, &SECRET), Err(PacketError::LengthMismatch));
        let mut extended = bytes;
        extended.push(0);
        assert_eq!(decode(&extended, &SECRET), Err(PacketError::LengthMismatch));
    }

    #[test]
    fn unknown_type_is_reported_only_when_authentic() {
        let mut bytes = encode(&packet(Vec::new()), &SECRET).unwrap();
        bytes[1] = 9;
        // Without a fresh MAC it is simply not authentic.
        assert_eq!(decode(&bytes, &SECRET), Err(PacketError::BadMac));
        let body = bytes.len() - MAC;
        let m = mac(&SECRET, &bytes[..body]);
        bytes[body..].copy_from_slice(&m);
        assert_eq!(decode(&bytes, &SECRET), Err(PacketError::UnknownType(9)));
        bytes[1] = 0;
        let m = mac(&SECRET, &bytes[..body]);
        bytes[body..].copy_from_slice(&m);
        assert_eq!(decode(&bytes, &SECRET), Err(PacketError::UnknownType(0)));
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_filter("IPv4-mapped addresses decode as IPv4", |(ip, _)| Ipv6Addr::from(*ip)
                    .to_ipv4_mapped()
                    .is_none())
                .prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port))),
        ]
    }

    proptest! {
        #[test]
        fn any_packet_round_trips(
            seq in any::<u64>(),
            data in prop::collection::vec(any::<u8>(), 0..=(MAX_PACKET - HEADER - MAC)),
            t in 1u8..=6,
            src in addr(),
            dst in addr(),
            secret in any::<[u8; 32]>(),
        ) {
            let p = Packet { kind: MessageType::from_u8(t).unwrap(), seq, src, dst, data };
            let bytes = encode(&p, &secret).unwrap();
            prop_assert_eq!(bytes.len(), HEADER + p.data.len() + MAC);
            prop_assert_eq!(decode(&bytes, &secret).unwrap(), p);
        }

        #[test]
        fn any_single_bit_flip_is_rejected(data in prop::collection::vec(any::<u8>(), 0..64), bit in 0usize..(8 * 200)) {
            let bytes = encode(&packet(data), &SECRET).unwrap();
            let bit = bit % (8 * bytes.len());
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&flipped, &SECRET).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1600)) {
            let _ = decode(&bytes, &SECRET);
        }
    }
}
