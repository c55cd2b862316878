//! The chaos and soak runs of issue 6, against a real RabbitMQ. Run through `scripts/chaos`,
//! which builds in release mode and gives this program its own vhost; it restarts the broker,
//! so nothing else may use the broker meanwhile.
//!
//! ```text
//! scripts/chaos            # faults under load, then a summary line
//! scripts/chaos --soak N   # N RPC calls with 32 in flight and a stream of events, no faults
//! ```
//!
//! Topology: a second process (the `echo` example, `ECHO_SERVICE_NAME=chaos_echo`) and this
//! process both serve `chaos_echo`, competing for its requests; this process also handles the
//! `chaos_source.tick` events (service pool, reliable delivery) and records every sequence
//! number seen. Clients call `chaos_echo.echo([thread, n])` and check the answer; a dispatcher
//! emits numbered events. Faults (chaos run): connections force-closed by `rabbitmqctl
//! close_connection`, the broker app restarted by `rabbitmqctl stop_app` / `start_app`, and
//! SIGTERM to the echo process mid-load (then restarted).
//!
//! Pass criteria, checked at the end: every call ended in its correct reply or a clear error (no
//! mismatch, no hang); every event the broker confirmed was handled at least once; after each
//! broker return the service answered again within 5 s; the echo process exited cleanly on
//! SIGTERM.

use enoki::{ClusterRpcProxy, Config, ErrorKind, Runner, Service, StandaloneDispatcher};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SERVICE: &str = "chaos_echo";
const SOURCE: &str = "chaos_source";
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
const RECOVERY_LIMIT: Duration = Duration::from_secs(5);

/// Outcomes of calls, by kind.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    mismatched: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl Tally {
    fn record(&self, expected: &Value, outcome: enoki::Result<Value>) {
        match outcome {
            Ok(value) if &value == expected => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(value) => {
                eprintln!("chaos: MISMATCH: sent {expected}, got {value}");
                self.mismatched.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let kind = match e.kind() {
                    ErrorKind::Timeout(_) => "timeout",
                    ErrorKind::Broker(_) => "broker",
                    ErrorKind::UnknownService(_) => "unknown_service",
                    ErrorKind::Remote(_) => "remote",
                    ErrorKind::Stopped => "stopped",
                    _ => "other",
                };
                *self.errors.lock().entry(kind).or_default() += 1;
            }
        }
    }

    fn errors(&self) -> u64 {
        self.errors.lock().values().sum()
    }
}

fn rabbitmqctl(args: &[&str]) -> String {
    match Command::new("rabbitmqctl").args(args).output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => {
            eprintln!("chaos: rabbitmqctl {args:?}: {e}");
            String::new()
        }
    }
}

fn close_connections(vhost: &str) -> usize {
    let listing = rabbitmqctl(&[
        "list_connections",
        "pid",
        "vhost",
        "--quiet",
        "--no-table-headers",
    ]);
    let mut closed = 0;
    for line in listing.lines() {
        let mut fields = line.split('\t');
        if let (Some(pid), Some(v)) = (fields.next(), fields.next())
            && v == vhost
        {
            rabbitmqctl(&["close_connection", pid, "chaos test"]);
            closed += 1;
        }
    }
    closed
}

fn spawn_echo(binary: &str, uri: &str) -> Child {
    Command::new(binary)
        .env("AMQP_URI", uri)
        .env("ECHO_SERVICE_NAME", SERVICE)
        .env("ENOKI_LOG", "warn")
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"))
}

