//! Python Nameko 2.14.1 peers for the benches (`scripts/bench --with-nameko`), driven by the
//! same load generator as enoki. On when `ENOKI_BENCH_PYTHON` names a Python with Nameko
//! (scripts/bench sets it to the repo's `.venv`); `bench/nameko_bench.py` is the service.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running `bench/nameko_bench.py`; stopped (stdin closed, then killed) when dropped.
pub struct NamekoService {
    child: Child,
}

/// The Python to run Nameko with, when the comparison is wanted.
pub fn python() -> Option<String> {
    std::env::var("ENOKI_BENCH_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
}

impl NamekoService {
    /// Starts the service with `env` (SERVICE_NAME, AMQP_URI, ...) and waits for `READY`.
    pub fn start(python: &str, env: &[(&str, &str)]) -> NamekoService {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/nameko_bench.py");
        let mut command = Command::new(python);
        command
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {python} {script}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("cannot read the Nameko service's stdout");
        assert_eq!(line.trim(), "READY", "the Nameko service did not start");
        NamekoService { child }
    }
}

impl NamekoService {
    /// The Python process's id, to watch its CPU time.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NamekoService {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One summary line for `scripts/bench`: tab-separated `BENCH`, workload, unit, floor, enoki,
/// nameko, target (`-` where there is none). Units ending in `/s` are better higher.
pub fn summary(
    workload: &str,
    unit: &str,
    floor: Option<f64>,
    enoki: f64,
    nameko: Option<f64>,
    target: &str,
) {
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    println!(
        "BENCH\t{workload}\t{unit}\t{}\t{enoki:.2}\t{}\t{target}",
        cell(floor),
        cell(nameko)
    );
}
