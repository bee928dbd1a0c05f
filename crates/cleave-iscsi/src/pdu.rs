//! iSCSI PDUs (RFC 7143 §11): the 48-byte Basic Header Segment, additional header segments,
//! the padded data segment and the CRC32C digests. Pure functions, fuzzed; numbers are big-endian.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Length of the Basic Header Segment.
/// The "no tag" value of ITT and TTT fields.
pub const NO_TAG: u32 = 0xffff_ffff;

pub const BHS_LEN: usize = 48;
/// Length of one digest on the wire.
pub const DIGEST_LEN: usize = 4;

/// Every opcode of RFC 7143 (initiator opcodes 0x00.., target opcodes 0x20..).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    NopOut,
    ScsiCommand,
    TaskMgmtRequest,
    LoginRequest,
    TextRequest,
    DataOut,
    LogoutRequest,
    SnackRequest,
    NopIn,
    ScsiResponse,
    TaskMgmtResponse,
    LoginResponse,
    TextResponse,
    DataIn,
    LogoutResponse,
    R2t,
    AsyncMessage,
    Reject,
}

impl Opcode {
    const ALL: [(Opcode, u8); 18] = [
        (Opcode::NopOut, 0x00),
        (Opcode::ScsiCommand, 0x01),
        (Opcode::TaskMgmtRequest, 0x02),
        (Opcode::LoginRequest, 0x03),
        (Opcode::TextRequest, 0x04),
        (Opcode::DataOut, 0x05),
        (Opcode::LogoutRequest, 0x06),
        (Opcode::SnackRequest, 0x10),
        (Opcode::NopIn, 0x20),
        (Opcode::ScsiResponse, 0x21),
        (Opcode::TaskMgmtResponse, 0x22),
        (Opcode::LoginResponse, 0x23),
        (Opcode::TextResponse, 0x24),
        (Opcode::DataIn, 0x25),
        (Opcode::LogoutResponse, 0x26),
        (Opcode::R2t, 0x31),
        (Opcode::AsyncMessage, 0x32),
        (Opcode::Reject, 0x3f),
    ];

    pub fn code(self) -> u8 {
        Self::ALL.iter().find(|(o, _)| *o == self).map_or(0, |(_, c)| *c)
    }

    pub fn from_code(code: u8) -> Option<Opcode> {
        Self::ALL.iter().find(|(_, c)| *c == code).map(|(o, _)| *o)
    }
}

/// Why bytes are not a PDU.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PduError {
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    #[error("truncated PDU: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("header digest mismatch")]
    HeaderDigest,
    #[error("data digest mismatch")]
    DataDigest,
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    DataTooLong { len: usize, max: usize },
}

/// Which digests a connection negotiated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// CRC32C as iSCSI puts it on the wire (least significant byte first, RFC 7143 §13.1).
pub fn crc(parts: &[&[u8]]) -> [u8; 4] {
    parts.iter().fold(0, |c, p| crc32c::crc32c_append(c, p)).to_le_bytes()
}

fn pad(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// A PDU: the raw BHS with typed accessors, the AHS and the (unpadded) data segment.
/// The lengths in the BHS are derived from `ahs` and `data` when encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Bytes,
    pub data: Bytes,
}

/// A PDU on the wire: header (BHS, AHS, header digest), data segment, then padding and data
/// digest.
#[derive(Debug, Clone)]
pub struct Framed {
    pub head: Bytes,
    pub data: Bytes,
    pub tail: Bytes,
}

/// What the BHS says follows it; computed before reading the rest from a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lengths {
    pub ahs: usize,
    pub data: usize,
}

impl Lengths {
    /// Bytes after the BHS on the wire: AHS, header digest, padded data, data digest.
    pub fn rest(&self, d: Digests) -> usize {
        let hd = if d.header { DIGEST_LEN } else { 0 };
        let dd = if d.data && self.data > 0 { DIGEST_LEN } else { 0 };
        self.ahs + hd + self.data + pad(self.data) + dd
    }
}

/// Reads the lengths from a BHS, refusing data segments over `max_data`.
pub fn lengths(bhs: &[u8; BHS_LEN], max_data: usize) -> Result<Lengths, PduError> {
    let data = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
    if data > max_data {
        return Err(PduError::DataTooLong { len: data, max: max_data });
    }
    Ok(Lengths { ahs: bhs[4] as usize * 4, data })
}

