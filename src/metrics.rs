//! Metrics, off by default: per entrypoint call counts, error counts and latency quantiles,
//! worker pool occupancy, consumer reconnects and readiness.
//!
//! Turn them on with the configuration key `METRICS_ADDRESS` (`host:port`; port 0 picks a free
//! one): every container of the process with that address is served on it, in Prometheus text
//! format at `/metrics`, with a health check at `/health` that answers 200 only while every
//! container's consumer is connected and consuming, and 503 otherwise. `METRICS: true` alone
//! keeps the numbers (for `enoki describe`) without serving them.
//!
//! The hot path takes no lock: a handler's call adds to three atomic counters and one atomic
//! bucket of a fixed log-scale histogram (see `benches/metrics.rs` for the cost).
//!
//! ```no_run
//! use enoki::{Config, Container, Service};
//!
//! # fn main() -> enoki::Result<()> {
//! let config = Config::from_env()?.set("METRICS_ADDRESS", "127.0.0.1:9102".into())?;
//! let service = Service::new("echo").rpc("echo", |_ctx, (v,): (serde_json::Value,)| Ok(v));
//! let mut container = Container::new(service, config);
//! container.start()?;
//! // curl http://127.0.0.1:9102/metrics ; curl http://127.0.0.1:9102/health
//! # Ok(())
//! # }
//! ```

mod histogram;
pub(crate) mod server;

use crate::Config;
use histogram::Histogram;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The configuration key that turns metrics on and names the address they are served on.
pub const ADDRESS_KEY: &str = "METRICS_ADDRESS";
/// The configuration key that turns metrics on without serving them.
pub const ENABLED_KEY: &str = "METRICS";

/// Whether `config` turns metrics on, and the address to serve them on, if any.
pub(crate) fn settings(config: &Config) -> (bool, Option<String>) {
    let address = match config.get(ADDRESS_KEY) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    };
    let enabled = address.is_some()
        || match config.get(ENABLED_KEY) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => {
                matches!(s.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
            }
            Some(Value::Number(n)) => n.as_f64().is_some_and(|n| n != 0.0),
            _ => false,
        };
    (enabled, address)
}

/// One entrypoint's numbers.
#[derive(Debug)]
struct Entry {
    kind: &'static str,
    calls: AtomicU64,
    errors: AtomicU64,
    latency: Histogram,
}

/// The numbers of one container.
#[derive(Debug)]
pub(crate) struct Metrics {
    service: Arc<str>,
    /// Built at start and never changed after: read without a lock.
    entries: HashMap<Arc<str>, Entry>,
    order: Vec<Arc<str>>,
    max_workers: usize,
    busy: AtomicUsize,
    reconnects: AtomicU64,
    ready: AtomicBool,
}

