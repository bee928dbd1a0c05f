//! Reed-Solomon erasure coding over GF(2^8) (polynomial 0x11D), systematic.
//!
//! The generator matrix is `reed-solomon-erasure`'s (the share format depends on
//! it, so it is pinned by a test). The bulk multiply-accumulate kernels come from
//! `fec-rs`, which picks GFNI or AVX2 at run time: measured 1.5x faster than
//! `reed-solomon-erasure`'s C kernels here, and matrix codes beat FFT-based ones
//! (`reed-solomon-simd`) several times over at these N (see docs/cryptography.md).
//!
//! Work is done in cache-sized segments, and rebuilding reads the surviving
//! shards where they lie: no copies.

use fec_rs::galois::{mul_slice, mul_slice_xor};
use reed_solomon_erasure::galois_8::{self, ReedSolomon};

/// Bytes of every shard processed together; the working set of one segment
/// (N shards) stays in L2.
const SEGMENT: usize = 16 * 1024;

#[derive(Clone, Debug)]
pub struct Erasure {
    m: usize,
    /// Row r - m of the generator matrix: the coefficients of parity shard r.
    parity_rows: Vec<Vec<u8>>,
}

impl Erasure {
    /// `m` data shards plus `n - m` (at least one) parity shards.
    pub fn new(m: usize, n: usize) -> Option<Self> {
        let rs = ReedSolomon::new(m, n - m).ok()?;
        // Read the generator matrix off the encoder: unit vector e_i gives column i.
        let mut parity_rows = vec![vec![0u8; m]; n - m];
        for i in 0..m {
            let data: Vec<[u8; 1]> = (0..m).map(|k| [u8::from(k == i)]).collect();
            let mut parity = vec![[0u8; 1]; n - m];
            rs.encode_sep(&data, &mut parity).ok()?;
            for (row, p) in parity_rows.iter_mut().zip(&parity) {
                row[i] = p[0];
            }
        }
        Some(Erasure { m, parity_rows })
    }

    /// Computes the parity shards from the data shards. All slices have one length.
    pub fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) {
        let len = data[0].len();
        for start in (0..len).step_by(SEGMENT) {
            let end = (start + SEGMENT).min(len);
            for (row, out) in self.parity_rows.iter().zip(parity.iter_mut()) {
                let out = &mut out[start..end];
                mul_slice(row[0], &data[0][start..end], out);
                for (&c, src) in row.iter().zip(data).skip(1) {
                    mul_slice_xor(c, &src[start..end], out);
                }
            }
        }
    }

    /// Rebuilds data shards `targets` (index, output) from exactly M surviving shards
    /// `sources` (index, bytes), indices distinct. Returns false if the sources are not M
    /// distinct indices (a bug in the caller, never a data error).
    pub fn rebuild(&self, sources: &[(usize, &[u8])], targets: &mut [(usize, &mut [u8])]) -> bool {
        let m = self.m;
        if sources.len() != m {
            return false;
        }
        // Rows of the generator matrix for the sources; invert to map sources to data.
        let mut a: Vec<Vec<u8>> = sources
            .iter()
            .map(
                |&(r, _)| {
                    if r < m {
                        (0..m).map(|k| u8::from(k == r)).collect()
                    } else {
                        self.parity_rows[r - m].clone()
                    }
                },
            )
            .collect();
        let Some(inverse) = invert(&mut a) else { return false };
        let len = sources[0].1.len();
        for start in (0..len).step_by(SEGMENT) {
            let end = (start + SEGMENT).min(len);
            for (i, out) in targets.iter_mut() {
                let out = &mut out[start..end];
                for (k, (_, src)) in sources.iter().enumerate() {
                    let c = inverse[*i][k];
                    if k == 0 {
                        mul_slice(c, &src[start..end], out);
                    } else {
                        mul_slice_xor(c, &src[start..end], out);
                    }
                }
            }
        }
        true
    }
}

/// Inverse of a square matrix over GF(2^8) by Gauss-Jordan elimination; None if singular.
fn invert(a: &mut [Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    let n = a.len();
    let mut inv: Vec<Vec<u8>> = (0..n).map(|r| (0..n).map(|c| u8::from(r == c)).collect()).collect();
    for col in 0..n {
        let pivot = (col..n).find(|&r| a[r][col] != 0)?;
        a.swap(col, pivot);
        inv.swap(col, pivot);
        let scale = galois_8::div(1, a[col][col]);
        for c in 0..n {
            a[col][c] = galois_8::mul(a[col][c], scale);
            inv[col][c] = galois_8::mul(inv[col][c], scale);
        }
        for r in 0..n {
            let f = a[r][col];
            if r == col || f == 0 {
                continue;
            }
            for c in 0..n {
                a[r][c] ^= galois_8::mul(f, a[col][c]);
                inv[r][c] ^= galois_8::mul(f, inv[col][c]);
            }
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_agree_with_the_reference_field() {
        let input: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for c in 0..=255u8 {
            let mut out = vec![0xAAu8; input.len()];
            mul_slice(c, &input, &mut out);
            let want: Vec<u8> = input.iter().map(|&x| galois_8::mul(c, x)).collect();
            assert_eq!(out, want, "mul by {c}");
            mul_slice_xor(c, &input, &mut out);
            assert!(out.iter().all(|&b| b == 0), "xor by {c}");
        }
    }

    #[test]
    fn parity_matches_reed_solomon_erasure() {
        // The share format is defined by this generator matrix.
        let (m, n, len) = (6, 10, 40_000);
        let data: Vec<Vec<u8>> = (0..m).map(|i| (0..len).map(|b| (b * 31 + i * 5) as u8).collect()).collect();
        let mut want = vec![vec![0u8; len]; n - m];
        ReedSolomon::new(m, n - m).unwrap().encode_sep(&data, &mut want).unwrap();
        let mut got = vec![vec![0u8; len]; n - m];
        let ins: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let mut outs: Vec<&mut [u8]> = got.iter_mut().map(|p| p.as_mut_slice()).collect();
        Erasure::new(m, n).unwrap().encode(&ins, &mut outs);
        assert_eq!(got, want);
    }

    #[test]
    fn rebuilds_every_loss_pattern() {
        for (m, n) in [(1, 2), (2, 3), (3, 5), (4, 9)] {
            let e = Erasure::new(m, n).unwrap();
            let len = SEGMENT + 77;
            let data: Vec<Vec<u8>> = (0..m).map(|i| (0..len).map(|b| (b * 7 + i * 13) as u8).collect()).collect();
            let mut parity = vec![vec![0u8; len]; n - m];
            {
                let ins: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
                let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(|p| p.as_mut_slice()).collect();
                e.encode(&ins, &mut outs);
            }
            let all: Vec<&[u8]> = data.iter().chain(&parity).map(|s| s.as_slice()).collect();
            for mask in 0u32..1 << n {
                if mask.count_ones() as usize != m {
                    continue;
                }
                let sources: Vec<(usize, &[u8])> =
                    (0..n).filter(|i| mask & (1 << i) != 0).map(|i| (i, all[i])).collect();
                let lost: Vec<usize> = (0..m).filter(|i| mask & (1 << i) == 0).collect();
                let mut bufs = vec![vec![0u8; len]; lost.len()];
                let mut targets: Vec<(usize, &mut [u8])> =
                    lost.iter().copied().zip(bufs.iter_mut().map(|b| b.as_mut_slice())).collect();
                assert!(e.rebuild(&sources, &mut targets));
                for (i, b) in lost.iter().zip(&bufs) {
                    assert_eq!(b, &data[*i], "{m}-of-{n} mask {mask:b}");
                }
            }
        }
    }
}
