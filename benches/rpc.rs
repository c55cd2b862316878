//! RPC round trips: enoki against a raw amiquip floor, measured in the same run.
//!
//! ```text
//! cargo bench --bench rpc
//! ENOKI_BENCH_AMQP_URI=amqp://guest:guest@localhost:5672/enoki_test \
//!     ENOKI_BENCH_CALLS=2000 ENOKI_BENCH_ROUNDS=2 cargo bench --bench rpc
//! ```
//!
//! The floor is what any Nameko-compatible client and server must do on the wire, written
//! directly on amiquip with nothing else: `TCP_NODELAY` sockets, separate consuming and
//! publishing connections, a durable service queue bound to `nameko-rpc` consumed with prefetch
//! 10, requests published persistent and mandatory and replies persistent, both waiting for
//! their publisher confirm, requests acked only after the reply is confirmed, and a durable
//! reply queue (`x-expires` five minutes) bound by a UUID and consumed with automatic acks, as
//! Nameko consumes it (enoki acks its replies, batched, so they survive a reconnect; that cost
//! is its own). The floor does no JSON work and no
//! dependency hooks; its requests carry the same `call_id_stack` header a Nameko client sends.
//!
//! Floor servers come in two shapes: `inline` handles each request on the consuming thread (the
//! raw minimum, one at a time), `pool` hands requests to 10 worker threads, each with its own
//! publishing channel, which send the acks back to the consuming thread (enoki's shape). Floor
//! clients: `direct` consumes the reply queue on the calling thread (serial only), `shared` has
//! a listener thread waking callers by correlation id and a pool of publishing channels
//! (enoki's shape, needed for calls in flight). The serial floor is the raw minimum (inline
//! server, direct client); each in-flight floor is whichever server shape serves more calls per
//! second. Two mixed rows (enoki client against the floor server, floor client against the enoki
//! server) show whether enoki's overhead sits in its client or its service.
//!
//! Two hops (client -> A -> B): the floor is an inline server that makes one raw serial call
//! (a direct client) to the inline floor server before replying; enoki is a service whose rpc
//! calls the enoki echo service through `RpcProxy`.
//!
//! With `ENOKI_BENCH_PYTHON` set to a Python with Nameko 2.14.1 (`scripts/bench --with-nameko`),
//! `bench/nameko_bench.py` runs an echo service and a relaying one, driven by the floor's shared
//! client: the same load generator, in the same run.
//!
//! Each round runs the serial clients interleaved in blocks of 50 calls (floor, enoki, mixed,
//! two hops, Nameko, rotating), so the drift of a noisy machine falls on all of them alike, then
//! 1, 8, 32 and 128 threads in flight against each server. Rounds repeat (`ENOKI_BENCH_ROUNDS`,
//! default 2), and every reported number is the best of the rounds for that statistic (lowest
//! percentile, highest throughput), for floor and enoki alike. `BENCH` lines at the end are the
//! summary `scripts/bench` gathers.
//!
//! Every row also has the CPU time a call cost in this process (clients and in-process servers),
//! in the RabbitMQ node and in the Python service (benches/support/cpu.rs), and a last table
//! turns the costs at 32 and 128 in flight into the ceiling they set: on `n` cores no client
//! and service pair can serve more than `n / (CPU per call)` calls a second.
//!
//! A serial p50 of 20 ms or more means the 40 ms Nagle floor is back: the bench then fails. (With
//! calls in flight the p50 is mostly queueing, n over the throughput, so it is not checked.)

use enoki::{ClusterRpcProxy, Config, Container, RpcProxy, Service};
#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/floor.rs"]
mod floor;
#[path = "support/nameko.rs"]
mod nameko;
use cpu::{CpuMeter, CpuUse};
use floor::{
    Cleanup, FloorServer, TIMEOUT, WORKERS, reachable_vhost, with_direct_client,
    with_shared_client, with_shared_client_of,
};
use nameko::NamekoService;
use serde_json::Value;
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Barrier;
use std::time::{Duration, Instant};

const DEFAULT_URI: &str = "amqp://guest:guest@localhost:5672/enoki_test";
const WARMUP: usize = 200;
const DEFAULT_CALLS: usize = 2000;
const DEFAULT_ROUNDS: usize = 2;
/// Serial calls are interleaved between floor and enoki in blocks of this many calls.
const BLOCK: usize = 50;
/// A p50 at or above this means Nagle's algorithm and delayed ACKs are back (about 44 ms).
const NAGLE_P50: Duration = Duration::from_millis(20);

