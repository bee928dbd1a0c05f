//! The shared backend: etcd v3 (`etcd-client`), every key under a namespace so that several
//! appliances (or test clusters) can share one etcd.
//!
//! The client is async; this store runs it on a small runtime of its own and waits for the
//! answer on a plain channel, so its synchronous methods work from any thread, inside a tokio
//! runtime or not (docs/config-store.md). Every call is bounded by [`EtcdOptions::timeout`].

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue, KvClient, LeaseClient,
    PutOptions, TlsOptions, Txn, TxnOp, WatchClient, WatchOptions, WatchStream,
};
use tokio::sync::mpsc::Sender;
use zeroize::Zeroizing;

use super::{check_key, Change, ConfigError, ConfigStore, Entry, Guard, Lease, PutMode, Version, Watch};

/// How to reach etcd.
#[derive(Clone)]
pub struct EtcdOptions {
    /// Client URLs: `https://HOST:PORT` with [`EtcdOptions::tls`], `http://HOST:PORT` without.
    pub endpoints: Vec<String>,
    /// Put before every key, e.g. `cleave/site-a/`; empty for none.
    pub namespace: String,
    /// A user and password, when etcd has authentication on.
    pub user: Option<(String, Zeroizing<String>)>,
    /// The longest any one call may take, connecting included.
    pub timeout: Duration,
    /// TLS to etcd: the CA its certificate is checked against, and this client's certificate.
    pub tls: Option<EtcdTls>,
}

/// How this client speaks TLS to etcd.
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA (PEM) that issued etcd's server certificate.
    pub ca_pem: String,
    /// This client's certificate and key (PEM), for an etcd that requires client
    /// certificates (`--client-cert-auth`).
    pub identity: Option<(String, Zeroizing<String>)>,
}

impl EtcdOptions {
    /// `endpoints` is a comma-separated list of URLs; no namespace, no user, 5 s calls.
    pub fn new(endpoints: &str) -> Self {
        EtcdOptions {
            endpoints: endpoints.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect(),
            namespace: String::new(),
            user: None,
            timeout: Duration::from_secs(5),
            tls: None,
        }
    }

