//! The webhook: every event the pool records is POSTed as JSON to a URL an administrator
//! sets, in order, signed with HMAC-SHA256 under a secret the gateway generates (shown once,
//! kept sealed by the master key in the configuration database, key `webhook`). Events wait
//! in a bounded queue (the oldest is dropped when it is full, counted and logged) and the
//! first is retried with exponential backoff until it is delivered: recording an event only
//! queues it, so neither the I/O path nor the recorder ever waits for the receiver.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use cleave_control::pool::{Event, EventSink};
use cleave_split::keys::{MasterKey, WrappedKey};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::data_dir::{random_hex, DataDir, Stored};
use crate::error::{GatewayError, Result};

/// The header that carries the signature: `sha256=` and the hex HMAC-SHA256 of the body,
/// keyed with the secret as shown (its 64 characters).
pub const SIGNATURE_HEADER: &str = "x-cleave-signature";
/// The header that names the event's kind, for receivers that route without parsing.
pub const EVENT_HEADER: &str = "x-cleave-event";
/// Events waiting for delivery; past this the oldest is dropped.
pub const QUEUE_LIMIT: usize = 1000;
/// The first retry waits this long; each next one twice as long, up to [`LAST_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
pub const LAST_RETRY: Duration = Duration::from_secs(60);
const MAX_URL: usize = 2048;
/// Key of the setting in the configuration database, and the purpose its secret is sealed for.
const KEY: &str = "webhook";
const PURPOSE: &str = "cleave webhook secret";

/// One event as the webhook sends it (the body of the POST).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    /// The event's number since the gateway started (`Event::seq`): numbers keep rising while it
    /// runs; a gap means events were dropped, a smaller one that the gateway restarted.
    pub seq: u64,
    /// The gateway that recorded it (`DIR/gateway.id`).
    pub gateway: String,
    pub kind: String,
    pub detail: String,
    pub time_unix_ms: u64,
}

/// `PUT /api/v1/webhook`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SetWebhook {
    /// An `http://` or `https://` URL (a certificate from a public CA for https).
    pub url: String,
}

/// The answer to setting the webhook: the new signing secret, shown this once.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookSecret {
    pub url: String,
    /// 64 hex digits: the HMAC-SHA256 key of `X-Cleave-Signature`, as these characters.
    pub secret: String,
}

/// The webhook and its deliveries since the gateway started.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    /// Where events are sent; none when no webhook is set.
    pub url: Option<String>,
    /// Events waiting, the first of them being tried.
    pub queued: u64,
    pub delivered: u64,
    /// Attempts that failed (each is retried).
    pub failed: u64,
    /// Events dropped from a full queue.
    pub dropped: u64,
    /// Why the last attempt failed, until one succeeds.
    pub last_error: Option<String>,
}

/// The setting as stored: the URL and the secret sealed by the master key.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Saved {
    url: String,
    secret: WrappedKey,
}

/// Where events go and the key that signs them, in memory.
struct Endpoint {
    url: String,
    secret: Zeroizing<String>,
}

/// The events waiting, oldest first, at most `limit` of them.
struct Outbox {
    items: Mutex<VecDeque<Notification>>,
    limit: usize,
}

impl Outbox {
    fn new(limit: usize) -> Self {
        Outbox { items: Mutex::new(VecDeque::new()), limit }
    }

    /// Queues `n`; returns the oldest event if it had to go to make room.
    fn push(&self, n: Notification) -> Option<Notification> {
        let mut items = self.items.lock().expect("not poisoned");
        let dropped = if items.len() >= self.limit { items.pop_front() } else { None };
        items.push_back(n);
        dropped
    }

    fn front(&self) -> Option<Notification> {
        self.items.lock().expect("not poisoned").front().cloned()
    }

    /// The event `seq` is delivered: out of the queue, unless it was dropped meanwhile.
    fn done(&self, seq: u64) {
        let mut items = self.items.lock().expect("not poisoned");
        if items.front().is_some_and(|n| n.seq == seq) {
            items.pop_front();
        }
    }

    fn clear(&self) {
        self.items.lock().expect("not poisoned").clear();
    }

    fn len(&self) -> usize {
        self.items.lock().expect("not poisoned").len()
    }
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// The webhook of one gateway: its setting, its queue, its counters. The pool hands it every
/// event ([`EventSink`]); [`Notifier::deliver`] sends them.
pub struct Notifier {
    saved: Stored<Option<Saved>>,
    endpoint: RwLock<Option<Arc<Endpoint>>>,
    gateway: String,
    outbox: Outbox,
    /// An event was queued, or the endpoint changed.
    wake: tokio::sync::Notify,
    /// Counts changes of the endpoint: a retry need not wait out its backoff. (A `Notify`
    /// would keep a permit from a change made before the attempt, and cut the wait short.)
    changed: tokio::sync::watch::Sender<u64>,
    counters: Counters,
    last_error: Mutex<Option<String>>,
}

/// The HMAC-SHA256 of `body` keyed with `secret`, as the signature header carries it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex::encode(aws_lc_rs::hmac::sign(&key, body).as_ref()))
}