fn main() -> ExitCode {
    // enoki's and amiquip's warnings and errors (ENOKI_LOG sets the level) go to stderr.
    enoki::logger::init();
    let calls = env_usize("ENOKI_BENCH_CALLS", DEFAULT_CALLS);
    let rounds = env_usize("ENOKI_BENCH_ROUNDS", DEFAULT_ROUNDS);
    let uri_text = std::env::var("ENOKI_BENCH_AMQP_URI").unwrap_or_else(|_| DEFAULT_URI.into());
    let (uri, uri_text) = reachable_vhost(&uri_text);
    let python = nameko::python();
    println!(
        "rpc bench: broker {uri}, {rounds} rounds, serial {calls} calls, in flight \
         {IN_FLIGHT_LEVELS:?} threads sharing about {calls} calls, warm-up {WARMUP} calls{}",
        if python.is_some() {
            ", with Python Nameko"
        } else {
            ""
        }
    );

    let id = uuid::Uuid::new_v4().simple().to_string();
    let echo = format!("bench_echo_{id}");
    let relay = format!("bench_relay_{id}");
    let inline_service = format!("bench_floor_inline_{id}");
    let pool_service = format!("bench_floor_pool_{id}");
    let relay_service = format!("bench_floor_relay_{id}");
    let py_echo = format!("bench_py_echo_{id}");
    let py_relay = format!("bench_py_relay_{id}");
    // Deletes the durable queues even if the bench panics; reply queues also expire.
    let mut cleanup = Cleanup {
        uri: uri.clone(),
        queues: [
            &echo,
            &relay,
            &inline_service,
            &pool_service,
            &relay_service,
            &py_echo,
            &py_relay,
        ]
        .map(|s| format!("rpc-{s}"))
        .to_vec(),
    };
    let inline = FloorServer::start(&uri, &inline_service, 0);
    let pool = FloorServer::start(&uri, &pool_service, WORKERS);
    let floor_relay = FloorServer::relaying(&uri, &relay_service, 0, Some(&inline_service));
    let config = Config::new().amqp_uri(&uri_text).max_workers(WORKERS);
    let mut container = Container::new(
        Service::new(&echo).rpc("echo", |_ctx, (v,): (Value,)| Ok(v)),
        config.clone(),
    );
    container
        .start()
        .expect("cannot start the enoki echo service");
    let mut relay_container = Container::new(
        Service::new(&relay)
            .dependency("echo", RpcProxy::new(&echo))
            .rpc("relay", |ctx, (v,): (Value,)| {
                ctx.dependency::<RpcProxy>("echo")?
                    .call::<Value>("echo", (v,))
            }),
        config.clone(),
    );
    relay_container
        .start()
        .expect("cannot start the enoki relay service");
    let cluster = ClusterRpcProxy::new(&config)
        .expect("cannot start the enoki ClusterRpcProxy")
        .timeout(TIMEOUT);
    cleanup.queues.push(cluster.reply_queue().to_owned());
    let py_services = python.as_deref().map(|python| {
        let amqp = uri_text.as_str();
        (
            NamekoService::start(python, &[("AMQP_URI", amqp), ("SERVICE_NAME", &py_echo)]),
            NamekoService::start(
                python,
                &[
                    ("AMQP_URI", amqp),
                    ("SERVICE_NAME", &py_relay),
                    ("TARGET_SERVICE", &py_echo),
                ],
            ),
        )
    });

    // Where each call's CPU goes: this process, the broker and the Nameko service.
    let broker_pid = cpu::broker_pid();
    let broker = broker_pid.as_deref();
    let meter = |peer: Option<u32>| move || CpuMeter::start(broker, peer);

    let mut results: HashMap<&'static str, Vec<Sample>> = HashMap::new();
    let mut record = |name: &'static str, sample: Sample| {
        let stats = Stats::of(&sample);
        eprintln!(
            "  {name:<50} p50 {:>6} µs  {:>6.0} calls/s",
            micros(stats.p50),
            stats.throughput
        );
        results.entry(name).or_default().push(sample);
    };
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}: serial, floor and enoki interleaved");
        let serial = with_direct_client(&uri, &inline.service, |direct| {
            with_direct_client(&uri, &floor_relay.service, |relayed| {
                with_shared_client(&uri, &pool.service, 1, |shared| {
                    with_shared_client(&uri, &echo, 1, |to_enoki| {
                        let mut clients: Vec<&mut dyn FnMut()> = Vec::new();
                        let (mut enoki_echo, mut enoki_floor, mut enoki_relay) = (
                            || enoki_call(&cluster, &echo, "echo"),
                            || enoki_call(&cluster, &pool.service, "echo"),
                            || enoki_call(&cluster, &relay, "relay"),
                        );
                        let mut shared_call = || shared.call();
                        let mut to_enoki_call = || to_enoki.call();
                        clients.push(direct);
                        clients.push(&mut shared_call);
                        clients.push(&mut enoki_echo);
                        clients.push(&mut enoki_floor);
                        clients.push(&mut to_enoki_call);
                        clients.push(relayed);
                        clients.push(&mut enoki_relay);
                        match &py_services {
                            Some(_) => with_shared_client(&uri, &py_echo, 1, |py| {
                                with_shared_client_of(&uri, &py_relay, "relay", 1, |py_chain| {
                                    let mut py_call = || py.call();
                                    let mut py_chain_call = || py_chain.call();
                                    let mut all: Vec<&mut dyn FnMut()> =
                                        clients.drain(..).map(|c| c as &mut dyn FnMut()).collect();
                                    all.push(&mut py_call);
                                    all.push(&mut py_chain_call);
                                    measure_interleaved(calls, broker, &mut all)
                                })
                            }),
                            None => measure_interleaved(calls, broker, &mut clients),
                        }
                    })
                })
            })
        });
        for (name, sample) in SERIAL.into_iter().chain(NAMEKO_SERIAL).zip(serial) {
            record(name, sample);
        }
        for threads in IN_FLIGHT_LEVELS {
            let per_thread = (calls / threads).max(10);
            eprintln!("round {round}/{rounds}: {threads} in flight");
            for (kind, server) in [("inline", &inline), ("pool", &pool)] {
                let sample = with_shared_client(&uri, &server.service, threads, |client| {
                    measure_threads(threads, per_thread, meter(None), || client.call())
                });
                record(flight_row("floor", kind, threads), sample);
            }
            let sample = measure_threads(threads, per_thread, meter(None), || {
                enoki_call(&cluster, &echo, "echo")
            });
            record(flight_row("enoki", "", threads), sample);
            if let Some((py_echo_service, _)) = &py_services {
                let peer = Some(py_echo_service.pid());
                let sample = with_shared_client(&uri, &py_echo, threads, |client| {
                    measure_threads(threads, per_thread, meter(peer), || client.call())
                });
                record(flight_row("nameko", "", threads), sample);
            }
        }
    }

    drop(py_services);
    cluster.close();
    relay_container.stop();
    container.stop();
    floor_relay.stop();
    inline.stop();
    pool.stop();
    drop(cleanup);

    let best: HashMap<&str, Stats> = results
        .iter()
        .map(|(name, samples)| (*name, Stats::best_of(samples)))
        .collect();
    report(&best)
}

