//! Metrics in the OpenMetrics text format (which Prometheus reads): the volumes' I/O
//! counters and latency histograms, counted where the I/O passes (`cleave_volume::stats`);
//! gauges computed at scrape time from each volume's status, its targets' statistics, the
//! node pool and the tasks. The names are listed in the README ("Metrics").

use std::fmt;

use cleave_control::pool::NodeStatus;
use cleave_volume::stats::{HistogramSnapshot, IoStats};
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::gateway::Gateway;
use crate::health::{targets_down, HealthState};
use crate::tasks::{TaskKind, TaskState};

/// The content type of OpenMetrics text, what Prometheus asks for first.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format (0.0.4), for every other client.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(HistogramSnapshot),
}

/// One metric family: its samples, by labels.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    rows: Vec<(Labels, Value)>,
}

/// Everything a scrape reports, read once and then encoded.
#[derive(Debug, Default)]
struct Snapshot {
    families: Vec<Family>,
}

impl Snapshot {
    fn family(&mut self, name: &'static str, kind: MetricType, help: &'static str) -> usize {
        self.families.push(Family { name, help, kind, rows: Vec::new() });
        self.families.len() - 1
    }
    fn add(&mut self, family: usize, labels: Labels, value: Value) {
        self.families[family].rows.push((labels, value));
    }
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for f in &self.families {
            let mut m = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
            for (labels, value) in &f.rows {
                let mut s = m.encode_family(labels)?;
                match value {
                    Value::Counter(n) => {
                        s.encode_counter::<NoLabelSet, u64, u64>(n, None::<&Exemplar<NoLabelSet, u64>>)?
                    }
                    Value::Gauge(x) => s.encode_gauge(x)?,
                    Value::Histogram(h) => {
                        s.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?
                    }
                }
            }
        }
        Ok(())
    }
}

const HEALTH_STATES: [HealthState; 3] = [HealthState::Clean, HealthState::Degraded, HealthState::Unavailable];
const TASK_KINDS: [TaskKind; 6] =
    [TaskKind::Scrub, TaskKind::Repair, TaskKind::Rereplicate, TaskKind::Delete, TaskKind::Recover, TaskKind::Move];
const TASK_STATES: [TaskState; 5] =
    [TaskState::Queued, TaskState::Running, TaskState::Succeeded, TaskState::Failed, TaskState::Interrupted];

fn flag(b: bool) -> Value {
    Value::Gauge(if b { 1.0 } else { 0.0 })
}

