//! The `echo` service: the fixed target of the benches and the interop tests.
//!
//! ```text
//! cargo run --example echo            # serves until Ctrl-C
//! cargo run --bin enoki -- call echo.add '[1, 2]'
//! ```
//!
//! RPC methods: `echo(value)` returns `value` unchanged; `add(a, b)` returns `a + b`;
//! `fail(message)` raises `ValueError(message)`; `sleep(ms)` sleeps, then returns `ms`.
//!
//! Events: `ping` events from `echo_source` are recorded (service pool handler `handle_ping`);
//! `received()` returns the recorded payloads in the order they were handled (workers run
//! concurrently, so events dispatched at once may be handled in any order).
//!
//! ```text
//! cargo run --bin enoki -- dispatch echo_source ping '{"n": 1}'
//! cargo run --bin enoki -- call echo.received          # [{"n": 1}]
//! ```

use enoki::{Config, RemoteError, Runner, Service};
use parking_lot::Mutex;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The echo service. Its interface is fixed: benches and interop tests target it. The name is
/// `echo` unless `ECHO_SERVICE_NAME` says otherwise (tests run several side by side).
fn echo_service() -> Service {
    let name = std::env::var("ECHO_SERVICE_NAME").unwrap_or_else(|_| "echo".to_owned());
    let pings = Arc::new(Mutex::new(Vec::<Value>::new()));
    let seen = pings.clone();
    Service::new(name)
        .rpc("echo", |_ctx, (value,): (Value,)| Ok(value))
        .rpc("add", |_ctx, (a, b): (Value, Value)| add(&a, &b))
        .rpc("fail", |_ctx, (message,): (String,)| -> enoki::Result<()> {
            Err(RemoteError::new("ValueError", message).into())
        })
        .rpc("sleep", |_ctx, (ms,): (u64,)| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(ms)
        })
        .event_handler("echo_source", "ping", move |_ctx, payload: Value| {
            pings.lock().push(payload);
            Ok(())
        })
        .rpc("received", move |_ctx, ()| Ok(seen.lock().clone()))
}

/// Adds integers, floats or strings, as Python's `a + b` would.
fn add(a: &Value, b: &Value) -> enoki::Result<Value> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x
                .checked_add(y)
                .map(Value::from)
                .ok_or_else(|| RemoteError::new("OverflowError", "integer overflow").into()),
            _ => Ok(Value::from(
                x.as_f64().unwrap_or(f64::NAN) + y.as_f64().unwrap_or(f64::NAN),
            )),
        },
        (Value::String(x), Value::String(y)) => Ok(Value::String(format!("{x}{y}"))),
        _ => Err(RemoteError::new(
            "TypeError",
            format!("unsupported operand types for +: {a} and {b}"),
        )
        .into()),
    }
}

fn main() -> enoki::Result<()> {
    enoki::logger::init();
    let config = Config::from_env()?;
    log::info!("echo: connecting to {}", config.amqp()?);
    Runner::new(config).service(echo_service()).run()
}
