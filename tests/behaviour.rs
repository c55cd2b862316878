//! One behavioural suite, run on both transports: every test below runs once against the real
//! RabbitMQ (`amqp::<test>`) and once on a fresh in-process broker (`memory::<test>`), so the
//! two cannot drift apart.

mod support;

use enoki::{
    Args, ClusterRpcProxy, Config, Container, ErrorKind, RemoteError, RpcProxy, Service,
    WorkerContext,
};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Cleanup, unique};

const WAIT: Duration = Duration::from_secs(10);

/// Where a test runs: the real RabbitMQ (its queues deleted afterwards) or an in-process
/// broker of its own.
struct Env {
    config: Config,
    cleanup: Option<Cleanup>,
}

impl Env {
    fn amqp() -> Env {
        Env {
            config: support::config(),
            cleanup: Some(Cleanup::new()),
        }
    }

    fn memory() -> Env {
        Env {
            config: Config::new().amqp_uri(support::memory_uri()),
            cleanup: None,
        }
    }

    fn config(&self) -> Config {
        self.config.clone()
    }

    fn forget_queue(&mut self, queue: &str) {
        if let Some(cleanup) = &mut self.cleanup {
            cleanup.queue(queue);
        }
    }

    fn container(&mut self, service: Service, config: Config) -> Container {
        self.forget_queue(&format!("rpc-{}", service.name()));
        let mut container = Container::new(service, config);
        container.start().expect("container starts");
        container
    }

    fn start(&mut self, service: Service) -> Container {
        let config = self.config();
        self.container(service, config)
    }

    fn cluster(&mut self) -> ClusterRpcProxy {
        let cluster = ClusterRpcProxy::new(&self.config).expect("client starts");
        self.forget_queue(cluster.reply_queue());
        cluster
    }
}

