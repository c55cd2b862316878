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
//! HTTP (on `WEB_SERVER_ADDRESS`, default `0.0.0.0:8000`): `GET /echo/<value>` returns `value`
//! as text; `POST /echo` returns the request body with its content type.

use enoki::http::{Request, Response};
use enoki::{Config, RemoteError, Runner, Service};
use serde_json::Value;
use std::time::Duration;

/// The echo service. Its interface is fixed: benches and interop tests target it. The name is
/// `echo` unless `ECHO_SERVICE_NAME` says otherwise (tests run several side by side).
fn echo_service() -> Service {
    let name = std::env::var("ECHO_SERVICE_NAME").unwrap_or_else(|_| "echo".to_owned());
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
        .http("GET", "/echo/<value>", |_ctx, req: &Request| {
            req.param::<String>("value")
        })
        .http("POST", "/echo", |_ctx, req: &Request| {
            let content_type = req.content_type().unwrap_or("application/octet-stream");
            Ok(Response::bytes(content_type, req.body()))
        })
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
