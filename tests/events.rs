//! Events and raw messaging over the real RabbitMQ: the three handler types with two instances
//! of each handling service, reliable delivery on and off, requeue on error (and that it does
//! not spin), panics, context from an RPC call through an event, wire properties and queue
//! flags, graceful stop with a handler running, `consume` and `Publisher`.

mod support;

use amiquip::{ConsumerOptions, ExchangeType, FieldTable, QueueDeclareOptions};
use enoki::transport::{ExchangeSpec, QueueSpec};
use enoki::{
    ClusterRpcProxy, Consume, Container, ErrorKind, EventDispatcher, EventHandler, HandlerType,
    Publisher, RemoteError, Service, StandaloneDispatcher,
};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{Cleanup, Exchanges, eventually, unique};

const WAIT: Duration = Duration::from_secs(10);

/// What handlers saw: (who, payload).
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

fn seen() -> Seen {
    Arc::new(Mutex::new(Vec::new()))
}

fn source(exchanges: &mut Exchanges, prefix: &str) -> String {
    let name = unique(prefix);
    exchanges.0.push(format!("{name}.events"));
    name
}

fn start(service: Service) -> Container {
    let mut container = Container::new(service, support::config());
    container.start().expect("container starts");
    container
}

fn dispatcher() -> StandaloneDispatcher {
    StandaloneDispatcher::new(&support::config()).expect("dispatcher")
}

/// A service `name` whose handler records `(label, payload)`.
fn recorder(name: &str, label: &str, options: EventHandler, seen: &Seen) -> Service {
    let seen = seen.clone();
    let label = label.to_owned();
    Service::new(name).event_handler_with(options, move |_ctx, payload: Value| {
        seen.lock().push((label.clone(), payload));
        Ok(())
    })
}

fn count(seen: &Seen, pred: impl Fn(&(String, Value)) -> bool) -> usize {
    seen.lock().iter().filter(|e| pred(e)).count()
}

/// The number of ready messages in `queue`, or `None` if it does not exist.
fn ready(queue: &str) -> Option<u32> {
    let mut connection = support::raw_connection();
    let channel = connection.open_channel(None).expect("channel");
    let count = channel
        .queue_declare_passive(queue.to_owned())
        .ok()
        .map(|q| q.declared_message_count().unwrap_or(0));
    let _ = connection.close();
    count
}

#[test]
fn service_pool_events_are_handled_once_per_service() {
    let mut cleanup = Cleanup::new();
    let mut exchanges = Exchanges(Vec::new());
    let src = source(&mut exchanges, "pool_src");
    let (a, b) = (unique("pool_a"), unique("pool_b"));
    cleanup.queue(format!("evt-{src}-tick--{a}.handle_tick"));
    cleanup.queue(format!("evt-{src}-tick--{b}.handle_tick"));
    let seen = seen();
    let options = EventHandler::new(&src, "tick");
    let _a1 = start(recorder(&a, "a1", options.clone(), &seen));
    let _a2 = start(recorder(&a, "a2", options.clone(), &seen));
    let _b1 = start(recorder(&b, "b1", options.clone(), &seen));
    let _b2 = start(recorder(&b, "b2", options, &seen));

    let dispatcher = dispatcher();
    for n in 0..20 {
        dispatcher.dispatch(&src, "tick", &json!({"n": n})).unwrap();
    }
    dispatcher
        .dispatch(&src, "other", &json!("ignored"))
        .unwrap();
    assert!(eventually(WAIT, || seen.lock().len() >= 40));
    std::thread::sleep(Duration::from_millis(200)); // would catch duplicates arriving late
    let log = seen.lock().clone();
    assert_eq!(log.len(), 40, "{log:?}");
    for n in 0..20 {
        let payload = json!({"n": n});
        let by_a = log
            .iter()
            .filter(|(who, p)| who.starts_with('a') && *p == payload)
            .count();
        let by_b = log
            .iter()
            .filter(|(who, p)| who.starts_with('b') && *p == payload)
            .count();
        assert_eq!((by_a, by_b), (1, 1), "event {n}: {log:?}");
    }
    // Competing consumers: both instances of a service took a share.
    assert!(count(&seen, |(w, _)| w == "a1") > 0 && count(&seen, |(w, _)| w == "a2") > 0);
}

