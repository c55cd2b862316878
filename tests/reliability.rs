//! Faults between enoki and the real RabbitMQ, injected through a loopback TCP proxy (the shared
//! broker is never stopped): cut connections, a stalled peer, stop under load. Every call must
//! end in its correct reply or a clear error, never a hang, and the service must recover.

mod support;

use enoki::{ClusterRpcProxy, Container, ErrorKind, Service};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::proxy::FaultProxy;
use support::{Cleanup, unique};

/// The most a service may take to serve again after its connections drop (issue #6: 5 s).
const RECOVERY: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(10);

fn upstream() -> String {
    enoki::AmqpUri::parse(&support::amqp_uri())
        .expect("test URI")
        .addr()
}

fn config_via(proxy: &FaultProxy) -> enoki::Config {
    support::config().amqp_uri(proxy.uri(&support::amqp_uri()))
}

fn service(name: &str, calls: Arc<AtomicUsize>) -> Service {
    Service::new(name)
        .rpc("add", |_ctx, (a, b): (i64, i64)| Ok(a + b))
        .rpc("sleep", move |_ctx, (ms,): (u64,)| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(ms));
            Ok(ms)
        })
}

fn start(service: Service, config: enoki::Config, cleanup: &mut Cleanup) -> Container {
    cleanup.service(service.name());
    let mut container = Container::new(service, config);
    container.start().expect("container starts");
    container
}

fn client(config: &enoki::Config, cleanup: &mut Cleanup) -> ClusterRpcProxy {
    let cluster = ClusterRpcProxy::new(config).expect("client connects");
    cleanup.queue(cluster.reply_queue());
    cluster
}

/// A [`service`] on the shared broker and a client that reaches it through its own fault
/// proxy, warmed by one call. Fields drop in order: client, proxy, service, then the queues.
struct BehindProxy {
    cluster: ClusterRpcProxy,
    proxy: FaultProxy,
    name: String,
    _service: Container,
    _cleanup: Cleanup,
}

impl BehindProxy {
    fn start(prefix: &str, calls: Arc<AtomicUsize>) -> BehindProxy {
        let mut cleanup = Cleanup::new();
        let name = unique(prefix);
        let service = start(service(&name, calls), support::config(), &mut cleanup);
        let proxy = FaultProxy::start(&upstream());
        let cluster = client(&config_via(&proxy), &mut cleanup);
        assert_eq!(cluster.call::<i64>(&name, "add", (1, 2)).expect("warm"), 3);
        BehindProxy {
            cluster,
            proxy,
            name,
            _service: service,
            _cleanup: cleanup,
        }
    }
}

/// Calls `name.add(1, 2)` until it answers 3; returns how long that took.
fn until_served(cluster: &ClusterRpcProxy, name: &str) -> Duration {
    let started = Instant::now();
    loop {
        match cluster.call_timeout::<i64>(name, "add", (1, 2), Duration::from_secs(2)) {
            Ok(sum) => {
                assert_eq!(sum, 3);
                return started.elapsed();
            }
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "{name} never recovered: {e}"
                );
            }
        }
    }
}

#[test]
fn service_serves_again_after_its_connections_are_cut() {
    let mut cleanup = Cleanup::new();
    let proxy = FaultProxy::start(&upstream());
    let name = unique("rel_cut_service");
    let _service = start(
        service(&name, Arc::default()),
        config_via(&proxy),
        &mut cleanup,
    );
    let cluster = client(&support::config(), &mut cleanup);
    assert!(until_served(&cluster, &name) < RECOVERY);
    let before = proxy.accepted();

    for round in 0..3 {
        proxy.cut();
        assert_eq!(proxy.open(), 0);
        let took = until_served(&cluster, &name);
        assert!(
            took < RECOVERY,
            "round {round}: served again only after {took:?}"
        );
    }
    // Consuming and publishing connections were both re-established each time.
    assert!(
        proxy.accepted() >= before + 3,
        "only {} reconnections",
        proxy.accepted() - before
    );
}

#[test]
fn a_call_in_flight_during_a_cut_is_answered_once() {
    let mut cleanup = Cleanup::new();
    let proxy = FaultProxy::start(&upstream());
    let name = unique("rel_inflight");
    let calls = Arc::new(AtomicUsize::new(0));
    let _service = start(
        service(&name, calls.clone()),
        config_via(&proxy),
        &mut cleanup,
    );
    let cluster = client(&support::config(), &mut cleanup);

    let pending = cluster
        .call_async(&name, "sleep", (300u64,))
        .expect("request sent");
    assert!(support::eventually(Duration::from_secs(10), || calls
        .load(Ordering::SeqCst)
        == 1));
    proxy.cut();
    // The ack could not reach the broker, so the request is redelivered and may run again;
    // the caller sees exactly one answer either way, the duplicate is dropped.
    let reply: u64 = pending
        .wait_timeout(Duration::from_secs(15))
        .expect("the call is answered despite the cut");
    assert_eq!(reply, 300);
    let runs = calls.load(Ordering::SeqCst);
    assert!((1..=2).contains(&runs), "ran {runs} times");
    assert!(until_served(&cluster, &name) < RECOVERY);
}

