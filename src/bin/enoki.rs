//! The enoki command line: call services, dispatch events, see the running system.
//!
//! ```text
//! enoki call <service>.<method> ['<json args>'] ['<json kwargs>'] [--timeout SECONDS]
//! enoki dispatch <source> <event_type> '<json payload>'
//! enoki describe [--json] [--timeout SECONDS]
//! enoki graph [--mermaid] [--svg FILE] [--json] [--timeout SECONDS]
//! enoki shell [--timeout SECONDS]
//! enoki show-config [--json]
//! ```
//!
//! The broker comes from `AMQP_URI` (or a config file named by `ENOKI_CONFIG`).

// A crate root looks for modules beside it, where cargo would take them for binaries.
#[path = "enoki/shell.rs"]
mod shell;

use enoki::describe::{Description, Graph, discover};
use enoki::{Args, ClusterRpcProxy, Config, ErrorKind, StandaloneDispatcher};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage:
  enoki call <service>.<method> ['<json args>'] ['<json kwargs>'] [--timeout SECONDS]
  enoki dispatch <source> <event_type> '<json payload>'
  enoki describe [--json] [--timeout SECONDS]
  enoki graph [--mermaid] [--svg FILE] [--json] [--timeout SECONDS]
  enoki shell [--timeout SECONDS]
  enoki show-config [--json]

call prints the result as JSON. A remote error is printed to stderr as JSON and exits with status 1;
other failures exit with status 2. dispatch publishes the payload as an event of <event_type>
from the service <source> (to the exchange <source>.events) and returns once the broker
confirmed it.

describe lists the running enoki services, their instances and entrypoints; graph prints their
dependency graph as Graphviz DOT (or Mermaid with --mermaid; --svg renders it with Graphviz's
`dot`). Both ask every running container to describe itself and wait up to --timeout seconds
(default 2) for the answers. shell is an interactive prompt (type `help`); it reads piped input
too. show-config prints the effective configuration with passwords masked.