#[test]
fn singleton_events_are_handled_once_across_all_services() {
    let mut cleanup = Cleanup::new();
    let mut exchanges = Exchanges(Vec::new());
    let src = source(&mut exchanges, "single_src");
    let (a, b) = (unique("single_a"), unique("single_b"));
    cleanup.queue(format!("evt-{src}-tick"));
    let seen = seen();
    let options = EventHandler::new(&src, "tick").handler_type(HandlerType::Singleton);
    let _c = [
        start(recorder(&a, "a1", options.clone(), &seen)),
        start(recorder(&a, "a2", options.clone(), &seen)),
        start(recorder(&b, "b1", options.clone(), &seen)),
        start(recorder(&b, "b2", options, &seen)),
    ];
    let dispatcher = dispatcher();
    for n in 0..20 {
        dispatcher.dispatch(&src, "tick", &n).unwrap();
    }
    assert!(eventually(WAIT, || seen.lock().len() >= 20));
    std::thread::sleep(Duration::from_millis(200));
    let mut payloads: Vec<i64> = seen
        .lock()
        .iter()
        .map(|(_, p)| p.as_i64().unwrap())
        .collect();
    payloads.sort();
    assert_eq!(payloads, (0..20).collect::<Vec<_>>());
}

#[test]
fn broadcast_events_reach_every_instance() {
    let mut cleanup = Cleanup::new();
    let mut exchanges = Exchanges(Vec::new());
    let src = source(&mut exchanges, "bcast_src");
    let a = unique("bcast_a");
    let seen = seen();
    let options = EventHandler::new(&src, "tick")
        .handler_type(HandlerType::Broadcast)
        .reliable_delivery(false);
    let a1 = start(recorder(&a, "a1", options.clone(), &seen));
    let _a2 = start(recorder(&a, "a2", options, &seen));

    // Exclusive, auto-delete queues named evt-<src>-tick--<svc>.handle_tick-<uuid hex>.
    let prefix = format!("evt-{src}-tick--{a}.handle_tick-");
    let queues: Vec<Vec<String>> =
        support::rabbitmqctl(&["list_queues", "name", "durable", "auto_delete", "exclusive"])
            .into_iter()
            .filter(|row| row[0].starts_with(&prefix))
            .collect();
    assert_eq!(queues.len(), 2, "{queues:?}");
    for row in &queues {
        assert_eq!(row[0].len(), prefix.len() + 32, "{row:?}");
        // RabbitMQ reports exclusive queues as non-durable.
        assert_eq!(&row[2..], ["true", "true"], "{row:?}");
    }

    let dispatcher = dispatcher();
    for n in 0..10 {
        dispatcher.dispatch(&src, "tick", &n).unwrap();
    }
    assert!(eventually(WAIT, || seen.lock().len() >= 20));
    std::thread::sleep(Duration::from_millis(200));
    for who in ["a1", "a2"] {
        let mut got: Vec<i64> = seen
            .lock()
            .iter()
            .filter(|(w, _)| w == who)
            .map(|(_, p)| p.as_i64().unwrap())
            .collect();
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>(), "{who}");
    }

    // The queue goes with its instance.
    drop(a1);
    assert!(eventually(WAIT, || {
        support::rabbitmqctl(&["list_queues", "name"])
            .iter()
            .filter(|row| row[0].starts_with(&prefix))
            .count()
            == 1
    }));

    // A stable identifier keeps a durable queue, so reliable delivery is allowed with it.
    let id = unique("host");
    let queue = format!("{prefix}{id}");
    cleanup.queue(&queue);
    let stable = EventHandler::new(&src, "tick")
        .handler_type(HandlerType::Broadcast)
        .broadcast_identifier(&id);
    drop(start(recorder(&a, "stable", stable, &seen)));
    assert_eq!(ready(&queue), Some(0), "the durable broadcast queue stays");
}