/// Runs each named test body (a `fn(Env)`) on both transports.
macro_rules! on_both_transports {
    ($($test:ident),* $(,)?) => {
        mod amqp {
            $( #[test] fn $test() { super::$test(super::Env::amqp()) } )*
        }
        mod memory {
            $( #[test] fn $test() { super::$test(super::Env::memory()) } )*
        }
    };
}

on_both_transports!(
    calls_get_their_replies,
    args_and_kwargs_bind_as_python_does,
    handler_errors_are_nameko_remote_errors,
    unknown_services_are_detected,
    async_calls_run_concurrently,
    context_and_call_ids_propagate_through_rpc_proxy,
    competing_consumers_share_the_work,
    prefetch_and_the_pool_bound_concurrency,
    graceful_stop_finishes_in_flight_calls,
    unacked_messages_are_redelivered_after_a_kill,
);

#[derive(Deserialize)]
struct Pair {
    a: i64,
    b: i64,
}

fn echo(name: &str) -> Service {
    Service::new(name)
        .rpc("echo", |_ctx, (value,): (Value,)| Ok(value))
        .rpc("add", |_ctx, (a, b): (i64, i64)| Ok(a + b))
        .rpc("pair", |_ctx, pair: Pair| Ok(pair.a * 10 + pair.b))
        .rpc("raw", |_ctx, args: Args| {
            Ok(json!([args.args, args.kwargs]))
        })
        .rpc("fail", |_ctx, (message,): (String,)| -> enoki::Result<()> {
            Err(RemoteError::new("ValueError", message).into())
        })
        .rpc("panic", |_ctx, ()| -> enoki::Result<()> {
            panic!("handler exploded")
        })
        .rpc("sleep", |_ctx, (ms,): (u64,)| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(ms)
        })
        .rpc("whoami", |ctx, ()| Ok(whoami(ctx)))
}

fn whoami(ctx: &WorkerContext) -> Value {
    json!({
        "call_id": ctx.call_id(),
        "call_id_stack": ctx.call_id_stack(),
        "data": ctx.data(),
        "language": ctx.language(),
        "auth_token": ctx.auth_token(),
        "user_id": ctx.user_id(),
        "origin": ctx.origin_call_id(),
        "parent": ctx.immediate_parent_call_id(),
    })
}

fn remote<T: std::fmt::Debug>(result: enoki::Result<T>) -> RemoteError {
    match result.expect_err("a remote error").into_kind() {
        ErrorKind::Remote(r) => r,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

fn calls_get_their_replies(mut env: Env) {
    let name = unique("b_reply");
    let _c = env.start(echo(&name));
    let cluster = env.cluster();
    let sent = json!({"a": [1, 2.5, "é", null, {"n": null}], "b": "x".repeat(10_000)});
    let back: Value = cluster
        .call_timeout(&name, "echo", (sent.clone(),), WAIT)
        .unwrap();
    assert_eq!(back, sent);
    let sum: i64 = cluster.call_timeout(&name, "add", (40, 2), WAIT).unwrap();
    assert_eq!(sum, 42);
    let through_service: i64 = cluster
        .service(&name)
        .call_timeout("add", (1, 2), WAIT)
        .unwrap();
    assert_eq!(through_service, 3);
}

fn args_and_kwargs_bind_as_python_does(mut env: Env) {
    let name = unique("b_args");
    let _c = env.start(echo(&name));
    let cluster = env.cluster();
    let call = |args: Args| cluster.call_timeout::<Value>(&name, "pair", args, WAIT);
    assert_eq!(call(Args::new().arg(1).arg(2)).unwrap(), json!(12));
    assert_eq!(
        call(Args::new().kwarg("b", 2).kwarg("a", 1)).unwrap(),
        json!(12)
    );
    assert_eq!(call(Args::new().arg(1).kwarg("b", 2)).unwrap(), json!(12));
    let e = remote(call(Args::new().arg(1).kwarg("a", 2)));
    assert_eq!(e.exc_type, "IncorrectSignature");
    let e = remote(call(Args::new().arg(1).kwarg("c", 2)));
    assert_eq!(e.exc_type, "IncorrectSignature");

    let e =
        remote(cluster.call_timeout::<Value>(&name, "add", Args::new().arg(1).kwarg("b", 2), WAIT));
    assert_eq!(e.value, "got an unexpected keyword argument 'b'");

    let raw: Value = cluster
        .call_timeout(
            &name,
            "raw",
            Args::new().arg("p").kwarg("k", json!([1])),
            WAIT,
        )
        .unwrap();
    assert_eq!(raw, json!([["p"], {"k": [1]}]));
}

fn handler_errors_are_nameko_remote_errors(mut env: Env) {
    let name = unique("b_errors");
    let _c = env.start(echo(&name));
    let cluster = env.cluster();

    let e = remote(cluster.call_timeout::<Value>(&name, "fail", ("bad thing",), WAIT));
    assert_eq!(
        e,
        RemoteError {
            exc_type: "ValueError".into(),
            exc_path: "builtins.ValueError".into(),
            exc_args: vec![json!("bad thing")],
            value: "bad thing".into(),
        }
    );

    let e = remote(cluster.call_timeout::<Value>(&name, "nope", (), WAIT));
    assert_eq!(e.exc_type, "MethodNotFound");
    assert_eq!(e.exc_path, "nameko.exceptions.MethodNotFound");
    assert_eq!(e.exc_args, vec![json!("nope")]);
    assert_eq!(e.value, "nope");

    let e = remote(cluster.call_timeout::<Value>(&name, "add", (1,), WAIT));
    assert_eq!(e.exc_type, "IncorrectSignature");
    assert_eq!(e.exc_path, "nameko.exceptions.IncorrectSignature");
    assert_eq!(e.value, "invalid length 1, expected a tuple of size 2");

    // A panic is an error reply, and the worker that caught it still serves.
    for _ in 0..3 {
        let e = remote(cluster.call_timeout::<Value>(&name, "panic", (), WAIT));
        assert_eq!(e.exc_type, "PanicError");
        assert_eq!(e.value, "handler exploded");
    }
    let sum: i64 = cluster.call_timeout(&name, "add", (2, 3), WAIT).unwrap();
    assert_eq!(sum, 5);
}

fn unknown_services_are_detected(mut env: Env) {
    let cluster = env.cluster();
    let missing = unique("b_missing");
    let err = cluster
        .call_timeout::<Value>(&missing, "anything", (), WAIT)
        .unwrap_err();
    match err.kind() {
        ErrorKind::UnknownService(svc) => assert_eq!(svc, &missing),
        other => panic!("expected UnknownService, got {other:?}"),
    }
    assert_eq!(err.to_string(), format!("Unknown service `{missing}`"));
}

fn async_calls_run_concurrently(mut env: Env) {
    let name = unique("b_async");
    let _c = env.start(echo(&name));
    let cluster = env.cluster();
    let pending: Vec<_> = (0..20)
        .map(|i| cluster.call_async(&name, "add", (i, 1000)).unwrap())
        .collect();
    let results: Vec<i64> = pending
        .into_iter()
        .map(|p| p.wait_timeout(WAIT).unwrap())
        .collect();
    assert_eq!(results, (1000..1020).collect::<Vec<i64>>());

    // Ten sleeps of 300 ms on ten workers overlap: far less than the 3 s they take in turn.
    let started = std::time::Instant::now();
    let sleeps: Vec<_> = (0..10)
        .map(|_| cluster.call_async(&name, "sleep", (300,)).unwrap())
        .collect();
    for p in sleeps {
        assert_eq!(p.wait_timeout::<u64>(WAIT).unwrap(), 300);
    }
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );

    std::thread::scope(|s| {
        for t in 0..4i64 {
            let (cluster, name) = (&cluster, &name);
            s.spawn(move || {
                for i in 0..25i64 {
                    let v: i64 = cluster.call_timeout(name, "add", (t, i), WAIT).unwrap();
                    assert_eq!(v, t + i);
                }
            });
        }
    });
}

fn context_and_call_ids_propagate_through_rpc_proxy(mut env: Env) {
    let inner = unique("b_inner");
    let outer = unique("b_outer");
    let _b = env.start(echo(&inner));
    let outer_service = Service::new(outer.clone())
        .dependency("inner", RpcProxy::new(inner.clone()))
        .rpc("relay", |ctx, ()| {
            let inner = ctx.dependency::<RpcProxy>("inner")?;
            let seen: Value = inner.call("whoami", ())?;
            Ok(json!({"outer": whoami(ctx), "inner": seen}))
        });
    let _a = env.start(outer_service);
    let mut data = serde_json::Map::new();
    data.insert("language".into(), json!("fr-FR"));
    data.insert("auth_token".into(), json!("tok-123"));
    data.insert("user_id".into(), json!("u1"));
    data.insert("x-trace".into(), json!({"depth": 1}));
    let cluster = env.cluster().context_data(data);
    let seen: Value = cluster.call_timeout(&outer, "relay", (), WAIT).unwrap();

    let stack: Vec<String> =
        serde_json::from_value(seen["inner"]["call_id_stack"].clone()).unwrap();
    assert_eq!(stack.len(), 3, "{stack:?}");
    assert!(
        stack[0].starts_with("standalone_rpc_proxy.call."),
        "{stack:?}"
    );
    assert!(
        stack[1].starts_with(&format!("{outer}.relay.")),
        "{stack:?}"
    );
    assert!(
        stack[2].starts_with(&format!("{inner}.whoami.")),
        "{stack:?}"
    );
    assert_eq!(seen["outer"]["call_id"], json!(stack[1]));
    assert_eq!(seen["inner"]["call_id"], json!(stack[2]));
    assert_eq!(seen["inner"]["origin"], json!(stack[0]));
    assert_eq!(seen["inner"]["parent"], json!(stack[1]));
    for hop in ["outer", "inner"] {
        assert_eq!(seen[hop]["language"], "fr-FR");
        assert_eq!(seen[hop]["auth_token"], "tok-123");
        assert_eq!(seen[hop]["user_id"], "u1");
        assert_eq!(seen[hop]["data"]["x-trace"], json!({"depth": 1}));
        assert_eq!(seen[hop]["data"].get("call_id_stack"), None);
    }
    // Every call through one standalone client shares its call id, as Nameko 2's does.
    let again: Value = cluster.call_timeout(&outer, "relay", (), WAIT).unwrap();
    assert_eq!(again["inner"]["call_id_stack"][0], json!(stack[0]));
    assert_ne!(again["inner"]["call_id_stack"][2], json!(stack[2]));
}

/// A service whose every call says which container ran it.
fn tagged(name: &str, tag: &'static str, log: &Arc<Mutex<Vec<&'static str>>>) -> Service {
    let log = log.clone();
    Service::new(name).rpc("who", move |_ctx, ()| {
        log.lock().unwrap().push(tag);
        Ok(tag)
    })
}

fn competing_consumers_share_the_work(mut env: Env) {
    let name = unique("b_compete");
    let log = Arc::new(Mutex::new(Vec::new()));
    let _a = env.start(tagged(&name, "a", &log));
    let _b = env.start(tagged(&name, "b", &log));
    let cluster = env.cluster();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        let who: String = cluster.call_timeout(&name, "who", (), WAIT).unwrap();
        *counts.entry(who).or_default() += 1;
    }
    // Idle consumers with room take turns: each container gets every other call.
    assert_eq!(counts.get("a"), Some(&5), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&5), "{counts:?}");
    assert_eq!(log.lock().unwrap().len(), 10, "each call ran once");
}

