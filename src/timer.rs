//! The timer entrypoint, as Nameko's `@timer(interval, eager=False)`.
//!
//! The schedule is anchored to the container's start: tick *k* is due at `start + k·interval`,
//! with *k* from 1 (from 0 when eager). A tick runs on a worker of the pool like any other
//! entrypoint, with a fresh call id stack (`[<service>.<name>.<uuid>]`) and the dependency
//! hooks, and the next tick waits until it has finished: ticks never overlap. The schedule does
//! not drift while ticks are quick; after a slow tick the missed slots fire back to back until
//! it has caught up, as Nameko's do. A timer is not cluster-aware: every instance fires.
//!
//! A graceful stop lets a running tick finish; no tick starts after it.

use crate::container::{Jobs, Runtime, Worker};
use crate::context::WorkerContext;
use crate::entrypoint::{Entrypoint, Input, Invocation, Invoked};
use crate::rpc::{finish_worker, run_worker};
use crate::service::Service;
use crate::transport::Headers;
use crate::{Config, Error, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, select};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A timer's handler.
type TickHandler = Arc<dyn Fn(&WorkerContext) -> Result<()> + Send + Sync>;

/// How often the timer thread looks for a stop while the pool's job queue is full.
const SUBMIT_POLL: Duration = Duration::from_millis(50);

/// How long before a tick is due the timer thread hands it to the pool. The worker then sleeps
/// until the exact time itself, so the hand-off's wake-up is not in the tick's delay: one
/// wake-up (the worker's) stands between the due time and the handler, not two.
///
/// Both wake-ups ask the scheduler to be prompt (`crate::wake`): on a machine whose cores are
/// all busy, a thread woken with the default time slice waits for the running thread's slice
/// to end, milliseconds; with a short slice it preempts it.
const LEAD: Duration = Duration::from_millis(2);

/// Options of a timer, as the arguments of Nameko's `@timer(interval, eager)`.
///
/// ```
/// use enoki::{Service, Timer};
/// use std::time::Duration;
///
/// let service = Service::new("reporter").timer_with(
///     Timer::new(Duration::from_secs(60)).eager(true).name("report"),
///     |ctx| {
///         println!("tick {}", ctx.call_id());
///         Ok(())
///     },
/// );
/// # let _ = service;
/// ```
#[derive(Debug, Clone)]
pub struct Timer {
    interval: Duration,
    eager: bool,
    name: Option<String>,
}

impl Timer {
    /// Fires every `interval`.
    pub fn new(interval: Duration) -> Timer {
        Timer {
            interval,
            eager: false,
            name: None,
        }
    }

    /// Fire once at start, then every interval. Default: false (the first tick comes one
    /// interval after start).
    pub fn eager(mut self, eager: bool) -> Timer {
        self.eager = eager;
        self
    }

    /// The timer's name, Nameko's method name: it makes the workers' call ids
    /// (`<service>.<name>.<uuid>`). Default: `timer`.
    pub fn name(mut self, name: impl Into<String>) -> Timer {
        self.name = Some(name.into());
        self
    }
}

/// The running timer's thread and the means to stop it.
struct Running {
    stop: Sender<Stop>,
    /// Set before the stop is sent: a tick handed over early but not yet due is skipped.
    stopped: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Let a running tick finish first.
    Graceful,
    /// Leave at once.
    Kill,
}

struct TimerEntrypoint {
    options: Timer,
    name: Arc<str>,
    handler: TickHandler,
    running: Option<Running>,
}

impl fmt::Debug for TimerEntrypoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("name", &self.name)
            .field("interval", &self.options.interval)
            .field("eager", &self.options.eager)
            .finish_non_exhaustive()
    }
}

impl Entrypoint for TimerEntrypoint {
    fn kind(&self) -> &'static str {
        "timer"
    }

    fn name(&self) -> String {
        self.name.to_string()
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind(),
            "name": &*self.name,
            "interval": self.options.interval.as_secs_f64(),
            "eager": self.options.eager,
        })
    }

    fn validate(&self, service: &str, _config: &Config) -> Result<()> {
        if self.options.interval.is_zero() {
            return Err(Error::config(format!(
                "timer `{}` on `{service}` needs an interval above zero",
                self.name
            )));
        }
        Ok(())
    }

    fn start(&mut self, runtime: &Arc<Runtime>, jobs: &Jobs) -> Result<()> {
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let stopped = Arc::new(AtomicBool::new(false));
        let schedule = Schedule {
            start: Instant::now(),
            interval: self.options.interval,
            next: u32::from(!self.options.eager),
        };
        let tick = Tick {
            runtime: runtime.clone(),
            name: self.name.clone(),
            handler: self.handler.clone(),
            stopped: stopped.clone(),
        };
        let jobs = jobs.clone();
        let thread = std::thread::Builder::new()
            .name(format!("enoki-{}-timer", runtime.service_name))
            .spawn(move || run(schedule, &tick, &jobs, &stop_rx))?;
        self.running = Some(Running {
            stop,
            stopped,
            thread,
        });
        Ok(())
    }

    fn stop(&mut self) {
        self.halt(Stop::Graceful);
    }

    fn kill(&mut self) {
        self.halt(Stop::Kill);
    }

    fn invoke(&self, runtime: &Arc<Runtime>, call: Invocation) -> Result<Invoked> {
        if !matches!(call.input, Input::Tick) {
            return Err(call.input.refused(self.kind(), &self.name, "a tick"));
        }
        // Context data is taken as given; a scheduled tick has none.
        let mut ctx = WorkerContext::new(runtime.clone(), self.name.clone(), call.headers);
        let outcome = run_worker(runtime, &mut ctx, |ctx| (self.handler)(ctx));
        finish_worker(runtime, &ctx, outcome.as_ref().map(|()| "null"));
        outcome.map(|()| Invoked::Done)
    }
}