/// How many calls the in-flight rows keep outstanding (one thread each).
const IN_FLIGHT_LEVELS: [usize; 4] = [1, 8, 32, 128];

/// The row name of an in-flight measurement (leaked: a handful per run).
fn flight_row(who: &str, kind: &str, threads: usize) -> &'static str {
    let name = match kind {
        "" => format!("{who} {threads} in flight"),
        kind => format!("{who} {threads} in flight, {kind} server, shared client"),
    };
    Box::leak(name.into_boxed_str())
}

// Rows of the results, by what was measured.
const FLOOR_SERIAL_INLINE: &str = "floor serial, inline server, direct client";
const FLOOR_SERIAL_POOL: &str = "floor serial, pool server, shared client";
const FLOOR_CHAIN: &str = "floor serial, client -> A -> B, inline servers";
const ENOKI_SERIAL: &str = "enoki serial";
const ENOKI_CHAIN: &str = "enoki serial, client -> A -> B (RpcProxy)";
const MIXED_ENOKI_CLIENT: &str = "mixed serial, enoki client, floor pool server";
const MIXED_ENOKI_SERVER: &str = "mixed serial, floor shared client, enoki server";
const NAMEKO_SERIAL_ROW: &str = "nameko serial (floor shared client)";
const NAMEKO_CHAIN: &str = "nameko serial, client -> A -> B (RpcProxy)";
/// The serial clients, in the order `main` interleaves them.
const SERIAL: [&str; 7] = [
    FLOOR_SERIAL_INLINE,
    FLOOR_SERIAL_POOL,
    ENOKI_SERIAL,
    MIXED_ENOKI_CLIENT,
    MIXED_ENOKI_SERVER,
    FLOOR_CHAIN,
    ENOKI_CHAIN,
];
/// The serial clients added with Python Nameko, after [`SERIAL`].
const NAMEKO_SERIAL: [&str; 2] = [NAMEKO_SERIAL_ROW, NAMEKO_CHAIN];

