//! Waiting for entrypoints to complete: Nameko's `entrypoint_waiter`.

use crate::context::WorkerContext;
use crate::dependency::Dependency;
use crate::service::Service;
use crate::{Error, ErrorKind, RemoteError};
use parking_lot::{Condvar, Mutex};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The name a [`Waiter`] is declared under on the services it watches.
const DEPENDENCY_NAME: &str = "enoki.testing.waiter";

/// One finished worker, as a [`Waiter`] or a [`Stub`](super::Stub) saw it after its
/// `worker_result`.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The entrypoint it ran (RPC method, handler, timer or consumer name).
    pub entrypoint: String,
    /// The worker's call id, `<service>.<entrypoint>.<uuid>`.
    pub call_id: String,
    /// What the handler returned (`null` for events, messages and ticks), or its error as a
    /// remote error.
    pub result: std::result::Result<Value, RemoteError>,
}

impl Completion {
    pub(crate) fn new(ctx: &WorkerContext, result: std::result::Result<&str, &Error>) -> Self {
        Completion {
            entrypoint: ctx.entrypoint().to_owned(),
            call_id: ctx.call_id().to_owned(),
            result: match result {
                Ok(json) => Ok(serde_json::from_str(json).unwrap_or(Value::Null)),
                Err(e) => Err(e.to_remote()),
            },
        }
    }
}

/// Counts the completed workers of each entrypoint of the services it watches, and waits for
/// them: Nameko's `entrypoint_waiter`, on any transport (it watches as a dependency, so it
/// sees every worker of the container, whatever brought the work).
///
/// A worker counts once its handler ran and every dependency's `worker_result` and
/// `worker_teardown` ran (for RPC, after the reply was sent), provided the waiter is the last
/// dependency: call [`watch`](Waiter::watch) after declaring the others. Counts start at the
/// container's start, not at the call to [`wait`](Waiter::wait). Entrypoints of the same name
/// in two services watched by one waiter count together; use a waiter per service to tell them
/// apart.
///
/// ```
/// use enoki::testing::{TestRunner, Waiter};
/// use enoki::Service;
/// use std::time::Duration;
///
/// # fn main() -> enoki::Result<()> {
/// let waiter = Waiter::new();
/// let billing = waiter.watch(Service::new("billing").event_handler(
///     "shop",
///     "order_placed",
///     |_ctx, order: serde_json::Value| Ok(println!("bill {order}")),
/// ));
/// let runner = TestRunner::new().service(billing).start()?;
/// runner.dispatcher()?.dispatch("shop", "order_placed", &serde_json::json!({"id": 1}))?;
/// let done = waiter.wait("handle_order_placed", 1, Duration::from_secs(5))?;
/// assert_eq!(done[0].result, Ok(serde_json::Value::Null));
///
/// // Not reached in time: the error says what was seen.
/// let late = waiter.wait("handle_order_placed", 2, Duration::from_millis(50)).unwrap_err();
/// assert_eq!(late.seen, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Waiter {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Results of workers not yet torn down, by call id.
    results: HashMap<String, Completion>,
    /// Completed workers, by entrypoint.
    done: HashMap<String, Vec<Completion>>,
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        let counts: HashMap<&str, usize> = state
            .done
            .iter()
            .map(|(name, done)| (name.as_str(), done.len()))
            .collect();
        f.debug_struct("Waiter")
            .field("completed", &counts)
            .finish()
    }
}

impl Waiter {
    /// A waiter that has seen nothing yet.
    pub fn new() -> Waiter {
        Waiter::default()
    }

    /// `service` with this waiter declared as its last dependency (named
    /// `enoki.testing.waiter`), so it sees every worker finish.
    pub fn watch(&self, service: Service) -> Service {
        service.dependency(DEPENDENCY_NAME, self.clone())
    }

    /// How many workers of `entrypoint` have completed so far.
    pub fn count(&self, entrypoint: &str) -> usize {
        self.inner
            .state
            .lock()
            .done
            .get(entrypoint)
            .map_or(0, Vec::len)
    }

