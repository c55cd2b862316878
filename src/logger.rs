//! A minimal stderr logger for binaries and examples, so they need no logging crate.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct Stderr {
    level: LevelFilter,
}

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // amiquip logs the AMQP handshake, credentials included, at debug level: its records
        // stop at info whatever the level asked for.
        if metadata.target().starts_with("amiquip") && metadata.level() > Level::Info {
            return false;
        }
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let _ = writeln!(
            std::io::stderr().lock(),
            "{level} {}: {}",
            record.target(),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// Sends `log` records to stderr, at the level named by the `ENOKI_LOG` environment variable
/// (`error`, `warn`, `info`, `debug`, `trace`; default `info`). Does nothing if a logger is
/// already installed.
///
/// ```
/// enoki::logger::init();
/// log::info!("service starting");
/// ```
pub fn init() {
    let level = std::env::var("ENOKI_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    if log::set_boxed_logger(Box::new(Stderr { level })).is_ok() {
        log::set_max_level(level);
    }
}
