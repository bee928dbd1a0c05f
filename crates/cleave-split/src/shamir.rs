//! Shamir secret sharing over GF(2^8), byte by byte, for the 32-byte per-write key.
//!
//! Share `i` holds the polynomial evaluated at `x = i + 1`; the secret is its value
//! at zero. Any M points give it by Lagrange interpolation; M-1 points are
//! consistent with every secret, so they reveal nothing about it.

use reed_solomon_erasure::galois_8::{div, mul};

/// Splits `secret` into `n` fragments, any `m` of which recover it.
/// `coefficients` must hold `(m - 1) * secret.len()` uniformly random bytes.
pub fn split<const L: usize>(secret: &[u8; L], m: usize, n: usize, coefficients: &[u8]) -> Vec<[u8; L]> {
    assert!(m >= 1 && m <= n && n <= 255, "1 <= m <= n <= 255");
    assert_eq!(coefficients.len(), (m - 1) * L, "need (m-1)*L random bytes");
    (0..n)
        .map(|i| {
            let x = (i + 1) as u8;
            let mut out = [0u8; L];
            for (b, o) in out.iter_mut().enumerate() {
                // Horner's rule from the highest coefficient down to the secret.
                let mut acc = 0u8;
                for c in (0..m - 1).rev() {
                    acc = mul(acc, x) ^ coefficients[c * L + b];
                }
                *o = mul(acc, x) ^ secret[b];
            }
            out
        })
        .collect()
}

/// Recovers the secret from fragments `(share index, fragment)`. Indices must be
/// distinct and the caller passes exactly the threshold number of them.
pub fn combine<const L: usize>(points: &[(u8, &[u8])]) -> [u8; L] {
    let xs: Vec<u8> = points.iter().map(|(i, _)| i + 1).collect();
    let mut secret = [0u8; L];
    for (j, (_, y)) in points.iter().enumerate() {
        // Lagrange basis polynomial j evaluated at zero.
        let mut basis = 1u8;
        for (k, &xk) in xs.iter().enumerate() {
            if k != j {
                basis = mul(basis, div(xk, xk ^ xs[j]));
            }
        }
        for (s, &yb) in secret.iter_mut().zip(y.iter()) {
            *s ^= mul(yb, basis);
        }
    }
    secret
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_m_recover_and_m_minus_one_do_not_determine() {
        let secret = [0x42u8; 4];
        let coeffs: Vec<u8> = (0..8u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
        let frags = split(&secret, 3, 5, &coeffs);
        for a in 0..5 {
            for b in a + 1..5 {
                for c in b + 1..5 {
                    let pts = [(a as u8, &frags[a][..]), (b as u8, &frags[b][..]), (c as u8, &frags[c][..])];
                    assert_eq!(combine::<4>(&pts), secret);
                }
            }
        }
        // Two points interpolated as if the threshold were 2 give a different value.
        let pts = [(0u8, &frags[0][..]), (1u8, &frags[1][..])];
        assert_ne!(combine::<4>(&pts), secret);
    }

    #[test]
    fn threshold_one_copies_the_secret() {
        let frags = split(&[9u8, 8, 7], 1, 4, &[]);
        assert!(frags.iter().all(|f| f == &[9, 8, 7]));
    }
}
