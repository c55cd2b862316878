//! Footprint of the `echo` example as users deploy it: resident memory idle and under load,
//! time from exec to the first served call, SIGTERM-to-exit time when idle, thread count, and
//! the size of the binary. Needs RabbitMQ and the example built as users ship it: release,
//! statically linked, not position-independent, stripped (README, "Release profile"):
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
//!     cargo build --release --example echo --target x86_64-unknown-linux-gnu
//! cargo bench --bench footprint
//! ECHO_BIN=path/to/echo ENOKI_BENCH_AMQP_URI=amqp://... cargo bench --bench footprint
//! ```
//!
//! `scripts/bench` builds exactly that first. Each figure is the median of several starts.

use enoki::{ClusterRpcProxy, Config, ErrorKind};
#[path = "support/nameko.rs"]
mod nameko;
use serde_json::Value;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const DEFAULT_URI: &str = "amqp://guest:guest@localhost:5672/enoki_test";
const STARTS: usize = 5;
/// The static build users ship, as `scripts/bench` makes it.
const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static -C relocation-model=static";

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn spawn(bin: &str, uri: &str, name: &str) -> Child {
    let mut command = match nameko_script(bin) {
        Some(script) => {
            let mut c = Command::new(bin);
            // Its stdin is a pipe held open by the Child: EOF there stops it.
            c.arg(script)
                .env("SERVICE_NAME", name)
                .stdin(Stdio::piped());
            c
        }
        None => Command::new(bin),
    };
    command
        .env("AMQP_URI", uri)
        .env("ECHO_SERVICE_NAME", name)
        .env("WEB_SERVER_ADDRESS", "127.0.0.1:0")
        .env("ENOKI_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

/// With `bin` a Python (`ENOKI_BENCH_PYTHON`), the Nameko service to run instead of enoki's.
fn nameko_script(bin: &str) -> Option<&'static str> {
    (nameko::python().as_deref() == Some(bin)).then_some(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/bench/nameko_bench.py"
    ))
}

/// Polls until `name.echo` answers; the time since `since`.
fn first_call(cluster: &ClusterRpcProxy, name: &str, since: Instant) -> Duration {
    loop {
        match cluster.call_timeout::<Value>(name, "echo", (1,), Duration::from_secs(5)) {
            Ok(_) => return since.elapsed(),
            Err(e) if matches!(e.kind(), ErrorKind::UnknownService(_)) => {}
            Err(e) => panic!("the echo service failed: {e}"),
        }
        assert!(since.elapsed() < Duration::from_secs(30), "never ready");
    }
}

