//! Self-description and discovery: every running container says what it is, and `enoki
//! describe` / `enoki graph` draw the system from the answers.
//!
//! Each container binds an exclusive, auto-delete queue (`enoki.discovery-<service>-<uuid>`) to
//! the fanout exchange `enoki.discovery`. [`discover`] publishes one request there with a
//! `reply_to`, and every container answers it as an RPC reply (on the RPC exchange, routed by
//! `reply_to`, with the request's `correlation_id`) with its [`Description`]: name, version,
//! entrypoints, the services it calls through [`RpcProxy`], the events it
//! dispatches, host, process id and, when metrics are on, its numbers. No management plugin is
//! needed, and Python Nameko services sharing the broker never see the exchange.
//!
//! A request is answered by one of the container's workers, like any other delivery: an
//! instance whose every worker stays busy past the timeout is missing from the answers. Answers
//! travel on the RPC exchange, so a client sees the containers that share its `rpc_exchange`.
//!
//! ```no_run
//! use enoki::Config;
//! use enoki::describe::{Graph, discover};
//! use std::time::Duration;
//!
//! # fn main() -> enoki::Result<()> {
//! let found = discover(&Config::from_env()?, Duration::from_secs(2))?;
//! for d in &found {
//!     println!("{} {} on {} (pid {})", d.service, d.instance, d.host, d.pid);
//! }
//! println!("{}", Graph::new(&found).dot());
//! # Ok(())
//! # }
//! ```

use crate::container::{DeliveryHandler, Runtime, Worker};
use crate::events::EventDispatcher;
use crate::proxy::RpcProxy;
use crate::rpc::{JSON, UTF8, decode_reply, encode_reply};
use crate::service::Service;
use crate::transport::{
    Delivery, ExchangeKind, ExchangeSpec, Headers, Outgoing, Properties, QueueSpec, Wait,
};
use crate::{Config, Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The fanout exchange discovery requests go to.
pub const EXCHANGE: &str = "enoki.discovery";

/// How long [`discover`] keeps listening after the last answer before it concludes every
/// instance has answered.
const QUIET: Duration = Duration::from_millis(500);

impl Service {
    /// The service's version, reported by discovery (`enoki describe`). Default: none.
    pub fn version(mut self, version: impl Into<String>) -> Service {
        self.version = Some(version.into());
        self
    }
}

/// One running instance of a service, as it describes itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// The service's name.
    pub service: String,
    /// Its version, if the service set one.
    #[serde(default)]
    pub version: Option<String>,
    /// This instance's id (fresh at each container start).
    pub instance: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The enoki version it runs on.
    #[serde(default)]
    pub enoki: String,
    /// Its entrypoints: RPC methods first, then the others in the order they were added.
    pub entrypoints: Vec<Entrypoint>,
    /// The services it calls through [`RpcProxy`].
    #[serde(default)]
    pub calls: Vec<String>,
    /// The event types it dispatches (declared ones, and any others dispatched so far).
    #[serde(default)]
    pub dispatches: Vec<String>,
    /// Every dependency, by name and Rust type.
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
    /// Its metrics, when they are on (see [`metrics`](crate::metrics)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Value>,
}

/// One entrypoint of a [`Description`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entrypoint {
    /// `rpc`, `event_handler`, `timer`, `consume`, `http`.
    pub kind: String,
    /// The method or handler name.
    pub name: String,
    /// The kind's options: `source`, `event_type` and `handler_type` of an event handler,
    /// `interval` (seconds) and `eager` of a timer, `queue` of a consumer.
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

impl Entrypoint {
    /// One line for people: `rpc place`, `event orders.order_placed (broadcast)`,
    /// `timer report every 60s`.
    pub fn summary(&self) -> String {
        match self.kind.as_str() {
            "event_handler" => {
                let mut line = format!(
                    "event {}.{}",
                    self.detail("source").unwrap_or("?"),
                    self.detail("event_type").unwrap_or("?")
                );
                if let Some(t) = self.detail("handler_type").filter(|t| *t != "service_pool") {
                    let _ = write!(line, " ({t})");
                }
                line
            }
            "timer" => match self.details.get("interval").and_then(Value::as_f64) {
                Some(secs) => format!("timer {} every {secs}s", self.name),
                None => format!("timer {}", self.name),
            },
            "consume" => match self.detail("queue") {
                Some(queue) => format!("consume {} from {queue}", self.name),
                None => format!("consume {}", self.name),
            },
            kind => format!("{kind} {}", self.name),
        }
    }

