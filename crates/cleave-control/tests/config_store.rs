//! The configuration store's conformance suite against both backends: redb in a temporary
//! directory, and real etcd processes (one, and a three-member cluster losing a member).
//! etcd's failures come back as typed errors within the call timeout, never as a hang.
//!
//! The tests run inside a current-thread tokio runtime on purpose: the etcd backend's
//! synchronous calls must not deadlock there (docs/config-store.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_control::ca::Ca;
use cleave_control::config::testing::{conformance, EtcdCluster};
use cleave_control::config::{ConfigError, ConfigStore, EtcdOptions, EtcdStore, EtcdTls, PutMode, RedbStore};

#[tokio::test]
async fn redb_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ConfigStore> = Arc::new(RedbStore::open(&dir.path().join("config.redb")).unwrap());
    // One process at a time: every "client" is the one handle.
    conformance(&|| store.clone()).await;
}

#[tokio::test]
async fn etcd_passes_the_conformance_suite() {
    let etcd = EtcdCluster::start(1);
    let open = || -> Arc<dyn ConfigStore> { Arc::new(etcd.store("conformance/", Duration::from_secs(5))) };
    conformance(&open).await;
}

/// etcd speaking only TLS, client certificates required: a client with the CA and a
/// certificate passes the suite; one without a certificate, one trusting another CA, and one
/// in the clear are refused.
#[tokio::test]
async fn etcd_over_tls_passes_the_conformance_suite_and_refuses_other_clients() {
    let etcd = EtcdCluster::start_tls(1);
    let open = || -> Arc<dyn ConfigStore> { Arc::new(etcd.store("tls/", Duration::from_secs(5))) };
    conformance(&open).await;
    let tls = etcd.tls_files().unwrap().client();
    let with = |tls: Option<EtcdTls>, endpoints: &str| {
        let mut opts = EtcdOptions::new(endpoints);
        opts.timeout = Duration::from_secs(2);
        opts.tls = tls;
        EtcdStore::connect(opts)
    };
    let https = etcd.endpoints();
    assert!(https.starts_with("https://"), "{https}");
    assert!(with(Some(tls.clone()), &https).is_ok());
    // Refused in the TLS handshake, by etcd or by this client (how the refusal reads varies
    // with where the handshake stopped).
    let refused = |r: Result<EtcdStore, ConfigError>| {
        let e = match r {
            Ok(_) => panic!("connected"),
            Err(e) => e,
        };
        assert!(!matches!(e, ConfigError::Invalid(_)), "refused before trying: {e}");
    };
    refused(with(Some(EtcdTls { identity: None, ..tls.clone() }), &https));
    let (other, _) = Ca::generate("another").unwrap();
    refused(with(Some(EtcdTls { ca_pem: other.cert_pem().into(), ..tls.clone() }), &https));
    // Never in the clear by mistake: an https endpoint without TLS, an http one with it.
    assert!(matches!(with(None, &https), Err(ConfigError::Invalid(_))));
    let http = https.replace("https://", "http://");
    assert!(matches!(with(Some(tls), &http), Err(ConfigError::Invalid(_))));
}

#[tokio::test]
async fn etcd_namespaces_keep_appliances_apart() {
    let etcd = EtcdCluster::start(1);
    let (a, b) = (etcd.store("site-a/", Duration::from_secs(5)), etcd.store("site-b/", Duration::from_secs(5)));
    let mut watch_b = b.watch("").unwrap();
    a.put("volume/x", b"a").unwrap();
    assert_eq!(b.get("volume/x").unwrap(), None);
    assert!(b.scan("").unwrap().is_empty());
    assert!(!b.delete("volume/x").unwrap());
    b.put("volume/x", b"b").unwrap();
    assert_eq!(a.get_value("volume/x").unwrap().as_deref(), Some(&b"a"[..]));
    assert_eq!(a.scan("").unwrap().len(), 1);
    // b's watch of everything sees its own write, not a's.
    let change = tokio::time::timeout(Duration::from_secs(1), watch_b.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((change.key.as_str(), change.value.as_deref()), ("volume/x", Some(&b"b"[..])));
}

/// No etcd at the address, or one that accepts connections and never answers: a typed
/// error within the timeout.
#[tokio::test]
async fn unreachable_etcd_is_a_typed_error_within_the_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for url in [format!("http://{closed}"), format!("http://{}", silent.local_addr().unwrap())] {
        let mut opts = EtcdOptions::new(&url);
        opts.timeout = Duration::from_millis(800);
        let started = Instant::now();
        let err = EtcdStore::connect(opts).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{url}: took {:?}", started.elapsed());
        assert!(matches!(err, ConfigError::Unavailable { op: "connect", .. }), "{url}: {err}");
        assert!(err.to_string().contains(&url), "the error names etcd: {err}");
    }
    let err = EtcdStore::connect(EtcdOptions::new("not a url")).unwrap_err();
    assert!(matches!(err, ConfigError::Etcd { .. }), "{err}");
}

