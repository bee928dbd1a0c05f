//! Frames on a mirror connection. Every frame is `len u32 | kind u8 | id u64 | body`, big
//! endian, `len` counting kind, id and body. The primary sends requests; the mirror answers
//! each with a [`Kind::Reply`] of the same id, on the same connection.
//!
//! Data requests are binary (`handle u32 | offset u64 | flags u8 | data or len u32`);
//! control requests and their replies carry JSON. Nothing here panics on any input.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::WireError;

/// The largest write a request carries (one region).
pub const MAX_DATA: usize = 16 << 20;
/// The largest frame accepted: a maximal write and its header.
pub const MAX_FRAME: usize = MAX_DATA + 64;
const HEADER: usize = 4 + 1 + 8;
const FLAG_FUA: u8 = 1;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Control = 1,
    Write = 2,
    Zero = 3,
    Trim = 4,
    Flush = 5,
    Reply = 128,
}

impl Kind {
    fn parse(b: u8) -> Result<Kind, WireError> {
        Ok(match b {
            1 => Kind::Control,
            2 => Kind::Write,
            3 => Kind::Zero,
            4 => Kind::Trim,
            5 => Kind::Flush,
            128 => Kind::Reply,
            other => return Err(WireError::Malformed(format!("unknown frame kind {other}"))),
        })
    }
}

/// A change to a volume's blocks, as the mirror applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Write { offset: u64, data: Bytes, fua: bool },
    Zero { offset: u64, len: u32, fua: bool },
    Trim { offset: u64, len: u32 },
    Flush,
}

impl Op {
    /// The byte range the op touches (empty for a flush).
    pub fn range(&self) -> std::ops::Range<u64> {
        match self {
            Op::Write { offset, data, .. } => *offset..offset.saturating_add(data.len() as u64),
            Op::Zero { offset, len, .. } | Op::Trim { offset, len } => *offset..offset.saturating_add(*len as u64),
            Op::Flush => 0..0,
        }
    }

    /// Bytes the op carries over the link.
    pub fn payload(&self) -> u64 {
        match self {
            Op::Write { data, .. } => data.len() as u64,
            _ => 0,
        }
    }
}

/// One frame, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A JSON control request (see `crate::control`).
    Control { id: u64, body: Bytes },
    /// A block change for the volume attached as `handle`.
    Data { id: u64, handle: u32, op: Op },
    /// The answer to request `id`: `ok`, and a JSON body or an error message.
    Reply { id: u64, ok: bool, body: Bytes },
}

impl Frame {
    pub fn id(&self) -> u64 {
        match self {
            Frame::Control { id, .. } | Frame::Data { id, .. } | Frame::Reply { id, .. } => *id,
        }
    }

    /// The frame as bytes, length prefix included.
    pub fn encode(&self) -> Bytes {
        let mut b = self.encode_header();
        b.put_slice(self.payload());
        b.freeze()
    }

    /// Everything but a write's data, which follows it on the wire (sent without a copy).
    fn encode_header(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(HEADER + 32);
        b.put_u32(0);
        match self {
            Frame::Control { id, body } => {
                b.put_u8(Kind::Control as u8);
                b.put_u64(*id);
                b.put_slice(body);
            }
            Frame::Reply { id, ok, body } => {
                b.put_u8(Kind::Reply as u8);
                b.put_u64(*id);
                b.put_u8(u8::from(!*ok));
                b.put_slice(body);
            }
            Frame::Data { id, handle, op } => encode_data(&mut b, *id, *handle, op),
        }
        let len = (b.len() - 4 + self.payload().len()) as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        b
    }

    /// A write's data: the part of the frame after its header.
    fn payload(&self) -> &[u8] {
        match self {
            Frame::Data { op: Op::Write { data, .. }, .. } => data,
            _ => &[],
        }
    }

    /// Parses one frame without its length prefix.
    pub fn parse(mut b: Bytes) -> Result<Frame, WireError> {
        if b.len() < HEADER - 4 {
            return Err(WireError::Malformed(format!("frame of {} bytes", b.len())));
        }
        let kind = Kind::parse(b[0])?;
        let id = u64::from_be_bytes(b[1..9].try_into().expect("8 bytes"));
        let body = b.split_off(9);
        match kind {
            Kind::Control => Ok(Frame::Control { id, body }),
            Kind::Reply => {
                let (&status, rest) = body.split_first().ok_or_else(|| WireError::Malformed("empty reply".into()))?;
                let ok = match status {
                    0 => true,
                    1 => false,
                    s => return Err(WireError::Malformed(format!("reply status {s}"))),
                };
                Ok(Frame::Reply { id, ok, body: body.slice(body.len() - rest.len()..) })
            }
            _ => parse_data(kind, id, body),
        }
    }
}