The broker is AMQP_URI (default amqp://guest:guest@localhost:5672/).";

/// How long discovery waits for answers unless `--timeout` says otherwise.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    enoki::logger::init();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let rest = argv.get(1..).unwrap_or_default();
    match argv.first().map(String::as_str) {
        Some("call") => call(rest),
        Some("dispatch") => dispatch(rest),
        Some("describe") => describe(rest),
        Some("graph") => graph(rest),
        Some("shell") => shell(rest),
        Some("show-config") => show_config(rest),
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

/// Options shared by the commands that take them.
#[derive(Default)]
struct Options {
    json: bool,
    mermaid: bool,
    svg: Option<String>,
    timeout: Option<Duration>,
    positional: Vec<String>,
}

fn parse_seconds(value: Option<&String>) -> Result<Duration, String> {
    value
        .and_then(|s| s.parse::<f64>().ok())
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| "--timeout takes a non-negative number of seconds".to_owned())
}

fn options(argv: &[String], allowed: &[&str]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut iter = argv.iter();
    while let Some(arg) = iter.next() {
        let flag = arg.as_str();
        if flag.starts_with("--") && !allowed.contains(&flag) {
            return Err(format!("unknown option `{flag}`\n{USAGE}"));
        }
        match flag {
            "--json" => options.json = true,
            "--mermaid" => options.mermaid = true,
            "--svg" => {
                let file = iter.next().ok_or("--svg takes a file name")?;
                options.svg = Some(file.clone());
            }
            "--timeout" => options.timeout = Some(parse_seconds(iter.next())?),
            _ => options.positional.push(arg.clone()),
        }
    }
    Ok(options)
}

fn call(argv: &[String]) -> ExitCode {
    let options = match options(argv, &["--timeout"]) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let positional: Vec<&str> = options.positional.iter().map(String::as_str).collect();
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
    let result: enoki::Result<Value> = match options.timeout {
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

/// Runs discovery with the command's options.
fn discovered(options: &Options) -> Result<Vec<Description>, String> {
    if !options.positional.is_empty() {
        return Err(format!(
            "unexpected argument `{}`\n{USAGE}",
            options.positional[0]
        ));
    }
    let config = Config::from_env().map_err(|e| e.to_string())?;
    discover(&config, options.timeout.unwrap_or(DISCOVERY_TIMEOUT)).map_err(|e| e.to_string())
}

fn describe(argv: &[String]) -> ExitCode {
    let found = match options(argv, &["--json", "--timeout"]).and_then(|o| {
        let found = discovered(&o)?;
        Ok((o.json, found))
    }) {
        Ok(found) => found,
        Err(e) => return fail(e),
    };
    match found {
        (true, found) => match serde_json::to_string_pretty(&found) {
            Ok(text) => println!("{text}"),
            Err(e) => return fail(e),
        },
        (false, found) => print!("{}", describe_text(&found)),
    }
    ExitCode::SUCCESS
}

/// The human-readable listing: one block per service, its instances, entrypoints and
/// dependencies.
fn describe_text(found: &[Description]) -> String {
    use std::fmt::Write as _;
    if found.is_empty() {
        return "no enoki services answered\n".to_owned();
    }
    let mut by_service: BTreeMap<&str, Vec<&Description>> = BTreeMap::new();
    for d in found {
        by_service.entry(&d.service).or_default().push(d);
    }
    let mut out = String::new();
    for (service, instances) in by_service {
        let first = instances[0];
        let version = first
            .version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default();
        let count = instances.len();
        let plural = if count == 1 { "" } else { "s" };
        let _ = writeln!(out, "{service}{version} ({count} instance{plural})");
        for d in &instances {
            let _ = writeln!(out, "  instance {} on {} pid {}", d.instance, d.host, d.pid);
        }
        for e in &first.entrypoints {
            let _ = writeln!(out, "  {}", e.summary());
        }
        if !first.calls.is_empty() {
            let _ = writeln!(out, "  calls {}", first.calls.join(", "));
        }
        if !first.dispatches.is_empty() {
            let _ = writeln!(out, "  dispatches {}", first.dispatches.join(", "));
        }
        for d in &instances {
            if let Some(Value::Object(entrypoints)) = d.metrics.as_ref().map(|m| &m["entrypoints"])
            {
                let _ = write!(out, "  metrics {}:", d.instance);
                for (name, m) in entrypoints {
                    let _ = write!(out, " {name}={}/{}err", m["calls"], m["errors"]);
                    if let Some(p99) = m["p99"].as_f64() {
                        let _ = write!(out, " p99 {:.3}ms", p99 * 1000.0);
                    }
                }
                out.push('\n');
            }
        }
    }
    out
}

fn graph(argv: &[String]) -> ExitCode {
    let options = match options(argv, &["--json", "--mermaid", "--svg", "--timeout"]) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let found = match discovered(&options) {
        Ok(found) => found,
        Err(e) => return fail(e),
    };
    let graph = Graph::new(&found);
    if let Some(file) = &options.svg {
        return match render_svg(&graph.dot(), file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        };
    }
    if options.json {
        match serde_json::to_string_pretty(&graph) {
            Ok(text) => println!("{text}"),
            Err(e) => return fail(e),
        }
    } else if options.mermaid {
        print!("{}", graph.mermaid());
    } else {
        print!("{}", graph.dot());
    }
    ExitCode::SUCCESS
}

/// Renders DOT to an SVG file with Graphviz's `dot` (`$ENOKI_DOT` names another binary).
fn render_svg(dot: &str, file: &str) -> Result<(), String> {
    use std::io::Write as _;
    let program = std::env::var("ENOKI_DOT").unwrap_or_else(|_| "dot".to_owned());
    let mut child = std::process::Command::new(&program)
        .args(["-Tsvg", "-o", file])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "--svg needs Graphviz's `{program}`, which is not installed (apt-get install \
                 graphviz); `enoki graph` prints the DOT to render elsewhere"
            ),
            _ => format!("cannot run `{program}`: {e}"),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(dot.as_bytes())
            .map_err(|e| format!("cannot feed `{program}`: {e}"))?;
    }
    let status = child
        .wait()
        .map_err(|e| format!("`{program}` failed: {e}"))?;
    if !status.success() {
        return Err(format!("`{program}` failed ({status})"));
    }
    Ok(())
}

fn shell(argv: &[String]) -> ExitCode {
    let options = match options(argv, &["--timeout"]) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    shell::run(config, options.timeout)
}

fn show_config(argv: &[String]) -> ExitCode {
    let options = match options(argv, &["--json"]) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let masked = config.masked();
    if options.json {
        println!("{masked}");
        return ExitCode::SUCCESS;
    }
    if let Value::Object(map) = masked {
        let sorted: BTreeMap<_, _> = map.into_iter().collect();
        for (key, value) in sorted {
            match value {
                Value::String(s) => println!("{key}: {s}"),
                other => println!("{key}: {other}"),
            }
        }
    }
    ExitCode::SUCCESS
}
