use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use cleave_split::erasure::Erasure;
use std::time::Instant;
fn t(name: &str, bytes: usize, mut f: impl FnMut()) {
    for _ in 0..200 { f(); }
    let mut best = 0f64;
    for _ in 0..5 {
        let s = Instant::now();
        for _ in 0..1000 { f(); }
        best = best.max(1000.0 * bytes as f64 / s.elapsed().as_secs_f64() / 1e9);
    }
    println!("{name}: {best:.2} GB/s ({:.1} us/MiB)", 1048576.0 / best / 1e3);
}
fn main() {
    let p = 349526;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let data = vec![3u8; 1 << 20];
    let mut shares: Vec<Vec<u8>> = (0..5).map(|_| vec![1u8; p + 216]).collect();
    t("gcm seal scatter 3 pieces", 1 << 20, || {
        for i in 0..3 {
            let n = Nonce::assume_unique_for_key([i as u8; 12]);
            let src = &data[i * p..((i + 1) * p).min(data.len())];
            let l = src.len();
            key.seal_in_place_scatter(n, Aad::empty(), &mut [], src, &mut shares[i][200..200 + l + 16]).unwrap();
        }
    });
    let e = Erasure::new(3, 5).unwrap();
    t("rs encode", 1 << 20, || {
        let (d, par) = shares.split_at_mut(3);
        let ins: Vec<&[u8]> = d.iter().map(|s| &s[200..200 + p]).collect();
        let mut outs: Vec<&mut [u8]> = par.iter_mut().map(|s| &mut s[200..200 + p]).collect();
        e.encode(&ins, &mut outs);
    });
    t("gmac 2 parity", 1 << 20, || {
        for i in 3..5 {
            let n = Nonce::assume_unique_for_key([i as u8; 12]);
            std::hint::black_box(key.seal_in_place_separate_tag(n, Aad::from(&shares[i][200..200 + p]), &mut []).unwrap());
        }
    });
    t("memcpy 1MiB", 1 << 20, || {
        for i in 0..3 { let l = p.min(data.len() - i * p); shares[i][200..200 + l].copy_from_slice(&data[i * p..i * p + l]); }
    });
}
