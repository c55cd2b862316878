//! RPC over the real RabbitMQ (the two-hop context chain is in tests/behaviour.rs, on both
//! transports): results, Nameko's error replies, poison input, panics,
//! timeouts, unknown services, context propagation, wire properties, queue flags, concurrency
//! and graceful stop.

mod support;

use enoki::{
    Args, ClusterRpcProxy, Container, Dependency, ErrorKind, RemoteError, Service, WorkerContext,
};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Cleanup, RawClient, unique};

const WAIT: Duration = Duration::from_secs(10);

/// The echo example's interface, plus introspection of the worker context.
fn echo(name: &str) -> Service {
    Service::new(name)
        .rpc("echo", |_ctx, (value,): (Value,)| Ok(value))
        .rpc("add", |_ctx, (a, b): (i64, i64)| Ok(a + b))
        .rpc("fail", |_ctx, (message,): (String,)| -> enoki::Result<()> {
            Err(RemoteError::new("ValueError", message).into())
        })
        .rpc("sleep", |_ctx, (ms,): (u64,)| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(ms)
        })
        .rpc("whoami", |ctx, ()| Ok(whoami(ctx)))
        .rpc("panic", |_ctx, ()| -> enoki::Result<()> {
            panic!("handler exploded")
        })
}

fn whoami(ctx: &WorkerContext) -> Value {
    json!({
        "call_id": ctx.call_id(),
        "call_id_stack": ctx.call_id_stack(),
        "data": ctx.data(),
        "language": ctx.language(),
        "auth_token": ctx.auth_token(),
        "user_id": ctx.user_id(),
        "user_agent": ctx.user_agent(),
        "origin": ctx.origin_call_id(),
        "parent": ctx.immediate_parent_call_id(),
    })
}

fn start(service: Service, cleanup: &mut Cleanup) -> Container {
    cleanup.service(service.name());
    let mut container = Container::new(service, support::config());
    container.start().expect("container starts");
    container
}

fn cluster(cleanup: &mut Cleanup) -> ClusterRpcProxy {
    let cluster = ClusterRpcProxy::new(&support::config()).expect("client connects");
    cleanup.queue(cluster.reply_queue());
    cluster
}