/// One call to a store, for a table of calls.
type Call<'a> = Box<dyn Fn() -> Result<(), ConfigError> + 'a>;

/// etcd killed under a connected store: every call fails typed and bounded, and a watch ends
/// with an error rather than staying silent.
#[tokio::test]
async fn etcd_killed_mid_way_is_a_typed_error_within_the_timeout() {
    let mut etcd = EtcdCluster::start(1);
    let store = etcd.store("killed/", Duration::from_secs(1));
    let v = store.put("k", b"1").unwrap();
    let mut watch = store.watch("").unwrap();
    etcd.kill(0);
    let calls: [(&str, Call); 5] = [
        ("get", Box::new(|| store.get("k").map(drop))),
        ("put", Box::new(|| store.put("k", b"2").map(drop))),
        ("update", Box::new(|| store.put_opts("k", b"2", PutMode::Update(v)).map(drop))),
        ("delete", Box::new(|| store.delete("k").map(drop))),
        ("scan", Box::new(|| store.scan("").map(drop))),
    ];
    for (what, call) in calls {
        let started = Instant::now();
        let err = call().unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{what}: took {:?}", started.elapsed());
        assert!(matches!(err, ConfigError::Unavailable { .. }), "{what}: {err}");
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("the watch ends");
    assert!(matches!(ended, None | Some(Err(_))), "{ended:?}");
    // Dropping the store inside a runtime does not panic.
    drop(store);
}

/// Three members, one killed (the first, whichever leads): reads, writes, conditional writes
/// and watches go on through the other two.
#[tokio::test]
async fn a_three_member_cluster_survives_losing_a_member() {
    let mut etcd = EtcdCluster::start(3);
    let (a, b) = (etcd.store("ha/", Duration::from_secs(5)), etcd.store("ha/", Duration::from_secs(5)));
    a.put("volume/x", b"1").unwrap();
    let mut watch = b.watch("volume/").unwrap();
    etcd.kill(0);
    let started = Instant::now();
    for i in 0..20 {
        let v = a.put("volume/x", format!("{i}").as_bytes()).unwrap();
        assert_eq!(b.get("volume/x").unwrap().unwrap().version, v);
        a.put_opts("volume/x", b"cas", PutMode::Update(v)).unwrap();
    }
    assert_eq!(a.scan("volume/").unwrap().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // The watch made before the kill either goes on or has ended (its member died); a new one
    // sees what the other client writes.
    if let Ok(Some(Ok(c))) = tokio::time::timeout(Duration::from_secs(1), watch.next()).await {
        assert_eq!(c.key, "volume/x");
    }
    let mut watch = b.watch("volume/").unwrap();
    let v = a.put("volume/y", b"after").unwrap();
    let change = tokio::time::timeout(Duration::from_secs(1), watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((change.key.as_str(), change.version), ("volume/y", v));
}

/// Synchronous calls from many tasks of a one-worker runtime at once, with a watch read by
/// another task: everything completes (the store never needs the caller's runtime).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn etcd_calls_from_async_tasks_do_not_deadlock() {
    let etcd = EtcdCluster::start(1);
    let store = Arc::new(etcd.store("tasks/", Duration::from_secs(5)));
    let mut watch = store.watch("k/").unwrap();
    let seen = tokio::spawn(async move {
        let mut n = 0;
        while n < 64 {
            watch.next().await.unwrap().unwrap();
            n += 1;
        }
        n
    });
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                for j in 0..4 {
                    let v = store.put(&format!("k/{i}/{j}"), b"v").unwrap();
                    assert_eq!(store.get(&format!("k/{i}/{j}")).unwrap().unwrap().version, v);
                }
            })
        })
        .collect();
    let all = async {
        for w in writers {
            w.await.unwrap();
        }
        seen.await.unwrap()
    };
    assert_eq!(tokio::time::timeout(Duration::from_secs(30), all).await.expect("no deadlock"), 64);
    assert_eq!(store.scan("k/").unwrap().len(), 64);
}