/// How long to wait after the `failures`-th failure in a row: 1 s, 2 s, 4 s ... up to 60 s.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(LAST_RETRY)
}

/// Where a stored setting sends events, its secret opened with `master`.
fn endpoint_of(saved: &Option<Saved>, master: &MasterKey) -> anyhow::Result<Option<Endpoint>> {
    let Some(s) = saved else { return Ok(None) };
    let plain = master.open_bytes(PURPOSE, &s.secret).context("opening the webhook's secret")?;
    let secret = Zeroizing::new(String::from_utf8(plain.to_vec()).context("the webhook's secret")?);
    Ok(Some(Endpoint { url: s.url.clone(), secret }))
}

/// The scheme, host and port of a URL: what logs and events say of it (its path or query
/// may carry a token).
pub fn origin(url: &str) -> String {
    url::Url::parse(url).map(|u| u.origin().ascii_serialization()).unwrap_or_else(|_| "(bad URL)".into())
}

/// An `http` or `https` URL with a host, or why not.
fn check_url(url: &str) -> Result<()> {
    let invalid = |why: String| Err(GatewayError::Invalid(format!("webhook URL: {why}")));
    if url.len() > MAX_URL {
        return invalid(format!("longer than {MAX_URL} bytes"));
    }
    let parsed = match url::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return invalid(e.to_string()),
    };
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return invalid("give an http:// or https:// URL with a host".into());
    }
    Ok(())
}

impl Notifier {
    /// The webhook stored in `data`, its secret opened with `master`.
    pub(crate) fn load(data: &DataDir, master: &MasterKey) -> anyhow::Result<Arc<Notifier>> {
        let saved: Stored<Option<Saved>> = Stored::load(data, KEY, || Ok(None))?;
        let endpoint = endpoint_of(&saved.read(), master)?.map(Arc::new);
        Ok(Arc::new(Notifier {
            saved,
            endpoint: RwLock::new(endpoint),
            gateway: data.gateway_id()?,
            outbox: Outbox::new(QUEUE_LIMIT),
            wake: tokio::sync::Notify::new(),
            changed: tokio::sync::watch::Sender::new(0),
            counters: Counters::default(),
            last_error: Mutex::new(None),
        }))
    }

    /// Follows the setting other gateways of the appliance store.
    pub(crate) fn follow(self: &Arc<Self>, master: MasterKey) {
        let me = Arc::downgrade(self);
        self.saved.follow_with(move |saved| {
            let Some(me) = me.upgrade() else { return };
            match endpoint_of(saved, &master) {
                Ok(endpoint) => me.point_at(endpoint),
                Err(e) => warn!(error = %format!("{e:#}"), "ignoring a webhook setting that does not open"),
            }
        });
    }

    fn endpoint(&self) -> Option<Arc<Endpoint>> {
        self.endpoint.read().expect("not poisoned").clone()
    }

    /// Sends events to `endpoint` from now on (none: to nobody, and the queue is emptied).
    fn point_at(&self, endpoint: Option<Endpoint>) {
        let off = endpoint.is_none();
        *self.endpoint.write().expect("not poisoned") = endpoint.map(Arc::new);
        if off {
            self.outbox.clear();
        }
        *self.last_error.lock().expect("not poisoned") = None;
        self.changed.send_modify(|n| *n += 1);
        self.wake.notify_one();
    }

    pub fn view(&self) -> WebhookView {
        let c = &self.counters;
        WebhookView {
            url: self.endpoint().map(|e| e.url.clone()),
            queued: self.outbox.len() as u64,
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            last_error: self.last_error.lock().expect("not poisoned").clone(),
        }
    }

    /// Sends the queued events with `poster`, oldest first, each until it is delivered; runs
    /// for as long as the gateway does.
    pub(crate) async fn deliver(self: Arc<Self>, poster: Arc<dyn Poster>) {
        let mut failures = 0u32;
        let mut changes = self.changed.subscribe();
        loop {
            changes.borrow_and_update();
            let (Some(endpoint), Some(n)) = (self.endpoint(), self.outbox.front()) else {
                self.wake.notified().await;
                continue;
            };
            let (to, seq) = (endpoint.url.clone(), n.seq);
            let poster = poster.clone();
            let sent = tokio::task::spawn_blocking(move || {
                let (headers, body) = request(&endpoint, &n)?;
                poster.post(&endpoint.url, &headers, &body)
            })
            .await
            .unwrap_or_else(|e| Err(format!("the delivery task failed: {e}")));
            match sent {
                Ok(()) => {
                    self.outbox.done(seq);
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    *self.last_error.lock().expect("not poisoned") = None;
                    failures = 0;
                }
                Err(why) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    failures = failures.saturating_add(1);
                    let wait = backoff(failures);
                    warn!(seq, to = %origin(&to), error = %why, retry_in = ?wait, "webhook delivery failed");
                    *self.last_error.lock().expect("not poisoned") = Some(why);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = changes.changed() => failures = 0,
                    }
                }
            }
        }
    }
}