    /// The completed workers of `entrypoint` so far, in the order they finished.
    pub fn completions(&self, entrypoint: &str) -> Vec<Completion> {
        self.inner
            .state
            .lock()
            .done
            .get(entrypoint)
            .cloned()
            .unwrap_or_default()
    }

    /// Blocks until `entrypoint` has completed at least `times` times in all, then returns
    /// its completions so far (at least `times`), in the order they finished. After `timeout`
    /// it gives up with a [`WaitTimeout`] that names the entrypoint and the count it saw.
    pub fn wait(
        &self,
        entrypoint: &str,
        times: usize,
        timeout: Duration,
    ) -> std::result::Result<Vec<Completion>, WaitTimeout> {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.inner.state.lock();
        loop {
            let seen = state.done.get(entrypoint).map_or(0, Vec::len);
            if seen >= times {
                return Ok(state.done.get(entrypoint).cloned().unwrap_or_default());
            }
            let timed_out = match deadline {
                Some(deadline) => self
                    .inner
                    .changed
                    .wait_until(&mut state, deadline)
                    .timed_out(),
                None => {
                    self.inner.changed.wait(&mut state);
                    false
                }
            };
            if timed_out {
                let seen = state.done.get(entrypoint).map_or(0, Vec::len);
                if seen >= times {
                    continue;
                }
                return Err(WaitTimeout {
                    entrypoint: entrypoint.to_owned(),
                    expected: times,
                    seen,
                    timeout,
                });
            }
        }
    }
}

impl Dependency for Waiter {
    type Value = ();

    fn inject(&self, _ctx: &WorkerContext) -> crate::Result<()> {
        Ok(())
    }

    fn worker_result(&self, ctx: &WorkerContext, result: std::result::Result<&str, &Error>) {
        let completion = Completion::new(ctx, result);
        self.inner
            .state
            .lock()
            .results
            .insert(completion.call_id.clone(), completion);
    }

    fn worker_teardown(&self, ctx: &WorkerContext) {
        let mut state = self.inner.state.lock();
        let completion = state
            .results
            .remove(ctx.call_id())
            .unwrap_or_else(|| Completion {
                entrypoint: ctx.entrypoint().to_owned(),
                call_id: ctx.call_id().to_owned(),
                result: Ok(Value::Null),
            });
        state
            .done
            .entry(completion.entrypoint.clone())
            .or_default()
            .push(completion);
        drop(state);
        self.inner.changed.notify_all();
    }
}

/// [`Waiter::wait`] gave up: the entrypoint did not complete the awaited number of times in
/// time (Nameko's `entrypoint_waiter.Timeout`).
///
/// ```
/// let timeout = enoki::testing::WaitTimeout {
///     entrypoint: "handle_order_placed".into(),
///     expected: 3,
///     seen: 1,
///     timeout: std::time::Duration::from_millis(200),
/// };
/// assert_eq!(
///     timeout.to_string(),
///     "entrypoint `handle_order_placed` completed 1 time(s) within 0.200 s; waited for 3"
/// );
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct WaitTimeout {
    /// The entrypoint waited for.
    pub entrypoint: String,
    /// How many completions were awaited.
    pub expected: usize,
    /// How many there were when the wait gave up.
    pub seen: usize,
    /// How long it waited.
    pub timeout: Duration,
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "entrypoint `{}` completed {} time(s) within {:.3} s; waited for {}",
            self.entrypoint,
            self.seen,
            self.timeout.as_secs_f64(),
            self.expected
        )
    }
}

/// The same as `Display`, so `unwrap` and `expect` in a test print the full message.
impl fmt::Debug for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for WaitTimeout {}

/// An [`ErrorKind::Timeout`], so `?` works in functions returning [`crate::Result`]; that
/// keeps only the duration, so `expect` the `WaitTimeout` itself where the message matters.
impl From<WaitTimeout> for Error {
    fn from(timeout: WaitTimeout) -> Error {
        Error::new(ErrorKind::Timeout(timeout.timeout))
    }
}