impl Metrics {
    /// Metrics for `service`'s entrypoints, given as `(kind, name)`.
    pub(crate) fn new(
        service: Arc<str>,
        entrypoints: impl IntoIterator<Item = (&'static str, String)>,
        max_workers: usize,
    ) -> Metrics {
        let mut entries = HashMap::new();
        let mut order = Vec::new();
        for (kind, name) in entrypoints {
            let name: Arc<str> = Arc::from(name);
            order.push(name.clone());
            entries.insert(
                name,
                Entry {
                    kind,
                    calls: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                    latency: Histogram::default(),
                },
            );
        }
        Metrics {
            service,
            entries,
            order,
            max_workers,
            busy: AtomicUsize::new(0),
            reconnects: AtomicU64::new(0),
            ready: AtomicBool::new(false),
        }
    }

    /// Records one handler run of `entrypoint`.
    pub(crate) fn record(&self, entrypoint: &str, elapsed: Duration, failed: bool) {
        if let Some(entry) = self.entries.get(entrypoint) {
            entry.calls.fetch_add(1, Ordering::Relaxed);
            if failed {
                entry.errors.fetch_add(1, Ordering::Relaxed);
            }
            entry.latency.record(elapsed);
        }
    }

    /// A worker took a job or delivery.
    pub(crate) fn busy(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    /// A worker is done with it.
    pub(crate) fn idle(&self) {
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }

    /// The consumer is connected and consuming every queue.
    pub(crate) fn consumer_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The consumer lost its connection and will reconnect.
    pub(crate) fn consumer_lost(&self) {
        // Counted once per lost connection, not per failed attempt to get it back.
        if self.ready.swap(false, Ordering::AcqRel) {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The container stopped consuming.
    pub(crate) fn consumer_stopped(&self) {
        self.ready.store(false, Ordering::Release);
    }

    /// True while the consumer is up.
    pub(crate) fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The service these numbers belong to.
    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    /// The numbers as JSON, for discovery: latencies in seconds.
    pub(crate) fn snapshot(&self) -> Value {
        let entrypoints: serde_json::Map<String, Value> = self
            .order
            .iter()
            .filter_map(|name| {
                let e = self.entries.get(name)?;
                let q = |q| e.latency.quantile(q).map(|d| d.as_secs_f64());
                Some((
                    name.to_string(),
                    json!({
                        "kind": e.kind,
                        "calls": e.calls.load(Ordering::Relaxed),
                        "errors": e.errors.load(Ordering::Relaxed),
                        "p50": q(0.5),
                        "p90": q(0.9),
                        "p99": q(0.99),
                        "seconds_total": e.latency.sum().as_secs_f64(),
                    }),
                ))
            })
            .collect();
        json!({
            "entrypoints": entrypoints,
            "workers_busy": self.busy.load(Ordering::Relaxed),
            "max_workers": self.max_workers,
            "reconnects": self.reconnects.load(Ordering::Relaxed),
            "ready": self.ready(),
        })
    }
}

/// What metrics add to one call, run `calls` times on a service of ten entrypoints: the
/// occupancy count around the job, the two clock reads around the handler, the entrypoint
/// lookup and the counters. Returns the total time. For `benches/metrics.rs`; not an API.
#[doc(hidden)]
pub fn bench_overhead(calls: u64) -> Duration {
    let names: Vec<String> = (0..10).map(|i| format!("method_{i}")).collect();
    let metrics = Metrics::new(
        Arc::from("bench"),
        names.iter().map(|n| ("rpc", n.clone())),
        10,
    );
    let runtime_metrics = Some(Arc::new(metrics));
    let started = std::time::Instant::now();
    for i in 0..calls {
        let name = &names[(i % 10) as usize];
        // As `guarded` and `run_worker` do it, behind the same `Option`.
        if let Some(m) = &runtime_metrics {
            m.busy();
        }
        let t = runtime_metrics.as_ref().map(|_| std::time::Instant::now());
        if let (Some(m), Some(t)) = (&runtime_metrics, t) {
            m.record(std::hint::black_box(name), t.elapsed(), i % 7 == 0);
        }
        if let Some(m) = &runtime_metrics {
            m.idle();
        }
    }
    std::hint::black_box(&runtime_metrics);
    started.elapsed()
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition of several containers' metrics.
pub(crate) fn render(all: &[Arc<Metrics>]) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: &mut dyn FnMut(&mut String)| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        rows(&mut out);
    };
    let each_entry = |out: &mut String, f: &dyn Fn(&mut String, String, &Entry)| {
        for m in all {
            for name in &m.order {
                if let Some(e) = m.entries.get(name) {
                    let labels = format!(
                        "service=\"{}\",entrypoint=\"{}\",kind=\"{}\"",
                        label(&m.service),
                        label(name),
                        e.kind
                    );
                    f(out, labels, e);
                }
            }
        }
    };
    family(
        "enoki_calls_total",
        "counter",
        "Entrypoint handler runs.",
        &mut |out| {
            each_entry(out, &|out, l, e| {
                let _ = writeln!(
                    out,
                    "enoki_calls_total{{{l}}} {}",
                    e.calls.load(Ordering::Relaxed)
                );
            })
        },
    );
    family(
        "enoki_errors_total",
        "counter",
        "Entrypoint handler runs that failed (error or panic).",
        &mut |out| {
            each_entry(out, &|out, l, e| {
                let _ = writeln!(
                    out,
                    "enoki_errors_total{{{l}}} {}",
                    e.errors.load(Ordering::Relaxed)
                );
            })
        },
    );
    family(
        "enoki_handler_duration_seconds",
        "summary",
        "Entrypoint handler run time (quantiles from log-scale buckets, within 12.5%).",
        &mut |out| {
            each_entry(out, &|out, l, e| {
                for q in [0.5, 0.9, 0.99] {
                    let v = e.latency.quantile(q).map_or(f64::NAN, |d| d.as_secs_f64());
                    let _ = writeln!(
                        out,
                        "enoki_handler_duration_seconds{{{l},quantile=\"{q}\"}} {v}"
                    );
                }
                let _ = writeln!(
                    out,
                    "enoki_handler_duration_seconds_sum{{{l}}} {}",
                    e.latency.sum().as_secs_f64()
                );
                let _ = writeln!(
                    out,
                    "enoki_handler_duration_seconds_count{{{l}}} {}",
                    e.latency.count()
                );
            })
        },
    );
    let per_service = |out: &mut String, name: &str, f: &dyn Fn(&Metrics) -> u64| {
        for m in all {
            let _ = writeln!(out, "{name}{{service=\"{}\"}} {}", label(&m.service), f(m));
        }
    };
    family(
        "enoki_workers_busy",
        "gauge",
        "Workers running a job or delivery now.",
        &mut |out| {
            per_service(out, "enoki_workers_busy", &|m| {
                m.busy.load(Ordering::Relaxed) as u64
            })
        },
    );
    family(
        "enoki_workers_max",
        "gauge",
        "Size of the worker pool (max_workers).",
        &mut |out| per_service(out, "enoki_workers_max", &|m| m.max_workers as u64),
    );
    family(
        "enoki_reconnects_total",
        "counter",
        "Times the consumer lost an established broker connection.",
        &mut |out| {
            per_service(out, "enoki_reconnects_total", &|m| {
                m.reconnects.load(Ordering::Relaxed)
            })
        },
    );
    family(
        "enoki_ready",
        "gauge",
        "1 while the consumer is connected and consuming every queue.",
        &mut |out| per_service(out, "enoki_ready", &|m| u64::from(m.ready())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_counts_each_entrypoint() {
        let m = Arc::new(Metrics::new(
            Arc::from("shop"),
            [("rpc", "buy".to_owned()), ("timer", "tick".to_owned())],
            4,
        ));
        m.record("buy", Duration::from_micros(200), false);
        m.record("buy", Duration::from_micros(300), true);
        m.record("unknown", Duration::from_micros(300), true);
        m.consumer_ready();
        let text = render(std::slice::from_ref(&m));
        assert!(
            text.contains(
                "enoki_calls_total{service=\"shop\",entrypoint=\"buy\",kind=\"rpc\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "enoki_errors_total{service=\"shop\",entrypoint=\"buy\",kind=\"rpc\"} 1\n"
            )
        );
        assert!(text.contains(
            "enoki_calls_total{service=\"shop\",entrypoint=\"tick\",kind=\"timer\"} 0\n"
        ));
        assert!(text.contains("enoki_handler_duration_seconds_count{service=\"shop\",entrypoint=\"buy\",kind=\"rpc\"} 2\n"));
        assert!(text.contains("enoki_workers_max{service=\"shop\"} 4\n"));
        assert!(text.contains("enoki_ready{service=\"shop\"} 1\n"));
        assert_eq!(text.matches("# TYPE enoki_calls_total counter").count(), 1);
        let snapshot = m.snapshot();
        assert_eq!(snapshot["entrypoints"]["buy"]["calls"], 2);
        assert_eq!(snapshot["entrypoints"]["buy"]["errors"], 1);
        assert_eq!(snapshot["entrypoints"]["tick"]["p50"], Value::Null);
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn off_by_default() {
        assert_eq!(settings(&Config::new()), (false, None));
        let on = Config::new()
            .set("METRICS", Value::Bool(true))
            .expect("any key");
        assert_eq!(settings(&on), (true, None));
        let served = Config::new()
            .set(ADDRESS_KEY, "127.0.0.1:0".into())
            .expect("any key");
        assert_eq!(settings(&served), (true, Some("127.0.0.1:0".to_owned())));
    }
}
