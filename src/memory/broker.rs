//! The in-process broker: exchanges, queues, bindings and consumers, shared by every transport
//! opened on the same `memory://` URI.
//!
//! Locks: the topology (exchanges, queues, bindings) sits behind one read-write lock that
//! publishes only read; each queue has its own mutex for its messages and consumers. The order
//! is always topology, then queue. A publish routes under the read lock and pushes the message
//! straight into a consumer's channel, which wakes the thread selecting on it; nothing else
//! runs in between.

use super::topic::{Pattern, is_pattern};
use crate::transport::{ExchangeKind, ExchangeSpec, Headers, Message, Outgoing, QueueSpec};
use crate::{Error, Result};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One broker: what a RabbitMQ virtual host is to AMQP.
#[derive(Debug, Default)]
pub(crate) struct Broker {
    topology: RwLock<Topology>,
    ids: AtomicU64,
}

#[derive(Debug, Default)]
struct Topology {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Arc<Queue>>,
}

#[derive(Debug)]
struct Exchange {
    spec: ExchangeSpec,
    /// Bindings without wildcards (all of them for direct and fanout exchanges), by key.
    exact: HashMap<String, Vec<Arc<Queue>>>,
    /// Topic bindings with `*` or `#`.
    patterns: Vec<(String, Pattern, Arc<Queue>)>,
}

impl Exchange {
    fn bind(&mut self, key: &str, queue: &Arc<Queue>) {
        if self.spec.kind == ExchangeKind::Topic && is_pattern(key) {
            let bound = self
                .patterns
                .iter()
                .any(|(k, _, q)| k == key && Arc::ptr_eq(q, queue));
            if !bound {
                self.patterns
                    .push((key.to_owned(), Pattern::new(key), queue.clone()));
            }
        } else {
            let queues = self.exact.entry(key.to_owned()).or_default();
            if !queues.iter().any(|q| Arc::ptr_eq(q, queue)) {
                queues.push(queue.clone());
            }
        }
    }

    fn unbind_queue(&mut self, queue: &Arc<Queue>) {
        self.patterns.retain(|(_, _, q)| !Arc::ptr_eq(q, queue));
        self.exact.retain(|_, queues| {
            queues.retain(|q| !Arc::ptr_eq(q, queue));
            !queues.is_empty()
        });
    }

    fn is_unbound(&self) -> bool {
        self.exact.is_empty() && self.patterns.is_empty()
    }

    /// The queues `routing_key` reaches, each once however many of its bindings match.
    fn route(&self, routing_key: &str, out: &mut Vec<Arc<Queue>>) {
        let mut add = |queue: &Arc<Queue>| {
            if !out.iter().any(|q| Arc::ptr_eq(q, queue)) {
                out.push(queue.clone());
            }
        };
        match self.spec.kind {
            ExchangeKind::Fanout => self.exact.values().flatten().for_each(&mut add),
            ExchangeKind::Direct => {
                self.exact
                    .get(routing_key)
                    .into_iter()
                    .flatten()
                    .for_each(add);
            }
            ExchangeKind::Topic => {
                self.exact
                    .get(routing_key)
                    .into_iter()
                    .flatten()
                    .for_each(&mut add);
                for (_, pattern, queue) in &self.patterns {
                    if pattern.matches(routing_key) {
                        add(queue);
                    }
                }
            }
        }
    }
}

/// A message as a queue holds it: shared between the queues it was routed to.
type Stored = Arc<Message>;

/// What a consumer's channel carries.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub(crate) tag: u64,
    pub(crate) message: Stored,
    pub(crate) redelivered: bool,
}

impl Envelope {
    /// The message to hand over, moved out when no other queue shares it.
    pub(crate) fn into_message(self) -> Message {
        let mut message = Arc::try_unwrap(self.message).unwrap_or_else(|m| (*m).clone());
        message.redelivered = self.redelivered;
        message
    }

