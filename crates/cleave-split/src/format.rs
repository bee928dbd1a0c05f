//! The share format, version 1.
//!
//! ```text
//! offset size field
//!      0    4 magic "CLVS"
//!      4    1 format version (1)
//!      5    1 kind (0 data chunk, 1 journal record, 2 map page)
//!      6    1 share index (0-based; < M is a data share, >= M a parity share)
//!      7    1 M
//!      8    1 N
//!      9    3 reserved (zero)
//!     12   16 volume uuid
//!     28    8 chunk index (LE)
//!     36    8 generation (LE)
//!     44    4 key id: the volume key version that encrypted it (LE)
//!     48    4 chunk length in bytes (LE)
//!     52    4 payload length P in bytes (LE) = ceil(chunk length / M)
//!     56   16 write id: random per encode, groups the shares of one write
//!     72   32 key fragment: this share's Shamir share of the per-write key
//!    104  16N tag table: the payload tag of every share of this write, by index
//!              (AES-256-GCM tag for data shares, GMAC for parity shares)
//! 104+16N  16 header MAC: keyed BLAKE3 of everything before it, under the
//!              volume's integrity subkey
//! 120+16N   P payload: ciphertext piece (data share) or Reed-Solomon parity
//! ```
//! Every share carries every tag, so a data piece rebuilt from parity is still
//! authenticated by its own AES-GCM tag.
//! Everything before the key fragment is the *label*: readable without any key.

use crate::{MAX_CHUNK_LEN, MAX_SHARES};

pub const MAGIC: [u8; 4] = *b"CLVS";
pub const FORMAT_VERSION: u8 = 1;
/// Length of the fixed part of the header, before the tag table.
pub const FIXED_LEN: usize = 104;
pub const MAC_LEN: usize = 16;
/// Shortest possible header (N = 1).
pub const HEADER_LEN: usize = header_len(1);

/// Header length for N shares: fixed part, tag table, MAC.
pub const fn header_len(n: usize) -> usize {
    FIXED_LEN + TAG_LEN * n + MAC_LEN
}
pub const FRAGMENT_OFFSET: usize = 72;
pub const KEY_LEN: usize = 32;
pub const WRITE_ID_LEN: usize = 16;
pub const TAG_LEN: usize = 16;

/// What a share belongs to. Journal records use the volume's metadata subkey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShareKind {
    Data = 0,
    Journal = 1,
    /// A page of a volume's chunk map (see cleave-volume's `map`).
    MapPage = 2,
}

/// The identity a decoded chunk is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkId {
    pub volume: [u8; 16],
    pub kind: ShareKind,
    pub chunk: u64,
    pub generation: u64,
}

impl ChunkId {
    pub fn data(volume: [u8; 16], chunk: u64, generation: u64) -> Self {
        ChunkId { volume, kind: ShareKind::Data, chunk, generation }
    }
}

/// The plaintext part of a share header: no secret, readable without keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareLabel {
    pub version: u8,
    pub id: ChunkId,
    pub index: u8,
    pub m: u8,
    pub n: u8,
    pub key_id: u32,
    pub chunk_len: u32,
    pub payload_len: u32,
}

impl ShareLabel {
    /// Total length a well-formed share with this label has.
    pub fn share_len(&self) -> usize {
        self.header_len() + self.payload_len as usize
    }
    pub fn header_len(&self) -> usize {
        header_len(self.n as usize)
    }
    pub fn is_parity(&self) -> bool {
        self.index >= self.m
    }
}