#[test]
fn broadcast_with_reliable_delivery_and_the_default_identifier_is_a_config_error() {
    let options = EventHandler::new("anywhere", "tick").handler_type(HandlerType::Broadcast);
    let service =
        Service::new(unique("bcast_bad")).event_handler_with(options, |_ctx, _p: Value| Ok(()));
    let err = Container::new(service, support::config())
        .start()
        .expect_err("Nameko's EventHandlerConfigurationError");
    assert!(
        matches!(err.kind(), ErrorKind::Config(m) if m.contains("broadcast")),
        "{err}"
    );
}

#[test]
fn two_handlers_of_one_name_are_a_config_error() {
    let service = Service::new(unique("twice"))
        .event_handler("a", "tick", |_ctx, _p: Value| Ok(()))
        .event_handler("b", "tick", |_ctx, _p: Value| Ok(()));
    let err = Container::new(service, support::config())
        .start()
        .expect_err("handle_tick twice");
    assert!(
        matches!(err.kind(), ErrorKind::Config(m) if m.contains("handle_tick")),
        "{err}"
    );
}

#[test]
fn reliable_delivery_keeps_events_while_the_handler_is_down() {
    let mut cleanup = Cleanup::new();
    let mut exchanges = Exchanges(Vec::new());
    let src = source(&mut exchanges, "reliable_src");
    let svc = unique("reliable");
    let queue = format!("evt-{src}-tick--{svc}.handle_tick");
    cleanup.queue(&queue);
    let seen = seen();
    let dispatcher = dispatcher();

    let first = start(recorder(&svc, "1", EventHandler::new(&src, "tick"), &seen));
    drop(first);
    dispatcher.dispatch(&src, "tick", "while down").unwrap();
    assert_eq!(ready(&queue), Some(1));
    let _second = start(recorder(&svc, "2", EventHandler::new(&src, "tick"), &seen));
    assert!(eventually(WAIT, || seen.lock().len() == 1));
    assert_eq!(seen.lock()[0], ("2".to_owned(), json!("while down")));
}

#[test]
fn unreliable_delivery_loses_events_while_the_handler_is_down() {
    let mut cleanup = Cleanup::new();
    let mut exchanges = Exchanges(Vec::new());
    let src = source(&mut exchanges, "unreliable_src");
    let svc = unique("unreliable");
    let queue = format!("evt-{src}-tick--{svc}.handle_tick");
    cleanup.queue(&queue);
    let seen = seen();
    let dispatcher = dispatcher();
    let options = EventHandler::new(&src, "tick").reliable_delivery(false);

    let first = start(recorder(&svc, "1", options.clone(), &seen));
    let flags =
        support::rabbitmqctl(&["list_queues", "name", "durable", "auto_delete", "exclusive"]);
    let row = flags
        .iter()
        .find(|r| r[0] == queue)
        .expect("queue declared");
    assert_eq!(&row[1..], ["true", "true", "false"]);
    drop(first);
    assert!(eventually(WAIT, || ready(&queue).is_none()), "auto-deleted");
    dispatcher.dispatch(&src, "tick", "lost").unwrap();
    let _second = start(recorder(&svc, "2", options, &seen));
    dispatcher.dispatch(&src, "tick", "kept").unwrap();
    assert!(eventually(WAIT, || !seen.lock().is_empty()));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(*seen.lock(), [("2".to_owned(), json!("kept"))]);
}

/// A service whose handler fails (or panics) the first time it sees each payload.
fn flaky(name: &str, options: EventHandler, attempts: &Seen, panic: bool) -> Service {
    let attempts = attempts.clone();
    Service::new(name).event_handler_with(options, move |_ctx, payload: Value| {
        let before = count(&attempts, |(_, p)| *p == payload);
        attempts.lock().push(("attempt".into(), payload));
        if before == 0 {
            if panic {
                panic!("first attempt explodes");
            }
            return Err(RemoteError::new("ValueError", "first attempt fails").into());
        }
        Ok(())
    })
}

