//! Decoding: the shares of one write picked out of whatever came back, its key recombined,
//! the data pieces opened, parity verified as far as needed, and missing pieces rebuilt.

use std::collections::{HashMap, HashSet};

use aws_lc_rs::aead::{Aad, LessSafeKey};
use zeroize::Zeroizing;

use super::{
    constant_time_eq, data_key, gmac, header_mac, nonce, BadShare, Codec, DecodeError, DecodeReport, ShareFault,
    Verify, NONCE_DATA,
};
use crate::format::{self, header_len, read_label, table_tag, ChunkId, LabelError, ShareLabel, KEY_LEN, MAC_LEN};
use crate::keys::Keyring;
use crate::shamir;

/// A share of the chosen write: where it is among the inputs, and its checked label.
#[derive(Clone, Copy)]
struct Candidate {
    pos: usize,
    label: ShareLabel,
}

/// The chosen write's shares, being opened.
struct Opening<'a> {
    shares: &'a [&'a [u8]],
    /// By share index; None: absent, or found bad.
    candidates: Vec<Option<Candidate>>,
    aead: LessSafeKey,
    /// Header length; payload length of each share.
    h: usize,
    p: usize,
    /// A share whose tag table is used for rebuilt pieces: every good header holds the same.
    table_pos: usize,
}

impl Opening<'_> {
    fn payload(&self, pos: usize) -> &[u8] {
        &self.shares[pos][self.h..]
    }

    /// Each share's own copy of the tag table.
    fn tag(&self, pos: usize, index: usize) -> &[u8] {
        table_tag(self.shares[pos], index)
    }

    fn fault(report: &mut DecodeReport, pos: usize, index: usize) {
        report.bad.push(BadShare {
            position: pos,
            index: Some(index as u8),
            fault: ShareFault::Damaged("payload tag"),
        });
    }

    /// Opens each data piece at hand into `out`; the indices of those missing or bad.
    fn open_data(&mut self, m: usize, out: &mut [u8], report: &mut DecodeReport) -> Vec<usize> {
        let p = self.p;
        let mut missing: Vec<usize> = Vec::new();
        for i in 0..m {
            let Some(Candidate { pos, .. }) = self.candidates[i] else {
                missing.push(i);
                continue;
            };
            let dst = &mut out[i * p..(i + 1) * p];
            let nonce = nonce(NONCE_DATA, i as u8);
            if self.aead.open_separate_gather(nonce, Aad::empty(), self.payload(pos), self.tag(pos, i), dst).is_ok() {
                report.used.push(i as u8);
            } else {
                Self::fault(report, pos, i);
                self.candidates[i] = None;
                missing.push(i);
            }
        }
        missing
    }

    /// Verifies parity shares, as many as `needed` (all of them with `verify_all`): the good ones.
    fn check_parity(&mut self, m: usize, needed: usize, verify_all: bool, report: &mut DecodeReport) -> Vec<usize> {
        let mut parity: Vec<usize> = Vec::new();
        for j in m..self.candidates.len() {
            let Some(Candidate { pos, .. }) = self.candidates[j] else { continue };
            if parity.len() == needed && !verify_all {
                report.unchecked.push(j as u8);
                continue;
            }
            if constant_time_eq(gmac(&self.aead, j as u8, self.payload(pos)).as_ref(), self.tag(pos, j)) {
                parity.push(j);
            } else {
                Self::fault(report, pos, j);
                self.candidates[j] = None;
            }
        }
        parity
    }
}

