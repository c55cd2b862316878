//! Where the CPU goes during a measurement: this bench process (clients, servers, amiquip's I/O
//! threads), the local RabbitMQ node, and a peer process (Python Nameko), read from `/proc`.
//!
//! Throughput on a small machine is bounded by the CPU that each call costs *in all processes
//! together*: with `n` cores, no arrangement serves more than `n / (cpu per call)` calls per
//! second. Reading the broker's share beside the bench's shows which part a faster client or
//! service could still win back, and which belongs to the broker.

#![allow(dead_code)]

use std::time::Duration;

/// Linux counts CPU time in clock ticks; USER_HZ is 100 on every mainstream architecture.
const TICKS_PER_SECOND: u64 = 100;

/// CPU time (user and system, all threads) used so far by process `pid` (`"self"` for this one).
pub fn process_cpu(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // field 3 of the line, utime 14 and stime 15.
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SECOND,
    ))
}

/// The pid of the local RabbitMQ node (the Erlang VM, `beam.smp`), if it runs on this machine
/// and `/proc` shows it.
pub fn broker_pid() -> Option<String> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.contains("beam.smp") && cmd.contains("rabbit"))
        })
}

/// CPU used by each watched process between [`CpuMeter::start`] and [`CpuMeter::stop`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    /// This bench process: the load generator and the server under test when it runs in-process.
    pub bench: Option<Duration>,
    /// The RabbitMQ node.
    pub broker: Option<Duration>,
    /// The peer process (a Python Nameko service), when one is watched.
    pub peer: Option<Duration>,
}

impl CpuUse {
    /// Nothing used yet, by processes that can be read (`None` for those that cannot).
    pub const ZERO: CpuUse = CpuUse {
        bench: Some(Duration::ZERO),
        broker: Some(Duration::ZERO),
        peer: Some(Duration::ZERO),
    };

    /// Both uses added, share by share; a share unknown in either is unknown.
    pub fn plus(self, other: CpuUse) -> CpuUse {
        let add = |a: Option<Duration>, b: Option<Duration>| a.zip(b).map(|(a, b)| a + b);
        CpuUse {
            bench: add(self.bench, other.bench),
            broker: add(self.broker, other.broker),
            peer: add(self.peer, other.peer),
        }
    }

    /// Each share divided by `n` operations.
    pub fn per(&self, n: usize) -> CpuUse {
        let n = n.max(1) as u32;
        CpuUse {
            bench: self.bench.map(|d| d / n),
            broker: self.broker.map(|d| d / n),
            peer: self.peer.map(|d| d / n),
        }
    }

    /// The smaller of each share (best of rounds).
    pub fn min(self, other: CpuUse) -> CpuUse {
        let min = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        CpuUse {
            bench: min(self.bench, other.bench),
            broker: min(self.broker, other.broker),
            peer: min(self.peer, other.peer),
        }
    }

    /// All shares together.
    pub fn total(&self) -> Duration {
        [self.bench, self.broker, self.peer]
            .into_iter()
            .flatten()
            .sum()
    }
}

/// Samples the CPU time of this process, the broker and an optional peer.
pub struct CpuMeter {
    broker: Option<String>,
    peer: Option<String>,
    start: CpuUse,
}

impl CpuMeter {
    /// Starts measuring; `peer` is a pid to watch besides this process and the broker.
    pub fn start(broker: Option<&str>, peer: Option<u32>) -> CpuMeter {
        let peer = peer.map(|pid| pid.to_string());
        let start = CpuUse {
            bench: process_cpu("self"),
            broker: broker.and_then(process_cpu),
            peer: peer.as_deref().and_then(process_cpu),
        };
        CpuMeter {
            broker: broker.map(str::to_owned),
            peer,
            start,
        }
    }

    /// The CPU each process used since [`CpuMeter::start`].
    pub fn stop(self) -> CpuUse {
        let since = |now: Option<Duration>, then: Option<Duration>| {
            now.zip(then).map(|(now, then)| now.saturating_sub(then))
        };
        CpuUse {
            bench: since(process_cpu("self"), self.start.bench),
            broker: since(
                self.broker.as_deref().and_then(process_cpu),
                self.start.broker,
            ),
            peer: since(self.peer.as_deref().and_then(process_cpu), self.start.peer),
        }
    }
}

/// Prints the header of a table of CPU per operation, rates in `rate_unit`; then one
/// [`print_row`] per path.
pub fn print_header(rate_unit: &str) {
    println!(
        "| path | {rate_unit} | bench process | broker | Python service | total | ceiling {rate_unit} \
         on {} cores |",
        cores()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
}

/// One row of a CPU table: the rate reached, the CPU each process used per operation, and the
/// ceiling that cost sets on this machine (cores / CPU per operation).
pub fn print_row(name: &str, rate: f64, used: &CpuUse) {
    let total = used.total().as_secs_f64();
    let ceiling = if total > 0.0 {
        format!("{:.0}", cores() as f64 / total)
    } else {
        "-".to_owned()
    };
    println!(
        "| {name} | {rate:.0} | {} | {} | {} | {:.0} | {ceiling} |",
        micros(used.bench),
        micros(used.broker),
        micros(used.peer),
        total * 1e6
    );
}

/// The cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Microseconds of a share, or `-`.
pub fn micros(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.0}", d.as_secs_f64() * 1e6),
    )
}