fn remote(result: enoki::Result<Value>) -> RemoteError {
    match result.expect_err("a remote error").into_kind() {
        ErrorKind::Remote(r) => r,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[test]
fn results_come_back_as_sent() {
    let mut cleanup = Cleanup::new();
    let name = unique("echo_results");
    let _c = start(echo(&name), &mut cleanup);
    let cluster = cluster(&mut cleanup);
    let v: Value = cluster
        .call(&name, "echo", (json!({"a": [1, 2.5, "é", null]}),))
        .unwrap();
    assert_eq!(v, json!({"a": [1, 2.5, "é", null]}));
    let sum: i64 = cluster.call(&name, "add", (40, 2)).unwrap();
    assert_eq!(sum, 42);
    let e = remote(cluster.call(&name, "add", Args::new().arg(1).kwarg("b", 2)));
    assert_eq!(e.value, "got an unexpected keyword argument 'b'");
    let slept: u64 = cluster.call(&name, "sleep", (10,)).unwrap();
    assert_eq!(slept, 10);
}

#[test]
fn handler_errors_are_nameko_remote_errors() {
    let mut cleanup = Cleanup::new();
    let name = unique("echo_errors");
    let _c = start(echo(&name), &mut cleanup);
    let cluster = cluster(&mut cleanup);

    let e = remote(cluster.call(&name, "fail", ("bad thing",)));
    assert_eq!(
        e,
        RemoteError {
            exc_type: "ValueError".into(),
            exc_path: "builtins.ValueError".into(),
            exc_args: vec![json!("bad thing")],
            value: "bad thing".into(),
        }
    );

    let e = remote(cluster.call(&name, "nope", ()));
    assert_eq!(e.exc_type, "MethodNotFound");
    assert_eq!(e.exc_path, "nameko.exceptions.MethodNotFound");
    assert_eq!(e.exc_args, vec![json!("nope")]);
    assert_eq!(e.value, "nope");

    let e = remote(cluster.call(&name, "add", (1,)));
    assert_eq!(e.exc_type, "IncorrectSignature");
    assert_eq!(e.exc_path, "nameko.exceptions.IncorrectSignature");
    assert_eq!(e.value, "invalid length 1, expected a tuple of size 2");

    let e = remote(cluster.call(&name, "add", ("x", 1)));
    assert_eq!(e.exc_type, "IncorrectSignature");
}

#[test]
fn a_panicking_handler_becomes_an_error_reply_and_workers_survive() {
    let mut cleanup = Cleanup::new();
    let name = unique("echo_panic");
    cleanup.service(&name);
    let mut container = Container::new(echo(&name), support::config().max_workers(2));
    container.start().unwrap();
    let cluster = cluster(&mut cleanup);
    for _ in 0..5 {
        let e = remote(cluster.call(&name, "panic", ()));
        assert_eq!(e.exc_type, "PanicError");
        assert_eq!(e.exc_path, "enoki.PanicError");
        assert_eq!(e.value, "handler exploded");
    }
    // Both workers are still there: two slow calls run side by side.
    let a = cluster.call_async(&name, "sleep", (200,)).unwrap();
    let b = cluster.call_async(&name, "sleep", (200,)).unwrap();
    assert_eq!(a.wait_timeout::<u64>(WAIT).unwrap(), 200);
    assert_eq!(b.wait_timeout::<u64>(WAIT).unwrap(), 200);
    container.stop();
}

#[test]
fn malformed_requests_get_malformed_request_replies() {
    let mut cleanup = Cleanup::new();
    let name = unique("echo_malformed");
    let _c = start(echo(&name), &mut cleanup);
    let raw = RawClient::new(&mut cleanup);
    let key = format!("{name}.echo");
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "application/json",
            br#"{"args": [1]}"#,
            "Message missing `args` or `kwargs`",
        ),
        (
            "application/json",
            br#"{"kwargs": {}}"#,
            "Message missing `args` or `kwargs`",
        ),
        (
            "application/json",
            b"{not json",
            "cannot decode the request body: key must be a string at line 1 column 2",
        ),
        (
            "text/plain",
            b"hello",
            "unsupported content type \"text/plain\"; enoki accepts application/json",
        ),
    ];
    for (i, (content_type, body, value)) in cases.iter().enumerate() {
        let cid = format!("malformed-{i}");
        let props = raw
            .request_properties(&cid)
            .with_content_type((*content_type).to_owned());
        raw.publish(&key, props, body);
        let reply = raw.reply(WAIT).expect("a reply instead of a hang");
        assert_eq!(
            reply.properties.correlation_id().as_deref(),
            Some(cid.as_str())
        );
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["result"], Value::Null);
        assert_eq!(body["error"]["exc_type"], "MalformedRequest");
        assert_eq!(
            body["error"]["exc_path"],
            "nameko.exceptions.MalformedRequest"
        );
        assert_eq!(body["error"]["value"], *value, "case {i}");
    }
}