fn report(best: &HashMap<&str, Stats>) -> ExitCode {
    let row = |name: &str| best.get(name).copied();
    let mut names: Vec<&str> = best.keys().copied().collect();
    names.sort();
    println!();
    println!(
        "every measurement, best of rounds (latency in µs; CPU per call in µs: the bench \
         process with its clients and in-process servers, the RabbitMQ node, the Python service)"
    );
    println!(
        "{:<55} {:>8} {:>8} {:>8} {:>10} {:>7} {:>7} {:>7}",
        "", "p50", "p90", "p99", "calls/s", "bench", "broker", "python"
    );
    for name in &names {
        let s = best[name];
        let cpu = s.cpu_per_call;
        println!(
            "{name:<55} {:>8} {:>8} {:>8} {:>10.0} {:>7} {:>7} {:>7}",
            micros(s.p50),
            micros(s.p90),
            micros(s.p99),
            s.throughput,
            cpu::micros(cpu.bench),
            cpu::micros(cpu.broker),
            cpu::micros(cpu.peer),
        );
    }
    cpu_budget(best);

    // The serial floor is the raw minimum; under load, whichever floor shape serves more. The
    // "same shape" row compares enoki with the floor built as enoki is (worker pool, shared
    // reply queue), which isolates what enoki adds from what its architecture costs.
    println!();
    let p50 = |s: Option<Stats>| s.map(|s| s.p50.as_secs_f64() * 1e6);
    let rate = |s: Option<Stats>| s.map(|s| s.throughput);
    let serial = row(ENOKI_SERIAL).expect("enoki serial was measured");
    let chain = row(ENOKI_CHAIN).expect("the enoki chain was measured");
    nameko::summary(
        "RPC serial p50",
        "µs",
        p50(row(FLOOR_SERIAL_INLINE)),
        serial.p50.as_secs_f64() * 1e6,
        p50(row(NAMEKO_SERIAL_ROW)),
        "≤ 1.10× floor",
    );
    nameko::summary(
        "RPC serial p50, same-shape floor",
        "µs",
        p50(row(FLOOR_SERIAL_POOL)),
        serial.p50.as_secs_f64() * 1e6,
        None,
        "-",
    );
    nameko::summary(
        "RPC client -> A -> B p50",
        "µs",
        p50(row(FLOOR_CHAIN)),
        chain.p50.as_secs_f64() * 1e6,
        p50(row(NAMEKO_CHAIN)),
        "-",
    );
    for threads in IN_FLIGHT_LEVELS {
        let floor = [
            row(flight_row("floor", "inline", threads)),
            row(flight_row("floor", "pool", threads)),
        ]
        .into_iter()
        .flatten()
        .map(|s| s.throughput)
        .reduce(f64::max);
        let enoki = row(flight_row("enoki", "", threads)).expect("enoki in flight was measured");
        nameko::summary(
            &format!("RPC {threads} in flight"),
            "calls/s",
            floor,
            enoki.throughput,
            rate(row(flight_row("nameko", "", threads))),
            if threads >= 32 {
                "≥ 0.8× floor, ≥ 6× nameko"
            } else {
                "-"
            },
        );
    }

    let slow: Vec<&str> = SERIAL
        .into_iter()
        .filter(|name| row(name).is_some_and(|s| s.p50 >= NAGLE_P50))
        .collect();
    if slow.is_empty() {
        println!(
            "Nagle check: every serial p50 is under {} ms: ok",
            NAGLE_P50.as_millis()
        );
        ExitCode::SUCCESS
    } else {
        println!("WARNING: 40 ms Nagle floor detected (p50 >= 20 ms in: {slow:?})");
        ExitCode::FAILURE
    }
}

/// What a call costs in CPU under load, in every process together, and so the most calls per
/// second this machine's cores could serve at that cost, whatever the client or service did.
fn cpu_budget(best: &HashMap<&str, Stats>) {
    println!();
    println!("CPU per call under load (µs, best of rounds)");
    cpu::print_header("calls/s");
    for threads in [32, 128] {
        for name in [
            flight_row("floor", "inline", threads),
            flight_row("floor", "pool", threads),
            flight_row("enoki", "", threads),
            flight_row("nameko", "", threads),
        ] {
            if let Some(s) = best.get(name) {
                cpu::print_row(name, s.throughput, &s.cpu_per_call);
            }
        }
    }
}