#[test]
fn failed_events_are_requeued_only_with_requeue_on_error() {
    let mut cleanup = Cleanup::new();
    let mut exchanges = Exchanges(Vec::new());
    let src = source(&mut exchanges, "requeue_src");
    let (with, without, panics) = (unique("requeue"), unique("norequeue"), unique("panics"));
    for svc in [&with, &without, &panics] {
        cleanup.queue(format!("evt-{src}-tick--{svc}.handle_tick"));
    }
    let (a, b, c) = (seen(), seen(), seen());
    let options = EventHandler::new(&src, "tick");
    let _with = start(flaky(
        &with,
        options.clone().requeue_on_error(true),
        &a,
        false,
    ));
    let _without = start(flaky(&without, options.clone(), &b, false));
    let _panics = start(flaky(&panics, options.requeue_on_error(true), &c, true));

    let dispatcher = dispatcher();
    dispatcher.dispatch(&src, "tick", "x").unwrap();
    assert!(eventually(WAIT, || a.lock().len() == 2), "redelivered once");
    assert!(
        eventually(WAIT, || c.lock().len() == 2),
        "a panic is an error"
    );
    // The one without requeue saw it once; a second event proves it is still consuming.
    dispatcher.dispatch(&src, "tick", "y").unwrap();
    assert!(eventually(WAIT, || count(&b, |(_, p)| p == "y") == 1));
    assert!(eventually(WAIT, || count(&a, |(_, p)| p == "y") == 2));
    assert_eq!(count(&b, |(_, p)| p == "x"), 1);
    // Nothing is left on the queues: the successes were acked.
    assert!(eventually(WAIT, || ready(&format!(
        "evt-{src}-tick--{with}.handle_tick"
    )) == Some(0)));
}

#[test]
fn a_handler_that_always_fails_does_not_spin() {
    let mut cleanup = Cleanup::new();
    let mut exchanges = Exchanges(Vec::new());
    let src = source(&mut exchanges, "spin_src");
    let svc = unique("spin");
    let queue = format!("evt-{src}-tick--{svc}.handle_tick");
    cleanup.queue(&queue);
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let service = Service::new(&svc).event_handler_with(
        EventHandler::new(&src, "tick")
            .requeue_on_error(true)
            .requeue_delay(Duration::from_millis(250)),
        move |_ctx, _p: Value| -> enoki::Result<()> {
            counter.fetch_add(1, Ordering::SeqCst);
            Err(RemoteError::new("ValueError", "never works").into())
        },
    );
    let mut container = start(service);
    dispatcher().dispatch(&src, "tick", "poison").unwrap();
    assert!(eventually(WAIT, || attempts.load(Ordering::SeqCst) >= 2));
    let began = Instant::now();
    let at_start = attempts.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1500));
    let during = attempts.load(Ordering::SeqCst) - at_start;
    let elapsed = began.elapsed().as_secs_f64();
    // One redelivery per 250 ms; Nameko's immediate requeue makes thousands.
    assert!(during >= 3, "still retried: {during} in {elapsed:.2} s");
    assert!(
        (during as f64) <= elapsed / 0.25 + 2.0,
        "{during} attempts in {elapsed:.2} s"
    );
    // A graceful stop gives the held message straight back.
    container.stop();
    assert_eq!(ready(&queue), Some(1));
}