#[test]
fn poison_requests_are_dropped_without_harm() {
    let mut cleanup = Cleanup::new();
    let name = unique("echo_poison");
    let _c = start(echo(&name), &mut cleanup);
    let raw = RawClient::new(&mut cleanup);
    let key = format!("{name}.echo");
    let body = br#"{"args": [1], "kwargs": {}}"#;
    // No reply_to: Nameko runs the method and then crashes; enoki logs and acks.
    let no_reply_to = amiquip::AmqpProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id("no-reply-to".into());
    raw.publish(&key, no_reply_to, body);
    // No content_type: Nameko crashes; enoki logs and acks.
    let no_content_type = amiquip::AmqpProperties::default()
        .with_correlation_id("no-content-type".into())
        .with_reply_to(raw.reply_to.clone());
    raw.publish(&key, no_content_type, body);

    // The service still answers, both poison messages are gone, and nothing was replied.
    let cluster = cluster(&mut cleanup);
    let v: Value = cluster.call(&name, "echo", ("alive",)).unwrap();
    assert_eq!(v, json!("alive"));
    let queue = format!("rpc-{name}");
    assert!(support::eventually(WAIT, || raw.ready_count(&queue) == 0));
    assert!(
        raw.reply(Duration::from_millis(300)).is_none(),
        "no reply to poison"
    );
}

#[test]
fn timeouts_are_reported_and_late_replies_dropped() {
    let mut cleanup = Cleanup::new();
    let name = unique("echo_timeout");
    let _c = start(echo(&name), &mut cleanup);
    let cluster = cluster(&mut cleanup);
    let started = std::time::Instant::now();
    let err = cluster
        .call_timeout::<Value>(&name, "sleep", (400,), Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Timeout(d) if *d == Duration::from_millis(100)));
    assert!(err.is_timeout());
    assert!(
        started.elapsed() < Duration::from_millis(390),
        "gave up before the reply"
    );
    // The late reply (at ~400 ms) arrives while the next call (~700 ms) waits: it is read,
    // found to belong to nobody, and dropped; the next call gets its own result.
    let v: u64 = cluster.call_timeout(&name, "sleep", (600,), WAIT).unwrap();
    assert_eq!(v, 600);

    // call_async with a per-wait timeout, and a default timeout on the client.
    let pending = cluster.call_async(&name, "sleep", (300,)).unwrap();
    assert!(
        pending
            .wait_timeout::<u64>(Duration::from_millis(50))
            .unwrap_err()
            .is_timeout()
    );
    let with_default = ClusterRpcProxy::new(&support::config())
        .unwrap()
        .timeout(Duration::from_millis(50));
    cleanup.queue(with_default.reply_queue());
    assert!(
        with_default
            .call::<Value>(&name, "sleep", (300,))
            .unwrap_err()
            .is_timeout()
    );
}

#[test]
fn unknown_services_are_detected() {
    let mut cleanup = Cleanup::new();
    let cluster = cluster(&mut cleanup);
    let missing = unique("no_such_service");
    let err = cluster.call::<Value>(&missing, "anything", ()).unwrap_err();
    match err.kind() {
        ErrorKind::UnknownService(svc) => assert_eq!(svc, &missing),
        other => panic!("expected UnknownService, got {other:?}"),
    }
    assert_eq!(err.to_string(), format!("Unknown service `{missing}`"));
}

#[test]
fn async_calls_run_concurrently_and_the_client_is_shared_across_threads() {
    let mut cleanup = Cleanup::new();
    let name = unique("echo_async");
    let _c = start(echo(&name), &mut cleanup);
    let cluster = cluster(&mut cleanup);
    let pending: Vec<_> = (0..20)
        .map(|i| cluster.call_async(&name, "add", (i, 1000)).unwrap())
        .collect();
    let results: Vec<i64> = pending
        .into_iter()
        .map(|p| p.wait_timeout(WAIT).unwrap())
        .collect();
    assert_eq!(results, (0..20).map(|i| i + 1000).collect::<Vec<i64>>());

    std::thread::scope(|s| {
        for t in 0..8i64 {
            let cluster = &cluster;
            let name = &name;
            s.spawn(move || {
                for i in 0..25i64 {
                    let v: i64 = cluster.call_timeout(name, "add", (t, i), WAIT).unwrap();
                    assert_eq!(v, t + i);
                }
            });
        }
    });
}

