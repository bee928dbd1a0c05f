//! Encode one chunk generation into N shares; decode it from any M.
//!
//! Per write: a random 32-byte key `K` and a random write id. The data key is
//! `HKDF(salt = K, ikm = volume subkey, info = chunk identity)`. The chunk is
//! cut into M pieces, each sealed with AES-256-GCM under the data key (these are
//! the data shares); Reed-Solomon adds N-M parity pieces over the ciphertext,
//! each with a GMAC. `K` is Shamir-split M-of-N into the share headers, and each
//! header carries a keyed BLAKE3 MAC. One pass of AES-GCM over the data does
//! encryption and integrity together; decode with all data shares is one pass too.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

use crate::erasure::Erasure;
use crate::format::{
    self, header_len, payload_len, ChunkId, LabelError, ShareKind, ShareLabel, FIXED_LEN, FORMAT_VERSION,
    FRAGMENT_OFFSET, KEY_LEN, MAC_LEN, TAG_LEN, WRITE_ID_LEN,
};
use crate::keys::{fill_random, hkdf32, random, KeyError, Keyring, VolumeKey};
use crate::{shamir, MAX_CHUNK_LEN, MAX_SHARES};

mod decode;

/// Why a share was not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShareFault {
    #[error("not a readable share: {0}")]
    Malformed(LabelError),
    #[error("truncated or extended: {found} bytes, expected {expected}")]
    Truncated { expected: usize, found: usize },
    #[error("belongs to another volume")]
    OtherVolume,
    #[error("belongs to another chunk ({found})")]
    OtherChunk { found: u64 },
    #[error("belongs to generation {found}")]
    OtherGeneration { found: u64 },
    #[error("belongs to another write of the same generation")]
    OtherWrite,
    #[error("encoded {found_m}-of-{found_n}, expected {m}-of-{n}")]
    OtherLayout { found_m: u8, found_n: u8, m: u8, n: u8 },
    #[error("encrypted under unknown key version {0}")]
    UnknownKey(u32),
    #[error("damaged: {0} does not verify")]
    Damaged(&'static str),
    #[error("duplicate of share index {0}")]
    Duplicate(u8),
}

/// One share that was excluded, by its position in the input and its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadShare {
    /// Position in the slice given to `decode`.
    pub position: usize,
    /// The share index its header claims, when the header was readable.
    pub index: Option<u8>,
    pub fault: ShareFault,
}

/// What decoding found about the shares it was given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodeReport {
    /// Indices whose payload verified and was used.
    pub used: Vec<u8>,
    /// Indices that look well-formed but whose payload was not needed, so not checked.
    pub unchecked: Vec<u8>,
    pub bad: Vec<BadShare>,
}

impl DecodeReport {
    /// Indices of bad shares, where the header named them.
    pub fn bad_indices(&self) -> Vec<u8> {
        let mut v: Vec<u8> = self.bad.iter().filter_map(|b| b.index).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[derive(Debug)]
pub struct Decoded {
    pub data: Vec<u8>,
    pub report: DecodeReport,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("chunk length {0} out of range 1..={MAX_CHUNK_LEN}")]
    ChunkLength(usize),
    #[error(transparent)]
    Key(#[from] KeyError),
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("only {good} good shares of the {needed} needed ({} bad)", report.bad.len())]
    NotEnoughShares { needed: usize, good: usize, report: DecodeReport },
}

/// How many parity payloads decoding checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Only those it uses (data payloads are always checked, by decryption).
    Needed,
    /// Every share given, so that scrub finds damage in shares a read would skip.
    All,
}

/// Invalid M-of-N parameters.
#[derive(Debug, thiserror::Error)]
#[error("invalid layout {m}-of-{n}: need 1 <= M <= N <= {MAX_SHARES}")]
pub struct LayoutError {
    pub m: usize,
    pub n: usize,
}

/// The codec for one M-of-N layout. Cheap to clone; build once per volume.
#[derive(Clone, Debug)]
pub struct Codec {
    m: usize,
    n: usize,
    erasure: Option<Erasure>,
}

fn nonce(kind: u8, index: u8) -> Nonce {
    let mut n = [0u8; 12];
    n[0] = kind;
    n[11] = index;
    Nonce::assume_unique_for_key(n)
}
const NONCE_DATA: u8 = 0;
const NONCE_PARITY: u8 = 1;

