//! The `echo` service: the fixed target of the benches and the interop tests.
//!
//! ```text
//! cargo run --example echo            # no AMQP_URI: in-process memory:// broker, calls itself
//! AMQP_URI=amqp://guest:guest@localhost:5672/ cargo run --example echo   # on RabbitMQ
//! cargo run --bin enoki -- call echo.add '[1, 2]'                        # (RabbitMQ only)
//! ```
//!
//! Serves until Ctrl-C. Without `AMQP_URI` (in the environment or an `ENOKI_CONFIG` file) it
//! runs on the in-process `memory://` broker, which nothing outside the process can reach, so
//! it also calls `echo.add(1, 2)` through a `ClusterRpcProxy` of its own to show the round trip.
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
//!
//! HTTP (on `WEB_SERVER_ADDRESS`, default `0.0.0.0:8000`): `GET /echo/<value>` returns `value`
//! as text; `POST /echo` returns the request body with its content type.

use enoki::http::{Request, Response};
use enoki::{ClusterRpcProxy, Config, ErrorKind, RemoteError, Runner, Service};
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

/// Calls `echo.add(1, 2)` from inside the process once the service is up: the client a
/// `memory://` run cannot have outside.
fn call_in_process(config: Config, service: String) {
    std::thread::spawn(move || {
        let called = ClusterRpcProxy::new(&config).and_then(|cluster| {
            loop {
                match cluster.call_timeout::<Value>(&service, "add", (1, 2), Duration::from_secs(5))
                {
                    // Not consuming yet: the runner is still starting.
                    Err(e) if matches!(e.kind(), ErrorKind::UnknownService(_)) => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    other => break other,
                }
            }
        });
        match called {
            Ok(sum) => log::info!("in-process client: {service}.add(1, 2) = {sum}"),
            Err(e) => log::error!("in-process client failed: {e}"),
        }
    });
}

fn main() -> enoki::Result<()> {
    enoki::logger::init();
    let mut config = Config::from_env()?;
    let service = echo_service();
    if std::env::var_os("AMQP_URI").is_none() && config.uri() == Config::new().uri() {
        log::info!("AMQP_URI is unset: running on the in-process memory:// broker");
        config = config.amqp_uri("memory://");
        call_in_process(config.clone(), service.name().to_owned());
    } else {
        log::info!("connecting to {}", config.broker()?);
    }
    Runner::new(config).service(service).run()
}