/// Latencies of one measurement and the wall time it took.
struct Sample {
    latencies: Vec<Duration>,
    wall: Duration,
    /// CPU time of the bench process (clients, servers, amiquip's I/O threads), the broker and
    /// the Nameko service while measuring; `None` where `/proc` does not show it.
    cpu: CpuUse,
}

/// Percentiles, throughput and CPU time per call.
#[derive(Clone, Copy)]
struct Stats {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    throughput: f64,
    cpu_per_call: CpuUse,
}

impl Stats {
    fn of(sample: &Sample) -> Stats {
        let mut sorted = sample.latencies.clone();
        sorted.sort_unstable();
        Stats {
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            throughput: sorted.len() as f64 / sample.wall.as_secs_f64(),
            cpu_per_call: sample.cpu.per(sorted.len()),
        }
    }

    /// The best of each statistic over the rounds.
    fn best_of(samples: &[Sample]) -> Stats {
        samples
            .iter()
            .map(Stats::of)
            .reduce(|a, b| Stats {
                p50: a.p50.min(b.p50),
                p90: a.p90.min(b.p90),
                p99: a.p99.min(b.p99),
                throughput: a.throughput.max(b.throughput),
                cpu_per_call: a.cpu_per_call.min(b.cpu_per_call),
            })
            .expect("at least one round")
    }
}

/// Nearest-rank percentile of sorted, non-empty latencies.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(d: Duration) -> u128 {
    d.as_micros()
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{name} must be a positive integer, not {v:?}")),
        Err(_) => default,
    }
}

/// Serial round trips from several clients on the calling thread, after a warm-up of each,
/// interleaved in blocks of [`BLOCK`] calls so that the drift of a noisy machine falls on all of
/// them alike. Returns one sample per client, in order.
fn measure_interleaved(
    calls: usize,
    broker: Option<&str>,
    clients: &mut [&mut dyn FnMut()],
) -> Vec<Sample> {
    for call in clients.iter_mut() {
        for _ in 0..WARMUP {
            call();
        }
    }
    let mut samples: Vec<Sample> = clients
        .iter()
        .map(|_| Sample {
            latencies: Vec::with_capacity(calls),
            wall: Duration::ZERO,
            cpu: CpuUse::ZERO,
        })
        .collect();
    for block in 0..calls.div_ceil(BLOCK) {
        let n = BLOCK.min(calls - block * BLOCK);
        for i in 0..clients.len() {
            // Rotate who goes first, so that no client always follows the same one.
            let c = (block + i) % clients.len();
            let meter = CpuMeter::start(broker, None);
            let block_start = Instant::now();
            for _ in 0..n {
                let started = Instant::now();
                clients[c]();
                samples[c].latencies.push(started.elapsed());
            }
            samples[c].wall += block_start.elapsed();
            samples[c].cpu = samples[c].cpu.plus(meter.stop());
        }
    }
    samples
}

/// `per_thread` round trips on each of `threads` threads after a warm-up, the measured calls
/// of all threads starting together; `call` makes one round trip.
/// `cpu` is started just before the measured calls (with the broker and any peer to watch).
fn measure_threads(
    threads: usize,
    per_thread: usize,
    cpu: impl FnOnce() -> CpuMeter,
    call: impl Fn() + Sync,
) -> Sample {
    let warmup = (WARMUP / threads).max(10);
    let start = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    for _ in 0..warmup {
                        call();
                    }
                    start.wait();
                    let mut latencies = Vec::with_capacity(per_thread);
                    for _ in 0..per_thread {
                        let started = Instant::now();
                        call();
                        latencies.push(started.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let meter = cpu();
        start.wait();
        let t = Instant::now();
        let latencies: Vec<Duration> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("a bench thread panicked"))
            .collect();
        let wall = t.elapsed();
        let cpu = meter.stop();
        Sample {
            latencies,
            wall,
            cpu,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// enoki

fn enoki_call(cluster: &ClusterRpcProxy, service: &str, method: &str) {
    let reply: Value = cluster
        .call(service, method, ("hello",))
        .expect("enoki echo call failed");
    assert_eq!(reply, "hello");
}