impl EventSink for Notifier {
    fn recorded(&self, e: &Event) {
        if self.endpoint.read().expect("not poisoned").is_none() {
            return;
        }
        let n = Notification {
            seq: e.seq,
            gateway: self.gateway.clone(),
            kind: e.kind.clone(),
            detail: e.detail.clone(),
            time_unix_ms: e.time_unix_ms,
        };
        if let Some(old) = self.outbox.push(n) {
            let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(seq = old.seq, kind = %old.kind, dropped, "webhook queue full: dropped its oldest event");
        }
        self.wake.notify_one();
    }
}

/// One delivery attempt, blocking: `Ok` once the receiver answered 2xx, else why not, in
/// words that leave out the URL's path and query. The gateway knows no HTTP: the process
/// that runs it gives it a poster (`cleave serve`: `crates/cleave/src/webhook.rs`), which
/// must give up within [`TIMEOUT`] and follow no redirect.
pub trait Poster: Send + Sync + 'static {
    fn post(&self, url: &str, headers: &Headers, body: &[u8]) -> std::result::Result<(), String>;
}

/// A POST's headers, by name (lower case) and value.
pub type Headers = Vec<(&'static str, String)>;

/// A receiver that takes longer than this to answer has failed the delivery.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The headers and body of the POST of `n`.
fn request(to: &Endpoint, n: &Notification) -> std::result::Result<(Headers, Vec<u8>), String> {
    let body = serde_json::to_vec(n).map_err(|e| format!("encoding the event: {e}"))?;
    let headers = vec![
        ("content-type", "application/json".to_string()),
        (SIGNATURE_HEADER, sign(to.secret.as_bytes(), &body)),
        (EVENT_HEADER, n.kind.clone()),
    ];
    Ok((headers, body))
}

impl Notifier {
    /// Sends every event to `url` from now on, signed with a new secret (returned, once),
    /// sealed under `master` where it is stored.
    pub(crate) fn set(&self, master: &MasterKey, url: &str) -> Result<WebhookSecret> {
        check_url(url)?;
        let secret = Zeroizing::new(random_hex(32)?);
        let sealed = master
            .seal_bytes(PURPOSE, secret.as_bytes())
            .map_err(|e| GatewayError::Internal(format!("sealing the webhook's secret: {e}")))?;
        self.saved.update(|s| {
            *s = Some(Saved { url: url.to_string(), secret: sealed.clone() });
            Ok(())
        })?;
        self.point_at(Some(Endpoint { url: url.to_string(), secret: secret.clone() }));
        info!(to = %origin(url), "webhook set");
        Ok(WebhookSecret { url: url.to_string(), secret: secret.to_string() })
    }

    /// Sends events to nobody; the queue is emptied.
    pub(crate) fn remove(&self) -> Result<()> {
        self.saved.update(|s| {
            *s = None;
            Ok(())
        })?;
        self.point_at(None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_ne!(sign(b"Jefe", b"what do ya want for nothing!"), sign(b"Jefe", b"what do ya want for nothing?"));
    }

    #[test]
    fn retries_wait_one_second_doubling_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(0), FIRST_RETRY);
        assert_eq!(backoff(u32::MAX), LAST_RETRY);
    }

    fn n(seq: u64) -> Notification {
        Notification { seq, gateway: "g".into(), kind: "k".into(), detail: String::new(), time_unix_ms: 0 }
    }

    #[test]
    fn a_full_queue_drops_its_oldest_event() {
        let q = Outbox::new(3);
        for seq in 1..=3 {
            assert_eq!(q.push(n(seq)), None);
        }
        assert_eq!(q.push(n(4)).map(|d| d.seq), Some(1));
        assert_eq!(q.front().map(|f| f.seq), Some(2));
        // A delivery of an event dropped meanwhile takes nothing else out of the queue.
        q.done(1);
        assert_eq!(q.len(), 3);
        q.done(2);
        assert_eq!(q.front().map(|f| f.seq), Some(3));
    }

    #[test]
    fn only_http_and_https_urls_with_a_host() {
        for good in ["http://127.0.0.1:9000/hook", "https://hooks.example.net/T0/abc?x=1"] {
            assert!(check_url(good).is_ok(), "{good}");
        }
        for bad in ["ftp://example.net/", "http://", "/relative", "file:///etc/passwd", "not a url"] {
            assert!(matches!(check_url(bad), Err(GatewayError::Invalid(_))), "{bad}");
        }
        assert!(check_url(&format!("http://h/{}", "a".repeat(MAX_URL))).is_err());
        assert_eq!(origin("https://hooks.example.net:8443/T0/secret-token"), "https://hooks.example.net:8443");
    }
}
