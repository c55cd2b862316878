//! The testing helpers (`enoki::testing`): each test fails if its helper did nothing.
//! Everything runs on in-process brokers except the waiter's RabbitMQ test.

mod support;

use enoki::testing::{
    self, Completion, EventRecorder, Hook, RpcMock, Stub, TestRunner, WaitTimeout, Waiter,
};
use enoki::transport::{ExchangeSpec, Headers, QueueSpec};
use enoki::{
    Args, Config, Container, Dependency, Error, ErrorKind, EventDispatcher, RemoteError, RpcProxy,
    Service, WorkerContext,
};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// Logs every hook a worker goes through, with the entrypoint and the result.
#[derive(Clone, Default)]
struct Journal(Arc<Mutex<Vec<String>>>);

impl Journal {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock())
    }
}

impl Dependency for Journal {
    type Value = Journal;
    fn inject(&self, ctx: &WorkerContext) -> enoki::Result<Journal> {
        self.0.lock().push(format!("inject {}", ctx.entrypoint()));
        Ok(self.clone())
    }
    fn worker_setup(&self, ctx: &WorkerContext) {
        self.0.lock().push(format!("setup {}", ctx.entrypoint()));
    }
    fn worker_result(&self, ctx: &WorkerContext, result: Result<&str, &Error>) {
        let result = match result {
            Ok(json) => json.to_owned(),
            Err(e) => format!("error {}", e.to_remote().exc_type),
        };
        self.0
            .lock()
            .push(format!("result {} {result}", ctx.entrypoint()));
    }
    fn worker_teardown(&self, ctx: &WorkerContext) {
        self.0.lock().push(format!("teardown {}", ctx.entrypoint()));
    }
}

fn journaled(journal: &Journal) -> Service {
    Service::new("maths")
        .dependency("journal", journal.clone())
        .rpc("add", |ctx, (a, b): (i64, i64)| {
            let journal = ctx.dependency::<Journal>("journal")?;
            journal.0.lock().push(format!("run {}", ctx.call_id()));
            Ok(a + b)
        })
        .rpc("context", |ctx, ()| {
            Ok(json!({
                "language": ctx.language(),
                "stack": ctx.call_id_stack(),
                "call_id": ctx.call_id(),
            }))
        })
        .rpc("fail", |_ctx, (message,): (String,)| -> enoki::Result<()> {
            Err(RemoteError::new("ValueError", message).into())
        })
        .rpc("panic", |_ctx, ()| -> enoki::Result<()> { panic!("boom") })
        .event_handler("clock", "noon", |ctx, hour: u32| {
            let journal = ctx.dependency::<Journal>("journal")?;
            journal.0.lock().push(format!(
                "event {hour} {} {:?}",
                ctx.language().unwrap_or("-"),
                ctx.call_id_stack()
            ));
            if hour > 12 {
                return Err(Error::bad_input("too late"));
            }
            Ok(())
        })
        .timer_with(
            enoki::Timer::new(Duration::from_secs(3600)).name("hourly"),
            |ctx| {
                let journal = ctx.dependency::<Journal>("journal")?;
                journal
                    .0
                    .lock()
                    .push(format!("tick {}", ctx.call_id_stack().len()));
                Ok(())
            },
        )
        .consume(
            QueueSpec::durable("audit").bind(ExchangeSpec::topic("audit"), "#"),
            |ctx, entry: Value| {
                let journal = ctx.dependency::<Journal>("journal")?;
                journal.0.lock().push(format!("consumed {entry}"));
                Ok(())
            },
        )
}