#[test]
fn context_flows_from_an_rpc_call_through_an_event() {
    let mut cleanup = Cleanup::new();
    let mut exchanges = Exchanges(Vec::new());
    let emitter = unique("emitter");
    exchanges.0.push(format!("{emitter}.events"));
    let listener = unique("listener");
    cleanup.service(&emitter);
    cleanup.queue(format!("evt-{emitter}-happened--{listener}.on_happened"));

    let _emitter = start(
        Service::new(&emitter)
            .dependency("events", EventDispatcher::new())
            .rpc("emit", |ctx, (what,): (String,)| {
                ctx.dependency::<EventDispatcher>("events")?
                    .dispatch("happened", &json!({"what": what}))?;
                Ok(ctx.call_id().to_owned())
            }),
    );
    // A spy queue on the exchange sees the event as it travels.
    let mut spy_connection = support::raw_connection();
    let spy_channel = spy_connection.open_channel(None).unwrap();
    let spy = spy_channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
        )
        .unwrap();
    spy_channel
        .queue_bind(
            spy.name(),
            format!("{emitter}.events"),
            "#",
            FieldTable::default(),
        )
        .unwrap();
    let heard: Arc<Mutex<Option<Value>>> = Arc::new(Mutex::new(None));
    let sink = heard.clone();
    let _listener = start(Service::new(&listener).event_handler_with(
        EventHandler::new(&emitter, "happened").name("on_happened"),
        move |ctx, payload: Value| {
            *sink.lock() = Some(json!({
                "payload": payload,
                "stack": ctx.call_id_stack(),
                "language": ctx.language(),
                "custom": ctx.get("x-custom"),
                "call_id": ctx.call_id(),
            }));
            Ok(())
        },
    ));

    let mut data = serde_json::Map::new();
    data.insert("language".into(), json!("fr"));
    data.insert("x-custom".into(), json!({"k": [1, 2]}));
    let cluster = ClusterRpcProxy::new(&support::config())
        .unwrap()
        .context_data(data)
        .timeout(WAIT);
    cleanup.queue(cluster.reply_queue());
    let emit_call_id: String = cluster.call(&emitter, "emit", ("boom",)).unwrap();

    assert!(eventually(WAIT, || heard.lock().is_some()));
    let heard = heard.lock().clone().unwrap();
    assert_eq!(heard["payload"], json!({"what": "boom"}));
    assert_eq!(heard["language"], "fr");
    assert_eq!(heard["custom"], json!({"k": [1, 2]}));
    let stack: Vec<String> = serde_json::from_value(heard["stack"].clone()).unwrap();
    assert_eq!(stack.len(), 3, "{stack:?}");
    assert!(stack[0].starts_with("standalone_rpc_proxy.call."));
    assert_eq!(stack[1], emit_call_id);
    assert!(stack[2].starts_with(&format!("{listener}.on_happened.")));
    assert_eq!(heard["call_id"], json!(stack[2]));

    // On the wire: Nameko's event properties.
    let consumer = spy_channel
        .basic_consume(
            spy.name(),
            ConsumerOptions {
                no_ack: true,
                ..ConsumerOptions::default()
            },
        )
        .unwrap();
    let message = match consumer.receiver().recv_timeout(WAIT).expect("spy got it") {
        amiquip::ConsumerMessage::Delivery(d) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(message.routing_key, "happened");
    assert_eq!(message.body, br#"{"what":"boom"}"#);
    let p = &message.properties;
    assert_eq!(p.content_type().as_deref(), Some("application/json"));
    assert_eq!(p.content_encoding().as_deref(), Some("utf-8"));
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(*p.priority(), Some(0));
    assert_eq!(*p.correlation_id(), None);
    assert_eq!(*p.reply_to(), None);
    let headers = p.headers().clone().unwrap_or_default();
    assert_eq!(
        headers.get("nameko.language"),
        Some(&amiquip::AmqpValue::LongString("fr".into()))
    );
    match headers.get("nameko.call_id_stack") {
        Some(amiquip::AmqpValue::FieldArray(items)) => assert_eq!(items.len(), 2),
        other => panic!("call_id_stack {other:?}"),
    }
    let _ = spy_connection.close();
}

#[test]
fn graceful_stop_lets_a_running_handler_finish_and_ack() {
    let mut cleanup = Cleanup::new();
    let mut exchanges = Exchanges(Vec::new());
    let src = source(&mut exchanges, "stop_src");
    let svc = unique("stopping");
    let queue = format!("evt-{src}-tick--{svc}.handle_tick");
    cleanup.queue(&queue);
    let started = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let (s, f) = (started.clone(), finished.clone());
    let mut container =
        start(
            Service::new(&svc).event_handler(&src, "tick", move |_ctx, _p: Value| {
                s.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(600));
                f.store(true, Ordering::SeqCst);
                Ok(())
            }),
        );
    dispatcher().dispatch(&src, "tick", "slow").unwrap();
    assert!(eventually(WAIT, || started.load(Ordering::SeqCst)));
    container.stop();
    assert!(
        finished.load(Ordering::SeqCst),
        "stop waited for the handler"
    );
    assert_eq!(ready(&queue), Some(0), "and acked its event");
}