    /// A detail as a string, if present.
    pub fn detail(&self, key: &str) -> Option<&str> {
        self.details.get(key).and_then(Value::as_str)
    }
}

/// One dependency of a [`Description`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dependency {
    /// The name handlers look it up by.
    pub name: String,
    /// Its Rust type.
    pub kind: String,
}

/// What a container knows about itself from the start; discovery adds what changes.
pub(crate) struct Identity {
    service: String,
    version: Option<String>,
    instance: String,
    entrypoints: Vec<Entrypoint>,
}

impl Identity {
    /// The identity of `service` as it starts; call before its entrypoints start.
    pub(crate) fn new(
        service: &str,
        version: Option<String>,
        rpc: impl Iterator<Item = String>,
        others: &[Box<dyn crate::entrypoint::Entrypoint>],
    ) -> Identity {
        let mut entrypoints: Vec<Entrypoint> = rpc
            .map(|name| Entrypoint {
                kind: "rpc".to_owned(),
                name,
                details: Map::new(),
            })
            .collect();
        for e in others {
            let described = match e.describe() {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            let mut details = described;
            let kind = match details.remove("kind") {
                Some(Value::String(k)) => k,
                _ => e.kind().to_owned(),
            };
            let name = match details.remove("name") {
                Some(Value::String(n)) => n,
                _ => e.name(),
            };
            entrypoints.push(Entrypoint {
                kind,
                name,
                details,
            });
        }
        Identity {
            service: service.to_owned(),
            version,
            instance: crate::id::uuid4().simple().to_string(),
            entrypoints,
        }
    }

    /// The queue this container hears discovery requests on.
    pub(crate) fn queue(&self) -> QueueSpec {
        let mut queue = QueueSpec::durable(format!(
            "enoki.discovery-{}-{}",
            self.service, self.instance
        ));
        queue.durable = false;
        queue.exclusive = true;
        queue.auto_delete = true;
        queue.bind(exchange(), "")
    }

    /// The full description, now.
    pub(crate) fn describe(&self, runtime: &Runtime) -> Description {
        let mut calls = Vec::new();
        let mut dispatches = Vec::new();
        let mut dependencies = Vec::new();
        for dep in &runtime.dependencies {
            let any = dep.dependency.as_any();
            if let Some(proxy) = any.downcast_ref::<RpcProxy>() {
                if !calls.iter().any(|c| c == proxy.target()) {
                    calls.push(proxy.target().to_owned());
                }
            } else if let Some(dispatcher) = any.downcast_ref::<EventDispatcher>() {
                for t in dispatcher.types().all() {
                    if !dispatches.contains(&t) {
                        dispatches.push(t);
                    }
                }
            }
            dependencies.push(Dependency {
                name: dep.name.clone(),
                kind: dep.kind.to_owned(),
            });
        }
        Description {
            service: self.service.clone(),
            version: self.version.clone(),
            instance: self.instance.clone(),
            host: hostname(),
            pid: std::process::id(),
            enoki: env!("CARGO_PKG_VERSION").to_owned(),
            entrypoints: self.entrypoints.clone(),
            calls,
            dispatches,
            dependencies,
            metrics: runtime.metrics.as_ref().map(|m| m.snapshot()),
        }
    }
}

fn exchange() -> ExchangeSpec {
    ExchangeSpec {
        name: EXCHANGE.to_owned(),
        kind: ExchangeKind::Fanout,
        durable: true,
        auto_delete: false,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Answers discovery requests for one container.
pub(crate) struct Responder {
    pub(crate) identity: Identity,
}

impl DeliveryHandler for Responder {
    fn handle(&self, runtime: &Arc<Runtime>, delivery: Delivery, worker: &mut Worker) {
        let Delivery { message, acker, .. } = delivery;
        let Some(reply_to) = message.properties.reply_to.as_deref() else {
            acker.ack();
            return;
        };
        let description = self.identity.describe(runtime);
        let mut body = Vec::new();
        match serde_json::to_vec(&description) {
            Ok(json) => encode_reply(Ok(&json), &mut body),
            Err(e) => {
                log::error!(
                    "{}: cannot encode the description: {e}",
                    runtime.service_name
                );
                acker.ack();
                return;
            }
        }
        let properties = Properties {
            content_type: Some(JSON.to_owned()),
            content_encoding: Some(UTF8.to_owned()),
            correlation_id: message.properties.correlation_id.clone(),
            reply_to: None,
            delivery_mode: None,
            priority: Some(0),
            headers: Headers::new(),
        };
        let sent = worker.publish(
            runtime,
            Outgoing {
                exchange: &runtime.rpc_exchange.name,
                routing_key: reply_to,
                properties: &properties,
                body: &body,
                mandatory: false,
            },
        );
        if let Err(e) = sent {
            log::warn!("{}: cannot answer discovery: {e}", runtime.service_name);
        }
        // Answered or not, a discovery request is not worth redelivering.
        acker.ack();
    }
}

/// Asks every running enoki container on the broker of `config` to describe itself, and
/// collects the answers for up to `timeout` (less once answers stop coming: half a second
/// after the last one). Sorted by service, then host, pid and instance.
pub fn discover(config: &Config, timeout: Duration) -> Result<Vec<Description>> {
    let transport = crate::container::transport_for(config)?;
    let reply_to = crate::id::uuid4_string();
    let correlation_id = crate::id::uuid4_string();
    let rpc_exchange = ExchangeSpec::topic(config.exchange());
    let mut queue = QueueSpec::durable(format!("enoki.discovery.reply-{reply_to}"))
        .bind(rpc_exchange.clone(), reply_to.clone());
    queue.durable = false;
    queue.exclusive = true;
    queue.auto_delete = true;
    let source = transport.reply_source(&queue)?;
    let mut publisher = transport.publisher()?;
    publisher.declare_exchange(&rpc_exchange)?;
    publisher.declare_exchange(&exchange())?;
    let properties = Properties {
        content_type: Some(JSON.to_owned()),
        content_encoding: Some(UTF8.to_owned()),
        correlation_id: Some(correlation_id.clone()),
        reply_to: Some(reply_to),
        delivery_mode: None,
        priority: Some(0),
        headers: Headers::new(),
    };
    publisher.publish(Outgoing {
        exchange: EXCHANGE,
        routing_key: "",
        properties: &properties,
        body: b"{}",
        mandatory: false,
    })?;
    drop(publisher);
    let (_own_tx, own) = crossbeam_channel::bounded(1);
    let end = Instant::now() + timeout;
    let mut deadline = end;
    let mut found = Vec::new();
    loop {
        match source.wait(&own, Some(deadline)) {
            Wait::Message(message) => {
                if message.properties.correlation_id.as_deref() != Some(correlation_id.as_str()) {
                    continue;
                }
                match decode_reply(&message.body)
                    .and_then(|v| serde_json::from_value::<Description>(v).map_err(Error::from))
                {
                    Ok(d) => found.push(d),
                    Err(e) => log::warn!("discovery: an answer that is not a description: {e}"),
                }
                deadline = end.min(Instant::now() + QUIET);
            }
            Wait::Own(_) => {}
            Wait::Lost(e) => return Err(e),
            Wait::Timeout => break,
        }
    }
    found.sort_by(|a, b| {
        (&a.service, &a.host, a.pid, &a.instance).cmp(&(&b.service, &b.host, b.pid, &b.instance))
    });
    Ok(found)
}

/// What a node of the [`Graph`] stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// An enoki service that answered discovery.
    Enoki,
    /// A service only named as a target (called, or an event source) that no enoki instance
    /// describes: a Python Nameko service, or one not running now.
    Nameko,
}

/// A service in the [`Graph`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The service's name.
    pub name: String,
    /// Whether it answered discovery.
    pub kind: NodeKind,
    /// How many instances answered.
    pub instances: usize,
    /// Its versions, as its instances report them.
    pub versions: Vec<String>,
    /// Its entrypoints (union over instances), as [`Entrypoint::summary`] gives them.
    pub entrypoints: Vec<String>,
}

/// How one service depends on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// `from` calls `to` over RPC.
    Rpc,
    /// `from` dispatches events `to` handles.
    Event,
}