/// OpenMetrics text as the Prometheus text format 0.0.4 has it: a counter's `# HELP` and
/// `# TYPE` name its sample (`foo_total`), and there is no `# EOF`. Everything else that
/// `prometheus-client` writes (gauges, histograms, labels, escapes) is the same in both.
fn prometheus_text(openmetrics: &str, counters: &[&str]) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(&name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

impl Gateway {
    /// The metrics now: OpenMetrics text ([`OPENMETRICS`]) if `openmetrics`, else the
    /// Prometheus text format ([`PROMETHEUS_TEXT`]). Returns the content type and the text.
    pub fn metrics(&self, openmetrics: bool) -> (&'static str, String) {
        let mut s = Snapshot::default();
        self.volume_metrics(&mut s);
        self.node_metrics(&mut s);
        self.task_metrics(&mut s);
        self.mirror_metrics(&mut s);
        self.webhook_metrics(&mut s);
        let counters: Vec<&'static str> =
            s.families.iter().filter(|f| matches!(f.kind, MetricType::Counter)).map(|f| f.name).collect();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(s));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String does not fail");
        if openmetrics {
            (OPENMETRICS, out)
        } else {
            (PROMETHEUS_TEXT, prometheus_text(&out, &counters))
        }
    }

    fn volume_metrics(&self, s: &mut Snapshot) {
        use MetricType::{Counter, Gauge, Histogram};
        let read_ops = s.family("cleave_volume_read_ops", Counter, "NBD reads served.");
        let read_bytes = s.family("cleave_volume_read_bytes", Counter, "Bytes read by clients.");
        let write_ops = s.family("cleave_volume_write_ops", Counter, "NBD writes served.");
        let write_bytes = s.family("cleave_volume_write_bytes", Counter, "Bytes written by clients.");
        let read_latency = s.family("cleave_volume_read_latency_seconds", Histogram, "Time to serve a read.");
        let write_latency =
            s.family("cleave_volume_write_latency_seconds", Histogram, "Time to serve a write (FUA included).");
        let hits = s.family("cleave_volume_cache_hits", Counter, "Chunk pieces of reads served from the local cache.");
        let misses = s.family("cleave_volume_cache_misses", Counter, "Chunk pieces of reads fetched from the targets.");
        let dirty = s.family("cleave_volume_dirty_bytes", Gauge, "Bytes in the cache not yet destaged.");
        let cache = s.family("cleave_volume_cache_bytes", Gauge, "Bytes of chunks held in the local cache.");
        let cache_limit = s.family("cleave_volume_cache_limit_bytes", Gauge, "Bytes the local cache may hold.");
        let size = s.family("cleave_volume_size_bytes", Gauge, "Size of the volume.");
        let lag = s.family(
            "cleave_volume_destage_lag_seconds",
            Gauge,
            "Age of the oldest write not yet destaged; 0 when nothing waits.",
        );
        let health = s.family("cleave_volume_health", Gauge, "1 for the volume's health state, 0 for the others.");
        let stored = s.family(
            "cleave_volume_stored_bytes",
            Counter,
            "Bytes of shares stored on the targets since the volume opened, by kind (data, metadata).",
        );
        let t_latency =
            s.family("cleave_target_latency_seconds", Gauge, "Request latency of a target (moving average).");
        let t_requests = s.family("cleave_target_requests", Counter, "Requests to a target.");
        let t_errors = s.family("cleave_target_errors", Counter, "Requests to a target that failed.");
        let t_up = s.family("cleave_target_up", Gauge, "1 if the target answers, 0 if it is down.");
        let health_rows = |s: &mut Snapshot, name: &str, now: HealthState| {
            for st in HEALTH_STATES {
                s.add(health, vec![("volume", name.to_string()), ("state", st.as_str().to_string())], flag(st == now));
            }
        };
        for v in self.served_volumes() {
            let name = v.config().name.clone();
            let l = || vec![("volume", name.clone())];
            let io = v.io_stats();
            let c = |a: &std::sync::atomic::AtomicU64| Value::Counter(IoStats::get(a));
            s.add(read_ops, l(), c(&io.read_ops));
            s.add(read_bytes, l(), c(&io.read_bytes));
            s.add(write_ops, l(), c(&io.write_ops));
            s.add(write_bytes, l(), c(&io.write_bytes));
            s.add(read_latency, l(), Value::Histogram(io.read_latency.snapshot()));
            s.add(write_latency, l(), Value::Histogram(io.write_latency.snapshot()));
            s.add(hits, l(), c(&io.cache_hits));
            s.add(misses, l(), c(&io.cache_misses));
            let status = v.status();
            s.add(dirty, l(), Value::Gauge(status.dirty_bytes as f64));
            s.add(cache, l(), Value::Gauge(status.cache_bytes as f64));
            s.add(cache_limit, l(), Value::Gauge(status.cache_limit_bytes as f64));
            s.add(size, l(), Value::Gauge(status.config.size as f64));
            s.add(lag, l(), Value::Gauge(v.destage_lag().as_secs_f64()));
            let (data, metadata) = v.stored_bytes();
            for (kind, bytes) in [("data", data), ("metadata", metadata)] {
                s.add(stored, vec![("volume", name.clone()), ("kind", kind.to_string())], Value::Counter(bytes));
            }
            let h = self.health(&status);
            health_rows(s, &name, HealthState::of(&h));
            let down = targets_down(&h);
            for (i, t) in v.target_reports().into_iter().enumerate() {
                let uri = status.config.targets.get(i).cloned().unwrap_or_default();
                let up = t.up && !down.contains(&uri) && !down.contains(&t.name);
                let tl = || vec![("volume", name.clone()), ("share", i.to_string()), ("target", t.name.clone())];
                s.add(t_latency, tl(), Value::Gauge(t.latency.as_secs_f64()));
                s.add(t_requests, tl(), Value::Counter(t.requests));
                s.add(t_errors, tl(), Value::Counter(t.errors));
                s.add(t_up, tl(), flag(up));
            }
        }
        let unopened: Vec<String> = self.unopened.read().expect("not poisoned").keys().cloned().collect();
        for name in unopened {
            health_rows(s, &name, HealthState::Unavailable);
        }
    }

    fn node_metrics(&self, s: &mut Snapshot) {
        let capacity = s.family("cleave_node_capacity_bytes", MetricType::Gauge, "Capacity a storage node offers.");
        let free = s.family("cleave_node_free_bytes", MetricType::Gauge, "Free space on a storage node.");
        let up = s.family("cleave_node_up", MetricType::Gauge, "1 if the node is up, 0 if it is down.");
        for n in self.pool.nodes() {
            let l = || vec![("node", n.id.clone()), ("address", n.address.clone()), ("site", n.site.clone())];
            s.add(capacity, l(), Value::Gauge(n.capacity_bytes as f64));
            s.add(free, l(), Value::Gauge(n.free_bytes as f64));
            s.add(up, l(), flag(n.status == NodeStatus::Up));
        }
    }

    /// The mirrors: state and lag per volume, and what the listener dropped.
    fn mirror_metrics(&self, s: &mut Snapshot) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(e) = self.mirror.get() else { return };
        let lag = s.family(
            "cleave_mirror_lag_bytes",
            MetricType::Gauge,
            "Bytes acknowledged to hosts, not yet on the mirror.",
        );
        let in_sync = s.family("cleave_mirror_in_sync", MetricType::Gauge, "1 if the volume's mirror is in sync.");
        let resync =
            s.family("cleave_mirror_resync_remaining_regions", MetricType::Gauge, "Regions (1 MiB) left to copy.");
        for m in e.list() {
            let l = || vec![("volume", m.volume.clone()), ("role", format!("{:?}", m.role).to_lowercase())];
            s.add(lag, l(), Value::Gauge(m.lag_bytes as f64));
            s.add(in_sync, l(), flag(m.state == cleave_mirror::MirrorState::InSync));
            s.add(resync, l(), Value::Gauge(m.bitmap_regions as f64));
        }
        let hb = s.family("cleave_mirror_heartbeats", MetricType::Counter, "Heartbeats received, by outcome.");
        let c = &e.heartbeats.counters;
        for (outcome, n) in
            [("accepted", &c.received), ("malformed", &c.malformed), ("forged", &c.forged), ("replayed", &c.replayed)]
        {
            s.add(hb, vec![("outcome", outcome.to_string())], Value::Counter(n.load(Relaxed)));
        }
        let refused = s.family(
            "cleave_mirror_refused",
            MetricType::Counter,
            "Mirror connections and requests refused, by reason.",
        );
        let r = &e.refusals;
        for (reason, n) in [("connection", &r.connections), ("malformed", &r.malformed), ("forbidden", &r.forbidden)] {
            s.add(refused, vec![("reason", reason.to_string())], Value::Counter(n.load(Relaxed)));
        }
    }

    /// The webhook's deliveries since start, and its queue.
    fn webhook_metrics(&self, s: &mut Snapshot) {
        let w = self.webhook();
        let events = s.family("cleave_webhook_events", MetricType::Counter, "Events delivered or dropped, by outcome.");
        for (outcome, n) in [("delivered", w.delivered), ("dropped", w.dropped)] {
            s.add(events, vec![("outcome", outcome.to_string())], Value::Counter(n));
        }
        let failed = s.family("cleave_webhook_failures", MetricType::Counter, "Delivery attempts that failed.");
        s.add(failed, Vec::new(), Value::Counter(w.failed));
        let queued = s.family("cleave_webhook_queued", MetricType::Gauge, "Events waiting for delivery.");
        s.add(queued, Vec::new(), Value::Gauge(w.queued as f64));
    }

    fn task_metrics(&self, s: &mut Snapshot) {
        let family = s.family("cleave_tasks", MetricType::Gauge, "Tasks known to this gateway, by kind and state.");
        for kind in TASK_KINDS {
            for state in TASK_STATES {
                let n = self.tasks.count(kind, state);
                let labels = vec![("kind", kind.as_str().to_string()), ("state", state.as_str().to_string())];
                s.add(family, labels, Value::Gauge(n as f64));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_samples_in_the_prometheus_text_format() {
        let om = "# HELP a_ops Ops.\n# TYPE a_ops counter\na_ops_total{v=\"x\"} 2\n# HELP g G.\n# TYPE g gauge\ng 1.0\n# EOF\n";
        let text = prometheus_text(om, &["a_ops"]);
        assert_eq!(text, "# HELP a_ops_total Ops.\n# TYPE a_ops_total counter\na_ops_total{v=\"x\"} 2\n# HELP g G.\n# TYPE g gauge\ng 1.0\n");
    }
}
