//! The in-process cost of the framework alone, without RabbitMQ's noise: what one call costs
//! when no network is involved, so per-call overhead regressions show up plainly.
//!
//! ```text
//! cargo bench --bench dispatch
//! ENOKI_BENCH_CALLS=50000 ENOKI_BENCH_ROUNDS=5 cargo bench --bench dispatch
//! ```
//!
//! Rows:
//!
//! - `worker, no broker (enoki::testing)`: `enoki::testing::Hook` calls the same `echo` handler
//!   on the bench's thread, through a real worker: arguments bound, context built, dependency
//!   hooks run (none here), the result encoded as JSON and parsed back. No broker, no thread
//!   hand-off: the framework's own per-call cost.
//! - `memory:// round trip, serial`: a `ClusterRpcProxy` calls an `echo` container on the
//!   in-process broker and waits for the reply, one call at a time: encode, route, wake a
//!   worker, decode, run the handler, encode and route the reply, wake the caller, ack.
//! - `memory:// round trip, 8 in flight`: 8 threads share one client and call at once; ns per
//!   call is wall time over calls (the inverse of throughput), the percentiles are per call.
//!
//! - `floor: crossbeam ping-pong`: a thread sends a message to another over a crossbeam channel
//!   and waits for the answer on a second one: the two thread wake-ups every in-process round
//!   trip needs (caller to worker, worker to caller), and nothing else. With no work between
//!   send and answer, crossbeam's spin before parking often catches the answer, so this is a
//!   best case: a round trip that does real work parks both threads, and each wake-up then costs
//!   a futex wake and a reschedule (several microseconds, far more on a loaded machine).
//!
//! Every figure is the best of the rounds (`ENOKI_BENCH_ROUNDS`, default 3) for that statistic.

#[path = "support/nameko.rs"]
mod nameko;
use enoki::testing::Hook;
use enoki::{ClusterRpcProxy, Config, Container, Service};
use serde_json::Value;
use std::time::{Duration, Instant};

const WARMUP: usize = 1_000;
const DEFAULT_CALLS: usize = 20_000;
const DEFAULT_ROUNDS: usize = 3;
const IN_FLIGHT: usize = 8;
const TIMEOUT: Duration = Duration::from_secs(10);

/// One row: per-call latencies and the wall time they took.
#[derive(Clone, Copy)]
struct Stats {
    ns_per_call: f64,
    p50: u64,
    p99: u64,
}

impl Stats {
    fn from(mut latencies: Vec<u64>, wall: Duration) -> Stats {
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        Stats {
            ns_per_call: wall.as_nanos() as f64 / latencies.len() as f64,
            p50: at(0.50),
            p99: at(0.99),
        }
    }

    fn best(self, other: Stats) -> Stats {
        Stats {
            ns_per_call: self.ns_per_call.min(other.ns_per_call),
            p50: self.p50.min(other.p50),
            p99: self.p99.min(other.p99),
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

fn call(cluster: &ClusterRpcProxy) -> u64 {
    let started = Instant::now();
    let back: String = cluster
        .call_timeout("echo", "echo", ("hello",), TIMEOUT)
        .expect("the echo call succeeds");
    let elapsed = started.elapsed().as_nanos() as u64;
    assert_eq!(back, "hello");
    elapsed
}

fn echo_service() -> Service {
    Service::new("echo").rpc("echo", |_ctx, (value,): (Value,)| Ok(value))
}

/// One call through a worker on the calling thread, with no broker.
fn direct(hook: &Hook, calls: usize) -> Stats {
    let started = Instant::now();
    let latencies: Vec<u64> = (0..calls)
        .map(|_| {
            let sent = Instant::now();
            let back: String = hook
                .rpc("echo", ("hello",))
                .expect("the echo call succeeds");
            let elapsed = sent.elapsed().as_nanos() as u64;
            assert_eq!(back, "hello");
            elapsed
        })
        .collect();
    Stats::from(latencies, started.elapsed())
}

fn serial(cluster: &ClusterRpcProxy, calls: usize) -> Stats {
    let started = Instant::now();
    let latencies: Vec<u64> = (0..calls).map(|_| call(cluster)).collect();
    Stats::from(latencies, started.elapsed())
}

fn in_flight(cluster: &ClusterRpcProxy, calls: usize) -> Stats {
    let per_thread = (calls / IN_FLIGHT).max(1);
    let started = Instant::now();
    let latencies: Vec<u64> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..IN_FLIGHT)
            .map(|_| s.spawn(|| (0..per_thread).map(|_| call(cluster)).collect::<Vec<_>>()))
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("a client thread panicked"))
            .collect()
    });
    Stats::from(latencies, started.elapsed())
}

