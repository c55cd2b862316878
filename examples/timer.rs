//! Timers: Nameko's `@timer(interval, eager)`.
//!
//! ```text
//! cargo run --example timer           # ticks until Ctrl-C
//! ```
//!
//! `heartbeat` fires every second from one second after start; `report` fires at start and then
//! every five seconds, and takes two seconds: the next tick waits for it (no overlap), and the
//! schedule stays anchored to the start (no drift). Ctrl-C lets a running tick finish.

use enoki::{Config, Runner, Service, Timer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

fn main() -> enoki::Result<()> {
    enoki::logger::init();
    let beats = AtomicU64::new(0);
    let clock = Service::new("clock")
        .timer_with(
            Timer::new(Duration::from_secs(1)).name("heartbeat"),
            move |_ctx| {
                let n = beats.fetch_add(1, Ordering::Relaxed) + 1;
                log::info!("heartbeat {n}");
                Ok(())
            },
        )
        .timer_with(
            Timer::new(Duration::from_secs(5))
                .eager(true)
                .name("report"),
            |ctx| {
                // A fresh call chain per tick: the stack holds only this tick's call id.
                log::info!("report starts: {}", ctx.call_id());
                std::thread::sleep(Duration::from_secs(2));
                log::info!("report done");
                Ok(())
            },
        );
    Runner::new(Config::from_env()?).service(clock).run()
}
