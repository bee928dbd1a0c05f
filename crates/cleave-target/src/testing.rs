//! The conformance suite every backend passes: the `Target` contract, spelled out. Behind the
//! `testing` feature, so each backend's tests (here, S3, storage nodes) run this one copy.

use crate::{DynTarget, TargetError};
use bytes::Bytes;

/// Runs the whole contract against `t`, which must be empty; panics on the first breach.
/// It leaves 108 objects behind.
pub async fn conformance(t: DynTarget) {
    conformance_without_racing_creates(t.clone()).await;
    racing_creates(&t).await;
}

/// Every clause but one: concurrent create-only puts of one key, exactly one winning. For
/// servers that check `If-None-Match` before the write rather than atomically with it
/// (s3s-fs), which are fit for benchmarks but not to hold shares.
pub async fn conformance_without_racing_creates(t: DynTarget) {
    t.health().await.unwrap();
    assert!(t.list("").await.unwrap().is_empty(), "{}: the target must start empty", t.name());
    objects(&t).await;
    missing_and_ranges(&t).await;
    list_and_delete(&t).await;
    invalid_keys(&t).await;
    many_puts(&t).await;
    t.health().await.unwrap();
}

/// Create-only puts and whole gets, of small, empty and larger binary objects.
async fn objects(t: &DynTarget) {
    // Round trip, and create-only: a second put fails and the first content stays.
    t.put("vol/chunks/1/a", Bytes::from_static(b"hello share")).await.unwrap();
    assert_eq!(&t.get("vol/chunks/1/a").await.unwrap()[..], b"hello share");
    let err = t.put("vol/chunks/1/a", Bytes::from_static(b"other")).await.unwrap_err();
    assert!(err.is_already_exists(), "{err}");
    assert!(err.to_string().contains("vol/chunks/1/a"), "the error names the key: {err}");
    assert_eq!(&t.get("vol/chunks/1/a").await.unwrap()[..], b"hello share");

    // Empty and larger binary objects.
    t.put("vol/empty", Bytes::new()).await.unwrap();
    assert!(t.get("vol/empty").await.unwrap().is_empty());
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    t.put("vol/big", Bytes::from(big.clone())).await.unwrap();
    assert_eq!(t.get("vol/big").await.unwrap(), big);
    assert_eq!(t.get_range("vol/big", 1000..70_000).await.unwrap(), big[1000..70_000]);
}

/// Missing keys, and ranges of a present one.
async fn missing_and_ranges(t: &DynTarget) {
    let err = t.get("vol/chunks/1/missing").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    // Wrappers pass the inner target's errors through, naming the inner target.
    let base = t.name().trim_start_matches("faulty(").trim_end_matches(')');
    assert!(err.to_string().contains(base), "the error names the target: {err}");
    assert!(t.get_range("vol/chunks/1/missing", 0..4).await.unwrap_err().is_not_found());
    assert!(t.get_range("vol/chunks/1/missing", 4..4).await.unwrap_err().is_not_found());

    // Ranges: the middle, an end past the object (clamped), a start past it (empty), empty.
    assert_eq!(&t.get_range("vol/chunks/1/a", 6..11).await.unwrap()[..], b"share");
    assert_eq!(&t.get_range("vol/chunks/1/a", 0..5).await.unwrap()[..], b"hello");
    assert_eq!(&t.get_range("vol/chunks/1/a", 6..100).await.unwrap()[..], b"share");
    assert!(t.get_range("vol/chunks/1/a", 11..20).await.unwrap().is_empty());
    assert!(t.get_range("vol/chunks/1/a", 50..60).await.unwrap().is_empty());
    assert!(t.get_range("vol/chunks/1/a", 3..3).await.unwrap().is_empty());
}

/// Listing by prefix, deleting, and writing a deleted key again.
async fn list_and_delete(t: &DynTarget) {
    // List: by prefix, sorted, prefixes need not end at a '/'.
    for k in ["vol/journal/2", "vol/journal/10", "vol/journal/1", "other/x"] {
        t.put(k, Bytes::from_static(b"j")).await.unwrap();
    }
    assert_eq!(t.list("vol/journal/").await.unwrap(), ["vol/journal/1", "vol/journal/10", "vol/journal/2"]);
    assert_eq!(t.list("vol/journal/1").await.unwrap(), ["vol/journal/1", "vol/journal/10"]);
    assert_eq!(t.list("vol/jour").await.unwrap().len(), 3);
    assert_eq!(t.list("vol/").await.unwrap().len(), 6);
    assert_eq!(t.list("oth").await.unwrap(), ["other/x"]);
    assert!(t.list("nothing/here/").await.unwrap().is_empty());
    assert!(t.list("../").await.unwrap().is_empty());
    let all = t.list("").await.unwrap();
    assert_eq!(all.len(), 7);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "sorted ascending: {all:?}");

    // Delete: then NotFound; deleting again, or a key that never existed, is Ok.
    t.delete("vol/journal/1").await.unwrap();
    t.delete("vol/journal/1").await.unwrap();
    t.delete("never/existed").await.unwrap();
    assert!(t.get("vol/journal/1").await.unwrap_err().is_not_found());
    assert_eq!(t.list("vol/journal/").await.unwrap(), ["vol/journal/10", "vol/journal/2"]);
    // A deleted key can be written again.
    t.put("vol/journal/1", Bytes::from_static(b"again")).await.unwrap();
    assert_eq!(&t.get("vol/journal/1").await.unwrap()[..], b"again");
}

/// Invalid keys, for every operation that takes one.
async fn invalid_keys(t: &DynTarget) {
    for bad in ["", "/abs", "a/../b", "..", "a/.hidden", ".tmp-x", "a//b", "a/", "a\\b", "a\0b"] {
        let invalid = |r: Result<(), TargetError>| matches!(r, Err(TargetError::InvalidKey(_)));
        assert!(invalid(t.put(bad, Bytes::new()).await), "put {bad:?}");
        assert!(invalid(t.get(bad).await.map(|_| ())), "get {bad:?}");
        assert!(invalid(t.get_range(bad, 0..1).await.map(|_| ())), "get_range {bad:?}");
        assert!(invalid(t.delete(bad).await), "delete {bad:?}");
    }
}

async fn racing_creates(t: &DynTarget) {
    // Concurrent puts of one key: exactly one wins, the rest see AlreadyExists, the winner's data stays.
    let results = futures::future::join_all((0..8u8).map(|i| {
        let t = t.clone();
        async move { t.put("race/key", Bytes::from(vec![i; 1000])).await }
    }))
    .await;
    let winners: Vec<u8> = (0..8u8).filter(|&i| results[i as usize].is_ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| e.is_already_exists()), "{results:?}");
    assert_eq!(t.get("race/key").await.unwrap(), vec![winners[0]; 1000]);
}

async fn many_puts(t: &DynTarget) {
    // Many concurrent puts of distinct keys.
    let results = futures::future::join_all((0..100).map(|i| {
        let t = t.clone();
        async move { t.put(&format!("many/{i:03}"), Bytes::from(vec![i as u8; 4096])).await }
    }))
    .await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let many = t.list("many/").await.unwrap();
    assert_eq!(many, (0..100).map(|i| format!("many/{i:03}")).collect::<Vec<_>>());
    assert_eq!(t.get("many/042").await.unwrap(), vec![42u8; 4096]);
}
