//! Self-description and discovery: every container answers with exactly what its service
//! declares, on RabbitMQ and on the in-process broker; the shop example's graph has the
//! expected edges; `enoki describe` and `enoki graph` print them.

mod support;

#[path = "../examples/shop/services.rs"]
#[allow(dead_code)] // the tests use the services, not every helper type
mod shop;

use enoki::describe::{Description, EdgeKind, Graph, NodeKind, discover};
use enoki::{Config, EventDispatcher, EventHandler, HandlerType, RpcProxy, Runner, Service, Timer};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;
use support::{Cleanup, Exchanges, unique};

const WAIT: Duration = Duration::from_secs(3);

/// Three services that declare one of everything, named after `prefix`.
fn services(prefix: &str) -> (String, String, String, Vec<Service>) {
    let (a, b, c) = (
        format!("{prefix}_a"),
        format!("{prefix}_b"),
        format!("{prefix}_c"),
    );
    let front = Service::new(&a)
        .version("2.1.0")
        .dependency("backend", RpcProxy::new(&b))
        .dependency("legacy", RpcProxy::new("legacy_python"))
        .dependency("events", EventDispatcher::new().declares(["made"]))
        .rpc("make", |ctx, (n,): (i64,)| {
            let events = ctx.dependency::<EventDispatcher>("events")?;
            events.dispatch("made", &n)?;
            events.dispatch("surprise", &n)?;
            Ok(n)
        })
        .rpc("ping", |_ctx, _: enoki::Args| Ok("pong"));
    let back = Service::new(&b)
        .rpc("store", |_ctx, (n,): (i64,)| Ok(n))
        .event_handler(&a, "made", |_ctx, _n: i64| Ok(()))
        .event_handler_with(
            EventHandler::new(&a, "made")
                .name("audit")
                .handler_type(HandlerType::Broadcast)
                .reliable_delivery(false),
            |_ctx, _n: i64| Ok(()),
        );
    let ticker = Service::new(&c)
        .timer_with(
            Timer::new(Duration::from_secs(3600)).name("hourly"),
            |_ctx| Ok(()),
        )
        .http(
            "GET,POST",
            "/tick/<int:n>",
            |_ctx, _req: &enoki::http::Request| Ok("tick"),
        );
    (a, b, c, vec![front, back, ticker])
}

fn find<'a>(found: &'a [Description], service: &str) -> Vec<&'a Description> {
    found.iter().filter(|d| d.service == service).collect()
}

fn entrypoints(d: &Description) -> Vec<Value> {
    d.entrypoints
        .iter()
        .map(|e| serde_json::to_value(e).expect("serializes"))
        .collect()
}

fn check_descriptions(config: &Config, prefix: &str) {
    let (a, b, c, declared) = services(prefix);
    let mut runner = declared
        .into_iter()
        .fold(Runner::new(config.clone()), Runner::service);
    runner.start().expect("services start");

    let found = discover(config, WAIT).expect("discovery");
    let (fa, fb, fc) = (find(&found, &a), find(&found, &b), find(&found, &c));
    assert_eq!((fa.len(), fb.len(), fc.len()), (1, 1, 1), "{found:#?}");
    let (fa, fb, fc) = (fa[0], fb[0], fc[0]);

    assert_eq!(fa.version.as_deref(), Some("2.1.0"));
    assert_eq!(fb.version, None);
    for d in [fa, fb, fc] {
        assert_eq!(d.pid, std::process::id());
        assert!(!d.host.is_empty());
        assert_eq!(d.instance.len(), 32);
        assert_eq!(d.metrics, None, "metrics are off by default");
    }
    assert_eq!(
        entrypoints(fa),
        [
            json!({"kind": "rpc", "name": "make"}),
            json!({"kind": "rpc", "name": "ping"})
        ]
    );
    assert_eq!(fa.calls, [b.clone(), "legacy_python".to_owned()]);
    assert_eq!(fa.dispatches, ["made"]);
    let deps: Vec<(&str, &str)> = fa
        .dependencies
        .iter()
        .map(|d| (d.name.as_str(), d.kind.as_str()))
        .collect();
    assert_eq!(
        deps,
        [
            ("backend", "enoki::proxy::RpcProxy"),
            ("legacy", "enoki::proxy::RpcProxy"),
            ("events", "enoki::events::EventDispatcher"),
        ]
    );
    assert_eq!(
        entrypoints(fb),
        [
            json!({"kind": "rpc", "name": "store"}),
            json!({"kind": "event_handler", "name": "handle_made", "source": a,
                   "event_type": "made", "handler_type": "service_pool"}),
            json!({"kind": "event_handler", "name": "audit", "source": a,
                   "event_type": "made", "handler_type": "broadcast"}),
        ]
    );
    assert!(fb.calls.is_empty() && fb.dispatches.is_empty() && fb.dependencies.is_empty());
    assert_eq!(
        entrypoints(fc),
        [
            json!({"kind": "timer", "name": "hourly", "interval": 3600.0, "eager": false}),
            json!({"kind": "http", "name": "GET,POST /tick/<int:n>",
                "methods": ["GET", "POST", "HEAD"], "rule": "/tick/<int:n>"}),
        ]
    );

    // Types dispatched without being declared show up once sent.
    let cluster = enoki::ClusterRpcProxy::new(config).expect("client");
    let made: i64 = cluster.call(&a, "make", (5,)).expect("make");
    assert_eq!(made, 5);
    let found = discover(config, WAIT).expect("discovery");
    assert_eq!(find(&found, &a)[0].dispatches, ["made", "surprise"]);

    // A second instance answers too, with its own instance id.
    let (_, _, _, again) = services(prefix);
    let mut second = Runner::new(config.clone()).service(again.into_iter().next().expect("a"));
    second.start().expect("second instance");
    let found = discover(config, WAIT).expect("discovery");
    let instances: BTreeSet<&str> = find(&found, &a)
        .iter()
        .map(|d| d.instance.as_str())
        .collect();
    assert_eq!(instances.len(), 2);
    second.stop();
    runner.stop();
    cluster.close();
    // Stopped containers answer no more.
    let found = discover(config, Duration::from_millis(700)).expect("discovery");
    assert!(find(&found, &a).is_empty(), "{found:#?}");
}

