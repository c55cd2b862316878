//! Interop with the real Python Nameko 2.14.1 (from the venv `scripts/provision` creates), both
//! directions: Python calls enoki, enoki calls Python, and call id stacks follow Nameko's rules
//! across the language boundary; events flow both ways to handlers of every type.

mod support;

use enoki::{
    ClusterRpcProxy, Container, ErrorKind, EventDispatcher, EventHandler, HandlerType, RemoteError,
    RpcProxy, Service, StandaloneDispatcher, WorkerContext,
};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::{Cleanup, Exchanges, unique};

const WAIT: Duration = Duration::from_secs(20);

fn python() -> String {
    std::env::var("ENOKI_PYTHON")
        .unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")))
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

fn check_python() {
    let ok = Command::new(python())
        .args(["-c", "import nameko"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "Python Nameko is not installed at {}: run `scripts/provision` (it creates .venv with \
         nameko==2.14.1), or set ENOKI_PYTHON",
        python()
    );
}

/// A Python Nameko service process; stopped when dropped.
struct PyService {
    child: Child,
}

impl PyService {
    fn start(name: &str, target: Option<&str>) -> PyService {
        PyService::start_with(name, target, None)
    }

    /// With events: an EventDispatcher (rpc `dispatch(event_type, payload)`) and, given an
    /// `event_source`, one handler per type for that service's events (rpc `received()`).
    fn start_events(name: &str, event_source: Option<&str>) -> PyService {
        PyService::start_with(name, None, Some(event_source.unwrap_or("")))
    }

    fn start_with(name: &str, target: Option<&str>, events: Option<&str>) -> PyService {
        check_python();
        let mut command = Command::new(python());
        command
            .arg(script("nameko_service.py"))
            .env("AMQP_URI", support::amqp_uri())
            .env("SERVICE_NAME", name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(target) = target {
            command.env("TARGET_SERVICE", target);
        }
        if let Some(source) = events {
            command.env("EVENTS", "1").env("EVENT_SOURCE", source);
        }
        let mut child = command.spawn().expect("python service starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(WAIT).expect("python service ready in time");
        assert_eq!(line.trim(), "READY", "python service failed to start");
        PyService { child }
    }
}

impl Drop for PyService {
    fn drop(&mut self) {
        // Closing stdin stops it gracefully; kill if it lingers.
        drop(self.child.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs calls through Python's `ClusterRpcProxy`, one JSON line per call.
fn py_calls(calls: &[Value]) -> Vec<Value> {
    check_python();
    let mut child = Command::new(python())
        .arg(script("nameko_client.py"))
        .env("AMQP_URI", support::amqp_uri())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python client starts");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for call in calls {
            writeln!(stdin, "{call}").expect("write call");
        }
    }
    let output = child.wait_with_output().expect("python client finishes");
    assert!(output.status.success(), "python client failed");
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), calls.len(), "one answer per call: {lines:?}");
    lines
}

fn call(service: &str, method: &str, args: Value) -> Value {
    json!({"service": service, "method": method, "args": args, "kwargs": {}, "timeout": 20})
}

fn whoami(ctx: &WorkerContext) -> Value {
    json!({"call_id": ctx.call_id(), "call_id_stack": ctx.call_id_stack(), "context_data": ctx.data()})
}

/// The echo example's interface plus `whoami`, as the Python peer has it.
fn enoki_echo(name: &str) -> Service {
    Service::new(name)
        .rpc("echo", |_ctx, (value,): (Value,)| Ok(value))
        .rpc("add", |_ctx, (a, b): (i64, i64)| Ok(a + b))
        .rpc("fail", |_ctx, (message,): (String,)| -> enoki::Result<()> {
            Err(RemoteError::new("ValueError", message).into())
        })
        .rpc("whoami", |ctx, ()| Ok(whoami(ctx)))
}

fn start(service: Service, cleanup: &mut Cleanup) -> Container {
    cleanup.service(service.name());
    let mut container = Container::new(service, support::config());
    container.start().expect("enoki service starts");
    container
}

fn stack(v: &Value) -> Vec<String> {
    serde_json::from_value(v["call_id_stack"].clone()).expect("a list of strings")
}

#[test]
fn python_client_gets_the_same_answers_from_enoki_as_from_python() {
    let mut cleanup = Cleanup::new();
    let ours = unique("interop_enoki_echo");
    let theirs = unique("py_echo");
    cleanup.service(&theirs);
    let _enoki = start(enoki_echo(&ours), &mut cleanup);
    let _python = PyService::start(&theirs, None);

    let batch = |svc: &str| {
        vec![
            call(svc, "echo", json!(["text"])),
            call(svc, "echo", json!([{"a": [1, 2.5, null, true], "é": "ü"}])),
            call(svc, "add", json!([40, 2])),
            call(svc, "fail", json!(["bad thing"])),
            call(svc, "nope", json!([])),
        ]
    };
    let from_enoki = py_calls(&batch(&ours));
    let from_python = py_calls(&batch(&theirs));
    assert_eq!(from_enoki, from_python);
    assert_eq!(from_enoki[0], json!({"ok": true, "result": "text"}));
    assert_eq!(from_enoki[2], json!({"ok": true, "result": 42}));
    assert_eq!(from_enoki[3]["class"], "RemoteError");
    assert_eq!(from_enoki[3]["exc_type"], "ValueError");
    assert_eq!(from_enoki[3]["value"], "bad thing");
    assert_eq!(from_enoki[3]["str"], "ValueError bad thing");
    assert_eq!(from_enoki[4]["class"], "MethodNotFound");
    assert_eq!(from_enoki[4]["str"], "nope");

    // Wrong arguments: the same class on both sides (the message is each language's own).
    let bad = py_calls(&[
        call(&ours, "add", json!([1])),
        call(&theirs, "add", json!([1])),
    ]);
    assert_eq!(bad[0]["class"], "IncorrectSignature");
    assert_eq!(bad[1]["class"], "IncorrectSignature");
}

#[test]
fn python_client_context_reaches_enoki() {
    let mut cleanup = Cleanup::new();
    let ours = unique("interop_ctx");
    let _enoki = start(enoki_echo(&ours), &mut cleanup);
    let mut whoami_call = call(&ours, "whoami", json!([]));
    whoami_call["context_data"] = json!({"language": "fr", "auth_token": "t0k"});
    let seen = py_calls(&[whoami_call])[0]["result"].clone();
    let stack = stack(&seen);
    assert_eq!(stack.len(), 2, "{stack:?}");
    assert!(
        stack[0].starts_with("standalone_rpc_proxy.call."),
        "{stack:?}"
    );
    assert!(
        stack[1].starts_with(&format!("{ours}.whoami.")),
        "{stack:?}"
    );
    assert_eq!(seen["call_id"], json!(stack[1]));
    assert_eq!(seen["context_data"]["language"], "fr");
    assert_eq!(seen["context_data"]["auth_token"], "t0k");
}

#[test]
fn enoki_client_and_command_line_call_python() {
    let mut cleanup = Cleanup::new();
    let theirs = unique("py_target");
    cleanup.service(&theirs);
    let _python = PyService::start(&theirs, None);
    let mut data = serde_json::Map::new();
    data.insert("language".into(), json!("nl"));
    let cluster = ClusterRpcProxy::new(&support::config())
        .unwrap()
        .context_data(data)
        .timeout(WAIT);
    cleanup.queue(cluster.reply_queue());

    assert_eq!(
        cluster
            .call::<Value>(&theirs, "echo", (json!({"k": [1, "two"]}),))
            .unwrap(),
        json!({"k": [1, "two"]})
    );
    assert_eq!(cluster.call::<i64>(&theirs, "add", (1, 2)).unwrap(), 3);
    let err = cluster
        .call::<Value>(&theirs, "fail", ("boom",))
        .unwrap_err();
    assert_eq!(
        err.as_remote(),
        Some(&RemoteError::new("ValueError", "boom"))
    );
    let err = cluster.call::<Value>(&theirs, "nope", ()).unwrap_err();
    assert_eq!(
        err.as_remote(),
        Some(&RemoteError::method_not_found("nope"))
    );
    let err = cluster.call::<Value>(&theirs, "add", (1,)).unwrap_err();
    assert_eq!(
        err.as_remote().map(|r| r.exc_path.as_str()),
        Some("nameko.exceptions.IncorrectSignature")
    );

    let seen: Value = cluster.call(&theirs, "whoami", ()).unwrap();
    let stack = stack(&seen);
    assert_eq!(stack.len(), 2, "{stack:?}");
    assert!(stack[0].starts_with("standalone_rpc_proxy.call."));
    assert!(stack[1].starts_with(&format!("{theirs}.whoami.")));
    assert_eq!(seen["context_data"]["language"], "nl");

    // The command line.
    let enoki = env!("CARGO_BIN_EXE_enoki");
    let out = Command::new(enoki)
        .args(["call", &format!("{theirs}.add"), "[20, 22]"])
        .env("AMQP_URI", support::amqp_uri())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
    let out = Command::new(enoki)
        .args(["call", &format!("{theirs}.fail"), r#"["kaput"]"#])
        .env("AMQP_URI", support::amqp_uri())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let printed: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(
        printed,
        json!({"exc_type": "ValueError", "exc_path": "builtins.ValueError", "exc_args": ["kaput"], "value": "kaput"})
    );
    let out = Command::new(enoki)
        .args(["call", &format!("{theirs}.add"), "[1]", r#"{"b": 2}"#])
        .env("AMQP_URI", support::amqp_uri())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "3\n",
        "kwargs reach Python"
    );
}

#[test]
fn call_id_stacks_cross_the_language_boundary_both_ways() {
    let mut cleanup = Cleanup::new();
    let ours = unique("interop_chain");
    let theirs = unique("py_chain");
    cleanup.service(&theirs);
    // Python relays to enoki; enoki relays to Python.
    let _python = PyService::start(&theirs, Some(&ours));
    let target = theirs.clone();
    let service = enoki_echo(&ours)
        .dependency("py", RpcProxy::new(target).timeout(WAIT))
        .rpc("relay", |ctx, (method,): (String,)| {
            let py = ctx.dependency::<RpcProxy>("py")?;
            py.call::<Value>(&method, ())
        });
    let _enoki = start(service, &mut cleanup);

    // Python client -> Python service -> enoki service.
    let seen = py_calls(&[call(&theirs, "relay", json!(["whoami", []]))])[0]["result"].clone();
    let s = stack(&seen);
    assert_eq!(s.len(), 3, "{s:?}");
    assert!(s[0].starts_with("standalone_rpc_proxy.call."), "{s:?}");
    assert!(s[1].starts_with(&format!("{theirs}.relay.")), "{s:?}");
    assert!(s[2].starts_with(&format!("{ours}.whoami.")), "{s:?}");

    // enoki client -> enoki service -> Python service.
    let cluster = ClusterRpcProxy::new(&support::config())
        .unwrap()
        .timeout(WAIT);
    cleanup.queue(cluster.reply_queue());
    let seen: Value = cluster.call(&ours, "relay", ("whoami",)).unwrap();
    let s = stack(&seen);
    assert_eq!(s.len(), 3, "{s:?}");
    assert!(s[0].starts_with("standalone_rpc_proxy.call."), "{s:?}");
    assert!(s[1].starts_with(&format!("{ours}.relay.")), "{s:?}");
    assert!(s[2].starts_with(&format!("{theirs}.whoami.")), "{s:?}");

    // A Python error raised two hops away reaches the enoki client intact.
    let err = cluster
        .call::<Value>(&ours, "relay", ("fail",))
        .unwrap_err();
    match err.kind() {
        ErrorKind::Remote(r) => {
            assert_eq!(r.exc_type, "IncorrectSignature", "fail() needs a message")
        }
        other => panic!("{other:?}"),
    }
}

/// Dispatches one event with Nameko's standalone `event_dispatcher`.
fn py_dispatch(source: &str, event_type: &str, payload: &Value) {
    let out = Command::new(python())
        .arg(script("nameko_client.py"))
        .args(["dispatch", source, event_type, &payload.to_string()])
        .env("AMQP_URI", support::amqp_uri())
        .output()
        .expect("python dispatcher runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The three handler types, with the event types and Python method names the peer uses.
const KINDS: [(&str, &str, HandlerType); 3] = [
    ("pool", "pool_evt", HandlerType::ServicePool),
    ("single", "single_evt", HandlerType::Singleton),
    ("bcast", "bcast_evt", HandlerType::Broadcast),
];

#[test]
fn python_events_reach_enoki_handlers_of_each_type() {
    let mut cleanup = Cleanup::new();
    let theirs = unique("py_emitter");
    let ours = unique("interop_handlers");
    let _exchanges = Exchanges(vec![format!("{theirs}.events")]);
    cleanup.service(&theirs);
    cleanup.queue(format!("evt-{theirs}-pool_evt--{ours}.handle_pool"));
    cleanup.queue(format!("evt-{theirs}-single_evt"));

    let seen: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
    let mut service = Service::new(&ours);
    for (kind, event_type, handler_type) in KINDS {
        let seen = seen.clone();
        service = service.event_handler_with(
            EventHandler::new(&theirs, event_type)
                .name(format!("handle_{kind}"))
                .handler_type(handler_type)
                .reliable_delivery(handler_type != HandlerType::Broadcast),
            move |ctx, payload: Value| {
                seen.lock().push(json!({
                    "kind": kind,
                    "payload": payload,
                    "call_id_stack": ctx.call_id_stack(),
                    "context_data": ctx.data(),
                }));
                Ok(())
            },
        );
    }
    let _enoki = start(service, &mut cleanup);
    let _python = PyService::start_events(&theirs, None);

    // A Python service's EventDispatcher, called with context data.
    let calls: Vec<Value> = KINDS
        .iter()
        .map(|(kind, event_type, _)| {
            let mut c = call(
                &theirs,
                "dispatch",
                json!([event_type, {"from": "service", "kind": kind}]),
            );
            c["context_data"] = json!({"language": "de"});
            c
        })
        .collect();
    for answer in py_calls(&calls) {
        assert_eq!(answer, json!({"ok": true, "result": null}));
    }
    // Nameko's standalone dispatcher (no headers at all).
    for (kind, event_type, _) in KINDS {
        py_dispatch(
            &theirs,
            event_type,
            &json!({"from": "standalone", "kind": kind}),
        );
    }
    assert!(support::eventually(WAIT, || seen.lock().len() >= 6));
    std::thread::sleep(Duration::from_millis(200));
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 6, "{seen:#?}");
    for (kind, _, _) in KINDS {
        let from_service = seen
            .iter()
            .find(|e| e["kind"] == kind && e["payload"]["from"] == "service")
            .unwrap_or_else(|| panic!("{kind} from the Python service: {seen:#?}"));
        assert_eq!(from_service["payload"]["kind"], kind);
        assert_eq!(from_service["context_data"]["language"], "de");
        let s = stack(from_service);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s[0].starts_with("standalone_rpc_proxy.call."), "{s:?}");
        assert!(s[1].starts_with(&format!("{theirs}.dispatch.")), "{s:?}");
        assert!(s[2].starts_with(&format!("{ours}.handle_{kind}.")), "{s:?}");

        let standalone = seen
            .iter()
            .find(|e| e["kind"] == kind && e["payload"]["from"] == "standalone")
            .unwrap_or_else(|| panic!("{kind} from the standalone dispatcher: {seen:#?}"));
        assert_eq!(standalone["context_data"], json!({}));
        assert_eq!(stack(standalone).len(), 1);
    }
}

#[test]
fn enoki_events_reach_python_handlers_of_each_type() {
    let mut cleanup = Cleanup::new();
    let ours = unique("interop_emitter");
    let theirs = unique("py_handlers");
    let _exchanges = Exchanges(vec![format!("{ours}.events"), format!("{theirs}.events")]);
    cleanup.service(&theirs);
    cleanup.queue(format!("evt-{ours}-pool_evt--{theirs}.handle_pool"));
    cleanup.queue(format!("evt-{ours}-single_evt"));

    let _enoki = start(
        Service::new(&ours)
            .dependency("events", EventDispatcher::new())
            .rpc("emit", |ctx, (event_type, payload): (String, Value)| {
                ctx.dependency::<EventDispatcher>("events")?
                    .dispatch(&event_type, &payload)
            }),
        &mut cleanup,
    );
    let _python = PyService::start_events(&theirs, Some(&ours));

    let mut data = serde_json::Map::new();
    data.insert("language".into(), json!("es"));
    let cluster = ClusterRpcProxy::new(&support::config())
        .unwrap()
        .context_data(data)
        .timeout(WAIT);
    cleanup.queue(cluster.reply_queue());
    let dispatcher = StandaloneDispatcher::new(&support::config()).unwrap();
    for (kind, event_type, _) in KINDS {
        cluster
            .call::<Value>(
                &ours,
                "emit",
                (event_type, json!({"from": "service", "kind": kind})),
            )
            .unwrap();
        dispatcher
            .dispatch(
                &ours,
                event_type,
                &json!({"from": "standalone", "kind": kind}),
            )
            .unwrap();
    }
    // And the command line.
    let out = Command::new(env!("CARGO_BIN_EXE_enoki"))
        .args([
            "dispatch",
            &ours,
            "pool_evt",
            r#"{"from": "cli", "kind": "pool"}"#,
        ])
        .env("AMQP_URI", support::amqp_uri())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut received = Vec::new();
    assert!(support::eventually(WAIT, || {
        received = py_calls(&[call(&theirs, "received", json!([]))])[0]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        received.len() >= 7
    }));
    assert_eq!(received.len(), 7, "{received:#?}");
    for (kind, _, _) in KINDS {
        let from_service = received
            .iter()
            .find(|e| e["kind"] == kind && e["payload"]["from"] == "service")
            .unwrap_or_else(|| panic!("{kind} from the enoki service: {received:#?}"));
        assert_eq!(from_service["payload"]["kind"], kind);
        assert_eq!(from_service["context_data"]["language"], "es");
        let s = stack(from_service);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s[0].starts_with("standalone_rpc_proxy.call."), "{s:?}");
        assert!(s[1].starts_with(&format!("{ours}.emit.")), "{s:?}");
        assert!(
            s[2].starts_with(&format!("{theirs}.handle_{kind}.")),
            "{s:?}"
        );

        let standalone = received
            .iter()
            .find(|e| e["kind"] == kind && e["payload"]["from"] == "standalone")
            .unwrap_or_else(|| panic!("{kind} from the enoki dispatcher: {received:#?}"));
        assert_eq!(standalone["context_data"], json!({}));
        assert_eq!(stack(standalone).len(), 1);
    }
    assert!(
        received
            .iter()
            .any(|e| e["kind"] == "pool" && e["payload"]["from"] == "cli")
    );
}