/// An edge of the [`Graph`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Edge {
    /// The caller, or the event source.
    pub from: String,
    /// The service called, or the handling service.
    pub to: String,
    /// RPC or event.
    pub kind: EdgeKind,
    /// The event type (events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
}

/// The dependency graph of the services found by [`discover`]: RPC edges from callers to the
/// services they call, event edges from sources to the services handling their events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Every service, by name.
    pub nodes: Vec<Node>,
    /// Every dependency, sorted and without duplicates.
    pub edges: Vec<Edge>,
}

impl Graph {
    /// Builds the graph from descriptions (several instances of one service merge).
    pub fn new(descriptions: &[Description]) -> Graph {
        let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
        let mut edges = BTreeSet::new();
        for d in descriptions {
            let node = nodes.entry(d.service.clone()).or_insert_with(|| Node {
                name: d.service.clone(),
                kind: NodeKind::Enoki,
                instances: 0,
                versions: Vec::new(),
                entrypoints: Vec::new(),
            });
            node.instances += 1;
            if let Some(v) = &d.version
                && !node.versions.contains(v)
            {
                node.versions.push(v.clone());
            }
            for e in &d.entrypoints {
                let shown = e.summary();
                if !node.entrypoints.contains(&shown) {
                    node.entrypoints.push(shown);
                }
                if e.kind == "event_handler"
                    && let (Some(source), Some(event_type)) =
                        (e.detail("source"), e.detail("event_type"))
                {
                    edges.insert(Edge {
                        from: source.to_owned(),
                        to: d.service.clone(),
                        kind: EdgeKind::Event,
                        event_type: Some(event_type.to_owned()),
                    });
                }
            }
            for target in &d.calls {
                edges.insert(Edge {
                    from: d.service.clone(),
                    to: target.clone(),
                    kind: EdgeKind::Rpc,
                    event_type: None,
                });
            }
        }
        for edge in &edges {
            for name in [&edge.from, &edge.to] {
                nodes.entry(name.clone()).or_insert_with(|| Node {
                    name: name.clone(),
                    kind: NodeKind::Nameko,
                    instances: 0,
                    versions: Vec::new(),
                    entrypoints: Vec::new(),
                });
            }
        }
        Graph {
            nodes: nodes.into_values().collect(),
            edges: edges.into_iter().collect(),
        }
    }