impl TimerEntrypoint {
    fn halt(&mut self, how: Stop) {
        if let Some(running) = self.running.take() {
            running.stopped.store(true, Ordering::Release);
            let _ = running.stop.send(how);
            let _ = running.thread.join();
        }
    }
}

/// When ticks are due: `start + k·interval`.
struct Schedule {
    start: Instant,
    interval: Duration,
    next: u32,
}

impl Schedule {
    /// The next tick's due time; `None` once it would overflow `Instant` (centuries away).
    fn due(&mut self) -> Option<Instant> {
        let due = self
            .interval
            .checked_mul(self.next)
            .and_then(|offset| self.start.checked_add(offset));
        self.next = self.next.checked_add(1)?;
        due
    }
}

/// What one tick runs.
struct Tick {
    runtime: Arc<Runtime>,
    name: Arc<str>,
    handler: TickHandler,
    stopped: Arc<AtomicBool>,
}

impl Tick {
    /// A job for the pool that waits until `due`, runs one tick and reports on `done` when it
    /// has finished.
    fn job(&self, due: Instant, done: Sender<()>) -> crate::container::Job {
        let runtime = self.runtime.clone();
        let name = self.name.clone();
        let handler = self.handler.clone();
        let stopped = self.stopped.clone();
        Box::new(move |_worker: &mut Worker| {
            let early = due.saturating_duration_since(Instant::now());
            if !early.is_zero() {
                // Only for the wait: the handler runs as the worker's other jobs do.
                let _prompt = crate::wake::Prompt::enter();
                std::thread::sleep(early);
            }
            if stopped.load(Ordering::Acquire) {
                return;
            }
            // No headers: a timer starts a fresh call chain.
            let mut ctx = WorkerContext::new(runtime.clone(), name, Headers::new());
            let outcome = run_worker(&runtime, &mut ctx, |ctx| handler(ctx));
            finish_worker(&runtime, &ctx, outcome.as_ref().map(|()| "null"));
            let _ = done.send(());
        })
    }
}

/// The timer thread: sleep until the next tick is due, hand it to the pool, wait for it.
fn run(mut schedule: Schedule, tick: &Tick, jobs: &Jobs, stop: &Receiver<Stop>) {
    // This thread only sleeps and hands over; a late hand-off makes a late tick.
    crate::wake::short_slice_for_good();
    loop {
        let Some(due) = schedule.due() else { return };
        match stop.recv_deadline(due.checked_sub(LEAD).unwrap_or(due)) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(_) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let mut job = tick.job(due, done_tx);
        // The queue is full while every worker is busy: keep trying, but listen for a stop.
        loop {
            match jobs.submit_timeout(job, SUBMIT_POLL) {
                Ok(()) => break,
                Err(returned) => job = returned,
            }
            if stop.try_recv().is_ok() {
                return;
            }
        }
        // A dropped `done` (the job was dropped, or panicked outside its handler) also ends
        // the wait.
        select! {
            recv(done) -> _ => {}
            recv(stop) -> how => {
                if how != Ok(Stop::Kill) {
                    let _ = done.recv();
                }
                return;
            }
        }
    }
}

impl Service {
    /// Runs `f` every `interval`, as Nameko's `@timer(interval)`: the first tick one interval
    /// after start, no overlap (a slow tick delays the next), no drift. See [`Timer`] for
    /// `eager` and the name, and [`timer_with`](Service::timer_with).
    ///
    /// ```
    /// use enoki::Service;
    /// use std::time::Duration;
    ///
    /// let service = Service::new("janitor").timer(Duration::from_secs(30), |_ctx| {
    ///     println!("sweeping");
    ///     Ok(())
    /// });
    /// # let _ = service;
    /// ```
    pub fn timer<F>(self, interval: Duration, f: F) -> Service
    where
        F: Fn(&WorkerContext) -> Result<()> + Send + Sync + 'static,
    {
        self.timer_with(Timer::new(interval), f)
    }

    /// [`timer`](Service::timer) with options.
    pub fn timer_with<F>(self, options: Timer, f: F) -> Service
    where
        F: Fn(&WorkerContext) -> Result<()> + Send + Sync + 'static,
    {
        let name: Arc<str> = Arc::from(options.name.as_deref().unwrap_or("timer"));
        self.entrypoint(TimerEntrypoint {
            options,
            name,
            handler: Arc::new(f),
            running: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_anchored_to_the_start() {
        let start = Instant::now();
        let interval = Duration::from_millis(100);
        let mut lazy = Schedule {
            start,
            interval,
            next: 1,
        };
        assert_eq!(lazy.due(), Some(start + interval));
        assert_eq!(lazy.due(), Some(start + interval * 2));
        let mut eager = Schedule {
            start,
            interval,
            next: 0,
        };
        assert_eq!(eager.due(), Some(start));
        assert_eq!(eager.due(), Some(start + interval));
    }
}
