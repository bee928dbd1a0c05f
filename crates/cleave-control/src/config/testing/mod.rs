//! The conformance suite every [`ConfigStore`] passes, one function a property (the
//! `object_store` pattern), and real etcd processes to run it against ([`EtcdCluster`]).
//! Behind the `testing` feature; the functions panic on the first breach.
//!
//! A suite function takes `open`, which gives a client of one store each time it is called:
//! for etcd a new connection, for redb (one process at a time) the same handle again.

mod etcd_process;

use std::sync::{Arc, Barrier};
use std::time::Duration;

pub use self::etcd_process::EtcdCluster;
use super::{Change, ConfigError, ConfigStore, Guard, PutMode, Version};

/// Opens a client of the store under test.
pub type Open<'a> = &'a (dyn Fn() -> Arc<dyn ConfigStore> + Sync);

/// How soon a watch must report a change made through another client.
pub const WATCH_WITHIN: Duration = Duration::from_secs(1);

/// Every property, against a store that starts empty.
pub async fn conformance(open: Open<'_>) {
    round_trip(&*open());
    scan_order_and_prefix_boundaries(&*open());
    delete_reports_existence(&*open());
    conditional_writes(&*open());
    guarded_writes(&*open());
    racing_conditional_writes(open);
    racing_increments(open);
    watch_sees_other_clients(open).await;
}