#[test]
fn a_waiting_caller_gets_its_reply_across_a_reconnect() {
    let calls = Arc::new(AtomicUsize::new(0));
    let setup = BehindProxy::start("rel_waiting", calls.clone());
    let (name, proxy, cluster) = (&setup.name, &setup.proxy, &setup.cluster);

    let pending = cluster
        .call_async(name, "sleep", (1_000u64,))
        .expect("request sent");
    // Cut while the service works on it, so the caller is waiting when its connection goes.
    assert!(support::eventually(WAIT, || calls.load(Ordering::SeqCst) == 1));
    proxy.cut();
    // The reply lands in the durable reply queue while the client is away; the waiting caller
    // re-establishes the consumer and gets it.
    let reply: u64 = pending
        .wait_timeout(Duration::from_secs(15))
        .expect("the reply survives the reconnect");
    assert_eq!(reply, 1_000);
    assert_eq!(
        cluster
            .call_timeout::<i64>(name, "add", (2, 2), Duration::from_secs(10))
            .expect("the client keeps working"),
        4
    );
}

#[test]
fn a_waiting_caller_is_not_held_past_its_timeout_while_the_broker_is_away() {
    let setup = BehindProxy::start("rel_away", Arc::default());
    let (name, proxy, cluster) = (&setup.name, &setup.proxy, &setup.cluster);

    let pending = cluster
        .call_async(name, "sleep", (500u64,))
        .expect("request sent");
    proxy.refuse(true);
    proxy.cut();
    let started = Instant::now();
    let error = pending
        .wait_timeout::<u64>(Duration::from_secs(2))
        .expect_err("no reply can arrive while the broker is unreachable");
    assert!(error.is_timeout(), "expected a timeout, got {error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "held for {:?}",
        started.elapsed()
    );
    let error = cluster
        .call_timeout::<i64>(name, "add", (1, 2), Duration::from_secs(2))
        .expect_err("cannot call while the broker is unreachable");
    assert!(
        matches!(error.kind(), ErrorKind::Broker(_)),
        "expected a broker error, got {error:?}"
    );
    proxy.refuse(false);
    assert_eq!(
        cluster
            .call_timeout::<i64>(name, "add", (3, 4), Duration::from_secs(10))
            .expect("the client reconnects once the broker is back"),
        7
    );
}

#[test]
fn an_idle_client_reconnects_before_its_next_call() {
    let setup = BehindProxy::start("rel_idle_client", Arc::default());
    let (name, proxy, cluster) = (&setup.name, &setup.proxy, &setup.cluster);

    for round in 0..3 {
        proxy.cut();
        // Nobody was waiting when the connection went: the first call after it must not
        // be the one that finds out.
        let sum = cluster
            .call_timeout::<i64>(name, "add", (round, 1), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("round {round}: the first call after a cut failed: {e}"));
        assert_eq!(sum, round + 1);
    }
}

#[test]
fn a_stalled_broker_does_not_hold_a_caller_past_its_timeout() {
    let setup = BehindProxy::start("rel_stall", Arc::default());
    let (name, proxy, cluster) = (&setup.name, &setup.proxy, &setup.cluster);

    proxy.stall();
    let started = Instant::now();
    let error = cluster
        .call_timeout::<i64>(name, "add", (1, 2), Duration::from_millis(500))
        .expect_err("nothing gets through a stalled connection");
    assert!(error.is_timeout(), "expected a timeout, got {error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "held for {:?}",
        started.elapsed()
    );
    proxy.resume();
    assert_eq!(
        cluster
            .call_timeout::<i64>(name, "add", (5, 5), Duration::from_secs(10))
            .expect("calls work again once the peer resumes"),
        10
    );
}

#[test]
fn stopping_under_load_loses_no_call() {
    let mut cleanup = Cleanup::new();
    let name = unique("rel_stop_load");
    let calls = Arc::new(AtomicUsize::new(0));
    let config = support::config().max_workers(4);
    let mut first = start(service(&name, calls.clone()), config.clone(), &mut cleanup);
    let cluster = client(&support::config(), &mut cleanup);

    let pending: Vec<_> = (0..64u64)
        .map(|i| {
            cluster
                .call_async(&name, "sleep", (20 + i % 5,))
                .expect("request sent")
        })
        .collect();
    assert!(support::eventually(Duration::from_secs(10), || calls
        .load(Ordering::SeqCst)
        >= 8));
    first.stop();
    let done_by_first = calls.load(Ordering::SeqCst);
    assert!(
        done_by_first < 64,
        "the stop came too late to test anything"
    );
    // What the first instance did not take stays queued for the next one.
    let _second = start(service(&name, calls.clone()), config, &mut cleanup);
    for (i, call) in pending.into_iter().enumerate() {
        let reply: Value = call
            .wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("call {i} lost: {e}"));
        assert_eq!(reply, Value::from(20 + i as u64 % 5));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        64,
        "each call ran exactly once"
    );
}