fn encode_data(b: &mut BytesMut, id: u64, handle: u32, op: &Op) {
    let (kind, offset, flags) = match op {
        Op::Write { offset, fua, .. } => (Kind::Write, *offset, u8::from(*fua) * FLAG_FUA),
        Op::Zero { offset, fua, .. } => (Kind::Zero, *offset, u8::from(*fua) * FLAG_FUA),
        Op::Trim { offset, .. } => (Kind::Trim, *offset, 0),
        Op::Flush => (Kind::Flush, 0, 0),
    };
    b.put_u8(kind as u8);
    b.put_u64(id);
    b.put_u32(handle);
    b.put_u64(offset);
    b.put_u8(flags);
    match op {
        Op::Write { .. } | Op::Flush => {} // a write's data follows the header
        Op::Zero { len, .. } | Op::Trim { len, .. } => b.put_u32(*len),
    }
}

fn parse_data(kind: Kind, id: u64, body: Bytes) -> Result<Frame, WireError> {
    if body.len() < 13 {
        return Err(WireError::Malformed(format!("data request of {} bytes", body.len())));
    }
    let handle = u32::from_be_bytes(body[0..4].try_into().expect("4 bytes"));
    let offset = u64::from_be_bytes(body[4..12].try_into().expect("8 bytes"));
    let flags = body[12];
    if flags & !FLAG_FUA != 0 {
        return Err(WireError::Malformed(format!("unknown flags {flags:#x}")));
    }
    let fua = flags & FLAG_FUA != 0;
    let rest = body.slice(13..);
    let len = || -> Result<u32, WireError> {
        let b: [u8; 4] = rest[..].try_into().map_err(|_| WireError::Malformed("length field".into()))?;
        Ok(u32::from_be_bytes(b))
    };
    let op = match kind {
        Kind::Write if rest.is_empty() => return Err(WireError::Malformed("empty write".into())),
        Kind::Write => Op::Write { offset, data: rest, fua },
        Kind::Zero => Op::Zero { offset, len: len()?, fua },
        Kind::Trim => Op::Trim { offset, len: len()? },
        Kind::Flush if rest.is_empty() => Op::Flush,
        _ => return Err(WireError::Malformed(format!("bad {kind:?} request"))),
    };
    if offset.checked_add(op.range().end - op.range().start).is_none() {
        return Err(WireError::Malformed("range overflows".into()));
    }
    Ok(Frame::Data { id, handle, op })
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(WireError::Io(e)),
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(HEADER - 4..=MAX_FRAME).contains(&len) {
        return Err(WireError::Malformed(format!("frame length {len}")));
    }
    // Not zeroed first: read_buf fills the spare capacity.
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let want = len - buf.len();
        if r.read_buf(&mut (&mut buf).limit(want)).await? == 0 {
            return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Frame::parse(buf.freeze()).map(Some)
}

/// The next frame waiting to go out, for a writer gathering one flush: once the queue is
/// empty, the tasks that are ready run once (`yielded` records it) and the queue is looked
/// at again, so that what they send meanwhile shares the flush.
pub(crate) async fn next_queued<T>(rx: &mut tokio::sync::mpsc::Receiver<T>, yielded: &mut bool) -> Option<T> {
    if let Ok(next) = rx.try_recv() {
        return Some(next);
    }
    if std::mem::replace(yielded, true) {
        return None;
    }
    tokio::task::yield_now().await;
    rx.try_recv().ok()
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), WireError> {
    w.write_all(&f.encode_header()).await?;
    w.write_all(f.payload()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u32>(), proptest::collection::vec(any::<u8>(), 1..64), any::<bool>())
                .prop_map(|(o, d, fua)| Op::Write { offset: o as u64, data: d.into(), fua }),
            (any::<u32>(), any::<u32>(), any::<bool>()).prop_map(|(o, len, fua)| Op::Zero {
                offset: o as u64,
                len,
                fua
            }),
            (any::<u32>(), any::<u32>()).prop_map(|(o, len)| Op::Trim { offset: o as u64, len }),
            Just(Op::Flush),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip(id: u64, handle: u32, op in op(), ok: bool, body in proptest::collection::vec(any::<u8>(), 0..32)) {
            for f in [
                Frame::Data { id, handle, op: op.clone() },
                Frame::Reply { id, ok, body: body.clone().into() },
                Frame::Control { id, body: body.clone().into() },
            ] {
                let bytes = f.encode();
                prop_assert_eq!(u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - 4);
                prop_assert_eq!(Frame::parse(bytes.slice(4..)).unwrap(), f);
            }
        }

        #[test]
        fn any_bytes_parse_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Frame::parse(b.into());
        }
    }

    #[test]
    fn malformed_frames_are_refused() {
        for bad in [&[][..], &[9, 0, 0, 0, 0, 0, 0, 0, 1], &[2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]] {
            assert!(Frame::parse(Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
        let mut b = Frame::Data { id: 1, handle: 0, op: Op::Flush }.encode().slice(4..).to_vec();
        b[21] = 0x80; // unknown flag
        assert!(Frame::parse(b.into()).is_err());
    }
}