    /// TLS for `https://` endpoints and none for `http://` ones: a mix is refused, so that no
    /// endpoint is reached in the clear by mistake.
    fn check_tls(&self) -> Result<(), ConfigError> {
        let tls = self.tls.is_some();
        for e in &self.endpoints {
            if e.starts_with("https://") && !tls {
                return Err(ConfigError::Invalid(format!("etcd endpoint {e}: TLS needs etcd's CA (--etcd-ca)")));
            }
            if e.starts_with("http://") && tls {
                return Err(ConfigError::Invalid(format!("etcd endpoint {e}: with --etcd-ca, use https:// endpoints")));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("timeout", &self.timeout)
            .field(
                "tls",
                &self.tls.as_ref().map(|t| if t.identity.is_some() { "with a client certificate" } else { "on" }),
            )
            .finish()
    }
}

pub struct EtcdStore {
    /// Kept: it holds the sender of the balanced channel's endpoint list.
    _client: Client,
    kv: KvClient,
    watch: WatchClient,
    lease: LeaseClient,
    rt: OwnRuntime,
    namespace: String,
    endpoints: String,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdStore({} {:?})", self.endpoints, self.namespace)
    }
}

/// The store's own runtime, shut down without blocking when dropped: a drop may happen
/// inside another runtime, where a plain drop of a runtime panics.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("taken only on drop")
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A read larger than gRPC's default 4 MiB still fits (a scan of many records).
const MAX_MESSAGE: usize = 256 << 20;

impl EtcdStore {
    /// Connects, and checks that etcd answers (and that the user, if any, may read).
    pub fn connect(opts: EtcdOptions) -> Result<Self, ConfigError> {
        let rt = OwnRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("etcd-store")
                .enable_all()
                .build()
                .map_err(|e| ConfigError::Invalid(format!("starting the etcd client's runtime: {e}")))?,
        ));
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(opts.timeout)
            // Notices a silent etcd on an idle watch; etcd refuses pings more often than 5 s.
            .with_keep_alive(Duration::from_secs(10), opts.timeout)
            .with_keep_alive_while_idle(true)
            // A member without a leader says so at once rather than holding the request.
            .with_require_leader(true);
        if let Some((user, password)) = &opts.user {
            connect = connect.with_user(user.clone(), password.as_str());
        }
        opts.check_tls()?;
        if let Some(t) = &opts.tls {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(&t.ca_pem));
            if let Some((cert, key)) = &t.identity {
                tls = tls.identity(Identity::from_pem(cert, key.as_bytes()));
            }
            connect = connect.with_tls(tls);
        }
        let endpoints = opts.endpoints.join(",");
        let urls = opts.endpoints.clone();
        let client = call(rt.get(), opts.timeout, async move { Client::connect(urls, Some(connect)).await })
            .map_err(|e| call_error(&endpoints, "connect", e))?;
        let store = EtcdStore {
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            lease: client.lease_client(),
            _client: client,
            rt,
            namespace: opts.namespace,
            endpoints,
            timeout: opts.timeout,
        };
        // Connecting needs no answer: a read of one key proves etcd is there.
        let kv = store.kv.clone();
        let probe = store.full_key("\0");
        store.run("connect", Retry::Yes, move || {
            let (mut kv, key) = (kv.clone(), probe.clone());
            async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
        })?;
        Ok(store)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.rt.get()
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    /// Runs `op` on the store's runtime until it answers, fails for good, or the timeout
    /// passes. A request that etcd surely did not apply (no connection could be made, or the
    /// member has no leader) is tried again; so, with [`Retry::Yes`], is any request that did
    /// not reach a working member, each try bounded by a quarter of the timeout (a request to
    /// a leader that died hangs). Only reads and overwrites, whose repeat changes nothing,
    /// use [`Retry::Yes`]: a conditional write or a delete that may have happened is not
    /// repeated, lest it report the wrong outcome (the etcd Go client's rule too).
    fn run<T, F, Fut>(&self, what: &'static str, retry: Retry, op: F) -> Result<T, ConfigError>
    where
        T: Send + 'static,
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let attempt = match retry {
            Retry::Yes => (self.timeout / 4).max(Duration::from_millis(250)),
            Retry::No => self.timeout,
        };
        // The last failure, for an error that would otherwise only say "no answer" (a TLS
        // handshake refused, say).
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let record = seen.clone();
        let attempts = async move {
            loop {
                let last = match tokio::time::timeout(attempt, op()).await {
                    Ok(Err(e)) if not_applied(&e) || (retry == Retry::Yes && transient(&e)) => e,
                    Ok(done) => return done,
                    Err(_) if retry == Retry::Yes => etcd_client::Error::Internal("attempt timed out".into()),
                    Err(_) => std::future::pending().await,
                };
                tracing::debug!(error = %last, "etcd: trying again");
                *record.lock().expect("not poisoned") = Some(last.to_string());
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        };
        call(self.runtime(), self.timeout, attempts).map_err(|e| {
            let mut err = call_error(&self.endpoints, what, e);
            if let (ConfigError::Unavailable { reason, .. }, Some(last)) =
                (&mut err, seen.lock().expect("not poisoned").take())
            {
                *reason = format!("{reason}; last error: {last}");
            }
            err
        })
    }

    /// The entry of a key-value etcd returned, without the namespace.
    fn entry(&self, kv: &KeyValue) -> Result<Entry, ConfigError> {
        let (key, version) = key_and_version(&self.namespace, kv).map_err(|r| protocol(&self.endpoints, r))?;
        Ok(Entry { key, value: kv.value().to_vec(), version })
    }

    fn version(&self, revision: i64) -> Result<Version, ConfigError> {
        u64::try_from(revision).map(Version).map_err(|_| protocol(&self.endpoints, format!("revision {revision}")))
    }

    /// Runs `op` in a transaction if `when` holds: the new revision, or `lost` if not.
    fn txn(
        &self,
        what: &'static str,
        when: Vec<Compare>,
        op: TxnOp,
        lost: ConfigError,
    ) -> Result<Version, ConfigError> {
        let kv = self.kv.clone();
        let resp = self.run(what, Retry::No, move || {
            let (mut kv, txn) = (kv.clone(), Txn::new().when(when.clone()).and_then(vec![op.clone()]));
            async move { kv.txn(txn).await }
        })?;
        if !resp.succeeded() {
            return Err(lost);
        }
        self.version(resp.header().map_or(0, |h| h.revision()))
    }
}