    /// Graphviz DOT: enoki services as filled boxes listing their entrypoints, services that
    /// did not answer as dashed boxes, RPC edges solid, event edges dashed with the event type.
    pub fn dot(&self) -> String {
        let mut out = String::from(
            "digraph enoki {\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", \
             fillcolor=\"#eaf4ea\", fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\", \
             fontsize=10];\n",
        );
        for node in &self.nodes {
            let name = dot_escape(&node.name);
            match node.kind {
                NodeKind::Enoki => {
                    let mut label = name.clone();
                    if !node.versions.is_empty() {
                        let _ = write!(label, " {}", dot_escape(&node.versions.join(", ")));
                    }
                    if node.instances > 1 {
                        let _ = write!(label, " (x{})", node.instances);
                    }
                    for e in &node.entrypoints {
                        let _ = write!(label, "\\n{}", dot_escape(e));
                    }
                    let _ = writeln!(out, "  \"{name}\" [label=\"{label}\"];");
                }
                NodeKind::Nameko => {
                    let _ = writeln!(
                        out,
                        "  \"{name}\" [label=\"{name}\\n(Python Nameko / not discovered)\", \
                         style=\"rounded,dashed\", fillcolor=\"#ffffff\"];"
                    );
                }
            }
        }
        for edge in &self.edges {
            let (from, to) = (dot_escape(&edge.from), dot_escape(&edge.to));
            match (&edge.kind, &edge.event_type) {
                (EdgeKind::Event, Some(t)) => {
                    let _ = writeln!(
                        out,
                        "  \"{from}\" -> \"{to}\" [label=\"event: {}\", style=dashed, \
                         color=\"#b5651d\"];",
                        dot_escape(t)
                    );
                }
                _ => {
                    let _ = writeln!(out, "  \"{from}\" -> \"{to}\" [label=\"rpc\"];");
                }
            }
        }
        out.push_str("}\n");
        out
    }