/// SIGTERM, then how long the process took to exit and whether it exited cleanly.
fn terminate(child: &mut Child) -> (Duration, bool) {
    let started = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return (started.elapsed(), status.success());
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            return (started.elapsed(), false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn local_service(handled: Arc<Mutex<HashSet<u64>>>) -> Service {
    Service::new(SERVICE)
        .rpc("echo", |_ctx, (value,): (Value,)| Ok(value))
        .event_handler(SOURCE, "tick", move |_ctx, seq: u64| {
            handled.lock().insert(seq);
            Ok(())
        })
}

/// Client threads calling until `stop`; each checks its answers.
fn rpc_load(
    cluster: &Arc<ClusterRpcProxy>,
    threads: usize,
    per_thread: Option<u64>,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|t| {
            let (cluster, stop, tally) = (cluster.clone(), stop.clone(), tally.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && per_thread.is_none_or(|limit| n < limit) {
                    let expected = json!([t, n]);
                    let outcome =
                        cluster.call_timeout::<Value>(SERVICE, "echo", (&expected,), CALL_TIMEOUT);
                    if outcome.is_err() {
                        // Do not spin through a broker outage.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    tally.record(&expected, outcome);
                    n += 1;
                }
            })
        })
        .collect()
}

/// Dispatches numbered events until `stop`; returns the confirmed sequence numbers.
fn event_load(
    config: &Config,
    stop: &Arc<AtomicBool>,
    pause: Duration,
) -> std::thread::JoinHandle<(Vec<u64>, u64)> {
    let (config, stop) = (config.clone(), stop.clone());
    std::thread::spawn(move || {
        let dispatcher = StandaloneDispatcher::new(&config).expect("dispatcher");
        let (mut confirmed, mut failed) = (Vec::new(), 0u64);
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match dispatcher.dispatch(SOURCE, "tick", &seq) {
                Ok(()) => confirmed.push(seq),
                Err(_) => {
                    failed += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            seq += 1;
            std::thread::sleep(pause);
        }
        (confirmed, failed)
    })
}

/// Waits for the service to answer again; returns how long that took after `since`.
fn recovery(cluster: &ClusterRpcProxy, since: Instant) -> Duration {
    loop {
        let probe = json!(["probe", since.elapsed().as_millis() as u64]);
        if let Ok(v) =
            cluster.call_timeout::<Value>(SERVICE, "echo", (&probe,), Duration::from_millis(500))
            && v == probe
        {
            return since.elapsed();
        }
        if since.elapsed() > Duration::from_secs(60) {
            return since.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_handled(handled: &Mutex<HashSet<u64>>, confirmed: &[u64]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = {
            let seen = handled.lock();
            confirmed.iter().filter(|s| !seen.contains(s)).count()
        };
        if missing == 0 || Instant::now() > deadline {
            return missing;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    enoki::logger::init();
    let uri = std::env::var("AMQP_URI").expect("AMQP_URI: scripts/chaos sets it");
    let echo_bin = std::env::var("CHAOS_ECHO_BIN").expect("CHAOS_ECHO_BIN: scripts/chaos sets it");
    let vhost = enoki::AmqpUri::parse(&uri).expect("AMQP_URI parses").vhost;
    let soak: Option<u64> = {
        let args: Vec<String> = std::env::args().collect();
        args.iter().position(|a| a == "--soak").map(|i| {
            args.get(i + 1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(1_000_000)
        })
    };
    let config = Config::new().amqp_uri(&uri);

    let handled = Arc::new(Mutex::new(HashSet::new()));
    let mut runner = Runner::new(config.clone()).service(local_service(handled.clone()));
    runner.start().expect("the local service starts");
    let mut echo = spawn_echo(&echo_bin, &uri);
    let cluster = Arc::new(ClusterRpcProxy::new(&config).expect("client"));
    assert!(recovery(&cluster, Instant::now()) < Duration::from_secs(30));

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let started = Instant::now();

    if let Some(total) = soak {
        let threads = 32;
        // Warm up, then take the baseline RSS of the echo process.
        let warm = rpc_load(&cluster, threads, Some(300), &stop, &tally);
        warm.into_iter().for_each(|t| {
            let _ = t.join();
        });
        let rss_start = rss_kib(echo.id());
        let events = event_load(&config, &stop, Duration::from_millis(2));
        let load = rpc_load(
            &cluster,
            threads,
            Some(total / threads as u64),
            &stop,
            &tally,
        );
        load.into_iter().for_each(|t| {
            let _ = t.join();
        });
        let rss_end = rss_kib(echo.id());
        stop.store(true, Ordering::Relaxed);
        let (confirmed, failed) = events.join().expect("event thread");
        let missing = wait_handled(&handled, &confirmed);
        let (exit_time, clean) = terminate(&mut echo);
        runner.stop();
        let calls = tally.ok.load(Ordering::Relaxed)
            + tally.mismatched.load(Ordering::Relaxed)
            + tally.errors();
        let pass = tally.mismatched.load(Ordering::Relaxed) == 0
            && tally.errors() == 0
            && missing == 0
            && clean;
        println!(
            "soak: calls={calls} ok={} errors={} mismatched={} in {:.1}s ({:.0} calls/s, 32 in \
             flight); events confirmed={} dispatch_errors={failed} missing={missing}; echo RSS \
             start={rss_start} KiB end={rss_end} KiB; sigterm exit {:?} clean={clean} => {}",
            tally.ok.load(Ordering::Relaxed),
            tally.errors(),
            tally.mismatched.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64(),
            calls as f64 / started.elapsed().as_secs_f64(),
            confirmed.len(),
            exit_time,
            if pass { "PASS" } else { "FAIL" }
        );
        std::process::exit(if pass { 0 } else { 1 });
    }

    let load = rpc_load(&cluster, 8, None, &stop, &tally);
    let events = event_load(&config, &stop, Duration::from_millis(5));
    let mut recoveries = Vec::new();
    let mut sigterms = Vec::new();
    let mut closed = 0;
    for round in 0..3 {
        std::thread::sleep(Duration::from_secs(2));
        closed += close_connections(&vhost);
        recoveries.push(("close_connection", recovery(&cluster, Instant::now())));

        std::thread::sleep(Duration::from_secs(2));
        rabbitmqctl(&["stop_app"]);
        std::thread::sleep(Duration::from_secs(1));
        rabbitmqctl(&["start_app"]);
        recoveries.push(("broker restart", recovery(&cluster, Instant::now())));

        std::thread::sleep(Duration::from_secs(2));
        sigterms.push(terminate(&mut echo));
        eprintln!("chaos: round {round} done");
        echo = spawn_echo(&echo_bin, &uri);
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.join();
    }
    let (confirmed, failed) = events.join().expect("event thread");
    let missing = wait_handled(&handled, &confirmed);
    let _ = terminate(&mut echo);
    runner.stop();

    let calls = tally.ok.load(Ordering::Relaxed)
        + tally.mismatched.load(Ordering::Relaxed)
        + tally.errors();
    let worst = recoveries.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let clean_exits = sigterms.iter().filter(|(_, clean)| *clean).count();
    let pass = tally.mismatched.load(Ordering::Relaxed) == 0
        && missing == 0
        && worst <= RECOVERY_LIMIT
        && clean_exits == sigterms.len();
    println!(
        "chaos: calls={calls} ok={} clear_errors={} {:?} mismatched={} hung=0; events \
         confirmed={} dispatch_errors={failed} handled_missing={missing}; faults: \
         connections_closed={closed} broker_restarts=3 sigterms={} clean_exits={clean_exits}; \
         recoveries {:?}; worst {:?} (limit {:?}) => {}",
        tally.ok.load(Ordering::Relaxed),
        tally.errors(),
        tally.errors.lock(),
        tally.mismatched.load(Ordering::Relaxed),
        confirmed.len(),
        sigterms.len(),
        recoveries
            .iter()
            .map(|(what, d)| format!("{what} {:.2}s", d.as_secs_f64()))
            .collect::<Vec<_>>(),
        worst,
        RECOVERY_LIMIT,
        if pass { "PASS" } else { "FAIL" }
    );
    std::process::exit(if pass { 0 } else { 1 });
}