/// Whether etcd surely did not apply the request: no connection could be made, or the member
/// has no leader (so it proposed nothing). These are etcd's words for it (rpctypes).
fn not_applied(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = e else { return false };
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    if status.message().contains("no leader") {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(io.kind(), ConnectionRefused | HostUnreachable | NetworkUnreachable);
        }
        source = e.source();
    }
    false
}

/// Whether an error means "no working member answered": worth another try, and reported
/// as [`ConfigError::Unavailable`].
fn transient(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded),
        _ => false,
    }
}

fn call_error(endpoints: &str, op: &'static str, e: CallError) -> ConfigError {
    let endpoints = endpoints.to_string();
    match e {
        CallError::Etcd(e) if transient(&e) => ConfigError::Unavailable { endpoints, op, reason: e.to_string() },
        CallError::Etcd(e) => ConfigError::Etcd { endpoints, source: Box::new(e) },
        CallError::Timeout(t) => ConfigError::Unavailable { endpoints, op, reason: format!("no answer within {t:?}") },
        CallError::Gone => ConfigError::Unavailable { endpoints, op, reason: "the client has stopped".into() },
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    Yes,
    No,
}

enum CallError {
    Etcd(etcd_client::Error),
    Timeout(Duration),
    Gone,
}

/// Runs `fut` on `rt` and waits for it on a std channel: never `block_on`, which panics
/// inside a runtime, and never on the caller's runtime, whose threads may all be waiting.
fn call<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    timeout: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, CallError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(tokio::time::timeout(timeout, fut).await);
    });
    match rx.recv() {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(CallError::Etcd(e)),
        Ok(Err(_)) => Err(CallError::Timeout(timeout)),
        Err(_) => Err(CallError::Gone),
    }
}

