//! The enoki command line: call services in the cluster, dispatch events.
//!
//! ```text
//! enoki call <service>.<method> ['<json args>'] ['<json kwargs>'] [--timeout SECONDS]
//! enoki dispatch <source> <event_type> '<json payload>'
//! ```
//!
//! The broker comes from `AMQP_URI` (or a config file named by `ENOKI_CONFIG`).

use enoki::{Args, ClusterRpcProxy, Config, ErrorKind, StandaloneDispatcher};
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage:
  enoki call <service>.<method> ['<json args>'] ['<json kwargs>'] [--timeout SECONDS]
  enoki dispatch <source> <event_type> '<json payload>'

call prints the result as JSON. A remote error is printed to stderr as JSON and exits with status 1;
other failures exit with status 2. dispatch publishes the payload as an event of <event_type>
from the service <source> (to the exchange <source>.events) and returns once the broker
confirmed it. The broker is AMQP_URI (default amqp://guest:guest@localhost:5672/).";

fn main() -> ExitCode {
    enoki::logger::init();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match argv.first().map(String::as_str) {
        Some("call") => call(&argv[1..]),
        Some("dispatch") => dispatch(&argv[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("enoki: {message}");
    ExitCode::from(2)
}

fn call(argv: &[String]) -> ExitCode {
    let mut positional = Vec::new();
    let mut timeout = None;
    let mut iter = argv.iter();
    while let Some(arg) = iter.next() {
        if arg == "--timeout" {
            let Some(secs) = iter.next().and_then(|s| s.parse::<f64>().ok()) else {
                return fail("--timeout takes a number of seconds");
            };
            match Duration::try_from_secs_f64(secs) {
                Ok(d) => timeout = Some(d),
                Err(_) => return fail("--timeout takes a non-negative number of seconds"),
            }
        } else {
            positional.push(arg.as_str());
        }
    }
    let (target, args_json, kwargs_json) = match positional.as_slice() {
        [target] => (*target, "[]", "{}"),
        [target, args] => (*target, *args, "{}"),
        [target, args, kwargs] => (*target, *args, *kwargs),
        _ => {
            return fail(format!(
                "call takes a target and up to two JSON documents\n{USAGE}"
            ));
        }
    };
    let Some((service, method)) = target.split_once('.') else {
        return fail(format!("`{target}` is not <service>.<method>"));
    };
    let args = match serde_json::from_str::<Value>(args_json) {
        Ok(Value::Array(items)) => items,
        Ok(other) => vec![other],
        Err(e) => return fail(format!("args are not JSON: {e}")),
    };
    let kwargs = match serde_json::from_str::<Value>(kwargs_json) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return fail("kwargs must be a JSON object"),
        Err(e) => return fail(format!("kwargs are not JSON: {e}")),
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let cluster = match ClusterRpcProxy::new(&config) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let args = Args { args, kwargs };
    let result: enoki::Result<Value> = match timeout {
        Some(t) => cluster.call_timeout(service, method, args, t),
        None => cluster.call(service, method, args),
    };
    match result {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(e) => match e.kind() {
            ErrorKind::Remote(remote) => {
                eprintln!(
                    "{}",
                    serde_json::to_string(remote).unwrap_or_else(|_| remote.to_string())
                );
                ExitCode::from(1)
            }
            _ => fail(e),
        },
    }
}

fn dispatch(argv: &[String]) -> ExitCode {
    let [source, event_type, payload] = argv else {
        return fail(format!(
            "dispatch takes a source service, an event type and a JSON payload\n{USAGE}"
        ));
    };
    let payload = match serde_json::from_str::<Value>(payload) {
        Ok(v) => v,
        Err(e) => return fail(format!("the payload is not JSON: {e}")),
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let dispatched = StandaloneDispatcher::new(&config)
        .and_then(|dispatcher| dispatcher.dispatch(source, event_type, &payload));
    match dispatched {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