#[test]
fn hook_calls_rpc_through_a_worker_with_every_hook() {
    let journal = Journal::default();
    let hook = Hook::new(journaled(&journal)).expect("the hook starts");

    let sum: i64 = hook.rpc("add", (1, 2)).expect("add");
    assert_eq!(sum, 3);
    let log = journal.take();
    assert_eq!(log.len(), 5, "{log:?}");
    assert_eq!(log[0], "inject add");
    assert_eq!(log[1], "setup add");
    assert!(log[2].starts_with("run maths.add."), "{log:?}");
    assert_eq!(log[3..], ["result add 3", "teardown add"]);

    // The raw JSON result, and the same through the untyped path.
    let value: Value = hook.rpc("add", Args::new().arg(2).arg(5)).expect("add");
    assert_eq!(value, json!(7));
    journal.take();

    // Errors come back as the caller would see them, and the hooks see them too.
    let error = hook.rpc::<()>("fail", ("nope",)).unwrap_err();
    let remote = error.as_remote().expect("a remote error");
    assert_eq!(
        (remote.exc_type.as_str(), remote.value.as_str()),
        ("ValueError", "nope")
    );
    assert_eq!(
        journal.take(),
        [
            "inject fail",
            "setup fail",
            "result fail error ValueError",
            "teardown fail"
        ]
    );
    let panic = hook.rpc::<()>("panic", ()).unwrap_err();
    assert_eq!(
        panic.as_remote().expect("remote").exc_path,
        "enoki.PanicError"
    );
    assert_eq!(panic.as_remote().expect("remote").value, "boom");
    let wrong = hook.rpc::<i64>("add", ("one",)).unwrap_err();
    assert_eq!(
        wrong.as_remote().expect("remote").exc_type,
        "IncorrectSignature"
    );
    let missing = hook.rpc::<()>("nothing", ()).unwrap_err();
    assert_eq!(
        missing.as_remote().expect("remote").exc_type,
        "MethodNotFound"
    );
    let unfit = hook.rpc::<String>("add", (1, 2)).unwrap_err();
    assert!(matches!(unfit.kind(), ErrorKind::BadInput(_)), "{unfit}");
}

#[test]
fn hook_passes_context_data_and_continues_call_chains() {
    let hook = Hook::new(journaled(&Journal::default())).expect("the hook starts");
    let fresh: Value = hook.rpc("context", ()).expect("context");
    let call_id = fresh["call_id"].as_str().expect("call id").to_owned();
    assert!(call_id.starts_with("maths.context."), "{call_id}");
    assert_eq!(fresh["stack"], json!([call_id]));
    assert_eq!(fresh["language"], Value::Null);

    let chained: Value = hook
        .entrypoint("context")
        .context("language", "fr")
        .context("call_id_stack", json!(["caller.method.1"]))
        .rpc(())
        .expect("context");
    assert_eq!(chained["language"], "fr");
    let stack = chained["stack"].as_array().expect("stack");
    assert_eq!(stack.len(), 2);
    assert_eq!(stack[0], "caller.method.1");
    assert_eq!(stack[1], chained["call_id"]);

    let mut data = Headers::new();
    data.insert("nameko.language".into(), json!("de"));
    let prefixed: Value = hook
        .entrypoint("context")
        .context_data(data)
        .rpc(())
        .expect("context");
    assert_eq!(prefixed["language"], "de");
}