/// Values come back as they went in; overwrites raise the version; bad keys are refused.
pub fn round_trip(s: &dyn ConfigStore) {
    assert_eq!(s.get("rt/missing").unwrap(), None);
    let all_bytes: Vec<u8> = (0..=255).collect();
    let large: Vec<u8> = (0..256 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    for (key, value) in [("rt/empty", &[][..]), ("rt/bytes", &all_bytes), ("rt/large", &large), ("rt/ünï", b"{}")] {
        let v = s.put(key, value).unwrap();
        let e = s.get(key).unwrap().unwrap_or_else(|| panic!("{key} is missing"));
        assert_eq!((e.key.as_str(), &e.value[..], e.version), (key, value, v), "{key}");
    }
    let v1 = s.get("rt/bytes").unwrap().unwrap().version;
    let v2 = s.put("rt/bytes", b"second").unwrap();
    assert!(v2 > v1, "versions rise: {v1} then {v2}");
    assert_eq!(s.get_value("rt/bytes").unwrap().as_deref(), Some(&b"second"[..]));
    assert!(matches!(s.put("", b"x"), Err(ConfigError::InvalidKey { .. })));
    assert!(matches!(s.get(""), Err(ConfigError::InvalidKey { .. })));
}

/// A scan returns its prefix's keys in byte order, and nothing beside: `volume/` does not
/// match `volumes`, `volume` or `volume.`.
pub fn scan_order_and_prefix_boundaries(s: &dyn ConfigStore) {
    let keys = ["sc/volume/b", "sc/volumes", "sc/volume/é", "sc/volume.", "sc/volume", "sc/volume/a/x", "sc/volume/a"];
    for (i, k) in keys.iter().enumerate() {
        s.put(k, format!("{i}").as_bytes()).unwrap();
    }
    let scanned = |p: &str| s.scan(p).unwrap().into_iter().map(|e| e.key).collect::<Vec<_>>();
    assert_eq!(scanned("sc/volume/"), ["sc/volume/a", "sc/volume/a/x", "sc/volume/b", "sc/volume/é"]);
    assert_eq!(scanned("sc/volumes"), ["sc/volumes"]);
    assert_eq!(
        scanned("sc/volume"),
        ["sc/volume", "sc/volume.", "sc/volume/a", "sc/volume/a/x", "sc/volume/b", "sc/volume/é", "sc/volumes"]
    );
    assert!(scanned("sc/volume/c").is_empty());
    let entries = s.scan("sc/volume/a").unwrap();
    assert_eq!(entries[1].value, b"5");
    assert_eq!(Some(entries[1].version), s.get("sc/volume/a/x").unwrap().map(|e| e.version));
    assert!(scanned("").len() >= keys.len());
}

/// Delete says whether the key was there.
pub fn delete_reports_existence(s: &dyn ConfigStore) {
    s.put("del/a", b"1").unwrap();
    assert!(s.delete("del/a").unwrap());
    assert!(!s.delete("del/a").unwrap());
    assert!(!s.delete("del/never").unwrap());
    assert_eq!(s.get("del/a").unwrap(), None);
}

/// Create only when absent, update and delete only at the version read.
pub fn conditional_writes(s: &dyn ConfigStore) {
    let v1 = s.put_opts("cas/k", b"1", PutMode::Create).unwrap();
    let lost = s.put_opts("cas/k", b"other", PutMode::Create).unwrap_err();
    assert!(matches!(lost, ConfigError::AlreadyExists { ref key } if key == "cas/k"), "{lost}");
    assert!(lost.is_conflict());
    let v2 = s.put_opts("cas/k", b"2", PutMode::Update(v1)).unwrap();
    assert!(v2 > v1);
    let stale = s.put_opts("cas/k", b"stale", PutMode::Update(v1)).unwrap_err();
    assert!(matches!(stale, ConfigError::Precondition { .. }), "{stale}");
    assert_eq!(s.get_value("cas/k").unwrap().as_deref(), Some(&b"2"[..]));
    assert!(matches!(s.put_opts("cas/absent", b"x", PutMode::Update(v2)), Err(ConfigError::Precondition { .. })));
    assert!(matches!(
        s.put_opts("cas/absent", b"x", PutMode::Update(Version(0))),
        Err(ConfigError::Precondition { .. })
    ));
    assert_eq!(s.get("cas/absent").unwrap(), None);
    assert!(matches!(s.delete_if("cas/k", v1), Err(ConfigError::Precondition { .. })));
    s.delete_if("cas/k", v2).unwrap();
    assert!(matches!(s.delete_if("cas/k", v2), Err(ConfigError::Precondition { .. })));
    // Gone, it can be created again.
    s.put_opts("cas/k", b"3", PutMode::Create).unwrap();
}

/// A write guarded by another key lands only while that key is at the version read: an
/// owner that lost its claim (the key rewritten, or gone with its lease) writes nothing.
pub fn guarded_writes(s: &dyn ConfigStore) {
    let claim = s.put_opts("guard/owner", b"g1", PutMode::Create).unwrap();
    let mine = Guard { key: "guard/owner".into(), version: claim };
    s.put_guarded("guard/record", b"1", &mine).unwrap();
    assert_eq!(s.get_value("guard/record").unwrap().as_deref(), Some(&b"1"[..]));
    s.delete_guarded("guard/record", &mine).unwrap();
    assert_eq!(s.get("guard/record").unwrap(), None);
    // Another claim replaces this one: nothing more lands, and what is there stays.
    s.put_guarded("guard/record", b"2", &mine).unwrap();
    let theirs = s.put("guard/owner", b"g2").unwrap();
    let lost = s.put_guarded("guard/record", b"stale", &mine).unwrap_err();
    assert!(matches!(lost, ConfigError::Precondition { ref key } if key == "guard/owner"), "{lost}");
    assert!(matches!(s.delete_guarded("guard/record", &mine), Err(ConfigError::Precondition { .. })));
    assert_eq!(s.get_value("guard/record").unwrap().as_deref(), Some(&b"2"[..]));
    // The claim gone altogether: the same.
    s.delete("guard/owner").unwrap();
    let gone = Guard { key: "guard/owner".into(), version: theirs };
    assert!(matches!(s.put_guarded("guard/record", b"x", &gone), Err(ConfigError::Precondition { .. })));
    assert!(matches!(s.put_guarded("", b"x", &gone), Err(ConfigError::InvalidKey { .. })));
}

/// Two clients race the same conditional write: exactly one wins, each time.
pub fn racing_conditional_writes(open: Open<'_>) {
    let clients = [open(), open()];
    for round in 0..20 {
        let key = format!("race/{round}");
        let outcomes = race(&clients, |s, i| s.put_opts(&key, format!("{i}").as_bytes(), PutMode::Create));
        let winner = one_winner(&outcomes, "create");
        let v = clients[0].get(&key).unwrap().unwrap();
        assert_eq!(v.value, format!("{winner}").as_bytes());
        let outcomes = race(&clients, |s, i| s.put_opts(&key, format!("u{i}").as_bytes(), PutMode::Update(v.version)));
        let winner = one_winner(&outcomes, "update");
        let now = clients[1].get(&key).unwrap().unwrap();
        assert_eq!(now.value, format!("u{winner}").as_bytes());
        let outcomes = race(&clients, |s, _| s.delete_if(&key, now.version));
        one_winner(&outcomes, "delete");
        assert_eq!(clients[0].get(&key).unwrap(), None);
    }
}

/// Two clients each add 1 to a counter 25 times, by read and conditional write, retrying
/// what they lose: no increment is lost.
pub fn racing_increments(open: Open<'_>) {
    let clients = [open(), open()];
    clients[0].put("inc/counter", b"0").unwrap();
    race(&clients, |s, _| {
        for _ in 0..25 {
            loop {
                let e = s.get("inc/counter").unwrap().unwrap();
                let n: u64 = std::str::from_utf8(&e.value).unwrap().parse().unwrap();
                match s.put_opts("inc/counter", (n + 1).to_string().as_bytes(), PutMode::Update(e.version)) {
                    Ok(_) => break,
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }
    });
    assert_eq!(clients[1].get_value("inc/counter").unwrap().as_deref(), Some(&b"50"[..]));
}

/// A watch reports, within [`WATCH_WITHIN`] each, the puts and deletes another client makes
/// under its prefix, in order and with their versions, and nothing outside it.
pub async fn watch_sees_other_clients(open: Open<'_>) {
    let (watcher, writer) = (open(), open());
    let mut watch = watcher.watch("w/volume/").unwrap();
    writer.put("w/volumes", b"outside").unwrap();
    writer.put("w/volume", b"outside").unwrap();
    let v1 = writer.put("w/volume/a", b"1").unwrap();
    let v2 = writer.put_opts("w/volume/b", b"2", PutMode::Create).unwrap();
    assert!(writer.delete("w/volume/a").unwrap());
    let mut seen = Vec::new();
    for _ in 0..3 {
        let next = tokio::time::timeout(WATCH_WITHIN, watch.next()).await;
        seen.push(next.expect("a change within a second").expect("the watch goes on").unwrap());
    }
    let change = |key: &str, value: Option<&[u8]>, version| Change {
        key: key.into(),
        value: value.map(<[u8]>::to_vec),
        version,
    };
    assert_eq!(seen[..2], [change("w/volume/a", Some(b"1"), v1), change("w/volume/b", Some(b"2"), v2)]);
    assert_eq!((seen[2].key.as_str(), seen[2].value.as_deref()), ("w/volume/a", None));
    assert!(seen[2].version > v2);
    // Nothing else came: the keys outside the prefix were not reported.
    writer.put("w/volume/c", b"3").unwrap();
    let next = tokio::time::timeout(WATCH_WITHIN, watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.key, "w/volume/c");
}

/// Runs `f` on each client at once (from two threads released together); the outcomes.
fn race<R: Send>(clients: &[Arc<dyn ConfigStore>; 2], f: impl Fn(&dyn ConfigStore, usize) -> R + Sync) -> Vec<R> {
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let runs: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (barrier, f) = (&barrier, &f);
                scope.spawn(move || {
                    barrier.wait();
                    f(&**s, i)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().expect("no panic")).collect()
    })
}

/// The index of the only success; every other outcome is a lost condition.
fn one_winner<T: std::fmt::Debug>(outcomes: &[Result<T, ConfigError>], what: &str) -> usize {
    let winners: Vec<usize> = outcomes.iter().enumerate().filter(|(_, o)| o.is_ok()).map(|(i, _)| i).collect();
    assert_eq!(winners.len(), 1, "{what}: exactly one winner: {outcomes:?}");
    for o in outcomes {
        if let Err(e) = o {
            assert!(e.is_conflict(), "{what}: the loser loses its condition: {e}");
        }
    }
    winners[0]
}