#[test]
fn call_id_stack_is_capped_and_foreign_headers_pass_through() {
    let mut cleanup = Cleanup::new();
    let name = unique("ctx_cap");
    let _c = start(echo(&name), &mut cleanup);
    let raw = RawClient::new(&mut cleanup);
    let incoming: Vec<String> = (0..15).map(|i| format!("caller.m.{i}")).collect();
    let refs: Vec<&str> = incoming.iter().map(String::as_str).collect();
    let mut headers = amiquip::FieldTable::default();
    headers.insert("nameko.call_id_stack".into(), support::header_array(&refs));
    headers.insert(
        "x-custom".into(),
        amiquip::AmqpValue::LongString("v".into()),
    );
    headers.insert(
        "nameko.language".into(),
        amiquip::AmqpValue::LongString("de".into()),
    );
    raw.publish(
        &format!("{name}.whoami"),
        raw.request_properties("cap").with_headers(headers),
        br#"{"args": [], "kwargs": {}}"#,
    );
    let reply = raw.reply(WAIT).expect("reply");
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    let seen = &body["result"];
    let stack: Vec<String> = serde_json::from_value(seen["call_id_stack"].clone()).unwrap();
    // parent_calls_tracked = 10: the last 10 parents plus this call.
    assert_eq!(stack.len(), 11);
    assert_eq!(stack[..10], incoming[5..]);
    assert!(stack[10].starts_with(&format!("{name}.whoami.")));
    assert_eq!(
        seen["origin"], "caller.m.0",
        "origin comes from the untruncated stack"
    );
    assert_eq!(seen["parent"], "caller.m.14");
    assert_eq!(seen["data"]["x-custom"], "v");
    assert_eq!(seen["language"], "de");
}

#[test]
fn parent_calls_tracked_is_configurable() {
    let mut cleanup = Cleanup::new();
    let name = unique("ctx_tracked");
    cleanup.service(&name);
    let mut container = Container::new(echo(&name), support::config().parent_calls_tracked(2));
    container.start().unwrap();
    let raw = RawClient::new(&mut cleanup);
    let mut headers = amiquip::FieldTable::default();
    headers.insert(
        "nameko.call_id_stack".into(),
        support::header_array(&["a", "b", "c", "d"]),
    );
    raw.publish(
        &format!("{name}.whoami"),
        raw.request_properties("t").with_headers(headers),
        br#"{"args": [], "kwargs": {}}"#,
    );
    let body: Value = serde_json::from_slice(&raw.reply(WAIT).expect("reply").body).unwrap();
    let stack = body["result"]["call_id_stack"].as_array().unwrap().clone();
    assert_eq!(stack.len(), 3);
    assert_eq!(stack[..2], [json!("c"), json!("d")]);
}