/// MAC over a header up to (not including) the MAC itself at `mac_at`.
fn header_mac(integrity: &[u8; 32], header: &[u8], mac_at: usize) -> [u8; MAC_LEN] {
    let h = blake3::keyed_hash(integrity, &header[..mac_at]);
    h.as_bytes()[..MAC_LEN].try_into().expect("16 bytes")
}

/// The per-write AEAD key, bound to everything in the label.
fn data_key(vk: &VolumeKey, label: &ShareLabel, write_id: &[u8], k: &[u8; KEY_LEN]) -> LessSafeKey {
    let sub = match label.id.kind {
        ShareKind::Data => &vk.data,
        ShareKind::Journal | ShareKind::MapPage => &vk.metadata,
    };
    let info: [&[u8]; 9] = [
        b"cleave chunk key v1",
        &label.id.volume,
        &[label.id.kind as u8, label.m, label.n],
        &label.id.chunk.to_le_bytes(),
        &label.id.generation.to_le_bytes(),
        &label.key_id.to_le_bytes(),
        &label.chunk_len.to_le_bytes(),
        write_id,
        &[FORMAT_VERSION],
    ];
    let key = Zeroizing::new(hkdf32(k, sub.expose(), &info));
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_ref()).expect("32-byte key"))
}

fn gmac(key: &LessSafeKey, index: u8, payload: &[u8]) -> Tag {
    key.seal_in_place_separate_tag(nonce(NONCE_PARITY, index), Aad::from(payload), &mut [])
        .expect("GMAC over a bounded payload")
}

impl Codec {
    pub fn new(m: usize, n: usize) -> Result<Self, LayoutError> {
        if m == 0 || m > n || n > MAX_SHARES {
            return Err(LayoutError { m, n });
        }
        let erasure = if n > m { Some(Erasure::new(m, n).ok_or(LayoutError { m, n })?) } else { None };
        Ok(Codec { m, n, erasure })
    }

    pub fn m(&self) -> usize {
        self.m
    }
    pub fn n(&self) -> usize {
        self.n
    }

    /// Encodes `data` as generation `id.generation` of chunk `id.chunk` into N shares,
    /// in index order. Every call draws fresh randomness.
    pub fn encode(&self, key: &VolumeKey, id: &ChunkId, data: &[u8]) -> Result<Vec<Vec<u8>>, EncodeError> {
        let mut shares = Vec::new();
        self.encode_into(key, id, data, &mut shares)?;
        Ok(shares)
    }

    /// Like [`Codec::encode`], but reuses the buffers in `shares`: the hot path
    /// avoids allocating (and page-faulting) N fresh buffers per chunk.
    pub fn encode_into(
        &self,
        key: &VolumeKey,
        id: &ChunkId,
        data: &[u8],
        shares: &mut Vec<Vec<u8>>,
    ) -> Result<(), EncodeError> {
        let (m, n) = (self.m, self.n);
        if data.is_empty() || data.len() > MAX_CHUNK_LEN {
            return Err(EncodeError::ChunkLength(data.len()));
        }
        let p = payload_len(data.len(), m);
        let k = Zeroizing::new(random::<KEY_LEN>()?);
        let write_id: [u8; WRITE_ID_LEN] = random()?;
        let mut coefficients = Zeroizing::new(vec![0u8; (m - 1) * KEY_LEN]);
        fill_random(&mut coefficients)?;
        let fragments = Zeroizing::new(shamir::split(&k, m, n, &coefficients));

        let mut label = ShareLabel {
            version: FORMAT_VERSION,
            id: *id,
            index: 0,
            m: m as u8,
            n: n as u8,
            key_id: key.id,
            chunk_len: data.len() as u32,
            payload_len: p as u32,
        };
        let aead = data_key(key, &label, &write_id, &k);
        let h = header_len(n);
        shares.resize_with(n, Vec::new);
        shares.truncate(n);
        let mut tags = vec![[0u8; TAG_LEN]; n];
        for (i, s) in shares.iter_mut().enumerate() {
            // Every byte is overwritten below, so a reused buffer needs no zeroing.
            s.resize(h + p, 0);
            if i < m {
                let start = (i * p).min(data.len());
                let end = ((i + 1) * p).min(data.len());
                seal_piece(&aead, i, &data[start..end], s, h, &mut tags[i]);
            }
        }
        if let Some(erasure) = &self.erasure {
            add_parity(erasure, &aead, shares, m, h, &mut tags);
        }
        for (i, (s, fragment)) in shares.iter_mut().zip(fragments.iter()).enumerate() {
            label.index = i as u8;
            write_header(key, &label, &write_id, fragment, &tags, s, h);
        }
        Ok(())
    }

