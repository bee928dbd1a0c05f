//! Encode one chunk generation into N shares; decode it from any M.
//!
//! Per write: a random 32-byte key `K` and a random write id. The data key is
//! `HKDF(salt = K, ikm = volume subkey, info = chunk identity)`. The chunk is
//! cut into M pieces, each sealed with AES-256-GCM under the data key (these are
//! the data shares); Reed-Solomon adds N-M parity pieces over the ciphertext,
//! each with a GMAC. `K` is Shamir-split M-of-N into the share headers, and each
//! header carries a keyed BLAKE3 MAC. One pass of AES-GCM over the data does
//! encryption and integrity together; decode with all data shares is one pass too.

use std::collections::HashMap;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

use crate::erasure::Erasure;
use crate::format::{
    self, header_len, payload_len, read_label, table_tag, ChunkId, LabelError, ShareKind, ShareLabel, FIXED_LEN,
    FORMAT_VERSION, FRAGMENT_OFFSET, KEY_LEN, MAC_LEN, TAG_LEN, WRITE_ID_LEN,
};
use crate::keys::{fill_random, hkdf32, random, KeyError, Keyring, VolumeKey};
use crate::{shamir, MAX_CHUNK_LEN, MAX_SHARES};

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
        ShareKind::Journal => &vk.metadata,
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
            if i >= m {
                continue;
            }
            let start = (i * p).min(data.len());
            let end = ((i + 1) * p).min(data.len());
            let nonce = nonce(NONCE_DATA, i as u8);
            if end - start == p {
                // Encrypt straight from the caller's buffer: no copy pass. The tag lands
                // after the payload and is moved into the tag table.
                s.resize(h + p + TAG_LEN, 0);
                aead.seal_in_place_scatter(nonce, Aad::empty(), &mut [], &data[start..end], &mut s[h..])
                    .expect("AES-GCM seal of a bounded piece");
                tags[i].copy_from_slice(&s[h + p..]);
                s.truncate(h + p);
            } else {
                // The last piece is short: pad it with zeros.
                let payload = &mut s[h..];
                payload[..end - start].copy_from_slice(&data[start..end]);
                payload[end - start..].fill(0);
                let tag = aead
                    .seal_in_place_separate_tag(nonce, Aad::empty(), payload)
                    .expect("AES-GCM seal of a bounded piece");
                tags[i].copy_from_slice(tag.as_ref());
            }
        }
        if let Some(erasure) = &self.erasure {
            let (data_shares, parity_shares) = shares.split_at_mut(m);
            let inputs: Vec<&[u8]> = data_shares.iter().map(|s| &s[h..]).collect();
            let mut outputs: Vec<&mut [u8]> = parity_shares.iter_mut().map(|s| &mut s[h..]).collect();
            erasure.encode(&inputs, &mut outputs);
            for (j, s) in parity_shares.iter().enumerate() {
                tags[m + j].copy_from_slice(gmac(&aead, (m + j) as u8, &s[h..]).as_ref());
            }
        }
        for (i, (s, fragment)) in shares.iter_mut().zip(fragments.iter()).enumerate() {
            label.index = i as u8;
            format::write_label(s, &label, &write_id);
            s[FRAGMENT_OFFSET..FRAGMENT_OFFSET + KEY_LEN].copy_from_slice(fragment);
            for (slot, tag) in s[FIXED_LEN..h - MAC_LEN].chunks_exact_mut(TAG_LEN).zip(&tags) {
                slot.copy_from_slice(tag);
            }
            let mac = header_mac(key.integrity.expose(), s, h - MAC_LEN);
            s[h - MAC_LEN..h].copy_from_slice(&mac);
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

    /// Checks a share's label and header MAC against the expected chunk.
    fn check_header(&self, keys: &Keyring, id: &ChunkId, share: &[u8]) -> Result<ShareLabel, (Option<u8>, ShareFault)> {
        let label = read_label(share).map_err(|e| match e {
            LabelError::TooShort(found) if share.starts_with(&format::MAGIC) => {
                (None, ShareFault::Truncated { expected: header_len(self.n), found })
            }
            e => (None, ShareFault::Malformed(e)),
        })?;
        let index = Some(label.index);
        if label.id.volume != id.volume {
            return Err((index, ShareFault::OtherVolume));
        }
        if label.id.kind != id.kind || label.id.chunk != id.chunk {
            return Err((index, ShareFault::OtherChunk { found: label.id.chunk }));
        }
        if label.id.generation != id.generation {
            return Err((index, ShareFault::OtherGeneration { found: label.id.generation }));
        }
        let key = keys.get(label.key_id).ok_or((index, ShareFault::UnknownKey(label.key_id)))?;
        let mac_at = label.header_len() - MAC_LEN;
        let mac = header_mac(key.integrity.expose(), share, mac_at);
        if !constant_time_eq(&mac, &share[mac_at..mac_at + MAC_LEN]) {
            return Err((index, ShareFault::Damaged("header MAC")));
        }
        if (label.m as usize, label.n as usize) != (self.m, self.n) {
            let fault =
                ShareFault::OtherLayout { found_m: label.m, found_n: label.n, m: self.m as u8, n: self.n as u8 };
            return Err((index, fault));
        }
        if share.len() != label.share_len() {
            return Err((index, ShareFault::Truncated { expected: label.share_len(), found: share.len() }));
        }
        Ok(label)
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

    fn decode_unchecked(
        &self,
        keys: &Keyring,
        id: &ChunkId,
        shares: &[&[u8]],
        verify: Verify,
        out: &mut Vec<u8>,
    ) -> Result<DecodeReport, DecodeError> {
        let verify_all = verify == Verify::All;
        let m = self.m;
        let mut report = DecodeReport::default();
        // Well-formed shares, grouped by write id.
        #[allow(clippy::type_complexity)]
        let mut writes: HashMap<([u8; WRITE_ID_LEN], u32, u32), Vec<(usize, ShareLabel)>> = HashMap::new();
        for (pos, share) in shares.iter().enumerate() {
            match self.check_header(keys, id, share) {
                Ok(label) => writes
                    .entry((format::write_id(share), label.key_id, label.chunk_len))
                    .or_default()
                    .push((pos, label)),
                Err((index, fault)) => report.bad.push(BadShare { position: pos, index, fault }),
            }
        }
        // The write with the most distinct indices wins; a generation is written once,
        // so others are leftovers of an interrupted attempt.
        let mut groups: Vec<_> = writes.into_values().collect();
        groups.sort_by_key(|g| {
            std::cmp::Reverse(g.iter().map(|(_, l)| l.index).collect::<std::collections::HashSet<_>>().len())
        });
        let mut candidates: Vec<Option<(usize, ShareLabel)>> = vec![None; self.n];
        for (rank, group) in groups.into_iter().enumerate() {
            for (pos, label) in group {
                let index = Some(label.index);
                if rank > 0 {
                    report.bad.push(BadShare { position: pos, index, fault: ShareFault::OtherWrite });
                } else if candidates[label.index as usize].is_some() {
                    report.bad.push(BadShare { position: pos, index, fault: ShareFault::Duplicate(label.index) });
                } else {
                    candidates[label.index as usize] = Some((pos, label));
                }
            }
        }
        let present = candidates.iter().flatten().count();
        if present < m {
            return Err(DecodeError::NotEnoughShares { needed: m, good: present, report });
        }
        let first = candidates.iter().flatten().next().expect("present >= m >= 1").1;
        let chunk_len = first.chunk_len as usize;
        let p = first.payload_len as usize;
        let key = keys.get(first.key_id).expect("checked in check_header");

        // Header MACs passed, so any M fragments give the write key.
        let points: Vec<(u8, &[u8])> =
            candidates.iter().flatten().take(m).map(|(pos, l)| (l.index, format::fragment(shares[*pos]))).collect();
        let k = Zeroizing::new(shamir::combine::<KEY_LEN>(&points));
        let write_id = format::write_id(shares[candidates.iter().flatten().next().expect("non-empty").0]);
        let aead = data_key(key, &first, &write_id, &k);

        let h = header_len(self.n);
        let payload = |pos: usize| &shares[pos][h..];
        // Every good header holds the same tag table; take each share's own.
        let tag = |pos: usize, index: usize| table_tag(shares[pos], index);
        let table_pos = candidates.iter().flatten().next().expect("non-empty").0;
        // Every byte of the first m*p is overwritten below: no zeroing needed.
        out.resize(m * p, 0);
        let mut missing: Vec<usize> = Vec::new();
        for i in 0..m {
            let Some((pos, _)) = candidates[i] else {
                missing.push(i);
                continue;
            };
            let dst = &mut out[i * p..(i + 1) * p];
            if aead
                .open_separate_gather(nonce(NONCE_DATA, i as u8), Aad::empty(), payload(pos), tag(pos, i), dst)
                .is_ok()
            {
                report.used.push(i as u8);
            } else {
                report.bad.push(BadShare {
                    position: pos,
                    index: Some(i as u8),
                    fault: ShareFault::Damaged("payload tag"),
                });
                candidates[i] = None;
                missing.push(i);
            }
        }
        // Parity shares: verify as many as are needed (all of them when scrubbing).
        let mut parity: Vec<usize> = Vec::new();
        for (j, candidate) in candidates.iter_mut().enumerate().skip(m) {
            let Some((pos, _)) = *candidate else { continue };
            if parity.len() == missing.len() && !verify_all {
                report.unchecked.push(j as u8);
                continue;
            }
            let ok = constant_time_eq(gmac(&aead, j as u8, payload(pos)).as_ref(), tag(pos, j));
            if ok {
                parity.push(j);
            } else {
                report.bad.push(BadShare {
                    position: pos,
                    index: Some(j as u8),
                    fault: ShareFault::Damaged("payload tag"),
                });
                *candidate = None;
            }
        }
        let good = m - missing.len() + parity.len();
        if good < m {
            return Err(DecodeError::NotEnoughShares { needed: m, good, report });
        }
        if !missing.is_empty() {
            let erasure = self.erasure.as_ref().expect("missing data with good parity implies N > M");
            parity.truncate(missing.len());
            let used_parity = parity.clone();
            // Rebuild the missing pieces as ciphertext straight into `out`, reading the
            // surviving shares where they lie, then open them in place.
            let sources: Vec<(usize, &[u8])> = (0..self.n)
                .filter(|i| if *i < m { !missing.contains(i) } else { used_parity.contains(i) })
                .filter_map(|i| candidates[i].map(|(pos, _)| (i, payload(pos))))
                .collect();
            let mut targets: Vec<(usize, &mut [u8])> =
                out.chunks_exact_mut(p).enumerate().filter(|(i, _)| missing.contains(i)).collect();
            if !erasure.rebuild(&sources, &mut targets) {
                return Err(DecodeError::NotEnoughShares { needed: m, good: sources.len(), report });
            }
            for &i in &missing {
                let dst = &mut out[i * p..(i + 1) * p];
                let tag = table_tag(shares[table_pos], i);
                if aead.open_in_place_separate_tag(nonce(NONCE_DATA, i as u8), Aad::empty(), tag, dst).is_err() {
                    // Inputs all verified, so this means a forged header slipped through or a bug.
                    return Err(DecodeError::NotEnoughShares { needed: m, good: m - 1, report });
                }
            }
            report.used.extend(used_parity.iter().map(|&j| j as u8));
        }
        report.used.sort_unstable();
        out.truncate(chunk_len);
        Ok(report)
    }
}

/// Compares secrets (MACs, tokens) in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}
