//! `enoki shell`: a prompt for calling services and dispatching events, as `nameko shell`.
//!
//! Reads lines from stdin, so it runs scripted with piped input as well as by hand. When
//! stdin is a terminal it prints a prompt and keeps its history in `~/.enoki_history`.

use enoki::describe::{Graph, discover};
use enoki::{Args, ClusterRpcProxy, Config, ErrorKind, StandaloneDispatcher};
use serde_json::{Map, Value};
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

const HELP: &str = "commands:
  <service>.<method>(<json>, ..., <name>=<json>)   call over RPC (n.rpc.<service>... works too)
  dispatch <source> <event_type> <json payload>    dispatch an event as <source>
  services                                         list the running enoki services
  graph                                            the dependency graph (Mermaid)
  history                                          numbered history; !N runs line N again
  help, exit";

/// How long a call waits for its reply unless `--timeout` says otherwise.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);

struct Shell {
    config: Config,
    timeout: Duration,
    cluster: Option<ClusterRpcProxy>,
    dispatcher: Option<StandaloneDispatcher>,
    history: Vec<String>,
}

/// What a command made of the session.
enum Outcome {
    Ok,
    Failed,
    Exit,
}

pub(crate) fn run(config: Config, timeout: Option<Duration>) -> ExitCode {
    let interactive = std::io::stdin().is_terminal();
    let history_file = interactive
        .then(|| std::env::var_os("HOME"))
        .flatten()
        .map(|home| std::path::PathBuf::from(home).join(".enoki_history"));
    let mut shell = Shell {
        config,
        timeout: timeout.unwrap_or(CALL_TIMEOUT),
        cluster: None,
        dispatcher: None,
        history: history_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|text| text.lines().map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    if interactive {
        println!(
            "enoki shell on {} (type `help`)",
            shell.config.masked()["AMQP_URI"].as_str().unwrap_or("?")
        );
    }
    let mut failed = false;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            print!(">>> ");
            let _ = std::io::stdout().flush();
        }
        let Some(Ok(line)) = lines.next() else { break };
        let mut line = line.trim().to_owned();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(n) = line.strip_prefix('!') {
            match n
                .parse::<usize>()
                .ok()
                .and_then(|n| shell.history.get(n.wrapping_sub(1)))
            {
                Some(previous) => {
                    line = previous.clone();
                    println!("{line}");
                }
                None => {
                    eprintln!("no history line {n}");
                    failed = true;
                    continue;
                }
            }
        }
        if line != "history" {
            shell.history.push(line.clone());
            if let Some(file) = &history_file {
                let appended = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
                    .and_then(|mut f| writeln!(f, "{line}"));
                if let Err(e) = appended {
                    log::debug!("cannot write the shell history: {e}");
                }
            }
        }
        match shell.command(&line) {
            Outcome::Ok => {}
            Outcome::Failed => failed = true,
            Outcome::Exit => break,
        }
        let _ = std::io::stdout().flush();
    }
    if failed && !interactive {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

impl Shell {
    fn command(&mut self, line: &str) -> Outcome {
        let word = line.split_whitespace().next().unwrap_or("");
        let result = match word {
            "exit" | "quit" => return Outcome::Exit,
            "help" | "?" => {
                println!("{HELP}");
                Ok(())
            }
            "history" => {
                for (i, line) in self.history.iter().enumerate() {
                    println!("{:>4}  {line}", i + 1);
                }
                Ok(())
            }
            "services" | "ls" => self.services(),
            "graph" => discover(&self.config, DISCOVERY_TIMEOUT)
                .map(|found| print!("{}", Graph::new(&found).mermaid()))
                .map_err(|e| e.to_string()),
            "dispatch" => self.dispatch(line[word.len()..].trim()),
            _ if line.contains('(') => self.call(line),
            _ => Err(format!("unknown command `{word}` (type `help`)")),
        };
        match result {
            Ok(()) => Outcome::Ok,
            Err(e) => {
                eprintln!("{e}");
                Outcome::Failed
            }
        }
    }

    fn services(&self) -> Result<(), String> {
        let found = discover(&self.config, DISCOVERY_TIMEOUT).map_err(|e| e.to_string())?;
        let graph = Graph::new(&found);
        for node in graph.nodes.iter().filter(|n| n.instances > 0) {
            let methods: Vec<&str> = found
                .iter()
                .find(|d| d.service == node.name)
                .map(|d| {
                    d.entrypoints
                        .iter()
                        .filter(|e| e.kind == "rpc")
                        .map(|e| e.name.as_str())
                        .collect()
                })
                .unwrap_or_default();
            println!(
                "{} ({} instance{}): {}",
                node.name,
                node.instances,
                if node.instances == 1 { "" } else { "s" },
                methods.join(", ")
            );
        }
        Ok(())
    }

    fn call(&mut self, line: &str) -> Result<(), String> {
        let (service, method, args) = parse_call(line)?;
        if self.cluster.is_none() {
            self.cluster = Some(ClusterRpcProxy::new(&self.config).map_err(|e| e.to_string())?);
        }
        let cluster = self.cluster.as_ref().ok_or("no client")?;
        match cluster.call_timeout::<Value>(&service, &method, args, self.timeout) {
            Ok(value) => {
                println!("{value}");
                Ok(())
            }
            Err(e) => match e.kind() {
                ErrorKind::Remote(remote) => Err(format!("{}: {}", remote.exc_type, remote.value)),
                _ => Err(e.to_string()),
            },
        }
    }

    fn dispatch(&mut self, rest: &str) -> Result<(), String> {
        let mut parts = rest.splitn(3, char::is_whitespace);
        let (Some(source), Some(event_type), Some(payload)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err("dispatch <source> <event_type> <json payload>".to_owned());
        };
        let payload: Value = serde_json::from_str(payload.trim())
            .map_err(|e| format!("the payload is not JSON: {e}"))?;
        if self.dispatcher.is_none() {
            self.dispatcher =
                Some(StandaloneDispatcher::new(&self.config).map_err(|e| e.to_string())?);
        }
        let dispatcher = self.dispatcher.as_ref().ok_or("no dispatcher")?;
        dispatcher
            .dispatch(source, event_type, &payload)
            .map_err(|e| e.to_string())?;
        println!("dispatched {source}.{event_type}");
        Ok(())
    }
}

/// Parses `service.method(1, "two", key={"x": 3})` (optionally prefixed `n.rpc.`).
fn parse_call(line: &str) -> Result<(String, String, Args), String> {
    let open = line
        .find('(')
        .ok_or("a call looks like service.method(args)")?;
    let inner = line[open + 1..]
        .trim_end()
        .strip_suffix(')')
        .ok_or("a call ends with `)`")?;
    let target = line[..open].trim();
    let target = target.strip_prefix("n.rpc.").unwrap_or(target);
    let (service, method) = target
        .rsplit_once('.')
        .filter(|(s, m)| !s.is_empty() && !m.is_empty())
        .ok_or_else(|| format!("`{target}` is not <service>.<method>"))?;
    let mut args = Vec::new();
    let mut kwargs = Map::new();
    for part in split_top_level(inner)? {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let keyword = part.split_once('=').filter(|(name, value)| {
            let name = name.trim();
            !value.starts_with('=')
                && !name.is_empty()
                && name.chars().all(|c| c.is_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        });
        match keyword {
            Some((name, value)) => {
                let value = serde_json::from_str(value.trim())
                    .map_err(|e| format!("`{name}` is not JSON: {e}"))?;
                kwargs.insert(name.trim().to_owned(), value);
            }
            None if !kwargs.is_empty() => {
                return Err("positional arguments come before keyword arguments".to_owned());
            }
            None => {
                args.push(
                    serde_json::from_str(part).map_err(|e| format!("`{part}` is not JSON: {e}"))?,
                );
            }
        }
    }
    Ok((service.to_owned(), method.to_owned(), Args { args, kwargs }))
}

/// Splits on commas outside strings, brackets and braces.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut start) = (0i32, false, false, 0);
    for (i, c) in text.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_string || depth != 0 {
        return Err("unbalanced quotes or brackets in the arguments".to_owned());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calls_parse_like_python() {
        let (s, m, a) = parse_call(r#"shop.buy(1, "a,b", [1, {"x": 2}], qty=3, note={"k": "v"})"#)
            .expect("parses");
        assert_eq!((s.as_str(), m.as_str()), ("shop", "buy"));
        assert_eq!(a.args, vec![json!(1), json!("a,b"), json!([1, {"x": 2}])]);
        assert_eq!(a.kwargs.get("qty"), Some(&json!(3)));
        assert_eq!(a.kwargs.get("note"), Some(&json!({"k": "v"})));
        let (s, m, a) = parse_call("n.rpc.echo.ping()").expect("parses");
        assert_eq!((s.as_str(), m.as_str(), a.args.len()), ("echo", "ping", 0));
        assert!(parse_call("echo.ping(1").is_err());
        assert!(parse_call("ping(1)").is_err());
        assert!(parse_call("echo.ping(a=1, 2)").is_err());
        assert!(parse_call("echo.ping(nope)").is_err());
    }
}