#[test]
fn every_container_describes_exactly_what_it_declares_on_memory() {
    let config = Config::new()
        .amqp_uri(support::memory_uri())
        .web_server_address("127.0.0.1:0");
    check_descriptions(&config, &unique("desc"));
}

#[test]
fn every_container_describes_exactly_what_it_declares_on_rabbitmq() {
    let prefix = unique("desc");
    let mut cleanup = Cleanup::new();
    for s in ["a", "b", "c"] {
        cleanup.service(&format!("{prefix}_{s}"));
    }
    cleanup.queue(format!("evt-{prefix}_a-made--{prefix}_b.handle_made"));
    // A private RPC exchange: answers go back on it, so other tests' containers stay out.
    let rpcx = unique("rpcx");
    let _exchanges = Exchanges(vec![rpcx.clone(), format!("{prefix}_a.events")]);
    let config = support::config()
        .rpc_exchange(rpcx)
        .web_server_address("127.0.0.1:0");
    check_descriptions(&config, &prefix);
}

fn shop_edges() -> BTreeSet<(String, String, EdgeKind, Option<String>)> {
    let rpc = |from: &str, to: &str| (from.to_owned(), to.to_owned(), EdgeKind::Rpc, None);
    let event = |from: &str, to: &str, t: &str| {
        (
            from.to_owned(),
            to.to_owned(),
            EdgeKind::Event,
            Some(t.to_owned()),
        )
    };
    [
        rpc("gateway", "orders"),
        rpc("orders", "payments"),
        rpc("payments", "fraud"),
        event("orders", "notifications", "order_placed"),
        event("payments", "notifications", "payment_succeeded"),
        event("payments", "orders", "payment_succeeded"),
    ]
    .into_iter()
    .collect()
}

#[test]
fn the_shop_graph_has_the_expected_edges() {
    let config = Config::new().amqp_uri(support::memory_uri());
    let mut runner = shop::all()
        .into_iter()
        .fold(Runner::new(config.clone()), Runner::service);
    runner.start().expect("the shop starts");

    // The shop works: a checkout goes through orders and payments, and notifications hears it.
    let cluster = enoki::ClusterRpcProxy::new(&config).expect("client");
    let items = json!([{"sku": "tea", "quantity": 2, "price_cents": 450}]);
    let placed: Value = cluster
        .call("gateway", "checkout", ("ada", items))
        .expect("checkout");
    assert_eq!(placed, json!({"order": 1, "status": "placed"}));
    assert!(support::eventually(WAIT, || {
        cluster
            .call::<Vec<String>>("notifications", "sent", ())
            .is_ok_and(|sent| sent.len() == 2)
    }));

    let graph = Graph::new(&discover(&config, WAIT).expect("discovery"));
    runner.stop();
    let edges: BTreeSet<_> = graph
        .edges
        .iter()
        .map(|e| (e.from.clone(), e.to.clone(), e.kind, e.event_type.clone()))
        .collect();
    assert_eq!(edges, shop_edges());
    let nodes: Vec<(&str, NodeKind)> = graph
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.kind))
        .collect();
    assert_eq!(
        nodes,
        [
            ("fraud", NodeKind::Nameko),
            ("gateway", NodeKind::Enoki),
            ("notifications", NodeKind::Enoki),
            ("orders", NodeKind::Enoki),
            ("payments", NodeKind::Enoki),
        ]
    );
    let dot = graph.dot();
    assert!(
        dot.contains("\"gateway\" -> \"orders\" [label=\"rpc\"];"),
        "{dot}"
    );
    assert!(dot.contains("\"fraud\" [label=\"fraud\\n(Python Nameko / not discovered)\""));
    let mermaid = graph.mermaid();
    assert!(mermaid.starts_with("flowchart LR\n"));
    assert_eq!(mermaid.matches("-->|rpc|").count(), 3);
    assert_eq!(mermaid.matches("-.->|\"event: ").count(), 3);
}