/// Two threads passing a message back and forth: the wake-ups a round trip cannot avoid.
fn ping_pong(calls: usize) -> Stats {
    let (to_server, requests) = crossbeam_channel::bounded::<Vec<u8>>(1);
    let (to_client, replies) = crossbeam_channel::bounded::<Vec<u8>>(1);
    let server = std::thread::spawn(move || {
        for request in requests {
            if to_client.send(request).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let latencies: Vec<u64> = (0..calls)
        .map(|_| {
            let sent = Instant::now();
            to_server.send(b"hello".to_vec()).expect("the server runs");
            let back = replies.recv().expect("the server answers");
            assert_eq!(back, b"hello");
            sent.elapsed().as_nanos() as u64
        })
        .collect();
    let wall = started.elapsed();
    drop(to_server);
    server.join().expect("the ping-pong server ends");
    Stats::from(latencies, wall)
}

fn main() {
    enoki::logger::init();
    let calls = env_usize("ENOKI_BENCH_CALLS", DEFAULT_CALLS);
    let rounds = env_usize("ENOKI_BENCH_ROUNDS", DEFAULT_ROUNDS);
    let config = Config::new().amqp_uri("memory://dispatch-bench");
    let mut container = Container::new(echo_service(), config.clone());
    container.start().expect("the echo container starts");
    let cluster = ClusterRpcProxy::new(&config).expect("the client starts");
    for _ in 0..WARMUP {
        call(&cluster);
    }

    let hook = Hook::new(echo_service()).expect("the hook starts");
    direct(&hook, WARMUP);

    let mut floor: Option<Stats> = None;
    let mut worker: Option<Stats> = None;
    let mut memory_serial: Option<Stats> = None;
    let mut memory_flight: Option<Stats> = None;
    for round in 1..=rounds {
        eprintln!(
            "round {round}/{rounds}: floor, no broker, {calls} calls serial, then {IN_FLIGHT} in flight"
        );
        let p = ping_pong(calls);
        floor = Some(floor.map_or(p, |b| b.best(p)));
        let d = direct(&hook, calls);
        worker = Some(worker.map_or(d, |b| b.best(d)));
        let s = serial(&cluster, calls);
        memory_serial = Some(memory_serial.map_or(s, |b| b.best(s)));
        let f = in_flight(&cluster, calls);
        memory_flight = Some(memory_flight.map_or(f, |b| b.best(f)));
    }
    container.stop();

    println!();
    println!("enoki dispatch: {calls} calls per row and round, best of {rounds} rounds");
    println!(
        "{:<36} {:>12} {:>10} {:>10} {:>12}",
        "path", "ns/call", "p50 ns", "p99 ns", "calls/s"
    );
    let row = |name: &str, stats: Option<Stats>| match stats {
        Some(s) => println!(
            "{:<36} {:>12.0} {:>10} {:>10} {:>12.0}",
            name,
            s.ns_per_call,
            s.p50,
            s.p99,
            1e9 / s.ns_per_call
        ),
        None => println!("{name:<36} {:>12}", "-"),
    };
    row("floor: crossbeam ping-pong", floor);
    row("worker, no broker (enoki::testing)", worker);
    row("memory:// round trip, serial", memory_serial);
    row(
        &format!("memory:// round trip, {IN_FLIGHT} in flight"),
        memory_flight,
    );
    let ns = |s: Option<Stats>| s.map(|s| s.ns_per_call);
    // No floor for this row: it has no thread hop, which is what the ping-pong measures.
    nameko::summary(
        "in-process dispatch, no broker (worker)",
        "ns/call",
        None,
        ns(worker).unwrap_or(f64::NAN),
        None,
        "-",
    );
    nameko::summary(
        "memory:// round trip, serial (floor: thread ping-pong)",
        "ns/call",
        ns(floor),
        ns(memory_serial).unwrap_or(f64::NAN),
        None,
        "-",
    );
}
