//! Metrics and health: counts match the calls made, Prometheus text and `describe` agree, and
//! health follows the broker connection when it is cut through a loopback proxy.

mod support;

use enoki::describe::discover;
use enoki::{ClusterRpcProxy, Config, Container, RemoteError, Service, StandaloneDispatcher};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use support::proxy::FaultProxy;
use support::{Cleanup, unique};

const WAIT: Duration = Duration::from_secs(10);

/// `GET path` on `addr`: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("metrics server reachable");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn served(config: Config) -> Config {
    config
        .set("METRICS_ADDRESS", "127.0.0.1:0".into())
        .expect("any key")
}

fn counting_service(name: &str, source: &str) -> Service {
    Service::new(name)
        .rpc("ok", |_ctx, (n,): (i64,)| Ok(n))
        .rpc("fail", |_ctx, _: enoki::Args| -> enoki::Result<()> {
            Err(RemoteError::new("ValueError", "no").into())
        })
        .rpc("panic", |_ctx, _: enoki::Args| -> enoki::Result<()> {
            panic!("boom")
        })
        .event_handler(source, "tick", |_ctx, _n: i64| Ok(()))
}

#[test]
fn metrics_are_off_by_default() {
    let config = Config::new().amqp_uri(support::memory_uri());
    let mut container = Container::new(counting_service(&unique("m"), "src"), config.clone());
    container.start().expect("starts");
    assert_eq!(container.metrics_address(), None);
    let found = discover(&config, Duration::from_secs(2)).expect("discovery");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].metrics, None);
}

#[test]
fn counts_match_the_calls_made() {
    let (name, source) = (unique("m"), unique("msrc"));
    let config = served(Config::new().amqp_uri(support::memory_uri()));
    let mut container = Container::new(counting_service(&name, &source), config.clone());
    container.start().expect("starts");
    let addr = container.metrics_address().expect("served");

    let cluster = ClusterRpcProxy::new(&config).expect("client");
    for n in 0..7 {
        assert_eq!(cluster.call::<i64>(&name, "ok", (n,)).expect("ok"), n);
    }
    for _ in 0..3 {
        assert!(cluster.call::<Value>(&name, "fail", ()).is_err());
    }
    assert!(cluster.call::<Value>(&name, "panic", ()).is_err());
    let dispatcher = StandaloneDispatcher::new(&config).expect("dispatcher");
    for n in 0..4 {
        dispatcher
            .dispatch(&source, "tick", &n)
            .expect("dispatched");
    }
    let line = |entrypoint: &str, kind: &str| {
        format!("service=\"{name}\",entrypoint=\"{entrypoint}\",kind=\"{kind}\"}}")
    };
    // Event handlers run after the dispatch returns: wait for the last one.
    let events_done = line("handle_tick", "event_handler");
    assert!(support::eventually(WAIT, || {
        get(addr, "/metrics")
            .1
            .contains(&format!("enoki_calls_total{{{events_done} 4\n"))
    }));

    let (status, text) = get(addr, "/metrics");
    assert_eq!(status, 200);
    for (metric, entrypoint, kind, value) in [
        ("enoki_calls_total", "ok", "rpc", 7),
        ("enoki_errors_total", "ok", "rpc", 0),
        ("enoki_calls_total", "fail", "rpc", 3),
        ("enoki_errors_total", "fail", "rpc", 3),
        ("enoki_calls_total", "panic", "rpc", 1),
        ("enoki_errors_total", "panic", "rpc", 1),
        ("enoki_calls_total", "handle_tick", "event_handler", 4),
        ("enoki_errors_total", "handle_tick", "event_handler", 0),
        ("enoki_handler_duration_seconds_count", "ok", "rpc", 7),
    ] {
        let expected = format!("{metric}{{{} {value}\n", line(entrypoint, kind));
        assert!(text.contains(&expected), "missing `{expected}` in\n{text}");
    }
    assert!(text.contains(&format!("enoki_workers_max{{service=\"{name}\"}} 10\n")));
    assert!(text.contains(&format!("enoki_reconnects_total{{service=\"{name}\"}} 0\n")));
    assert!(text.contains(&format!("enoki_ready{{service=\"{name}\"}} 1\n")));
    assert!(text.contains(&format!(
        "enoki_handler_duration_seconds{{{},quantile=\"0.99\"}} ",
        line("ok", "rpc").trim_end_matches('}')
    )));

    // The same numbers as a describe field.
    let found = discover(&config, Duration::from_secs(2)).expect("discovery");
    let metrics = found[0].metrics.as_ref().expect("metrics on");
    assert_eq!(metrics["entrypoints"]["ok"]["calls"], 7);
    assert_eq!(metrics["entrypoints"]["fail"]["errors"], 3);
    assert_eq!(metrics["entrypoints"]["handle_tick"]["calls"], 4);
    assert!(
        metrics["entrypoints"]["ok"]["p50"]
            .as_f64()
            .is_some_and(|p| p > 0.0)
    );
    assert_eq!(metrics["max_workers"], 10);
    assert_eq!(metrics["ready"], true);

    assert_eq!(
        get(addr, "/health"),
        (
            200,
            format!("{{\"ready\":true,\"services\":{{\"{name}\":true}}}}")
        )
    );
    assert_eq!(get(addr, "/nope").0, 404);
    container.stop();
    assert!(
        TcpStream::connect(addr).is_err(),
        "the server stops with its last container"
    );
}

#[test]
fn health_is_not_ready_while_the_broker_connection_is_cut() {
    let name = unique("health");
    let mut cleanup = Cleanup::new();
    cleanup.service(&name);
    let upstream = enoki::AmqpUri::parse(&support::amqp_uri())
        .expect("test URI")
        .addr();
    let proxy = FaultProxy::start(&upstream);
    let config = served(support::config().amqp_uri(proxy.uri(&support::amqp_uri())));
    let service = Service::new(&name).rpc("ok", |_ctx, (n,): (i64,)| Ok(n));
    let mut container = Container::new(service, config);
    container.start().expect("starts");
    let addr = container.metrics_address().expect("served");
    assert_eq!(get(addr, "/health").0, 200);

    proxy.refuse(true);
    proxy.cut();
    assert!(
        support::eventually(WAIT, || get(addr, "/health").0 == 503),
        "health stayed ready with the broker unreachable"
    );
    let (_, body) = get(addr, "/health");
    assert_eq!(
        body,
        format!("{{\"ready\":false,\"services\":{{\"{name}\":false}}}}")
    );
    assert!(
        get(addr, "/metrics")
            .1
            .contains(&format!("enoki_ready{{service=\"{name}\"}} 0\n"))
    );

    proxy.refuse(false);
    assert!(
        support::eventually(Duration::from_secs(20), || get(addr, "/health").0 == 200),
        "health did not come back with the broker"
    );
    let text = get(addr, "/metrics").1;
    assert!(
        text.contains(&format!("enoki_reconnects_total{{service=\"{name}\"}} 1\n")),
        "{text}"
    );
    container.stop();
}