fn prefetch_and_the_pool_bound_concurrency(mut env: Env) {
    let name = unique("b_pool");
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let service = Service::new(name.clone()).rpc("work", move |_ctx, ()| {
        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        r.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    });
    let config = env.config().max_workers(3);
    let _c = env.container(service, config);
    let cluster = env.cluster();
    let pending: Vec<_> = (0..9)
        .map(|_| cluster.call_async(&name, "work", ()).unwrap())
        .collect();
    for p in pending {
        p.wait_timeout::<Value>(WAIT).unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 3);
}

fn graceful_stop_finishes_in_flight_calls(mut env: Env) {
    let name = unique("b_stop");
    let (started_tx, started_rx) = crossbeam_channel::unbounded();
    let service = Service::new(name.clone()).rpc("slow", move |_ctx, (ms,): (u64,)| {
        let _ = started_tx.send(());
        std::thread::sleep(Duration::from_millis(ms));
        Ok(ms)
    });
    let mut container = env.start(service);
    let cluster = env.cluster();
    let pending: Vec<_> = (0..2)
        .map(|_| cluster.call_async(&name, "slow", (300,)).unwrap())
        .collect();
    for _ in 0..2 {
        started_rx.recv_timeout(WAIT).expect("both calls started");
    }
    container.stop();
    assert!(!container.is_running());
    for p in pending {
        assert_eq!(p.wait_timeout::<u64>(WAIT).unwrap(), 300);
    }
    // Stopped: nothing consumes, but the durable queue holds a new call (no UnknownService).
    let late = cluster.call_async(&name, "slow", (1,)).unwrap();
    assert!(
        late.wait_timeout::<Value>(Duration::from_millis(300))
            .unwrap_err()
            .is_timeout()
    );
    assert!(started_rx.try_recv().is_err(), "the late call did not run");
}