#[test]
fn hook_calls_event_handlers_timers_and_consumers() {
    let journal = Journal::default();
    let hook = Hook::new(journaled(&journal)).expect("the hook starts");

    hook.entrypoint("handle_noon")
        .context("language", "fr")
        .event(&12)
        .expect("the event is handled");
    let log = journal.take();
    assert_eq!(log.len(), 5, "{log:?}");
    assert_eq!(log[..2], ["inject handle_noon", "setup handle_noon"]);
    assert!(
        log[2].starts_with("event 12 fr [\"maths.handle_noon."),
        "{log:?}"
    );
    assert_eq!(
        log[3..],
        ["result handle_noon null", "teardown handle_noon"]
    );

    // The handler's own error comes back; the hooks saw it.
    let late = hook.event("handle_noon", &13).unwrap_err();
    assert_eq!(late.to_string(), "bad input: too late");
    assert!(
        journal
            .take()
            .contains(&"result handle_noon error ValueError".to_owned())
    );
    // A payload that does not fit the handler's type is a handler error too.
    let unfit = hook.event("handle_noon", &"noon").unwrap_err();
    assert!(matches!(unfit.kind(), ErrorKind::BadInput(_)), "{unfit}");
    journal.take();

    hook.timer("hourly").expect("one tick");
    assert_eq!(
        journal.take(),
        [
            "inject hourly",
            "setup hourly",
            "tick 1",
            "result hourly null",
            "teardown hourly"
        ]
    );

    hook.consume("consume_audit", &json!({"who": "ada"}))
        .expect("the message is handled");
    assert!(
        journal
            .take()
            .contains(&r#"consumed {"who":"ada"}"#.to_owned())
    );
}

#[test]
fn hook_names_what_it_cannot_find() {
    let hook = Hook::new(journaled(&Journal::default())).expect("the hook starts");
    let error = hook.event("handle_midnight", &0).unwrap_err();
    assert_eq!(
        error.to_string(),
        "configuration: `maths` has no event_handler named `handle_midnight` (it has: \
         event_handler `handle_noon`, timer `hourly`, consume `consume_audit`)"
    );
    // Kinds are told apart: a timer is not an event handler.
    let error = hook.event("hourly", &0).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("no event_handler named `hourly`"),
        "{error}"
    );
    let error = hook.timer("handle_noon").unwrap_err();
    assert!(
        error.to_string().contains("no timer named `handle_noon`"),
        "{error}"
    );
}

#[test]
fn hook_sets_up_and_stops_dependencies() {
    #[derive(Clone, Default)]
    struct Lifecycle(Arc<Mutex<Vec<&'static str>>>);
    impl Dependency for Lifecycle {
        type Value = ();
        fn setup(&self, info: &enoki::ContainerInfo) -> enoki::Result<()> {
            assert_eq!(info.service_name(), "life");
            self.0.lock().push("setup");
            Ok(())
        }
        fn start(&self) -> enoki::Result<()> {
            self.0.lock().push("start");
            Ok(())
        }
        fn stop(&self) {
            self.0.lock().push("stop");
        }
        fn inject(&self, _ctx: &WorkerContext) -> enoki::Result<()> {
            Ok(())
        }
    }
    let lifecycle = Lifecycle::default();
    let service = Service::new("life")
        .dependency("life", lifecycle.clone())
        .rpc("ping", |_ctx, ()| Ok("pong"));
    let hook = Hook::new(service).expect("the hook starts");
    assert_eq!(*lifecycle.0.lock(), ["setup", "start"]);
    assert_eq!(hook.rpc::<String>("ping", ()).expect("ping"), "pong");
    hook.stop();
    assert_eq!(*lifecycle.0.lock(), ["setup", "start", "stop"]);

    // Invalid services fail as a container's start would.
    let invalid = Service::new("bad.name").rpc("x", |_ctx, ()| Ok(()));
    assert!(matches!(
        Hook::new(invalid).unwrap_err().kind(),
        ErrorKind::Config(_)
    ));
}

fn shop() -> Service {
    Service::new("shop")
        .dependency("payments", RpcProxy::new("payments"))
        .dependency("events", EventDispatcher::new())
        .rpc("buy", |ctx, (item, price): (String, u32)| {
            let payments = ctx.dependency::<RpcProxy>("payments")?;
            let receipt: Value =
                payments.call("charge", Args::new().arg(price).kwarg("item", item.clone()))?;
            let events = ctx.dependency::<EventDispatcher>("events")?;
            events.dispatch("bought", &json!({"item": item, "receipt": receipt}))?;
            Ok(receipt)
        })
}

#[test]
fn rpc_mocks_and_event_recorders_record_what_handlers_did() {
    let payments = RpcMock::new("payments").responds("charge", |args| {
        Ok(json!(format!("receipt for {}", args.kwargs["item"])))
    });
    let events = EventRecorder::new();
    let service = testing::replace_dependency(shop(), "payments", payments.clone()).expect("swap");
    let service = testing::replace_dependency(service, "events", events.clone()).expect("swap");
    let hook = Hook::new(service).expect("the hook starts");

    let receipt: String = hook
        .entrypoint("buy")
        .context("language", "en")
        .rpc(("tea", 3))
        .expect("buy");
    assert_eq!(receipt, "receipt for \"tea\"");

    let calls = payments.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "charge");
    assert_eq!(calls[0].args, Args::new().arg(3).kwarg("item", "tea"));
    assert_eq!(calls[0].headers["nameko.language"], "en");
    let stack = calls[0].headers["nameko.call_id_stack"]
        .as_array()
        .expect("a call id stack");
    assert_eq!(stack.len(), 1);
    assert!(stack[0].as_str().expect("text").starts_with("shop.buy."));
    assert_eq!(payments.calls_to("refund"), []);

    let recorded = events.events();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].event_type, "bought");
    assert_eq!(
        recorded[0].payload,
        json!({"item": "tea", "receipt": "receipt for \"tea\""})
    );
    assert_eq!(recorded[0].headers["nameko.call_id_stack"], json!(stack));
    assert_eq!(events.events_of("bought").len(), 1);
    assert_eq!(events.events_of("sold"), []);
}

