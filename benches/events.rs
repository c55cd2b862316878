//! Event delivery end to end, enoki against a raw amiquip floor measured in the same run, and
//! the timer's accuracy.
//!
//! ```text
//! cargo bench --bench events
//! ENOKI_BENCH_AMQP_URI=amqp://guest:guest@localhost:5672/enoki_test ENOKI_BENCH_EVENTS=5000 \
//!     ENOKI_BENCH_PUBLISHERS=16 ENOKI_BENCH_ROUNDS=3 cargo bench --bench events
//! ```
//!
//! The floor does on the wire what any Nameko-compatible dispatcher and handler must, written
//! directly on amiquip with nothing else: `TCP_NODELAY` sockets, separate publishing and
//! consuming connections, `ENOKI_BENCH_PUBLISHERS` threads each publishing persistent JSON
//! events to a durable topic exchange `<source>.events` on its own confirming channel, one
//! message at a time, waiting for each confirm (Nameko's `use_confirms`); a durable queue bound
//! by the event type, consumed with prefetch 10, each event acked after it was handled (here:
//! counted) on the consuming thread. No JSON decoding, no context headers, no worker pool.
//!
//! enoki runs the same load through a [`StandaloneDispatcher`] shared by the same number of
//! threads and a service-pool `event_handler` on a container of 10 workers (prefetch 10), which
//! decodes the JSON payload, builds a worker context and runs the dependency hooks.
//!
//! Throughput is events handled per second, from the first publish until the last event was
//! handled. Each publisher waits for every confirm (as Nameko's dispatcher does), so a few
//! publishers measure the confirm round trip rather than the handler: the default is 16
//! publishers (4 held every path, Nameko included, at the publishers' own rate).
//!
//! Beside the rates, the CPU time each event cost in this process (publishers and handler), in
//! the RabbitMQ node and in the Python service, read from `/proc` (benches/support/cpu.rs): on
//! a machine of `n` cores no path can handle more than `n / (CPU per event)` events a second,
//! whatever its client or handler does. Each round measures floor and enoki back to back (alternating which goes first), and
//! the best round counts for each. The bench fails if enoki reaches less than 0.8 of the floor.
//!
//! The timer check runs an eager 100 ms timer for 100 intervals and reports how late each tick
//! started after its slot (p50, p99 and max), idle, then while 1 and 8 threads call an enoki echo
//! service in a loop. The slots are anchored on the earliest tick (`timer_errors` says why); the
//! last column is the older measure against `tick0 + k·100 ms`, which one late first tick skews.
//! `ENOKI_BENCH_ONLY=timer` runs only the timer check.

use amiquip::{
    AmqpProperties, Auth, Channel, Confirm, Connection, ConnectionOptions, ConnectionTuning,
    ConsumerMessage, ConsumerOptions, ExchangeDeclareOptions, ExchangeType, FieldTable, Publish,
    QueueDeclareOptions,
};
use crossbeam_channel::{Receiver, Sender};
use enoki::{
    AmqpUri, ClusterRpcProxy, Config, Container, EventHandler, Service, StandaloneDispatcher, Timer,
};
#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/nameko.rs"]
mod nameko;
use cpu::{CpuMeter, CpuUse};
use nameko::NamekoService;
use parking_lot::Mutex;
use serde_json::Value;
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DEFAULT_URI: &str = "amqp://guest:guest@localhost:5672/enoki_test";
const PREFETCH: u16 = 10;
const WORKERS: usize = 10;
const WARMUP: usize = 300;
const EVENT_TYPE: &str = "tick";
const BODY: &[u8] = br#"{"order": 42, "item": "tea", "qty": 3}"#;
const TIMEOUT: Duration = Duration::from_secs(60);
const TIMER_INTERVAL: Duration = Duration::from_millis(100);
const TIMER_TICKS: usize = 100;
/// The ratio to the floor enoki must reach.
const REQUIRED_RATIO: f64 = 0.8;