fn terminate(child: &mut Child) -> Duration {
    let started = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The median of counts.
fn middle(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn delete_queue(uri: &str, queue: &str) {
    let vhost = enoki::AmqpUri::parse(uri).map_or_else(|_| "/".to_owned(), |uri| uri.vhost);
    let _ = Command::new("rabbitmqctl")
        .args(["-q", "delete_queue", "-p", &vhost, queue])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn main() -> ExitCode {
    enoki::logger::init();
    let uri = std::env::var("ENOKI_BENCH_AMQP_URI").unwrap_or_else(|_| DEFAULT_URI.into());
    let bin = std::env::var("ECHO_BIN").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/x86_64-unknown-linux-gnu/release/examples/echo"
        )
        .to_owned()
    });
    if !std::path::Path::new(&bin).exists() {
        eprintln!(
            "{bin} is missing: RUSTFLAGS=\"{STATIC_RUSTFLAGS}\" cargo build --release \
             --example echo --target x86_64-unknown-linux-gnu (or set ECHO_BIN)"
        );
        return ExitCode::FAILURE;
    }
    let config = Config::new().amqp_uri(&uri);
    let cluster = Arc::new(ClusterRpcProxy::new(&config).expect("client"));
    let name = format!("footprint_echo_{}", std::process::id());

    let enoki = measure(&cluster, &bin, &uri, &name, STARTS);
    // Python Nameko: fewer starts, each takes a while.
    let python = nameko::python().map(|python| {
        let name = format!("footprint_py_{}", std::process::id());
        let m = measure(&cluster, &python, &uri, &name, 3);
        delete_queue(&uri, &format!("rpc-{name}"));
        m
    });
    let Footprint {
        ready,
        exits,
        mut idle_rss,
        threads,
        peak_rss,
        loaded_threads,
    } = enoki;
    idle_rss.sort();
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    println!("footprint of {bin} ({STARTS} starts, medians)");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| binary size | {:.2} MiB |", size as f64 / 1048576.0);
    println!(
        "| idle RSS | {:.2} MiB |",
        idle_rss[idle_rss.len() / 2] as f64 / 1024.0
    );
    println!(
        "| peak RSS, 32 callers | {:.2} MiB |",
        peak_rss as f64 / 1024.0
    );
    println!(
        "| exec to first served call | {:.1} ms |",
        median(ready.clone()).as_secs_f64() * 1e3
    );
    println!(
        "| idle SIGTERM to exit | {:.1} ms |",
        median(exits.clone()).as_secs_f64() * 1e3
    );
    println!(
        "| threads idle / under load | {} / {loaded_threads} |",
        middle(&threads)
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    let py = python.as_ref();
    let summary = |what: &str, unit: &str, enoki: f64, nameko: Option<f64>, target: &str| {
        nameko::summary(what, unit, None, enoki, nameko, target)
    };
    summary(
        "echo binary, static, stripped",
        "MiB",
        size as f64 / 1048576.0,
        None,
        "≤ 2 MiB",
    );
    summary(
        "idle RSS",
        "MiB",
        mib(idle_rss[idle_rss.len() / 2]),
        py.map(|p| mib(p.idle_rss_median())),
        "≤ 4 MiB",
    );
    summary(
        "peak RSS, 32 callers",
        "MiB",
        mib(peak_rss),
        py.map(|p| mib(p.peak_rss)),
        "-",
    );
    summary(
        "threads, idle",
        "threads",
        middle(&threads) as f64,
        py.map(|p| middle(&p.threads) as f64),
        "-",
    );
    summary(
        "threads, 32 callers",
        "threads",
        loaded_threads as f64,
        py.map(|p| p.loaded_threads as f64),
        "-",
    );
    summary(
        "exec to first served call",
        "ms",
        median(ready).as_secs_f64() * 1e3,
        py.map(|p| median(p.ready.clone()).as_secs_f64() * 1e3),
        "≤ 30 ms",
    );
    summary(
        "idle SIGTERM to exit",
        "ms",
        median(exits).as_secs_f64() * 1e3,
        py.map(|p| median(p.exits.clone()).as_secs_f64() * 1e3),
        "≤ 100 ms",
    );
    ExitCode::SUCCESS
}

/// What [`measure`] found.
struct Footprint {
    ready: Vec<Duration>,
    exits: Vec<Duration>,
    idle_rss: Vec<u64>,
    threads: Vec<u64>,
    peak_rss: u64,
    loaded_threads: u64,
}

impl Footprint {
    fn idle_rss_median(&self) -> u64 {
        let mut v = self.idle_rss.clone();
        v.sort();
        v[v.len() / 2]
    }
}

/// Starts `bin` `starts` times (ready time, idle RSS and threads, SIGTERM exit), then once
/// more under the load of 32 callers for two seconds.
fn measure(
    cluster: &Arc<ClusterRpcProxy>,
    bin: &str,
    uri: &str,
    name: &str,
    starts: usize,
) -> Footprint {
    let name = name.to_owned();
    let (mut ready, mut exits, mut idle_rss, mut threads) = (vec![], vec![], vec![], vec![]);
    for _ in 0..starts {
        let started = Instant::now();
        let mut child = spawn(bin, uri, &name);
        ready.push(first_call(cluster, &name, started));
        std::thread::sleep(Duration::from_millis(500));
        idle_rss.push(status_field(child.id(), "VmRSS:"));
        threads.push(status_field(child.id(), "Threads:"));
        exits.push(terminate(&mut child));
    }

    // Under load: 32 callers for two seconds.
    let mut child = spawn(bin, uri, &name);
    first_call(cluster, &name, Instant::now());
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..32)
        .map(|_| {
            let (cluster, stop, name) = (cluster.clone(), stop.clone(), name.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ =
                        cluster.call_timeout::<Value>(&name, "echo", (1,), Duration::from_secs(5));
                }
            })
        })
        .collect();
    let mut peak_rss = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        peak_rss = peak_rss.max(status_field(child.id(), "VmRSS:"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let loaded_threads = status_field(child.id(), "Threads:");
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.join();
    }
    terminate(&mut child);
    delete_queue(uri, &format!("rpc-{name}"));

    Footprint {
        ready,
        exits,
        idle_rss,
        threads,
        peak_rss,
        loaded_threads,
    }
}
