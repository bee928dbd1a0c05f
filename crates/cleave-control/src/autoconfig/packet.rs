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

    proptest! {
        #[test]
        fn any_packet_round_trips(seq in any::<u64>(), data in prop::collection::vec(any::<u8>(), 0..1300), t in 1u8..=6) {
            let mut p = packet(data);
            p.seq = seq;
            p.kind = MessageType::from_u8(t).unwrap();
            let bytes = encode(&p, &SECRET).unwrap();
            prop_assert_eq!(decode(&bytes, &SECRET).unwrap(), p);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1600)) {
            let _ = decode(&bytes, &SECRET);
        }
    }
}