    /// Mermaid flowchart: the same graph as [`dot`](Graph::dot), for Markdown that renders it.
    pub fn mermaid(&self) -> String {
        let id = |name: &str| {
            self.nodes
                .iter()
                .position(|n| n.name == name)
                .map_or_else(|| "unknown".to_owned(), |i| format!("s{i}"))
        };
        let mut out = String::from("flowchart LR\n");
        for (i, node) in self.nodes.iter().enumerate() {
            let name = mermaid_escape(&node.name);
            match node.kind {
                NodeKind::Enoki => {
                    let mut label = name;
                    for e in &node.entrypoints {
                        let _ = write!(label, "<br/>{}", mermaid_escape(e));
                    }
                    let _ = writeln!(out, "  s{i}[\"{label}\"]");
                }
                NodeKind::Nameko => {
                    let _ = writeln!(
                        out,
                        "  s{i}[\"{name}<br/>(Python Nameko / not discovered)\"]:::nameko"
                    );
                }
            }
        }
        for edge in &self.edges {
            let (from, to) = (id(&edge.from), id(&edge.to));
            match (&edge.kind, &edge.event_type) {
                (EdgeKind::Event, Some(t)) => {
                    let _ = writeln!(out, "  {from} -.->|\"event: {}\"| {to}", mermaid_escape(t));
                }
                _ => {
                    let _ = writeln!(out, "  {from} -->|rpc| {to}");
                }
            }
        }
        out.push_str("  classDef nameko stroke-dasharray: 5 5\n");
        out
    }
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn mermaid_escape(s: &str) -> String {
    s.replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(service: &str, entrypoints: Vec<Entrypoint>, calls: &[&str]) -> Description {
        Description {
            service: service.into(),
            version: None,
            instance: "i".into(),
            host: "h".into(),
            pid: 1,
            enoki: String::new(),
            entrypoints,
            calls: calls.iter().map(|s| s.to_string()).collect(),
            dispatches: Vec::new(),
            dependencies: Vec::new(),
            metrics: None,
        }
    }

    fn handler(source: &str, event_type: &str) -> Entrypoint {
        let mut details = Map::new();
        details.insert("source".into(), source.into());
        details.insert("event_type".into(), event_type.into());
        Entrypoint {
            kind: "event_handler".into(),
            name: format!("handle_{event_type}"),
            details,
        }
    }

    #[test]
    fn graph_has_rpc_and_event_edges_and_marks_targets_nobody_describes() {
        let graph = Graph::new(&[
            described("a", vec![], &["b", "legacy"]),
            described("b", vec![handler("a", "done")], &[]),
            described("b", vec![handler("a", "done")], &[]),
        ]);
        let kinds: Vec<_> = graph
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.kind, n.instances))
            .collect();
        assert_eq!(
            kinds,
            [
                ("a", NodeKind::Enoki, 1),
                ("b", NodeKind::Enoki, 2),
                ("legacy", NodeKind::Nameko, 0)
            ]
        );
        assert_eq!(graph.edges.len(), 3);
        let dot = graph.dot();
        assert!(dot.contains("\"a\" -> \"b\" [label=\"rpc\"];"), "{dot}");
        assert!(dot.contains("\"a\" -> \"legacy\" [label=\"rpc\"];"));
        assert!(dot.contains("\"a\" -> \"b\" [label=\"event: done\", style=dashed"));
        assert!(dot.contains("legacy\\n(Python Nameko / not discovered)"));
        let mermaid = graph.mermaid();
        assert!(mermaid.contains("  s0 -->|rpc| s1\n"), "{mermaid}");
        assert!(mermaid.contains("  s0 -.->|\"event: done\"| s1\n"));
        assert!(mermaid.contains("s2[\"legacy<br/>(Python Nameko / not discovered)\"]:::nameko"));
    }
}