#[test]
fn a_stop_past_its_deadline_leaves_the_work_for_redelivery() {
    let mut cleanup = Cleanup::new();
    let name = unique("rel_deadline");
    let started = Arc::new(AtomicUsize::new(0));
    let seen = started.clone();
    let slow = Service::new(&name).rpc("work", move |_ctx, ()| {
        seen.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(3));
        Ok("slow instance")
    });
    let config = support::config().stop_timeout(Duration::from_millis(300));
    let mut first = start(slow, config, &mut cleanup);
    let cluster = client(&support::config(), &mut cleanup);

    let pending = cluster.call_async(&name, "work", ()).expect("request sent");
    assert!(support::eventually(Duration::from_secs(10), || started
        .load(Ordering::SeqCst)
        == 1));
    let stopping = Instant::now();
    first.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "the stop waited {:?} despite a 300 ms deadline",
        stopping.elapsed()
    );
    // The abandoned request was not acked: the next instance gets it.
    let fast = Service::new(&name).rpc("work", |_ctx, ()| Ok("next instance"));
    let _second = start(fast, support::config(), &mut cleanup);
    let reply: String = pending
        .wait_timeout(Duration::from_secs(10))
        .expect("the request is redelivered and answered");
    assert_eq!(reply, "next instance");
}

#[test]
fn a_blocked_connection_pauses_publishing_without_duplicates() {
    let mut cleanup = Cleanup::new();
    let name = unique("rel_blocked");
    let handled = Arc::new(AtomicUsize::new(0));
    let seen = handled.clone();
    let service = Service::new(&name).rpc("add", move |_ctx, (a, b): (i64, i64)| {
        seen.fetch_add(1, Ordering::SeqCst);
        Ok(a + b)
    });
    // One worker, so requests are handled in the order they were published.
    let _service = start(service, support::config().max_workers(1), &mut cleanup);
    let proxy = FaultProxy::start(&upstream());
    // A confirm timeout far shorter than the block: a publisher that gave up on it would
    // publish again, and the request would run twice.
    let config = config_via(&proxy).confirm_timeout(Duration::from_millis(300));
    let cluster = Arc::new(client(&config, &mut cleanup));
    assert_eq!(cluster.call::<i64>(&name, "add", (1, 2)).expect("warm"), 3);
    // Connection 0 consumes replies (opened with the client), 1 publishes (first call).
    assert_eq!(proxy.accepted(), 2);

    proxy.block(1, "low on memory");
    let blocked_at = Instant::now();
    let caller = {
        let (cluster, name) = (cluster.clone(), name.clone());
        // No deadline of its own: only the confirm timeout bounds its publish.
        std::thread::spawn(move || {
            cluster
                .call_async(&name, "add", (20, 22))
                .and_then(|pending| pending.wait_timeout::<i64>(WAIT))
        })
    };
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "a request got through the block"
    );
    proxy.unblock(1);
    let sum = caller
        .join()
        .expect("caller thread")
        .expect("answered once unblocked");
    assert_eq!(sum, 42);
    assert!(blocked_at.elapsed() >= Duration::from_millis(1_000));
    assert_eq!(cluster.call::<i64>(&name, "add", (2, 3)).expect("after"), 5);
    assert_eq!(
        handled.load(Ordering::SeqCst),
        3,
        "the blocked request was published more than once"
    );
}

#[test]
fn a_nacked_publish_is_an_error_the_caller_sees() {
    let mut cleanup = Cleanup::new();
    let name = unique("rel_nack");
    // A queue that rejects every publish routed to it: the broker nacks the request.
    let queue = format!("rpc-{name}");
    cleanup.queue(queue.clone());
    {
        use amiquip::{AmqpValue, FieldTable, QueueDeclareOptions};
        let mut connection = support::raw_connection();
        let channel = connection.open_channel(None).expect("channel");
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-length".into(), AmqpValue::LongInt(0));
        arguments.insert(
            "x-overflow".into(),
            AmqpValue::LongString("reject-publish".into()),
        );
        channel
            .queue_declare(
                queue.clone(),
                QueueDeclareOptions {
                    durable: true,
                    arguments,
                    ..QueueDeclareOptions::default()
                },
            )
            .expect("declare the rejecting queue");
        channel
            .queue_bind(
                queue.clone(),
                "nameko-rpc",
                format!("{name}.*"),
                FieldTable::default(),
            )
            .expect("bind it");
        let _ = connection.close();
    }
    let cluster = client(&support::config(), &mut cleanup);
    let error = cluster
        .call_timeout::<i64>(&name, "add", (1, 2), Duration::from_secs(10))
        .expect_err("the broker refused the request");
    match error.kind() {
        ErrorKind::Broker(message) => assert!(message.contains("nack"), "{message}"),
        other => panic!("expected a broker error, got {other:?}"),
    }
}