impl ConfigStore for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, ConfigError> {
        check_key(key)?;
        let (kv, full) = (self.kv.clone(), self.full_key(key));
        let mut resp = self.run("get", Retry::Yes, move || {
            let (mut kv, full) = (kv.clone(), full.clone());
            async move { kv.get(full, None).await }
        })?;
        resp.take_kvs().first().map(|kv| self.entry(kv)).transpose()
    }

    fn put_opts(&self, key: &str, value: &[u8], mode: PutMode) -> Result<Version, ConfigError> {
        check_key(key)?;
        let full = self.full_key(key);
        let put = TxnOp::put(full.clone(), value, None);
        let key = key.to_string();
        match mode {
            PutMode::Overwrite => {
                let (kv, value) = (self.kv.clone(), value.to_vec());
                let resp = self.run("put", Retry::Yes, move || {
                    let (mut kv, full, value) = (kv.clone(), full.clone(), value.clone());
                    async move { kv.put(full, value, None).await }
                })?;
                self.version(resp.header().map_or(0, |h| h.revision()))
            }
            PutMode::Create => self.create_leased(&key, value, None),
            PutMode::Update(v) => {
                let when = self.at_version(&full, v)?;
                self.txn("update", when, put, ConfigError::Precondition { key })
            }
        }
    }

    fn delete(&self, key: &str) -> Result<bool, ConfigError> {
        check_key(key)?;
        let (kv, full) = (self.kv.clone(), self.full_key(key));
        let resp = self.run("delete", Retry::No, move || {
            let (mut kv, full) = (kv.clone(), full.clone());
            async move { kv.delete(full, None).await }
        })?;
        Ok(resp.deleted() > 0)
    }

    fn delete_if(&self, key: &str, version: Version) -> Result<(), ConfigError> {
        check_key(key)?;
        let full = self.full_key(key);
        let when = self.at_version(&full, version)?;
        let lost = ConfigError::Precondition { key: key.to_string() };
        self.txn("delete", when, TxnOp::delete(full, None), lost).map(|_| ())
    }

    fn put_guarded(&self, key: &str, value: &[u8], guard: &Guard) -> Result<Version, ConfigError> {
        check_key(key)?;
        let when = self.at_version(&self.full_key(&guard.key), guard.version)?;
        let put = TxnOp::put(self.full_key(key), value, None);
        self.txn("put", when, put, ConfigError::Precondition { key: guard.key.clone() })
    }

    fn delete_guarded(&self, key: &str, guard: &Guard) -> Result<(), ConfigError> {
        check_key(key)?;
        let when = self.at_version(&self.full_key(&guard.key), guard.version)?;
        let delete = TxnOp::delete(self.full_key(key), None);
        self.txn("delete", when, delete, ConfigError::Precondition { key: guard.key.clone() }).map(|_| ())
    }

    fn scan(&self, prefix: &str) -> Result<Vec<Entry>, ConfigError> {
        let (kv, full) = (self.kv.clone(), self.full_key(prefix));
        let mut resp = self.run("scan", Retry::Yes, move || {
            let (mut kv, full) = (kv.clone(), full.clone());
            async move { kv.get(full, Some(GetOptions::new().with_prefix())).await }
        })?;
        // etcd returns a range in key (byte) order.
        resp.take_kvs().iter().map(|kv| self.entry(kv)).collect()
    }

    fn watch(&self, prefix: &str) -> Result<Watch, ConfigError> {
        let (client, full) = (self.watch.clone(), self.full_key(prefix));
        let stream = self.run("watch", Retry::Yes, move || {
            let (mut client, full) = (client.clone(), full.clone());
            async move {
                let mut stream = client.watch(full, Some(WatchOptions::new().with_prefix())).await?;
                // Changes after this returns are seen only once etcd says the watch exists.
                match stream.message().await? {
                    Some(r) if r.created() => Ok(stream),
                    _ => Err(etcd_client::Error::WatchError("etcd did not create the watch".into())),
                }
            }
        })?;
        let (tx, watch) = Watch::channel();
        let forward = Forward { namespace: self.namespace.clone(), endpoints: self.endpoints.clone() };
        self.runtime().spawn(forward.run(stream, tx));
        Ok(watch)
    }

    fn grant_lease(&self, ttl: Duration) -> Result<Option<Lease>, ConfigError> {
        let secs =
            i64::try_from(ttl.as_secs().max(1)).map_err(|_| ConfigError::Invalid(format!("lease of {ttl:?}")))?;
        let client = self.lease.clone();
        // A lease granted twice is only a second lease that expires unused.
        let resp = self.run("grant a lease", Retry::Yes, move || {
            let mut client = client.clone();
            async move { client.grant(secs, None).await }
        })?;
        Ok(Some(Lease(resp.id())))
    }

    fn renew_lease(&self, lease: Lease) -> Result<(), ConfigError> {
        let client = self.lease.clone();
        let resp = self.run("renew a lease", Retry::Yes, move || {
            let mut client = client.clone();
            async move {
                let (mut keeper, mut stream) = client.keep_alive(lease.0).await?;
                keeper.keep_alive().await?;
                stream.message().await
            }
        });
        match resp {
            // etcd answers a TTL of 0 for a lease it no longer has (or the client says so).
            Ok(Some(r)) if r.ttl() > 0 => Ok(()),
            Ok(_) => Err(ConfigError::LeaseExpired(lease.0)),
            Err(ConfigError::Etcd { source, .. }) if matches!(*source, etcd_client::Error::LeaseKeepAliveError(_)) => {
                Err(ConfigError::LeaseExpired(lease.0))
            }
            Err(e) => Err(e),
        }
    }

    fn revoke_lease(&self, lease: Lease) -> Result<(), ConfigError> {
        let client = self.lease.clone();
        match self.run("revoke a lease", Retry::Yes, move || {
            let mut client = client.clone();
            async move { client.revoke(lease.0).await }
        }) {
            Ok(_) => Ok(()),
            // Revoked before, or expired: gone either way.
            Err(ConfigError::Etcd { source, .. }) if matches!(&*source, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::NotFound) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn create_leased(&self, key: &str, value: &[u8], lease: Option<Lease>) -> Result<Version, ConfigError> {
        check_key(key)?;
        let full = self.full_key(key);
        let opts = lease.map(|l| PutOptions::new().with_lease(l.0));
        let put = TxnOp::put(full.clone(), value, opts);
        let absent = Compare::create_revision(full, CompareOp::Equal, 0);
        self.txn("create", vec![absent], put, ConfigError::AlreadyExists { key: key.to_string() })
    }
}

impl EtcdStore {
    /// Conditions for "the key exists and was last written at `version`".
    fn at_version(&self, full: &str, version: Version) -> Result<Vec<Compare>, ConfigError> {
        let revision = i64::try_from(version.0).map_err(|_| ConfigError::Invalid(format!("version {version}")))?;
        Ok(vec![Compare::mod_revision(full, CompareOp::Equal, revision), Compare::version(full, CompareOp::Greater, 0)])
    }
}

/// Hands the events of one etcd watch to a [`Watch`], until either side goes away.
struct Forward {
    namespace: String,
    endpoints: String,
}

impl Forward {
    async fn run(self, mut stream: WatchStream, tx: Sender<Result<Change, ConfigError>>) {
        loop {
            let msg = tokio::select! {
                msg = stream.message() => msg,
                () = tx.closed() => return,
            };
            let changes: Result<Vec<Change>, ConfigError> = match msg {
                Ok(Some(resp)) if resp.canceled() => {
                    Err(protocol(&self.endpoints, format!("etcd canceled the watch: {}", resp.cancel_reason())))
                }
                Ok(Some(resp)) => resp.events().iter().filter_map(|e| e.kv()).map(|kv| self.change(kv)).collect(),
                Ok(None) => Err(protocol(&self.endpoints, "etcd ended the watch".into())),
                Err(e) => Err(call_error(&self.endpoints, "watch", CallError::Etcd(e))),
            };
            match changes {
                Ok(changes) => {
                    for c in changes {
                        if tx.send(Ok(c)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    }

    /// A change from an event's key-value. Deletes are told by version 0 ("a deletion resets
    /// the version to zero"), not by the event's type, whose accessor panics on unknown types.
    fn change(&self, kv: &KeyValue) -> Result<Change, ConfigError> {
        let (key, version) = key_and_version(&self.namespace, kv).map_err(|r| protocol(&self.endpoints, r))?;
        Ok(Change { key, value: (kv.version() != 0).then(|| kv.value().to_vec()), version })
    }
}

/// A key without the namespace, and the version of its last write.
fn key_and_version(namespace: &str, kv: &KeyValue) -> Result<(String, Version), String> {
    let key = std::str::from_utf8(kv.key())
        .ok()
        .and_then(|k| k.strip_prefix(namespace))
        .ok_or_else(|| format!("a key outside {namespace:?} or not UTF-8"))?;
    let version = u64::try_from(kv.mod_revision()).map_err(|_| format!("revision {}", kv.mod_revision()))?;
    Ok((key.to_string(), Version(version)))
}

fn protocol(endpoints: &str, reason: String) -> ConfigError {
    ConfigError::Protocol { endpoints: endpoints.to_string(), reason }
}