impl Codec {
    /// Checks a share's label and header MAC against the expected chunk.
    pub(super) fn check_header(
        &self,
        keys: &Keyring,
        id: &ChunkId,
        share: &[u8],
    ) -> Result<ShareLabel, (Option<u8>, ShareFault)> {
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

    pub(super) fn decode_unchecked(
        &self,
        keys: &Keyring,
        id: &ChunkId,
        shares: &[&[u8]],
        verify: Verify,
        out: &mut Vec<u8>,
    ) -> Result<DecodeReport, DecodeError> {
        let m = self.m;
        let mut report = DecodeReport::default();
        let candidates = self.pick_write(keys, id, shares, &mut report);
        let present = candidates.iter().flatten().count();
        if present < m {
            return Err(DecodeError::NotEnoughShares { needed: m, good: present, report });
        }
        let first = *candidates.iter().flatten().next().expect("present >= m >= 1");
        let chunk_len = first.label.chunk_len as usize;
        let aead = write_key(keys, shares, &candidates, first, m);
        let p = first.label.payload_len as usize;
        let mut o = Opening { shares, candidates, aead, h: header_len(self.n), p, table_pos: first.pos };
        // Every byte of the first m*p is overwritten below: no zeroing needed.
        out.resize(m * p, 0);
        let missing = o.open_data(m, out, &mut report);
        let parity = o.check_parity(m, missing.len(), verify == Verify::All, &mut report);
        let good = m - missing.len() + parity.len();
        if good < m {
            return Err(DecodeError::NotEnoughShares { needed: m, good, report });
        }
        if !missing.is_empty() {
            self.rebuild(&o, &missing, parity, out, &mut report)?;
        }
        report.used.sort_unstable();
        out.truncate(chunk_len);
        Ok(report)
    }

    /// The well-formed shares of the write with the most distinct indices, by index; the
    /// others go to `report`. A generation is written once, so other writes are leftovers
    /// of an interrupted attempt.
    fn pick_write(
        &self,
        keys: &Keyring,
        id: &ChunkId,
        shares: &[&[u8]],
        report: &mut DecodeReport,
    ) -> Vec<Option<Candidate>> {
        // Grouped by (write id, key id, chunk length).
        let mut writes: HashMap<_, Vec<Candidate>> = HashMap::new();
        for (pos, share) in shares.iter().enumerate() {
            match self.check_header(keys, id, share) {
                Ok(label) => writes
                    .entry((format::write_id(share), label.key_id, label.chunk_len))
                    .or_default()
                    .push(Candidate { pos, label }),
                Err((index, fault)) => report.bad.push(BadShare { position: pos, index, fault }),
            }
        }
        let mut groups: Vec<_> = writes.into_values().collect();
        groups.sort_by_key(|g| std::cmp::Reverse(g.iter().map(|c| c.label.index).collect::<HashSet<_>>().len()));
        let mut candidates: Vec<Option<Candidate>> = vec![None; self.n];
        for (rank, group) in groups.into_iter().enumerate() {
            for c in group {
                let (position, index) = (c.pos, Some(c.label.index));
                let slot = &mut candidates[c.label.index as usize];
                if rank > 0 {
                    report.bad.push(BadShare { position, index, fault: ShareFault::OtherWrite });
                } else if slot.is_some() {
                    report.bad.push(BadShare { position, index, fault: ShareFault::Duplicate(c.label.index) });
                } else {
                    *slot = Some(c);
                }
            }
        }
        candidates
    }

    /// Rebuilds the missing data pieces as ciphertext straight into `out`, reading the
    /// surviving shares where they lie, then opens them in place.
    fn rebuild(
        &self,
        o: &Opening<'_>,
        missing: &[usize],
        mut parity: Vec<usize>,
        out: &mut [u8],
        report: &mut DecodeReport,
    ) -> Result<(), DecodeError> {
        let (m, p) = (self.m, o.p);
        let erasure = self.erasure.as_ref().expect("missing data with good parity implies N > M");
        parity.truncate(missing.len());
        let sources: Vec<(usize, &[u8])> = (0..self.n)
            .filter(|i| if *i < m { !missing.contains(i) } else { parity.contains(i) })
            .filter_map(|i| o.candidates[i].map(|c| (i, o.payload(c.pos))))
            .collect();
        let mut targets: Vec<(usize, &mut [u8])> =
            out.chunks_exact_mut(p).enumerate().filter(|(i, _)| missing.contains(i)).collect();
        if !erasure.rebuild(&sources, &mut targets) {
            let good = sources.len();
            return Err(DecodeError::NotEnoughShares { needed: m, good, report: std::mem::take(report) });
        }
        for &i in missing {
            let dst = &mut out[i * p..(i + 1) * p];
            let tag = table_tag(o.shares[o.table_pos], i);
            if o.aead.open_in_place_separate_tag(nonce(NONCE_DATA, i as u8), Aad::empty(), tag, dst).is_err() {
                // Inputs all verified, so this means a forged header slipped through or a bug.
                return Err(DecodeError::NotEnoughShares { needed: m, good: m - 1, report: std::mem::take(report) });
            }
        }
        report.used.extend(parity.iter().map(|&j| j as u8));
        Ok(())
    }
}

/// The write's AEAD key: header MACs passed, so any M fragments give the write key.
fn write_key(
    keys: &Keyring,
    shares: &[&[u8]],
    candidates: &[Option<Candidate>],
    first: Candidate,
    m: usize,
) -> LessSafeKey {
    let key = keys.get(first.label.key_id).expect("checked in check_header");
    let points: Vec<(u8, &[u8])> =
        candidates.iter().flatten().take(m).map(|c| (c.label.index, format::fragment(shares[c.pos]))).collect();
    let k = Zeroizing::new(shamir::combine::<KEY_LEN>(&points));
    let write_id = format::write_id(shares[first.pos]);
    data_key(key, &first.label, &write_id, &k)
}