#[test]
fn undecodable_and_mistyped_payloads_do_not_stop_the_handler() {
    let mut cleanup = Cleanup::new();
    let mut exchanges = Exchanges(Vec::new());
    let src = source(&mut exchanges, "bad_src");
    let svc = unique("typed");
    let queue = format!("evt-{src}-tick--{svc}.handle_tick");
    cleanup.queue(&queue);
    #[derive(Deserialize)]
    struct Tick {
        n: u32,
    }
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let _c = start(
        Service::new(&svc).event_handler(&src, "tick", move |_ctx, t: Tick| {
            sink.lock().push(t.n);
            Ok(())
        }),
    );
    let mut connection = support::raw_connection();
    let channel = connection.open_channel(None).unwrap();
    let exchange = channel
        .exchange_declare(
            ExchangeType::Topic,
            format!("{src}.events"),
            amiquip::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .unwrap();
    let json_props =
        amiquip::AmqpProperties::default().with_content_type("application/json".into());
    exchange
        .publish(amiquip::Publish::with_properties(
            b"{not json",
            "tick",
            json_props.clone(),
        ))
        .unwrap();
    exchange
        .publish(amiquip::Publish::with_properties(
            br#"{"n": "seven"}"#,
            "tick",
            json_props.clone(),
        ))
        .unwrap();
    exchange
        .publish(amiquip::Publish::with_properties(
            br#"{"n": 7}"#,
            "tick",
            json_props,
        ))
        .unwrap();
    assert!(eventually(WAIT, || !got.lock().is_empty()));
    assert_eq!(*got.lock(), [7]);
    assert!(eventually(WAIT, || ready(&queue) == Some(0)));
    let _ = connection.close();
}

#[test]
fn publisher_and_consume_carry_messages_and_context() {
    let mut cleanup = Cleanup::new();
    let mut exchanges = Exchanges(Vec::new());
    let exchange_name = unique("custom_x");
    exchanges.0.push(exchange_name.clone());
    let queue_name = unique("custom_q");
    cleanup.queue(&queue_name);
    let (producer, consumer) = (unique("producer"), unique("consumer"));
    cleanup.service(&producer);

    let got: Seen = seen();
    let sink = got.clone();
    let queue = QueueSpec::durable(&queue_name).bind(ExchangeSpec::topic(&exchange_name), "rk.*");
    let failures = Arc::new(AtomicUsize::new(0));
    let fails = failures.clone();
    let _consumer = start(Service::new(&consumer).consume_with(
        Consume::new(queue).name("take").requeue_on_error(true),
        move |ctx, body: Value| {
            if body == json!("fail once") && fails.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(RemoteError::new("ValueError", "once").into());
            }
            let stack = ctx.call_id_stack().join(" ");
            sink.lock().push((stack, body));
            Ok(())
        },
    ));
    let _producer = start(
        Service::new(&producer)
            .dependency("out", Publisher::new(ExchangeSpec::topic(&exchange_name)))
            .rpc("send", |ctx, (key, body): (String, Value)| {
                ctx.dependency::<Publisher>("out")?.publish(&key, &body)?;
                Ok(())
            }),
    );
    let cluster = ClusterRpcProxy::new(&support::config())
        .unwrap()
        .timeout(WAIT);
    cleanup.queue(cluster.reply_queue());
    cluster
        .call::<Value>(&producer, "send", ("rk.one", json!({"a": 1})))
        .unwrap();
    cluster
        .call::<Value>(&producer, "send", ("nomatch", json!("dropped")))
        .unwrap();
    cluster
        .call::<Value>(&producer, "send", ("rk.two", json!("fail once")))
        .unwrap();
    assert!(eventually(WAIT, || got.lock().len() == 2));
    let got = got.lock().clone();
    assert_eq!(got[0].1, json!({"a": 1}));
    assert_eq!(got[1].1, json!("fail once"));
    assert_eq!(failures.load(Ordering::SeqCst), 2);
    let stack: Vec<&str> = got[0].0.split(' ').collect();
    assert_eq!(stack.len(), 3, "{stack:?}");
    assert!(stack[1].starts_with(&format!("{producer}.send.")));
    assert!(stack[2].starts_with(&format!("{consumer}.take.")));
}