/// Parses the bytes that follow a BHS (as sized by [`lengths`]), checking digests.
pub fn parse_rest(bhs: [u8; BHS_LEN], len: Lengths, rest: &[u8], d: Digests) -> Result<Pdu, PduError> {
    parse_owned(bhs, len, Bytes::copy_from_slice(rest), d)
}

/// The same over bytes it may keep: the AHS and data segment share them, uncopied.
pub fn parse_owned(bhs: [u8; BHS_LEN], len: Lengths, rest: Bytes, d: Digests) -> Result<Pdu, PduError> {
    let need = len.rest(d);
    if rest.len() < need {
        return Err(PduError::Truncated { need: need + BHS_LEN, have: rest.len() + BHS_LEN });
    }
    let (ahs, mut at) = (rest.slice(..len.ahs), len.ahs);
    if d.header {
        if rest[at..at + DIGEST_LEN] != crc(&[&bhs, &ahs]) {
            return Err(PduError::HeaderDigest);
        }
        at += DIGEST_LEN;
    }
    let padded = &rest[at..at + len.data + pad(len.data)];
    if d.data && len.data > 0 && rest[at + padded.len()..at + padded.len() + DIGEST_LEN] != crc(&[padded]) {
        return Err(PduError::DataDigest);
    }
    Ok(Pdu { bhs, ahs, data: rest.slice(at..at + len.data) })
}