#[test]
fn rpc_mock_failures_reach_the_caller_and_unknown_methods_return_null() {
    let payments = RpcMock::new("payments").fails(
        "charge",
        RemoteError::new("PermissionError", "card declined"),
    );
    let service = testing::replace_dependency(shop(), "payments", payments.clone()).expect("swap");
    let service =
        testing::replace_dependency(service, "events", EventRecorder::new()).expect("swap");
    let hook = Hook::new(service).expect("the hook starts");
    let error = hook.rpc::<Value>("buy", ("tea", 3)).unwrap_err();
    let remote = error.as_remote().expect("remote");
    assert_eq!(
        (remote.exc_type.as_str(), remote.value.as_str()),
        ("PermissionError", "card declined")
    );
    assert_eq!(payments.calls().len(), 1);

    let silent = RpcMock::new("payments");
    let service = testing::replace_dependency(shop(), "payments", silent.clone()).expect("swap");
    let events = EventRecorder::new();
    let service = testing::replace_dependency(service, "events", events.clone()).expect("swap");
    let receipt: Value = Hook::new(service)
        .expect("hook")
        .rpc("buy", ("tea", 3))
        .expect("buy");
    assert_eq!(receipt, Value::Null);
    assert_eq!(silent.calls().len(), 1);
    assert_eq!(events.events()[0].payload["receipt"], Value::Null);
}

#[test]
fn without_replacements_the_real_proxy_finds_no_service() {
    // The counterpart of the tests above: the mock, not luck, made those calls succeed.
    let hook = Hook::new(shop()).expect("the hook starts");
    let error = hook.rpc::<Value>("buy", ("tea", 3)).unwrap_err();
    assert_eq!(
        error.as_remote().expect("remote").exc_type,
        "UnknownService",
        "{error}"
    );
}

#[test]
fn replacements_are_checked() {
    let error = testing::replace_dependency(shop(), "billing", EventRecorder::new()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "configuration: `shop` has no dependency named `billing`"
    );
    let error = testing::replace_dependency(shop(), "payments", EventRecorder::new()).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("injects a `enoki::events::Dispatcher`")
            && message.contains("expect a `enoki::proxy::ServiceProxy`"),
        "{message}"
    );
}