fn unacked_messages_are_redelivered_after_a_kill(mut env: Env) {
    let name = unique("b_kill");
    let (started_tx, started_rx) = crossbeam_channel::unbounded();
    let (release_tx, release_rx) = crossbeam_channel::unbounded::<()>();
    // The first container blocks in its handler until released: killed mid-call, it never acks.
    let stuck = Service::new(name.clone()).rpc("job", move |_ctx, (n,): (i64,)| {
        let _ = started_tx.send(n);
        let _ = release_rx.recv_timeout(WAIT);
        Ok(format!("a{n}"))
    });
    let mut first = env.start(stuck);
    let cluster = env.cluster();
    let pending = cluster.call_async(&name, "job", (7,)).unwrap();
    assert_eq!(started_rx.recv_timeout(WAIT).unwrap(), 7);
    first.kill();

    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let healthy = Service::new(name.clone()).rpc("job", move |_ctx, (n,): (i64,)| {
        counted.fetch_add(1, Ordering::SeqCst);
        Ok(format!("b{n}"))
    });
    let _second = env.start(healthy);
    assert_eq!(pending.wait_timeout::<String>(WAIT).unwrap(), "b7");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    drop(release_tx);
    // The abandoned worker's late ack settles nothing: no third run, and new calls still work.
    let again: String = cluster.call_timeout(&name, "job", (8,), WAIT).unwrap();
    assert_eq!(again, "b8");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// Services on differently named in-process brokers never see each other.
#[test]
fn memory_brokers_are_isolated_by_name() {
    let name = unique("b_isolated");
    let mut here = Env::memory();
    let _c = here.start(echo(&name));
    let sum: i64 = here
        .cluster()
        .call_timeout(&name, "add", (1, 2), WAIT)
        .unwrap();
    assert_eq!(sum, 3);
    let elsewhere = Env::memory().cluster();
    let err = elsewhere
        .call_timeout::<Value>(&name, "add", (1, 2), WAIT)
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::UnknownService(_)), "{err}");
}