#[test]
fn replies_carry_nameko_properties() {
    let mut cleanup = Cleanup::new();
    let name = unique("wire_reply");
    let _c = start(echo(&name), &mut cleanup);
    let raw = RawClient::new(&mut cleanup);
    raw.publish(
        &format!("{name}.add"),
        raw.request_properties("cid-42"),
        br#"{"args": [1], "kwargs": {"b": 2}}"#,
    );
    let reply = raw.reply(WAIT).expect("reply");
    let p = &reply.properties;
    assert_eq!(reply.exchange, "nameko-rpc");
    assert_eq!(reply.routing_key, raw.reply_to);
    assert_eq!(p.content_type().as_deref(), Some("application/json"));
    assert_eq!(p.content_encoding().as_deref(), Some("utf-8"));
    assert_eq!(p.correlation_id().as_deref(), Some("cid-42"));
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(*p.priority(), Some(0));
    assert_eq!(p.reply_to(), &None);
    assert!(p.headers().as_ref().is_none_or(|h| h.is_empty()));
    // `add` takes a tuple, so the keyword argument is a signature error: Nameko binds `b=2`
    // only for handlers whose arguments are a struct.
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"]["exc_type"], "IncorrectSignature");

    #[derive(serde::Deserialize)]
    struct Add {
        a: i64,
        b: i64,
    }
    let kw = unique("wire_kwargs");
    let _k = start(
        Service::new(kw.clone()).rpc("add", |_ctx, Add { a, b }| Ok(a + b)),
        &mut cleanup,
    );
    raw.publish(
        &format!("{kw}.add"),
        raw.request_properties("cid-43"),
        br#"{"args": [1], "kwargs": {"b": 2}}"#,
    );
    let reply = raw.reply(WAIT).expect("reply");
    assert_eq!(reply.body, br#"{"result": 3, "error": null}"#);
}

#[test]
fn queues_are_declared_with_nameko_flags_and_prefetch() {
    let mut cleanup = Cleanup::new();
    let name = unique("flags");
    cleanup.service(&name);
    let mut container = Container::new(echo(&name), support::config().max_workers(3));
    container.start().unwrap();
    let cluster = cluster(&mut cleanup);
    let queues = support::rabbitmqctl(&[
        "list_queues",
        "name",
        "durable",
        "auto_delete",
        "exclusive",
        "arguments",
    ]);
    let find = |queue: &str| {
        queues
            .iter()
            .find(|row| row[0] == queue)
            .unwrap_or_else(|| panic!("queue {queue} not found in {queues:?}"))
            .clone()
    };
    assert_eq!(
        find(&format!("rpc-{name}"))[1..],
        ["true", "false", "false", "[]"]
    );
    let reply = find(cluster.reply_queue());
    assert_eq!(reply[1..4], ["true", "false", "false"]);
    assert!(
        reply[4].contains("x-expires") && reply[4].contains("300000"),
        "{reply:?}"
    );
    assert!(
        cluster
            .reply_queue()
            .starts_with("rpc.reply-standalone_rpc_proxy-")
    );

    let bindings = support::rabbitmqctl(&[
        "list_bindings",
        "source_name",
        "destination_name",
        "routing_key",
    ]);
    assert!(bindings.contains(&vec![
        "nameko-rpc".into(),
        format!("rpc-{name}"),
        format!("{name}.*")
    ]));

    // Prefetch equals max_workers, per consumer.
    let consumers = support::rabbitmqctl(&["list_consumers", "queue_name", "prefetch_count"]);
    assert!(
        consumers.contains(&vec![format!("rpc-{name}"), "3".into()]),
        "{consumers:?}"
    );
    container.stop();

    let name2 = unique("flags_prefetch");
    cleanup.service(&name2);
    let mut c2 = Container::new(
        echo(&name2),
        support::config().max_workers(3).prefetch_count(7),
    );
    c2.start().unwrap();
    let consumers = support::rabbitmqctl(&["list_consumers", "queue_name", "prefetch_count"]);
    assert!(
        consumers.contains(&vec![format!("rpc-{name2}"), "7".into()]),
        "{consumers:?}"
    );
}

#[test]
fn the_pool_bounds_concurrency() {
    let mut cleanup = Cleanup::new();
    let name = unique("pool");
    cleanup.service(&name);
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
    let mut container = Container::new(service, support::config().max_workers(3));
    container.start().unwrap();
    let cluster = cluster(&mut cleanup);
    let pending: Vec<_> = (0..9)
        .map(|_| cluster.call_async(&name, "work", ()).unwrap())
        .collect();
    for p in pending {
        p.wait_timeout::<Value>(WAIT).unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 3);
}

#[test]
fn graceful_stop_finishes_in_flight_calls() {
    let mut cleanup = Cleanup::new();
    let name = unique("stop");
    cleanup.service(&name);
    let mut container = Container::new(echo(&name), support::config());
    container.start().unwrap();
    let cluster = cluster(&mut cleanup);
    let pending: Vec<_> = (0..3)
        .map(|_| cluster.call_async(&name, "sleep", (500,)).unwrap())
        .collect();
    // Stop only once the broker has handed all three to the service.
    let raw = RawClient::new(&mut cleanup);
    let queue = format!("rpc-{name}");
    assert!(support::eventually(WAIT, || raw.ready_count(&queue) == 0));
    container.stop();
    assert!(!container.is_running());
    for p in pending {
        assert_eq!(p.wait_timeout::<u64>(WAIT).unwrap(), 500);
    }
    assert_eq!(
        raw.ready_count(&format!("rpc-{name}")),
        0,
        "everything was acked"
    );
    // After the stop nothing consumes: a new call waits in the queue.
    let late = cluster.call_async(&name, "echo", (1,)).unwrap();
    assert!(
        late.wait_timeout::<Value>(Duration::from_millis(300))
            .unwrap_err()
            .is_timeout()
    );
    assert_eq!(raw.ready_count(&format!("rpc-{name}")), 1);
}

/// Records the order in which the container calls a dependency's hooks.
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn push(&self, entry: String) {
        self.log.lock().unwrap().push(entry);
    }
}