    /// Decodes chunk `id` from whatever shares are at hand, in any order, with any
    /// garbage among them. Data shares are always verified (decryption does it);
    /// parity shares are verified when they are used.
    pub fn decode(&self, keys: &Keyring, id: &ChunkId, shares: &[&[u8]]) -> Result<Decoded, DecodeError> {
        let mut data = Vec::new();
        let report = self.decode_into(keys, id, shares, Verify::Needed, &mut data)?;
        Ok(Decoded { data, report })
    }

    /// Like [`Codec::decode`], but verifies every share's payload: for scrub.
    pub fn decode_verify_all(&self, keys: &Keyring, id: &ChunkId, shares: &[&[u8]]) -> Result<Decoded, DecodeError> {
        let mut data = Vec::new();
        let report = self.decode_into(keys, id, shares, Verify::All, &mut data)?;
        Ok(Decoded { data, report })
    }

    /// Decodes into `out`, reusing its allocation; on success `out` holds exactly the chunk.
    /// On error `out` is left empty, so unauthenticated bytes never look like data.
    pub fn decode_into(
        &self,
        keys: &Keyring,
        id: &ChunkId,
        shares: &[&[u8]],
        verify: Verify,
        out: &mut Vec<u8>,
    ) -> Result<DecodeReport, DecodeError> {
        let result = self.decode_unchecked(keys, id, shares, verify, out);
        if result.is_err() {
            out.clear();
        }
        result
    }
}

/// Seals data piece `i` (`piece`, at most a payload long) into the payload of share `s`,
/// and its tag into `tag`.
fn seal_piece(aead: &LessSafeKey, i: usize, piece: &[u8], s: &mut Vec<u8>, h: usize, tag: &mut [u8; TAG_LEN]) {
    let p = s.len() - h;
    let nonce = nonce(NONCE_DATA, i as u8);
    if piece.len() == p {
        // Encrypt straight from the caller's buffer: no copy pass. The tag lands
        // after the payload and is moved into the tag table.
        s.resize(h + p + TAG_LEN, 0);
        aead.seal_in_place_scatter(nonce, Aad::empty(), &mut [], piece, &mut s[h..])
            .expect("AES-GCM seal of a bounded piece");
        tag.copy_from_slice(&s[h + p..]);
        s.truncate(h + p);
    } else {
        // The last piece is short: pad it with zeros.
        let payload = &mut s[h..];
        payload[..piece.len()].copy_from_slice(piece);
        payload[piece.len()..].fill(0);
        let sealed =
            aead.seal_in_place_separate_tag(nonce, Aad::empty(), payload).expect("AES-GCM seal of a bounded piece");
        tag.copy_from_slice(sealed.as_ref());
    }
}

/// Computes the parity shares over the sealed data shares, each with its GMAC.
fn add_parity(
    erasure: &Erasure,
    aead: &LessSafeKey,
    shares: &mut [Vec<u8>],
    m: usize,
    h: usize,
    tags: &mut [[u8; TAG_LEN]],
) {
    let (data_shares, parity_shares) = shares.split_at_mut(m);
    let inputs: Vec<&[u8]> = data_shares.iter().map(|s| &s[h..]).collect();
    let mut outputs: Vec<&mut [u8]> = parity_shares.iter_mut().map(|s| &mut s[h..]).collect();
    erasure.encode(&inputs, &mut outputs);
    for (j, s) in parity_shares.iter().enumerate() {
        tags[m + j].copy_from_slice(gmac(aead, (m + j) as u8, &s[h..]).as_ref());
    }
}

/// Writes a share's header: label, key fragment, tag table, and the MAC over them.
fn write_header(
    key: &VolumeKey,
    label: &ShareLabel,
    write_id: &[u8; WRITE_ID_LEN],
    fragment: &[u8],
    tags: &[[u8; TAG_LEN]],
    s: &mut [u8],
    h: usize,
) {
    format::write_label(s, label, write_id);
    s[FRAGMENT_OFFSET..FRAGMENT_OFFSET + KEY_LEN].copy_from_slice(fragment);
    for (slot, tag) in s[FIXED_LEN..h - MAC_LEN].chunks_exact_mut(TAG_LEN).zip(tags) {
        slot.copy_from_slice(tag);
    }
    let mac = header_mac(key.integrity.expose(), s, h - MAC_LEN);
    s[h - MAC_LEN..h].copy_from_slice(&mac);
}

/// Compares secrets (MACs, tokens) in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}