#[test]
fn stubs_inject_values_and_record_workers() {
    struct Clock;
    impl Dependency for Clock {
        type Value = u64;
        fn inject(&self, _ctx: &WorkerContext) -> enoki::Result<u64> {
            Ok(0)
        }
    }
    let service = Service::new("timekeeper")
        .dependency("clock", Clock)
        .rpc("now", |ctx, ()| Ok(*ctx.dependency::<Clock>("clock")?))
        .rpc("later", |ctx, (by,): (u64,)| {
            let now = *ctx.dependency::<Clock>("clock")?;
            now.checked_sub(by)
                .ok_or_else(|| RemoteError::new("ValueError", "before the epoch").into())
        });
    let clock = Stub::new(1_700_000_000_u64);
    let hook =
        Hook::new(testing::replace_dependency(service, "clock", clock.clone()).expect("swap"))
            .expect("the hook starts");
    assert_eq!(hook.rpc::<u64>("now", ()).expect("now"), 1_700_000_000);
    assert!(hook.rpc::<u64>("later", (u64::MAX,)).is_err());

    let done = clock.completions();
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].entrypoint, "now");
    assert!(done[0].call_id.starts_with("timekeeper.now."));
    assert_eq!(done[0].result, Ok(json!(1_700_000_000_u64)));
    assert_eq!(
        done[1].result,
        Err(RemoteError::new("ValueError", "before the epoch"))
    );
}

fn billing(waiter: &Waiter) -> Service {
    waiter.watch(
        Service::new("billing")
            .event_handler("shop", "bought", |_ctx, order: Value| {
                if order["fail"] == true {
                    return Err(RemoteError::new("ValueError", "refused").into());
                }
                Ok(())
            })
            .rpc("total", |_ctx, (a, b): (u32, u32)| Ok(a + b)),
    )
}

#[test]
fn the_waiter_waits_for_entrypoints_on_the_memory_broker() {
    let waiter = Waiter::new();
    let runner = TestRunner::new()
        .service(billing(&waiter))
        .start()
        .expect("starts");
    assert_eq!(waiter.count("handle_bought"), 0);
    let dispatcher = runner.dispatcher().expect("dispatcher");
    dispatcher
        .dispatch("shop", "bought", &json!({"id": 1}))
        .expect("dispatch");
    dispatcher
        .dispatch("shop", "bought", &json!({"fail": true}))
        .expect("dispatch");
    let done = waiter
        .wait("handle_bought", 2, WAIT)
        .expect("both events handled");
    assert_eq!(done.len(), 2);
    let mut results: Vec<_> = done.iter().map(|c| c.result.clone()).collect();
    results.sort_by_key(|r| r.is_err());
    assert_eq!(
        results,
        [
            Ok(Value::Null),
            Err(RemoteError::new("ValueError", "refused"))
        ]
    );
    assert!(
        done.iter()
            .all(|c| c.call_id.starts_with("billing.handle_bought."))
    );

    let total: u32 = runner
        .proxy()
        .expect("proxy")
        .call("billing", "total", (1, 2))
        .expect("total");
    assert_eq!(total, 3);
    // The reply is sent before the worker is torn down: wait for the teardown.
    let done = waiter.wait("total", 1, WAIT).expect("the call completed");
    assert_eq!(done[0].result, Ok(json!(3)));

    // Not reached: a clear error naming the entrypoint and the count seen.
    let late: WaitTimeout = waiter
        .wait("handle_bought", 3, Duration::from_millis(100))
        .unwrap_err();
    assert_eq!(
        late.to_string(),
        "entrypoint `handle_bought` completed 2 time(s) within 0.100 s; waited for 3"
    );
    assert_eq!(format!("{late:?}"), late.to_string());
    let never = waiter
        .wait("nothing", 1, Duration::from_millis(10))
        .unwrap_err();
    assert_eq!(never.seen, 0);
    let as_error: Error = never.into();
    assert!(as_error.is_timeout());
}