#[test]
fn heartbeats_keep_the_connection_while_every_worker_is_busy() {
    let mut cleanup = Cleanup::new();
    let proxy = FaultProxy::start(&upstream());
    let name = unique("rel_heartbeat");
    let calls = Arc::new(AtomicUsize::new(0));
    // Heartbeat 1 s: the broker drops a connection after two missed ones. Nameko #428: a
    // saturated pool starved heartbeats and the broker redelivered work in progress.
    let config = config_via(&proxy).heartbeat(1).max_workers(2);
    let _service = start(service(&name, calls.clone()), config, &mut cleanup);
    let cluster = client(&support::config(), &mut cleanup);
    assert_eq!(cluster.call::<i64>(&name, "add", (1, 2)).expect("warm"), 3);
    let before = proxy.accepted();

    let busy: Vec<_> = (0..4)
        .map(|_| {
            cluster
                .call_async(&name, "sleep", (2_000u64,))
                .expect("sent")
        })
        .collect();
    for call in busy {
        let slept: u64 = call
            .wait_timeout(Duration::from_secs(20))
            .expect("answered");
        assert_eq!(slept, 2_000);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "work was redelivered: the connection dropped while the pool was busy"
    );
    assert_eq!(proxy.accepted(), before, "the service had to reconnect");
}

#[test]
fn a_stop_during_a_reconnect_returns_promptly() {
    let mut cleanup = Cleanup::new();
    let proxy = FaultProxy::start(&upstream());
    let name = unique("rel_stop_reconnect");
    let mut service = start(
        service(&name, Arc::default()),
        config_via(&proxy),
        &mut cleanup,
    );
    let cluster = client(&support::config(), &mut cleanup);
    assert_eq!(cluster.call::<i64>(&name, "add", (1, 2)).expect("warm"), 3);

    proxy.refuse(true);
    proxy.cut();
    // Stop only once it is retrying: two reconnection attempts refused.
    assert!(support::eventually(WAIT, || proxy.refused() >= 2));
    let stopping = Instant::now();
    service.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "stop took {:?} while reconnecting",
        stopping.elapsed()
    );
    assert!(!service.is_running());
}

#[test]
fn a_message_with_a_deeply_nested_header_does_not_kill_the_service() {
    use amiquip::{AmqpValue, FieldTable};
    let mut cleanup = Cleanup::new();
    let name = unique("rel_deep_header");
    let calls = Arc::new(AtomicUsize::new(0));
    let _service = start(service(&name, calls), support::config(), &mut cleanup);
    let raw = support::RawClient::new(&mut cleanup);
    // 5,000 nested arrays (~25 KB of header): recursed level by level, as amiquip's frame
    // parser did, it overflowed the I/O thread's stack and aborted the process.
    let mut value = AmqpValue::Boolean(true);
    for _ in 0..5_000 {
        value = AmqpValue::FieldArray(vec![value]);
    }
    let mut headers = FieldTable::default();
    headers.insert("deep".into(), value);
    let properties = raw.request_properties("deep-1").with_headers(headers);
    // Encoding recurses too: publish from a thread with room, on a connection of its own.
    let routing_key = format!("{name}.add");
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let mut connection = support::raw_connection();
            let channel = connection.open_channel(None).expect("channel");
            channel
                .basic_publish(
                    "nameko-rpc",
                    amiquip::Publish::with_properties(
                        br#"{"args": [2, 3], "kwargs": {}}"#,
                        routing_key,
                        properties,
                    ),
                )
                .expect("publish");
            let _ = connection.close();
        })
        .expect("publishing thread")
        .join()
        .expect("published");
    let reply = raw.reply(WAIT).expect("the poisoned request is answered");
    assert_eq!(reply.properties.correlation_id().as_deref(), Some("deep-1"));
    let body: Value = serde_json::from_slice(&reply.body).expect("json reply");
    assert_eq!(body, serde_json::json!({"result": 5, "error": null}));
    let cluster = client(&support::config(), &mut cleanup);
    assert_eq!(
        cluster
            .call::<i64>(&name, "add", (1, 2))
            .expect("still serving"),
        3
    );
}