/// Parses one whole PDU from the start of `buf`; returns it and the bytes it used.
pub fn parse(buf: &[u8], d: Digests, max_data: usize) -> Result<(Pdu, usize), PduError> {
    let bhs: [u8; BHS_LEN] = buf
        .get(..BHS_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(PduError::Truncated { need: BHS_LEN, have: buf.len() })?;
    let len = lengths(&bhs, max_data)?;
    let pdu = parse_rest(bhs, len, &buf[BHS_LEN..], d)?;
    Ok((pdu, BHS_LEN + len.rest(d)))
}

impl Pdu {
    /// An all-zero BHS with this opcode (target PDUs never set the I bit).
    pub fn new(op: Opcode) -> Pdu {
        let mut bhs = [0; BHS_LEN];
        bhs[0] = op.code();
        Pdu { bhs, ahs: Bytes::new(), data: Bytes::new() }
    }

    /// The wire bytes; the AHS is padded to whole words and the BHS lengths are filled in.
    pub fn encode(&self, d: Digests) -> Bytes {
        let f = self.framed(d);
        let mut out = BytesMut::with_capacity(f.head.len() + f.data.len() + f.tail.len());
        out.put_slice(&f.head);
        out.put_slice(&f.data);
        out.put_slice(&f.tail);
        out.freeze()
    }

    /// The wire bytes in three pieces, the data segment shared rather than copied.
    pub fn framed(&self, d: Digests) -> Framed {
        let ahs_len = self.ahs.len() + pad(self.ahs.len());
        let mut bhs = self.bhs;
        bhs[4] = (ahs_len / 4).min(255) as u8;
        let dl = (self.data.len() as u32).min(0xff_ffff).to_be_bytes();
        bhs[5..8].copy_from_slice(&dl[1..]);
        let data = self.data.slice(..self.data.len().min(0xff_ffff));
        let mut head = BytesMut::with_capacity(BHS_LEN + ahs_len + DIGEST_LEN);
        head.put_slice(&bhs);
        head.put_slice(&self.ahs[..self.ahs.len().min(255 * 4)]);
        head.put_bytes(0, (bhs[4] as usize * 4).saturating_sub(self.ahs.len()));
        if d.header {
            head.put_slice(&crc(&[&head]));
        }
        let padding = [0u8; 3];
        let padding = &padding[..pad(data.len())];
        let mut tail = BytesMut::with_capacity(padding.len() + DIGEST_LEN);
        tail.put_slice(padding);
        if d.data && !data.is_empty() {
            tail.put_slice(&crc(&[&data, padding]));
        }
        Framed { head: head.freeze(), data, tail: tail.freeze() }
    }

    /// None for opcodes RFC 7143 does not define.
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_code(self.bhs[0] & 0x3f)
    }
    /// The I bit: an immediate command, outside CmdSN ordering.
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }
    pub fn set_immediate(&mut self, v: bool) {
        self.bhs[0] = (self.bhs[0] & !0x40) | if v { 0x40 } else { 0 };
    }
    /// Byte 1: the F bit and the opcode-specific flags.
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }
    pub fn set_flags(&mut self, f: u8) {
        self.bhs[1] = f;
    }
    pub fn final_bit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }
    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes([self.bhs[at], self.bhs[at + 1], self.bhs[at + 2], self.bhs[at + 3]])
    }
    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.bhs[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn lun(&self) -> u64 {
        u64::from_be_bytes(self.bhs[8..16].try_into().unwrap_or_default())
    }
    pub fn set_lun(&mut self, v: u64) {
        self.bhs[8..16].copy_from_slice(&v.to_be_bytes());
    }
    /// Initiator Task Tag.
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
    pub fn set_itt(&mut self, v: u32) {
        self.set_u32(16, v)
    }
    /// Target Transfer Tag (NOP, Data-Out, R2T), or Expected Data Transfer Length (SCSI Command).
    pub fn field20(&self) -> u32 {
        self.u32_at(20)
    }
    /// CmdSN in initiator PDUs, StatSN in target PDUs.
    pub fn sn24(&self) -> u32 {
        self.u32_at(24)
    }
    /// ExpStatSN in initiator PDUs, ExpCmdSN in target PDUs.
    pub fn sn28(&self) -> u32 {
        self.u32_at(28)
    }
    /// The CDB of a SCSI Command (bytes 32..48).
    pub fn cdb(&self) -> &[u8] {
        &self.bhs[32..48]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc_matches_rfc_vector() {
        // RFC 7143 §B.4: 32 bytes of zeros.
        assert_eq!(crc(&[&[0u8; 32]]), [0xaa, 0x36, 0x91, 0x8a]);
    }

    #[test]
    fn every_opcode_round_trips() {
        for (op, code) in Opcode::ALL {
            assert_eq!(Opcode::from_code(code), Some(op));
            assert_eq!(op.code(), code);
        }
        assert_eq!(Opcode::from_code(0x07), None);
    }

    #[test]
    fn bad_digests_and_lengths_are_refused() {
        let mut p = Pdu::new(Opcode::NopOut);
        p.data = Bytes::from_static(b"hello");
        let d = Digests { header: true, data: true };
        let mut wire = p.encode(d).to_vec();
        let back = parse(&wire, d, 8192).unwrap().0;
        assert_eq!((back.opcode(), &back.data[..], back.bhs[7]), (Some(Opcode::NopOut), &b"hello"[..], 5));
        assert_eq!(parse(&wire, d, 4), Err(PduError::DataTooLong { len: 5, max: 4 }));
        assert!(matches!(parse(&wire[..60], d, 8192), Err(PduError::Truncated { .. })));
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert_eq!(parse(&wire, d, 8192), Err(PduError::DataDigest));
        wire[3] ^= 1;
        assert_eq!(parse(&wire, d, 8192), Err(PduError::HeaderDigest));
    }

    proptest! {
        #[test]
        fn encode_parse_round_trip(
            head in proptest::collection::vec(any::<u8>(), BHS_LEN),
            ahs_words in 0usize..4,
            data in proptest::collection::vec(any::<u8>(), 0..300),
            hd: bool, dd: bool,
        ) {
            let mut bhs: [u8; BHS_LEN] = head.try_into().unwrap();
            bhs[4] = ahs_words as u8;
            let dl = (data.len() as u32).to_be_bytes();
            bhs[5..8].copy_from_slice(&dl[1..]);
            let p = Pdu { bhs, ahs: vec![7u8; ahs_words * 4].into(), data: data.into() };
            let d = Digests { header: hd, data: dd };
            let wire = p.encode(d);
            prop_assert_eq!(wire.len() % 4, 0);
            let (back, used) = parse(&wire, d, 1 << 16).unwrap();
            prop_assert_eq!(used, wire.len());
            prop_assert_eq!(back, p);
        }
    }
}