#[test]
fn the_waiter_waits_for_entrypoints_on_rabbitmq() {
    let service = support::unique("waited");
    let mut cleanup = support::Cleanup::new();
    cleanup.service(&service);
    let waiter = Waiter::new();
    let watched = waiter.watch(
        Service::new(service.clone())
            .timer(Duration::from_millis(20), |_ctx| Ok(()))
            .rpc("double", |_ctx, (n,): (u32,)| Ok(n * 2)),
    );
    let mut container = Container::new(watched, support::config());
    container.start().expect("starts on RabbitMQ");
    let ticks = waiter.wait("timer", 3, WAIT).expect("three ticks");
    assert!(ticks.iter().all(|t| t.result == Ok(Value::Null)));

    let cluster = enoki::ClusterRpcProxy::new(&support::config())
        .expect("client")
        .timeout(WAIT);
    let doubled: u32 = cluster.call(&service, "double", (21,)).expect("double");
    assert_eq!(doubled, 42);
    let done: Vec<Completion> = waiter.wait("double", 1, WAIT).expect("the call completed");
    assert_eq!(done[0].result, Ok(json!(42)));
    let late = waiter
        .wait("double", 2, Duration::from_millis(50))
        .unwrap_err();
    assert_eq!(late.seen, 1);
    container.stop();
}

#[test]
fn restricted_services_run_only_the_named_entrypoints() {
    let restricted = testing::restrict_entrypoints(
        Service::new("clerk")
            .rpc("stamp", |_ctx, ()| Ok("stamped"))
            .rpc("shred", |_ctx, ()| Ok("shredded"))
            .event_handler("post", "letter", |_ctx, _letter: Value| Ok(()))
            .timer(Duration::from_millis(1), |_ctx| Ok(())),
        &["stamp", "handle_letter"],
    )
    .expect("restricted");
    assert_eq!(restricted.rpc_methods().collect::<Vec<_>>(), ["stamp"]);

    let runner = TestRunner::new()
        .service(restricted)
        .start()
        .expect("starts");
    let proxy = runner.proxy().expect("proxy");
    assert_eq!(
        proxy.call::<String>("clerk", "stamp", ()).expect("stamp"),
        "stamped"
    );
    let gone = proxy.call::<String>("clerk", "shred", ()).unwrap_err();
    assert_eq!(gone.as_remote().expect("remote").exc_type, "MethodNotFound");
    runner.stop();

    // The timer went with the restriction; the event handler stayed.
    let hook = Hook::new(
        testing::restrict_entrypoints(
            Service::new("clerk")
                .event_handler("post", "letter", |_ctx, _letter: Value| Ok(()))
                .timer(Duration::from_secs(1), |_ctx| Ok(())),
            &["handle_letter"],
        )
        .expect("restricted"),
    )
    .expect("hook");
    assert!(hook.timer("timer").is_err());
    hook.event("handle_letter", &json!("hi")).expect("kept");

    let error = testing::restrict_entrypoints(Service::new("clerk"), &["stamp"]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "configuration: `clerk` has no entrypoint named `stamp`"
    );
}

#[test]
fn test_runners_are_isolated_from_each_other() {
    let first = TestRunner::new()
        .service(Service::new("echo").rpc("who", |_ctx, ()| Ok("first")))
        .start()
        .expect("starts");
    let second = TestRunner::with_config(Config::new().max_workers(2))
        .service(Service::new("echo").rpc("who", |_ctx, ()| Ok("second")))
        .start()
        .expect("starts");
    assert_ne!(first.config().uri(), second.config().uri());
    assert!(second.config().uri().starts_with("memory://"));
    assert_eq!(second.config().workers(), 2);
    let (a, b) = (
        first.proxy().expect("proxy"),
        second.proxy().expect("proxy"),
    );
    for _ in 0..4 {
        assert_eq!(a.call::<String>("echo", "who", ()).expect("who"), "first");
        assert_eq!(b.call::<String>("echo", "who", ()).expect("who"), "second");
    }
}

#[test]
fn a_hook_on_a_runners_broker_calls_its_services_for_real() {
    let runner = TestRunner::new()
        .service(Service::new("payments").rpc("charge", |_ctx, args: Args| {
            Ok(format!(
                "charged {} for {}",
                args.args[0], args.kwargs["item"]
            ))
        }))
        .start()
        .expect("starts");
    let hook = Hook::with_config(shop(), runner.config().clone()).expect("hook");
    let receipt: String = hook.rpc("buy", ("tea", 3)).expect("buy");
    assert_eq!(receipt, "charged 3 for \"tea\"");
}