/// Why bytes are not a readable share label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("share is {0} bytes, shorter than its header")]
    TooShort(usize),
    #[error("not a Cleave share (bad magic)")]
    BadMagic,
    #[error("unsupported share format version {0}")]
    UnsupportedVersion(u8),
    #[error("invalid share header: {0}")]
    Invalid(&'static str),
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Payload length for a chunk of `chunk_len` bytes split M ways.
pub fn payload_len(chunk_len: usize, m: usize) -> usize {
    chunk_len.div_ceil(m)
}

/// Reads a share's label without any key. Checks only self-consistency.
pub fn read_label(share: &[u8]) -> Result<ShareLabel, LabelError> {
    if share.len() < 4 || share[..4] != MAGIC {
        return Err(if share.len() < 4 { LabelError::TooShort(share.len()) } else { LabelError::BadMagic });
    }
    if share.len() < FIXED_LEN {
        return Err(LabelError::TooShort(share.len()));
    }
    let version = share[4];
    if version != FORMAT_VERSION {
        return Err(LabelError::UnsupportedVersion(version));
    }
    let kind = match share[5] {
        0 => ShareKind::Data,
        1 => ShareKind::Journal,
        2 => ShareKind::MapPage,
        _ => return Err(LabelError::Invalid("unknown kind")),
    };
    let (index, m, n) = (share[6], share[7], share[8]);
    if m == 0 || m > n || n as usize > MAX_SHARES {
        return Err(LabelError::Invalid("M and N out of range"));
    }
    if index >= n {
        return Err(LabelError::Invalid("share index not below N"));
    }
    if share.len() < header_len(n as usize) {
        return Err(LabelError::TooShort(share.len()));
    }
    if share[9..12] != [0, 0, 0] {
        return Err(LabelError::Invalid("reserved bytes set"));
    }
    let chunk_len = le_u32(&share[48..]);
    let payload = le_u32(&share[52..]);
    if chunk_len == 0 || chunk_len as usize > MAX_CHUNK_LEN {
        return Err(LabelError::Invalid("chunk length out of range"));
    }
    if payload as usize != payload_len(chunk_len as usize, m as usize) {
        return Err(LabelError::Invalid("payload length does not match chunk length"));
    }
    Ok(ShareLabel {
        version,
        id: ChunkId {
            volume: share[12..28].try_into().expect("16 bytes"),
            kind,
            chunk: le_u64(&share[28..]),
            generation: le_u64(&share[36..]),
        },
        index,
        m,
        n,
        key_id: le_u32(&share[44..]),
        chunk_len,
        payload_len: payload,
    })
}

/// Writes the label fields of a header (everything before the key fragment).
pub(crate) fn write_label(out: &mut [u8], label: &ShareLabel, write_id: &[u8; WRITE_ID_LEN]) {
    out[..4].copy_from_slice(&MAGIC);
    out[4] = label.version;
    out[5] = label.id.kind as u8;
    out[6] = label.index;
    out[7] = label.m;
    out[8] = label.n;
    out[9..12].fill(0);
    out[12..28].copy_from_slice(&label.id.volume);
    out[28..36].copy_from_slice(&label.id.chunk.to_le_bytes());
    out[36..44].copy_from_slice(&label.id.generation.to_le_bytes());
    out[44..48].copy_from_slice(&label.key_id.to_le_bytes());
    out[48..52].copy_from_slice(&label.chunk_len.to_le_bytes());
    out[52..56].copy_from_slice(&label.payload_len.to_le_bytes());
    out[56..72].copy_from_slice(write_id);
}

pub(crate) fn write_id(share: &[u8]) -> [u8; WRITE_ID_LEN] {
    share[56..72].try_into().expect("16 bytes")
}

pub(crate) fn fragment(share: &[u8]) -> &[u8] {
    &share[FRAGMENT_OFFSET..FRAGMENT_OFFSET + KEY_LEN]
}

/// The payload tag of share `index`, from the tag table of a share's header.
pub(crate) fn table_tag(share: &[u8], index: usize) -> &[u8] {
    &share[FIXED_LEN + TAG_LEN * index..FIXED_LEN + TAG_LEN * (index + 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_rejects_garbage() {
        assert_eq!(read_label(b"xy"), Err(LabelError::TooShort(2)));
        assert_eq!(read_label(&[0u8; 200]), Err(LabelError::BadMagic));
        let mut h = vec![0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        assert_eq!(read_label(&h[..50]), Err(LabelError::TooShort(50)));
        assert_eq!(read_label(&h[..100]), Err(LabelError::TooShort(100)));
        h[4] = 9;
        assert_eq!(read_label(&h), Err(LabelError::UnsupportedVersion(9)));
        h[4] = 1;
        assert!(matches!(read_label(&h), Err(LabelError::Invalid(_))));
    }
}