impl Dependency for Recorder {
    type Value = Arc<Mutex<Vec<String>>>;
    fn setup(&self, container: &enoki::ContainerInfo) -> enoki::Result<()> {
        self.push(format!("setup {}", container.config().workers()));
        Ok(())
    }
    fn start(&self) -> enoki::Result<()> {
        self.push("start".into());
        Ok(())
    }
    fn stop(&self) {
        self.push("stop".into());
    }
    fn inject(&self, ctx: &WorkerContext) -> enoki::Result<Self::Value> {
        self.push(format!("inject {}", ctx.entrypoint()));
        Ok(self.log.clone())
    }
    fn worker_setup(&self, _ctx: &WorkerContext) {
        self.push("worker_setup".into());
    }
    fn worker_result(&self, _ctx: &WorkerContext, result: Result<&str, &enoki::Error>) {
        match result {
            Ok(json) => self.push(format!("worker_result ok {json}")),
            Err(e) => self.push(format!("worker_result err {}", e.to_remote().exc_type)),
        }
    }
    fn worker_teardown(&self, _ctx: &WorkerContext) {
        self.push("worker_teardown".into());
    }
}

#[test]
fn dependency_hooks_run_in_nameko_order() {
    let mut cleanup = Cleanup::new();
    let name = unique("hooks");
    cleanup.service(&name);
    let log = Arc::new(Mutex::new(Vec::new()));
    let service = Service::new(name.clone())
        .dependency("recorder", Recorder { log: log.clone() })
        .rpc("double", |ctx, (n,): (i64,)| {
            let log = ctx.dependency::<Recorder>("recorder")?;
            log.lock().unwrap().push("handler".into());
            Ok(n * 2)
        })
        .rpc("boom", |_ctx, ()| -> enoki::Result<()> {
            Err(RemoteError::new("KeyError", "k").into())
        });
    let mut container = Container::new(service, support::config().max_workers(4));
    container.start().unwrap();
    let cluster = cluster(&mut cleanup);
    assert_eq!(
        cluster
            .call_timeout::<i64>(&name, "double", (21,), WAIT)
            .unwrap(),
        42
    );
    // worker_teardown runs after the reply is sent: wait for it before the next call.
    assert!(support::eventually(WAIT, || log.lock().unwrap().len() == 7));
    assert!(
        cluster
            .call_timeout::<Value>(&name, "boom", (), WAIT)
            .is_err()
    );
    assert!(support::eventually(WAIT, || log.lock().unwrap().len() == 11));
    container.stop();
    let expected = [
        "setup 4",
        "start",
        "inject double",
        "worker_setup",
        "handler",
        "worker_result ok 42",
        "worker_teardown",
        "inject boom",
        "worker_setup",
        "worker_result err KeyError",
        "worker_teardown",
        "stop",
    ];
    assert_eq!(*log.lock().unwrap(), expected);
}