fn main() -> ExitCode {
    enoki::logger::init();
    let events = env_usize("ENOKI_BENCH_EVENTS", 5000);
    let publishers = env_usize("ENOKI_BENCH_PUBLISHERS", 16).max(1);
    let rounds = env_usize("ENOKI_BENCH_ROUNDS", 3).max(1);
    let uri_text = std::env::var("ENOKI_BENCH_AMQP_URI").unwrap_or_else(|_| DEFAULT_URI.into());
    let uri = AmqpUri::parse(&uri_text).expect("ENOKI_BENCH_AMQP_URI is not a valid AMQP URI");
    let id = uuid::Uuid::new_v4().simple().to_string();
    if std::env::var("ENOKI_BENCH_ONLY").as_deref() == Ok("timer") {
        println!("events bench: broker {uri}, the timer check only");
        let _cleanup = Cleanup {
            uri: uri.clone(),
            queues: vec![format!("rpc-bench_timer_load_{id}")],
            exchanges: Vec::new(),
        };
        timer_check(&Config::new().amqp_uri(&uri_text).max_workers(WORKERS), &id);
        return ExitCode::SUCCESS;
    }
    println!(
        "events bench: broker {uri}, {rounds} rounds of {events} events from {publishers} \
         publishing threads, warm-up {WARMUP}"
    );

    let floor_source = format!("bench_floor_src_{id}");
    let enoki_source = format!("bench_enoki_src_{id}");
    let service = format!("bench_events_{id}");
    let floor_queue = format!("evt-{floor_source}-{EVENT_TYPE}--bench_floor_{id}.handle_tick");
    let enoki_queue = format!("evt-{enoki_source}-{EVENT_TYPE}--{service}.handle_tick");
    let _cleanup = Cleanup {
        uri: uri.clone(),
        // The echo queue of the timer-under-load check (`under_rpc_load`).
        queues: vec![
            floor_queue.clone(),
            enoki_queue,
            format!("rpc-bench_timer_load_{id}"),
            // Python Nameko's, when it runs.
            format!("evt-bench_py_src_{id}-{EVENT_TYPE}--bench_py_events_{id}.handle_tick"),
            format!("rpc-bench_py_events_{id}"),
        ],
        exchanges: vec![
            format!("{floor_source}.events"),
            format!("{enoki_source}.events"),
        ],
    };

    // The floor: a raw consumer acking on its own thread.
    let floor_counter = Counter::new();
    let floor = FloorConsumer::start(&uri, &floor_source, &floor_queue, floor_counter.clone());
    let mut floor_publishing = connect(&uri);
    let mut floor_channels: Vec<FloorPublisher> = (0..publishers)
        .map(|_| FloorPublisher::open(&mut floor_publishing, &floor_source))
        .collect();

    // enoki: a dispatcher and a service-pool handler that decodes the payload.
    let config = Config::new().amqp_uri(&uri_text).max_workers(WORKERS);
    let enoki_counter = Counter::new();
    let counted = enoki_counter.clone();
    let mut container = Container::new(
        Service::new(&service).event_handler_with(
            EventHandler::new(&enoki_source, EVENT_TYPE).name("handle_tick"),
            move |_ctx, payload: Value| {
                std::hint::black_box(&payload);
                counted.handled();
                Ok(())
            },
        ),
        config.clone(),
    );
    container.start().expect("cannot start the enoki handler");
    let dispatcher = StandaloneDispatcher::new(&config).expect("cannot build the dispatcher");
    let payload: Value = serde_json::from_slice(BODY).expect("the bench body is JSON");

    let mut run_floor = |n: usize| {
        let started = Instant::now();
        floor_counter.expect(n, || {
            std::thread::scope(|scope| {
                for (i, channel) in floor_channels.iter_mut().enumerate() {
                    let share = share(n, publishers, i);
                    scope.spawn(move || {
                        for _ in 0..share {
                            channel.publish(BODY);
                        }
                    });
                }
            });
        });
        started.elapsed()
    };
    let run_enoki = |n: usize| {
        let started = Instant::now();
        enoki_counter.expect(n, || {
            std::thread::scope(|scope| {
                for i in 0..publishers {
                    let (dispatcher, payload, source) = (&dispatcher, &payload, &enoki_source);
                    scope.spawn(move || {
                        for _ in 0..share(n, publishers, i) {
                            dispatcher
                                .dispatch(source, EVENT_TYPE, payload)
                                .expect("dispatch failed");
                        }
                    });
                }
            });
        });
        started.elapsed()
    };

    // Where each event's CPU goes: this process (publishers and handler), the broker, Nameko.
    let broker_pid = cpu::broker_pid();
    let broker = broker_pid.as_deref();
    run_floor(WARMUP);
    run_enoki(WARMUP);
    let mut best_floor = 0f64;
    let mut best_enoki = 0f64;
    let (mut floor_cpu, mut enoki_cpu) = (None::<CpuUse>, None::<CpuUse>);
    for round in 1..=rounds {
        let mut measure = |floor_first: bool| {
            let mut rates = [0f64; 2];
            for which in if floor_first { [0, 1] } else { [1, 0] } {
                let meter = CpuMeter::start(broker, None);
                let took = if which == 0 {
                    run_floor(events)
                } else {
                    run_enoki(events)
                };
                let used = meter.stop().per(events);
                let best = if which == 0 {
                    &mut floor_cpu
                } else {
                    &mut enoki_cpu
                };
                *best = Some(best.map_or(used, |b| b.min(used)));
                rates[which] = events as f64 / took.as_secs_f64();
            }
            rates
        };
        let [floor_rate, enoki_rate] = measure(round % 2 == 1);
        eprintln!(
            "round {round}/{rounds}: floor {floor_rate:>8.0} events/s, enoki {enoki_rate:>8.0} events/s"
        );
        best_floor = best_floor.max(floor_rate);
        best_enoki = best_enoki.max(enoki_rate);
    }
    container.stop();
    floor.stop();
    drop(floor_channels);

    // Python Nameko: a service-pool handler counting events, fed by the floor's publishers;
    // the count is polled over RPC. One round: it is much slower.
    let py_source = format!("bench_py_src_{id}");
    let py_service = format!("bench_py_events_{id}");
    let mut nameko_cpu = None::<CpuUse>;
    let nameko_rate = nameko::python().map(|python| {
        let service = NamekoService::start(
            &python,
            &[
                ("AMQP_URI", uri_text.as_str()),
                ("SERVICE_NAME", &py_service),
                ("EVENT_SOURCE", &py_source),
            ],
        );
        let cluster = ClusterRpcProxy::new(&config).expect("cannot build a client");
        let count = || -> usize { cluster.call(&py_service, "count", ()).expect("count") };
        let mut channels: Vec<FloorPublisher> = (0..publishers)
            .map(|_| FloorPublisher::open_declared_by_nameko(&mut floor_publishing, &py_source))
            .collect();
        let mut run = |n: usize| {
            let goal = count() + n;
            let started = Instant::now();
            std::thread::scope(|scope| {
                for (i, channel) in channels.iter_mut().enumerate() {
                    let share = share(n, publishers, i);
                    scope.spawn(move || {
                        for _ in 0..share {
                            channel.publish(BODY);
                        }
                    });
                }
            });
            while count() < goal {
                assert!(
                    started.elapsed() < TIMEOUT,
                    "Nameko did not handle the events"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            started.elapsed()
        };
        run(WARMUP);
        let meter = CpuMeter::start(broker, Some(service.pid()));
        let rate = events as f64 / run(events).as_secs_f64();
        nameko_cpu = Some(meter.stop().per(events));
        eprintln!("nameko: {rate:>8.0} events/s");
        drop(channels);
        cluster.close();
        drop(service);
        rate
    });
    let _ = floor_publishing.close();

    let ratio = best_enoki / best_floor;
    println!();
    println!(
        "| path (best of {rounds} rounds, {events} events, {publishers} publishers) | events/s | ratio to floor |"
    );
    println!("|---|---:|---:|");
    println!(
        "| floor: raw amiquip publish (confirmed) -> consume, ack after handling | {best_floor:.0} | 1.00 |"
    );
    println!(
        "| enoki: StandaloneDispatcher -> event_handler (service pool) | {best_enoki:.0} | {ratio:.2} |"
    );

    println!();
    println!(
        "CPU per event (µs, best of rounds; bench process = publishers and in-process handler)"
    );
    cpu::print_header("events/s");
    for (name, rate, used) in [
        ("floor", Some(best_floor), floor_cpu),
        ("enoki", Some(best_enoki), enoki_cpu),
        ("nameko", nameko_rate, nameko_cpu),
    ] {
        if let (Some(rate), Some(used)) = (rate, used) {
            cpu::print_row(name, rate, &used);
        }
    }

    nameko::summary(
        "events end to end",
        "events/s",
        Some(best_floor),
        best_enoki,
        nameko_rate,
        "≥ 0.8× floor, ≥ 4× nameko",
    );

    timer_check(&config, &id);
    if ratio < REQUIRED_RATIO {
        println!("FAIL: enoki reached {ratio:.2} of the floor, below {REQUIRED_RATIO}");
        return ExitCode::FAILURE;
    }
    println!("ok: enoki reached {ratio:.2} of the floor (at least {REQUIRED_RATIO} required)");
    ExitCode::SUCCESS
}

/// The timer's accuracy, idle and under RPC load: summary rows and a table.
fn timer_check(config: &Config, id: &str) {
    let mut rows = vec![("idle".to_owned(), timer_errors(config))];
    // One caller keeps a steady serial load (the CPU has room); eight saturate both cores, so
    // what remains is the scheduler's wake-up latency with every core busy.
    for callers in TIMER_LOAD_CALLERS {
        let loaded = under_rpc_load(config, id, callers, || timer_errors(config));
        rows.push((format!("{callers} RPC caller(s)"), loaded));
    }
    let p = |errors: &[Duration], q: f64| errors[((errors.len() - 1) as f64 * q).round() as usize];
    for (i, (label, errors)) in rows.iter().enumerate() {
        nameko::summary(
            &format!("timer abs(error) p99, {label}"),
            "µs",
            None,
            p(&errors.late, 0.99).as_secs_f64() * 1e6,
            None,
            if i == 0 { "-" } else { "≤ 1000 µs" },
        );
    }
    println!();
    println!(
        "| timer ({} ms interval, {TIMER_TICKS} ticks): tick start - slot | p50 | p99 | max | \
         p99 vs tick 0 |",
        TIMER_INTERVAL.as_millis()
    );
    println!("|---|---:|---:|---:|---:|");
    for (label, errors) in &rows {
        let late = &errors.late;
        println!(
            "| {label} | {} µs | {} µs | {} µs | {} µs |",
            p(late, 0.5).as_micros(),
            p(late, 0.99).as_micros(),
            late[late.len() - 1].as_micros(),
            p(&errors.from_tick0, 0.99).as_micros(),
        );
    }
    println!();
    let timer_ok = rows
        .iter()
        .all(|(_, errors)| p(&errors.late, 0.99) < Duration::from_millis(1));
    println!(
        "timer p99 under 1 ms: {}",
        if timer_ok {
            "yes"
        } else {
            "NO (a loaded machine delays wake-ups)"
        }
    );
}

/// How many threads (in turn) keep calling an enoki echo service while the timer is measured under load.
const TIMER_LOAD_CALLERS: [usize; 2] = [1, 8];

/// Runs `measure` while `callers` threads call an enoki echo service (in this
/// process, as the timer's service is) in a loop.
fn under_rpc_load<T>(config: &Config, id: &str, callers: usize, measure: impl FnOnce() -> T) -> T {
    let name = format!("bench_timer_load_{id}");
    let mut echo = Container::new(
        Service::new(&name).rpc("echo", |_ctx, (v,): (Value,)| Ok(v)),
        config.clone(),
    );
    echo.start().expect("cannot start the echo service");
    let cluster = ClusterRpcProxy::new(config).expect("cannot build a client");
    let stop = AtomicBool::new(false);
    let calls = AtomicUsize::new(0);
    let started = Instant::now();
    let result = std::thread::scope(|scope| {
        for _ in 0..callers {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _: Value = cluster.call(&name, "echo", (1,)).expect("echo call");
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let result = measure();
        stop.store(true, Ordering::Relaxed);
        result
    });
    eprintln!(
        "timer under load: {:.0} RPC calls/s alongside",
        calls.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
    );
    cluster.close();
    echo.stop();
    result
}

/// How far the ticks of one timer run started from their slots.
struct TimerErrors {
    /// Sorted `tick_k - slot_k` of ticks 1..=TIMER_TICKS, with the slots anchored on the
    /// earliest tick: `slot_k = min_j(tick_j - j·interval) + k·interval`.
    late: Vec<Duration>,
    /// Sorted |error| against `tick0 + k·interval`, as this bench measured before: one late
    /// tick 0 shifts every sample.
    from_tick0: Vec<Duration>,
}

/// Runs an eager timer for `TIMER_TICKS` intervals and measures when each tick started.
///
/// The true slots (`start + k·interval`, from the container's start) are not visible here, but
/// a tick never starts before its slot (the worker sleeps until it), so the tick with the
/// smallest `tick_k - k·interval` is the closest estimate of the anchor: each error is then the
/// tick's lateness minus the smallest lateness of the run (tens of µs: the wake-up itself).
fn timer_errors(config: &Config) -> TimerErrors {
    let ticks = Arc::new(Mutex::new(Vec::with_capacity(TIMER_TICKS + 1)));
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let sink = ticks.clone();
    let mut container = Container::new(
        Service::new(format!("bench_timer_{}", uuid::Uuid::new_v4().simple())).timer_with(
            Timer::new(TIMER_INTERVAL).eager(true),
            move |_ctx| {
                let mut ticks = sink.lock();
                ticks.push(Instant::now());
                if ticks.len() == TIMER_TICKS + 1 {
                    let _ = done_tx.try_send(());
                }
                Ok(())
            },
        ),
        config.clone(),
    );
    container.start().expect("cannot start the timer service");
    done_rx
        .recv_timeout(TIMER_INTERVAL * (TIMER_TICKS as u32) + TIMEOUT)
        .expect("the timer did not tick in time");
    container.stop();
    let ticks = ticks.lock().clone();
    let slot = |anchor: Instant, k: usize| anchor + TIMER_INTERVAL * k as u32;
    let anchor = (0..=TIMER_TICKS)
        .map(|k| ticks[k] - TIMER_INTERVAL * k as u32)
        .min()
        .expect("ticks were recorded");
    let mut late: Vec<Duration> = (1..=TIMER_TICKS)
        .map(|k| ticks[k] - slot(anchor, k))
        .collect();
    late.sort();
    let mut from_tick0: Vec<Duration> = (1..=TIMER_TICKS)
        .map(|k| {
            let (t, slot) = (ticks[k], slot(ticks[0], k));
            if t >= slot { t - slot } else { slot - t }
        })
        .collect();
    from_tick0.sort();
    TimerErrors { late, from_tick0 }
}

/// Counts handled events and wakes the bench when a batch is complete.
#[derive(Clone)]
struct Counter(Arc<CounterInner>);

struct CounterInner {
    handled: AtomicUsize,
    goal: AtomicUsize,
    reached: Sender<()>,
    wait: Receiver<()>,
}

impl Counter {
    fn new() -> Counter {
        let (reached, wait) = crossbeam_channel::bounded(1);
        Counter(Arc::new(CounterInner {
            handled: AtomicUsize::new(0),
            goal: AtomicUsize::new(usize::MAX),
            reached,
            wait,
        }))
    }

    fn handled(&self) {
        let n = self.0.handled.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.0.goal.load(Ordering::Acquire) {
            let _ = self.0.reached.try_send(());
        }
    }

    /// Runs `publish`, which must lead to `n` more handled events, and waits until they are.
    fn expect(&self, n: usize, publish: impl FnOnce()) {
        let goal = self.0.handled.load(Ordering::Acquire) + n;
        self.0.goal.store(goal, Ordering::Release);
        publish();
        if self.0.handled.load(Ordering::Acquire) < goal {
            self.0
                .wait
                .recv_timeout(TIMEOUT)
                .expect("events were not handled in time");
        } else {
            let _ = self.0.wait.try_recv();
        }
    }
}

/// How many of `n` events publisher `i` of `of` sends.
fn share(n: usize, of: usize, i: usize) -> usize {
    n / of + usize::from(i < n % of)
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, got {v:?}")),
        Err(_) => default,
    }
}

/// Opens an AMQP connection on a socket with `TCP_NODELAY`, as enoki does.
fn connect(uri: &AmqpUri) -> Connection {
    let stream = TcpStream::connect(uri.addr())
        .unwrap_or_else(|e| panic!("cannot reach RabbitMQ at {uri}: {e}; run scripts/provision"));
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let stream = mio::net::TcpStream::from_stream(stream).expect("mio stream");
    let options = ConnectionOptions::default()
        .auth(Auth::Plain {
            username: uri.username.clone(),
            password: uri.password.clone(),
        })
        .virtual_host(uri.vhost.clone());
    Connection::insecure_open_stream(stream, options, ConnectionTuning::default())
        .unwrap_or_else(|e| panic!("cannot open AMQP on {uri}: {e}"))
}

fn declare_exchange(channel: &Channel, source: &str) {
    channel
        .exchange_declare(
            ExchangeType::Topic,
            format!("{source}.events"),
            ExchangeDeclareOptions {
                durable: true,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            },
        )
        .expect("cannot declare the events exchange");
}

/// A confirming channel publishing events one at a time.
struct FloorPublisher {
    channel: Channel,
    confirms: Receiver<Confirm>,
    exchange: String,
    seq: u64,
}

impl FloorPublisher {
    /// A confirming channel to `<source>.events`, declared with the floor's flags.
    fn open(connection: &mut Connection, source: &str) -> FloorPublisher {
        let publisher = FloorPublisher::open_declared_by_nameko(connection, source);
        declare_exchange(&publisher.channel, source);
        publisher
    }

    /// A confirming channel to `<source>.events` as already declared, e.g. by a Nameko handler
    /// (with Nameko's flags, which differ from the floor's: auto-delete).
    fn open_declared_by_nameko(connection: &mut Connection, source: &str) -> FloorPublisher {
        let channel = connection.open_channel(None).expect("channel");
        let confirms = channel
            .listen_for_publisher_confirms()
            .expect("confirm listener");
        channel.enable_publisher_confirms().expect("confirm mode");
        FloorPublisher {
            channel,
            confirms,
            exchange: format!("{source}.events"),
            seq: 0,
        }
    }

    fn publish(&mut self, body: &[u8]) {
        let properties = AmqpProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2)
            .with_priority(0);
        self.channel
            .basic_publish(
                self.exchange.clone(),
                Publish::with_properties(body, EVENT_TYPE, properties),
            )
            .expect("publish failed");
        self.seq += 1;
        loop {
            match self.confirms.recv_timeout(TIMEOUT).expect("no confirm") {
                Confirm::Ack(p)
                    if p.delivery_tag == self.seq || (p.multiple && p.delivery_tag > self.seq) =>
                {
                    return;
                }
                Confirm::Nack(_) => panic!("the broker nacked a publish"),
                Confirm::Ack(_) => continue,
            }
        }
    }
}

/// The floor's handler: one thread consuming and acking on its own channel.
struct FloorConsumer {
    stop: Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl FloorConsumer {
    fn start(uri: &AmqpUri, source: &str, queue: &str, counter: Counter) -> FloorConsumer {
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let (uri, source, queue) = (uri.clone(), source.to_owned(), queue.to_owned());
        let thread = std::thread::spawn(move || {
            let mut connection = connect(&uri);
            let channel = connection.open_channel(None).expect("channel");
            declare_exchange(&channel, &source);
            channel
                .queue_declare(
                    queue.clone(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                )
                .expect("declare queue");
            channel
                .queue_bind(
                    queue.clone(),
                    format!("{source}.events"),
                    EVENT_TYPE,
                    FieldTable::default(),
                )
                .expect("bind queue");
            channel.qos(0, PREFETCH, false).expect("qos");
            let consumer = channel
                .basic_consume(queue, ConsumerOptions::default())
                .expect("consume");
            let _ = ready_tx.send(());
            loop {
                crossbeam_channel::select! {
                    recv(consumer.receiver()) -> message => match message {
                        Ok(ConsumerMessage::Delivery(delivery)) => {
                            std::hint::black_box(&delivery.body);
                            counter.handled();
                            delivery.ack(&channel).expect("ack");
                        }
                        _ => break,
                    },
                    recv(stop_rx) -> _ => break,
                }
            }
            let _ = consumer.cancel();
            let _ = connection.close();
        });
        ready_rx
            .recv_timeout(TIMEOUT)
            .expect("the floor consumer did not start");
        FloorConsumer { stop, thread }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Deletes the bench's queues and exchanges, also when the bench panics.
struct Cleanup {
    uri: AmqpUri,
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut connection = connect(&self.uri);
        for queue in &self.queues {
            if let Ok(channel) = connection.open_channel(None) {
                let _ = channel.queue_delete(queue.clone(), Default::default());
            }
        }
        for exchange in &self.exchanges {
            if let Ok(channel) = connection.open_channel(None) {
                let _ = channel.exchange_delete(exchange.clone(), false);
            }
        }
        let _ = connection.close();
    }
}