    /// A copy to hand over; the original stays unacked on the queue.
    pub(crate) fn to_message(&self) -> Message {
        Message {
            exchange: self.message.exchange.clone(),
            routing_key: self.message.routing_key.clone(),
            properties: self.message.properties.clone(),
            body: self.message.body.clone(),
            redelivered: self.redelivered,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Queue {
    spec: QueueSpec,
    /// The session an exclusive queue belongs to.
    owner: Option<u64>,
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    ready: VecDeque<(Stored, bool)>,
    consumers: Vec<Consumer>,
    /// Where the round robin continues.
    next: usize,
    next_tag: u64,
    deleted: bool,
    /// When an `x-expires` queue without consumers goes away.
    expires_at: Option<Instant>,
}

#[derive(Debug)]
struct Consumer {
    id: u64,
    /// `None` once cancelled: no new deliveries, but its unacked messages can still be settled.
    tx: Option<Sender<Envelope>>,
    /// 0: unlimited.
    prefetch: usize,
    /// Automatic acks: nothing is kept once delivered.
    no_ack: bool,
    unacked: HashMap<u64, Stored>,
    alive: Arc<AtomicBool>,
}

impl Consumer {
    fn has_room(&self) -> bool {
        self.tx.is_some()
            && (self.no_ack || self.prefetch == 0 || self.unacked.len() < self.prefetch)
    }
}

/// A consumer as its reader sees it.
#[derive(Debug)]
pub(crate) struct ConsumerHandle {
    pub(crate) queue: Arc<Queue>,
    pub(crate) id: u64,
    pub(crate) rx: Receiver<Envelope>,
    /// False once the consumer is closed: its deliveries are back on the queue, so any still
    /// sitting in `rx` are stale.
    pub(crate) alive: Arc<AtomicBool>,
}

/// What a consumer's settlement asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    Requeue,
    Drop,
}

impl QueueState {
    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Hands ready messages to consumers with room, in turn.
    fn dispatch(&mut self) {
        while !self.ready.is_empty() {
            let count = self.consumers.len();
            let Some(index) = (0..count)
                .map(|i| (self.next + i) % count)
                .find(|&i| self.consumers[i].has_room())
            else {
                return;
            };
            self.next = (index + 1) % count;
            let Some((message, redelivered)) = self.ready.pop_front() else {
                return;
            };
            self.next_tag += 1;
            let tag = self.next_tag;
            let consumer = &mut self.consumers[index];
            if !consumer.no_ack {
                consumer.unacked.insert(tag, message.clone());
            }
            let Some(tx) = &consumer.tx else { continue };
            let envelope = Envelope {
                tag,
                message,
                redelivered,
            };
            if let Err(returned) = tx.send(envelope) {
                // Nobody reads this consumer any more: treat it as cancelled.
                consumer.tx = None;
                consumer.unacked.remove(&tag);
                let envelope = returned.into_inner();
                self.ready
                    .push_front((envelope.message, envelope.redelivered));
            }
        }
    }

    /// Puts messages back at the head of the queue, oldest first, marked redelivered.
    fn requeue(&mut self, unacked: HashMap<u64, Stored>) {
        let mut messages: Vec<_> = unacked.into_iter().collect();
        messages.sort_unstable_by_key(|(tag, _)| std::cmp::Reverse(*tag));
        for (_, message) in messages {
            self.ready.push_front((message, true));
        }
    }
}

impl Queue {
    /// Settles delivery `tag` of consumer `id`; a consumer already closed has had its messages
    /// requeued, so its late settlements are ignored (as a closed AMQP channel's are).
    pub(crate) fn settle(&self, id: u64, tag: u64, how: Settle) {
        let mut state = self.state.lock();
        let Some(consumer) = state.consumers.iter_mut().find(|c| c.id == id) else {
            return;
        };
        let Some(message) = consumer.unacked.remove(&tag) else {
            return;
        };
        if how == Settle::Requeue {
            state.ready.push_front((message, true));
        }
        state.dispatch();
    }

    pub(crate) fn name(&self) -> &str {
        &self.spec.name
    }
}

fn precondition(what: String) -> Error {
    Error::broker(format!("PRECONDITION_FAILED - {what}"))
}

/// Drops `null` header values, as AMQP field tables cannot carry them (the AMQP transport drops
/// them too), so handlers see the same headers on both transports.
fn strip_nulls(headers: &mut Headers) {
    headers.retain(|_, value| !value.is_null());
    for value in headers.values_mut() {
        if let Value::Object(inner) = value {
            strip_nulls(inner);
        }
    }
}

impl Broker {
    /// A fresh id for a consumer or a session.
    pub(crate) fn id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Declares an exchange; redeclaring with another type or flags fails as in RabbitMQ.
    pub(crate) fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<()> {
        if spec.name.is_empty() {
            return Ok(());
        }
        declare_exchange(&mut self.topology.write(), spec)
    }

    /// Declares `spec` (owned by session `owner` if exclusive) and its bindings.
    pub(crate) fn declare_queue(&self, spec: &QueueSpec, owner: u64) -> Result<Arc<Queue>> {
        if !spec.durable && !spec.exclusive {
            // As RabbitMQ 4.3 does: a service that runs here must also run there.
            return Err(precondition(format!(
                "queue '{}': transient non-exclusive queues are not supported; declare it \
                 durable or exclusive",
                spec.name
            )));
        }
        let now = Instant::now();
        let mut topology = self.topology.write();
        let expired: Vec<Arc<Queue>> = topology
            .queues
            .values()
            .filter(|q| q.state.lock().expired(now))
            .cloned()
            .collect();
        for queue in expired {
            delete_queue(&mut topology, &queue);
        }
        let queue = match topology.queues.get(&spec.name) {
            Some(queue) => {
                let declared = &queue.spec;
                if (declared.durable, declared.exclusive, declared.auto_delete)
                    != (spec.durable, spec.exclusive, spec.auto_delete)
                    || declared.expires_ms != spec.expires_ms
                {
                    return Err(precondition(format!(
                        "inequivalent arguments for queue '{}'",
                        spec.name
                    )));
                }
                if queue.owner.is_some_and(|o| o != owner) {
                    return Err(Error::broker(format!(
                        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{}'",
                        spec.name
                    )));
                }
                // A declaration counts as use: the expiry starts over.
                let mut state = queue.state.lock();
                if state.expires_at.is_some() {
                    state.expires_at = spec
                        .expires_ms
                        .map(|ms| now + Duration::from_millis(u64::from(ms)));
                }
                drop(state);
                queue.clone()
            }
            None => {
                let queue = Arc::new(Queue {
                    spec: QueueSpec {
                        bindings: Vec::new(),
                        ..spec.clone()
                    },
                    owner: spec.exclusive.then_some(owner),
                    state: Mutex::new(QueueState {
                        expires_at: spec
                            .expires_ms
                            .map(|ms| now + Duration::from_millis(u64::from(ms))),
                        ..QueueState::default()
                    }),
                });
                topology.queues.insert(spec.name.clone(), queue.clone());
                queue
            }
        };
        for (exchange, key) in &spec.bindings {
            if exchange.name.is_empty() {
                return Err(Error::broker(
                    "ACCESS_REFUSED - operation not permitted on the default exchange",
                ));
            }
            declare_exchange(&mut topology, exchange)?;
            if let Some(exchange) = topology.exchanges.get_mut(&exchange.name) {
                exchange.bind(key, &queue);
            }
        }
        Ok(queue)
    }

    /// Adds a consumer to `queue`: `prefetch` unacked deliveries at most (0: no limit), or
    /// automatic acks.
    pub(crate) fn consume(
        &self,
        queue: &Arc<Queue>,
        prefetch: u16,
        no_ack: bool,
    ) -> Result<ConsumerHandle> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let id = self.id();
        let alive = Arc::new(AtomicBool::new(true));
        let mut state = queue.state.lock();
        if state.deleted {
            return Err(Error::broker(format!(
                "NOT_FOUND - no queue '{}'",
                queue.spec.name
            )));
        }
        state.expires_at = None;
        state.consumers.push(Consumer {
            id,
            tx: Some(tx),
            prefetch: usize::from(prefetch),
            no_ack,
            unacked: HashMap::new(),
            alive: alive.clone(),
        });
        state.dispatch();
        drop(state);
        Ok(ConsumerHandle {
            queue: queue.clone(),
            id,
            rx,
            alive,
        })
    }

    /// Stops deliveries to a consumer; what it already has stays unacked and can be settled.
    /// Its channel disconnects once drained, which ends its readers.
    pub(crate) fn cancel(&self, queue: &Queue, id: u64) {
        let mut state = queue.state.lock();
        if let Some(consumer) = state.consumers.iter_mut().find(|c| c.id == id) {
            consumer.tx = None;
        }
    }

    /// Removes a consumer: its unacked messages go back to the queue for redelivery, and the
    /// queue goes too if it was auto-delete or exclusive to `owner`, or starts its expiry.
    pub(crate) fn close(&self, queue: &Arc<Queue>, id: u64, owner: u64) {
        let mut state = queue.state.lock();
        let Some(index) = state.consumers.iter().position(|c| c.id == id) else {
            return;
        };
        let consumer = state.consumers.remove(index);
        consumer.alive.store(false, Ordering::Release);
        if state.next > index {
            state.next -= 1;
        }
        state.requeue(consumer.unacked);
        state.dispatch();
        let unused = state.consumers.is_empty();
        if unused && let Some(ms) = queue.spec.expires_ms {
            state.expires_at = Some(Instant::now() + Duration::from_millis(u64::from(ms)));
        }
        drop(state);
        let gone = unused && queue.spec.auto_delete || queue.owner == Some(owner);
        if gone {
            delete_queue(&mut self.topology.write(), queue);
        }
    }

    /// Deletes every exclusive queue of session `owner` (its consumers closed already).
    pub(crate) fn end_session(&self, owner: u64, queues: &[Arc<Queue>]) {
        let mut topology = self.topology.write();
        for queue in queues {
            if queue.owner == Some(owner) {
                delete_queue(&mut topology, queue);
            }
        }
    }

    /// Routes and enqueues a message; returns whether any queue took it.
    pub(crate) fn publish(&self, message: Outgoing<'_>) -> Result<bool> {
        let mut properties = message.properties.clone();
        strip_nulls(&mut properties.headers);
        let stored = Arc::new(Message {
            exchange: message.exchange.to_owned(),
            routing_key: message.routing_key.to_owned(),
            properties,
            body: message.body.to_vec(),
            redelivered: false,
        });
        let mut targets = Vec::new();
        let topology = self.topology.read();
        if message.exchange.is_empty() {
            // The default exchange: every queue is bound to it by its name.
            targets.extend(topology.queues.get(message.routing_key).cloned());
        } else {
            match topology.exchanges.get(message.exchange) {
                Some(exchange) => exchange.route(message.routing_key, &mut targets),
                None => {
                    return Err(Error::broker(format!(
                        "NOT_FOUND - no exchange '{}'",
                        message.exchange
                    )));
                }
            }
        }
        let now = Instant::now();
        let mut routed = false;
        let mut expired = Vec::new();
        for queue in &targets {
            let mut state = queue.state.lock();
            if state.deleted {
                continue;
            }
            if state.expired(now) {
                expired.push(queue.clone());
                continue;
            }
            state.ready.push_back((stored.clone(), false));
            state.dispatch();
            routed = true;
        }
        drop(topology);
        if !expired.is_empty() {
            let mut topology = self.topology.write();
            for queue in &expired {
                if queue.state.lock().expired(now) {
                    delete_queue(&mut topology, queue);
                }
            }
        }
        Ok(routed)
    }

    /// The number of messages ready (not delivered) in `queue`, if it exists.
    #[cfg(test)]
    pub(crate) fn ready_count(&self, queue: &str) -> Option<usize> {
        let topology = self.topology.read();
        let queue = topology.queues.get(queue)?;
        let state = queue.state.lock();
        Some(state.ready.len())
    }
}

fn declare_exchange(topology: &mut Topology, spec: &ExchangeSpec) -> Result<()> {
    match topology.exchanges.get(&spec.name) {
        Some(existing) => {
            let declared = &existing.spec;
            if (declared.kind, declared.durable, declared.auto_delete)
                != (spec.kind, spec.durable, spec.auto_delete)
            {
                return Err(precondition(format!(
                    "inequivalent arguments for exchange '{}'",
                    spec.name
                )));
            }
        }
        None => {
            topology.exchanges.insert(
                spec.name.clone(),
                Exchange {
                    spec: spec.clone(),
                    exact: HashMap::new(),
                    patterns: Vec::new(),
                },
            );
        }
    }
    Ok(())
}

/// Deletes `queue` with its messages and bindings; its consumers' channels disconnect. An
/// auto-delete exchange left without bindings goes too.
fn delete_queue(topology: &mut Topology, queue: &Arc<Queue>) {
    if topology
        .queues
        .get(&queue.spec.name)
        .is_some_and(|q| Arc::ptr_eq(q, queue))
    {
        topology.queues.remove(&queue.spec.name);
    }
    topology.exchanges.retain(|_, exchange| {
        exchange.unbind_queue(queue);
        !(exchange.spec.auto_delete && exchange.is_unbound())
    });
    let mut state = queue.state.lock();
    state.deleted = true;
    state.ready.clear();
    for consumer in state.consumers.drain(..) {
        consumer.alive.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Properties;

    fn publish(broker: &Broker, exchange: &str, key: &str, mandatory: bool) -> bool {
        broker
            .publish(Outgoing {
                exchange,
                routing_key: key,
                properties: &Properties::default(),
                body: key.as_bytes(),
                mandatory,
            })
            .expect("publish")
    }

    fn exchange(name: &str, kind: ExchangeKind) -> ExchangeSpec {
        ExchangeSpec {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
        }
    }

    fn bodies(handle: &ConsumerHandle) -> Vec<String> {
        handle
            .rx
            .try_iter()
            .map(|e| String::from_utf8(e.message.body.clone()).expect("utf-8"))
            .collect()
    }

    #[test]
    fn topic_direct_and_fanout_routing() {
        let broker = Broker::default();
        let topic = exchange("t", ExchangeKind::Topic);
        let direct = exchange("d", ExchangeKind::Direct);
        let fanout = exchange("f", ExchangeKind::Fanout);
        let q1 = QueueSpec::durable("q1")
            .bind(topic.clone(), "svc.*")
            .bind(topic.clone(), "#.x")
            .bind(direct.clone(), "k")
            .bind(fanout.clone(), "ignored");
        let q2 = QueueSpec::durable("q2")
            .bind(topic.clone(), "svc.m")
            .bind(direct.clone(), "svc.*")
            .bind(fanout.clone(), "");
        let c1 = broker
            .consume(&broker.declare_queue(&q1, 1).unwrap(), 0, true)
            .unwrap();
        let c2 = broker
            .consume(&broker.declare_queue(&q2, 1).unwrap(), 0, true)
            .unwrap();

        assert!(publish(&broker, "t", "svc.m", true));
        assert!(
            publish(&broker, "t", "svc.x", true),
            "two bindings, one copy"
        );
        assert!(publish(&broker, "t", "a.b.x", true));
        assert!(!publish(&broker, "t", "other", true));
        assert!(publish(&broker, "d", "k", true));
        assert!(
            publish(&broker, "d", "svc.*", true),
            "direct keys are literal"
        );
        assert!(!publish(&broker, "d", "svc.m", true));
        assert!(publish(&broker, "f", "anything", true));
        assert!(
            publish(&broker, "", "q2", true),
            "the default exchange routes by queue name"
        );
        assert!(!publish(&broker, "", "nope", true));
        assert_eq!(bodies(&c1), ["svc.m", "svc.x", "a.b.x", "k", "anything"]);
        assert_eq!(bodies(&c2), ["svc.m", "svc.*", "anything", "q2"]);
        assert!(
            broker
                .publish(Outgoing {
                    exchange: "missing",
                    routing_key: "k",
                    properties: &Properties::default(),
                    body: b"",
                    mandatory: false,
                })
                .is_err()
        );
    }

    #[test]
    fn prefetch_round_robin_and_requeue() {
        let broker = Broker::default();
        let queue = broker
            .declare_queue(&QueueSpec::durable("work"), 1)
            .unwrap();
        let a = broker.consume(&queue, 2, false).unwrap();
        let b = broker.consume(&queue, 2, false).unwrap();
        for i in 0..6 {
            broker
                .publish(Outgoing {
                    exchange: "",
                    routing_key: "work",
                    properties: &Properties::default(),
                    body: i.to_string().as_bytes(),
                    mandatory: false,
                })
                .unwrap();
        }
        let got_a: Vec<Envelope> = a.rx.try_iter().collect();
        let got_b: Vec<Envelope> = b.rx.try_iter().collect();
        let body = |e: &Envelope| String::from_utf8(e.message.body.clone()).unwrap();
        assert_eq!(got_a.iter().map(body).collect::<Vec<_>>(), ["0", "2"]);
        assert_eq!(got_b.iter().map(body).collect::<Vec<_>>(), ["1", "3"]);
        assert_eq!(
            broker.ready_count("work"),
            Some(2),
            "prefetch holds the rest"
        );

        // A requeued message goes to the head, redelivered; the freed slot takes it back.
        queue.settle(a.id, got_a[0].tag, Settle::Requeue);
        let again: Vec<Envelope> = a.rx.try_iter().collect();
        assert_eq!(again.len(), 1);
        assert_eq!(body(&again[0]), "0");
        assert!(again[0].redelivered);
        queue.settle(b.id, got_b[0].tag, Settle::Ack);
        assert_eq!(b.rx.try_iter().map(|e| body(&e)).collect::<Vec<_>>(), ["4"]);
        queue.settle(b.id, got_b[1].tag, Settle::Drop);
        assert_eq!(b.rx.try_iter().map(|e| body(&e)).collect::<Vec<_>>(), ["5"]);
        assert_eq!(broker.ready_count("work"), Some(0));

        // Closing a consumer requeues its unacked messages for the other one, in order.
        broker.close(&queue, a.id, 1);
        assert!(!a.alive.load(Ordering::Acquire));
        assert_eq!(broker.ready_count("work"), Some(2), "b is full");
        queue.settle(a.id, again[0].tag, Settle::Ack); // late: ignored
        assert_eq!(broker.ready_count("work"), Some(2));
    }

    #[test]
    fn exclusive_and_auto_delete_queues_go_with_their_owner() {
        let broker = Broker::default();
        let topic = exchange("t", ExchangeKind::Topic);
        let mut spec = QueueSpec::durable("mine").bind(topic.clone(), "k");
        spec.durable = false;
        spec.exclusive = true;
        let queue = broker.declare_queue(&spec, 7).unwrap();
        assert!(
            broker.declare_queue(&spec, 8).is_err(),
            "locked to session 7"
        );
        let c = broker.consume(&queue, 0, false).unwrap();
        broker.close(&queue, c.id, 7);
        assert_eq!(broker.ready_count("mine"), None);
        assert!(!publish(&broker, "t", "k", true), "its bindings went too");

        let mut spec = QueueSpec::durable("auto");
        spec.auto_delete = true;
        let queue = broker.declare_queue(&spec, 1).unwrap();
        let a = broker.consume(&queue, 0, false).unwrap();
        let b = broker.consume(&queue, 0, false).unwrap();
        broker.close(&queue, a.id, 1);
        assert_eq!(broker.ready_count("auto"), Some(0), "one consumer is left");
        broker.close(&queue, b.id, 1);
        assert_eq!(broker.ready_count("auto"), None);

        let mut transient = QueueSpec::durable("transient");
        transient.durable = false;
        assert!(
            broker.declare_queue(&transient, 1).is_err(),
            "RabbitMQ 4.3 refuses it"
        );
        broker.declare_queue(&QueueSpec::durable("d"), 1).unwrap();
        let mut changed = QueueSpec::durable("d");
        changed.auto_delete = true;
        assert!(
            broker.declare_queue(&changed, 1).is_err(),
            "inequivalent flags"
        );
    }

    #[test]
    fn expired_queues_stop_routing() {
        let broker = Broker::default();
        let topic = exchange("t", ExchangeKind::Topic);
        let mut spec = QueueSpec::durable("reply").bind(topic, "id");
        spec.expires_ms = Some(1);
        let queue = broker.declare_queue(&spec, 1).unwrap();
        let c = broker.consume(&queue, 0, true).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            publish(&broker, "t", "id", true),
            "consumed queues never expire"
        );
        broker.close(&queue, c.id, 1);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!publish(&broker, "t", "id", true));
        assert_eq!(broker.ready_count("reply"), None);
    }

    #[test]
    fn null_headers_are_dropped_as_amqp_drops_them() {
        let mut headers: Headers =
            serde_json::from_str(r#"{"a": null, "b": {"c": null, "d": 1}, "e": [null]}"#).unwrap();
        strip_nulls(&mut headers);
        assert_eq!(
            Value::Object(headers),
            serde_json::json!({"b": {"d": 1}, "e": [null]})
        );
    }
}