/// With etcd's authentication on: the right user and password work, given explicitly; a
/// wrong password or no user is a typed error at connect, not a hang.
#[tokio::test]
async fn etcd_authentication_with_an_explicit_user() {
    let etcd = EtcdCluster::start(1);
    let endpoints = etcd.endpoints();
    let urls = endpoints.clone();
    tokio::spawn(async move {
        let mut c = etcd_client::Client::connect([urls], None).await.unwrap();
        c.user_add("root", "root-secret", None).await.unwrap();
        c.role_add("root").await.ok();
        c.user_grant_role("root", "root").await.unwrap();
        c.auth_enable().await.unwrap();
    })
    .await
    .unwrap();
    let with = |user: Option<(&str, &str)>| {
        let mut opts = EtcdOptions::new(&endpoints);
        opts.timeout = Duration::from_secs(2);
        opts.user = user.map(|(u, p)| (u.to_string(), p.to_string().into()));
        EtcdStore::connect(opts)
    };
    let store = with(Some(("root", "root-secret"))).unwrap();
    store.put("k", b"v").unwrap();
    assert_eq!(store.get_value("k").unwrap().as_deref(), Some(&b"v"[..]));
    for user in [Some(("root", "wrong")), None] {
        let started = Instant::now();
        let err = with(user).unwrap_err();
        assert!(matches!(err, ConfigError::Etcd { .. }), "{user:?}: {err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    assert!(!format!(
        "{:?}",
        EtcdOptions { user: Some(("root".into(), "root-secret".to_string().into())), ..EtcdOptions::new(&endpoints) }
    )
    .contains("secret"));
}

/// A key created under a lease stays while the lease is renewed, is refused to a second
/// creator meanwhile, and vanishes (for every client) once renewals stop; a revoked lease
/// takes its key at once. The redb store grants none: its single process cannot lapse.
#[tokio::test]
async fn etcd_leased_keys_vanish_when_renewals_stop() {
    let etcd = EtcdCluster::start(1);
    let (a, b) = (etcd.store("lease/", Duration::from_secs(5)), etcd.store("lease/", Duration::from_secs(5)));
    let lease = a.grant_lease(Duration::from_secs(2)).unwrap().expect("etcd grants leases");
    a.create_leased("owner/v", b"gateway-a", Some(lease)).unwrap();
    assert!(matches!(b.create_leased("owner/v", b"gateway-b", None), Err(ConfigError::AlreadyExists { .. })));
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(700));
        a.renew_lease(lease).unwrap();
    }
    assert_eq!(b.get_value("owner/v").unwrap().as_deref(), Some(&b"gateway-a"[..]), "renewed for 4.2 s > 2 s");
    let stopped = Instant::now();
    while b.get("owner/v").unwrap().is_some() {
        assert!(stopped.elapsed() < Duration::from_secs(10), "the key outlived its lease");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stopped.elapsed() >= Duration::from_secs(1), "gone before its TTL: {:?}", stopped.elapsed());
    let renewed = a.renew_lease(lease);
    assert!(matches!(renewed, Err(ConfigError::LeaseExpired(_))), "{renewed:?}");
    let other = b.grant_lease(Duration::from_secs(2)).unwrap().unwrap();
    b.create_leased("owner/v", b"gateway-b", Some(other)).unwrap();
    b.revoke_lease(other).unwrap();
    assert_eq!(a.get("owner/v").unwrap(), None, "a revoked lease takes its key at once");
    b.revoke_lease(other).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let redb = RedbStore::open(&dir.path().join("config.redb")).unwrap();
    assert_eq!(redb.grant_lease(Duration::from_secs(2)).unwrap(), None);
    redb.create_leased("owner/v", b"me", None).unwrap();
    assert!(redb.create_leased("owner/v", b"me", None).unwrap_err().is_conflict());
}