fn enoki(config: &Config, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_enoki"))
        .args(args)
        .env("AMQP_URI", config.uri())
        .env("RPC_EXCHANGE", config.exchange())
        .env_remove("ENOKI_CONFIG")
        .output()
        .expect("runs enoki")
}

#[test]
fn enoki_describe_and_graph_list_running_services() {
    let prefix = unique("cli");
    let mut cleanup = Cleanup::new();
    for s in ["a", "b", "c"] {
        cleanup.service(&format!("{prefix}_{s}"));
    }
    cleanup.queue(format!("evt-{prefix}_a-made--{prefix}_b.handle_made"));
    let rpcx = unique("rpcx");
    let _exchanges = Exchanges(vec![rpcx.clone(), format!("{prefix}_a.events")]);
    let config = support::config()
        .rpc_exchange(rpcx)
        .web_server_address("127.0.0.1:0");
    let (a, b, c, services) = services(&prefix);
    let mut runner = services
        .into_iter()
        .fold(Runner::new(config.clone()), Runner::service);
    runner.start().expect("services start");

    let out = enoki(&config, &["describe", "--timeout", "3"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        text.contains(&format!("{a} 2.1.0 (1 instance)\n")),
        "{text}"
    );
    assert!(text.contains("  rpc make\n  rpc ping\n"), "{text}");
    assert!(
        text.contains(&format!("  calls {b}, legacy_python\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("  event {a}.made (broadcast)\n")),
        "{text}"
    );
    assert!(text.contains("  timer hourly every 3600s\n"), "{text}");

    let out = enoki(&config, &["describe", "--json", "--timeout", "3"]);
    let found: Vec<Description> = serde_json::from_slice(&out.stdout).expect("describe --json");
    let names: BTreeSet<&str> = found.iter().map(|d| d.service.as_str()).collect();
    assert_eq!(
        names,
        [a.as_str(), b.as_str(), c.as_str()].into_iter().collect()
    );

    let out = enoki(&config, &["graph", "--timeout", "3"]);
    let dot = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        dot.contains(&format!("\"{a}\" -> \"{b}\" [label=\"rpc\"];")),
        "{dot}"
    );
    assert!(
        dot.contains(&format!("\"{a}\" -> \"{b}\" [label=\"event: made\"")),
        "{dot}"
    );
    assert!(
        dot.contains("\"legacy_python\" [label=\"legacy_python\\n(Python Nameko"),
        "{dot}"
    );

    let out = enoki(&config, &["graph", "--mermaid", "--timeout", "3"]);
    let mermaid = String::from_utf8(out.stdout).expect("utf-8");
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");

    let out = enoki(&config, &["graph", "--json", "--timeout", "3"]);
    let graph: Graph = serde_json::from_slice(&out.stdout).expect("graph --json");
    assert_eq!(graph.edges.len(), 3, "{graph:#?}");

    // --svg with no Graphviz says so.
    let out = Command::new(env!("CARGO_BIN_EXE_enoki"))
        .args(["graph", "--svg", "/tmp/never.svg", "--timeout", "0.2"])
        .env("AMQP_URI", config.uri())
        .env("ENOKI_DOT", "/nonexistent/dot")
        .output()
        .expect("runs enoki");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not installed (apt-get install graphviz)"),
        "{err}"
    );

    let dot_installed = Command::new("dot").arg("-V").output().is_ok();
    if dot_installed {
        let svg = std::env::temp_dir().join(format!("{prefix}.svg"));
        let out = enoki(
            &config,
            &[
                "graph",
                "--svg",
                svg.to_str().expect("path"),
                "--timeout",
                "3",
            ],
        );
        assert!(out.status.success(), "{out:?}");
        let drawn = std::fs::read_to_string(&svg).expect("svg written");
        assert!(drawn.contains("<svg") && drawn.contains(&a), "{drawn}");
        let _ = std::fs::remove_file(svg);
    }
    runner.stop();
}
