//! The in-process broker behind `memory://` URIs: the same [`Transport`] seam as AMQP, for
//! running a set of services as one process and for tests without RabbitMQ.
//!
//! Every transport opened on one URI in a process shares one broker (`memory://` is the
//! default one, `memory://<name>` an isolated one), so services started separately still find
//! each other. It keeps RabbitMQ's semantics where a single process can tell the difference:
//! topic, direct and fanout routing, durable queues that outlive their consumers, exclusive and
//! auto-delete queues that go with them, `x-expires`, per-consumer prefetch with round robin
//! between competing consumers, acks and rejects (requeued messages come back marked
//! redelivered, and a consumer that goes away gives back what it had not acked), mandatory
//! publishes returned when unroutable. Nothing is persisted and nothing crosses the process.
//!
//! There is no consumer thread between the broker and the workers: a publish pushes the message
//! into the channel of the consumer whose turn it is, which wakes the worker selecting on it,
//! and an ack settles on the queue directly from the worker's thread.

mod broker;
pub(crate) mod topic;

use crate::transport::{
    Acker, ConsumeSpec, Control, Delivery, DeliverySource, ExchangeSpec, Outcome, Outgoing,
    Published, Publisher, QueueSpec, Received, ReplySource, Sink, Transport, Wait,
};
use crate::{Error, Result};
use broker::{Broker, ConsumerHandle, Settle};
use crossbeam_channel::{Receiver, Select, SelectedOperation};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// The brokers of this process, by name. They live as long as the process, as a RabbitMQ
/// outlives its clients: a durable queue keeps its messages when every container has stopped.
fn broker(name: &str) -> Arc<Broker> {
    static BROKERS: OnceLock<Mutex<HashMap<String, Arc<Broker>>>> = OnceLock::new();
    BROKERS
        .get_or_init(Mutex::default)
        .lock()
        .entry(name.to_owned())
        .or_default()
        .clone()
}

/// A transport on the in-process broker named `name` (`""` for plain `memory://`).
pub(crate) struct MemoryTransport {
    name: String,
    broker: Arc<Broker>,
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("uri", &format_args!("memory://{}", self.name))
            .finish()
    }
}

impl MemoryTransport {
    /// The transport of broker `name`, created on first use.
    pub(crate) fn new(name: &str) -> MemoryTransport {
        MemoryTransport {
            name: name.to_owned(),
            broker: broker(name),
        }
    }

    /// A transport on a broker of its own, reachable only through it (and its clones), and
    /// gone with the last of them: for test doubles that must not leak into a shared broker.
    pub(crate) fn private() -> MemoryTransport {
        MemoryTransport {
            name: "(private)".to_owned(),
            broker: Arc::default(),
        }
    }
}

impl Transport for MemoryTransport {
    fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(MemoryPublisher {
            broker: self.broker.clone(),
            declared: Vec::new(),
        }))
    }

    fn consume(
        &self,
        spec: &ConsumeSpec,
        sink: &mut dyn Sink,
        control: &Receiver<Control>,
    ) -> Result<()> {
        let session = Session::open(&self.broker, spec)?;
        sink.ready(Arc::new(MemoryDeliverySource {
            consumers: session.consumers.clone(),
        }));
        loop {
            match control.recv() {
                Ok(Control::Stop) => session.cancel(),
                // Settlements go straight to the queues, so there is nothing to wait for; what
                // is still unacked goes back to its queue when the session closes (on drop).
                Ok(Control::Finish | Control::Kill) | Err(_) => return Ok(()),
            }
        }
    }

    fn reply_source(&self, queue: &QueueSpec) -> Result<Arc<dyn ReplySource>> {
        let owner = self.broker.id();
        let declared = self.broker.declare_queue(queue, owner)?;
        let consumer = self.broker.consume(&declared, 0, true)?;
        Ok(Arc::new(MemoryReplySource {
            broker: self.broker.clone(),
            owner,
            consumer,
        }))
    }
}

/// The consumers of one `consume` call: the in-process counterpart of an AMQP channel, which
/// owns its exclusive queues and gives back unacked messages when it closes.
struct Session {
    broker: Arc<Broker>,
    id: u64,
    consumers: Arc<[ConsumerHandle]>,
}

impl Session {
    fn open(broker: &Arc<Broker>, spec: &ConsumeSpec) -> Result<Session> {
        let mut session = Session {
            broker: broker.clone(),
            id: broker.id(),
            consumers: Arc::new([]),
        };
        let mut consumers = Vec::with_capacity(spec.queues.len());
        for queue in &spec.queues {
            let declared = broker.declare_queue(queue, session.id);
            // On failure, what was consumed so far is closed with the session.
            let consumer = declared.and_then(|q| broker.consume(&q, spec.prefetch, false));
            match consumer {
                Ok(consumer) => consumers.push(consumer),
                Err(e) => {
                    session.consumers = consumers.into();
                    return Err(e);
                }
            }
        }
        session.consumers = consumers.into();
        Ok(session)
    }

    fn cancel(&self) {
        for consumer in self.consumers.iter() {
            self.broker.cancel(&consumer.queue, consumer.id);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for consumer in self.consumers.iter() {
            self.broker.close(&consumer.queue, consumer.id, self.id);
        }
        let queues: Vec<_> = self.consumers.iter().map(|c| c.queue.clone()).collect();
        self.broker.end_session(self.id, &queues);
    }
}

/// The consumers' channels, read by the workers.
struct MemoryDeliverySource {
    consumers: Arc<[ConsumerHandle]>,
}

impl fmt::Debug for MemoryDeliverySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryDeliverySource")
            .field(
                "queues",
                &self
                    .consumers
                    .iter()
                    .map(|c| c.queue.name())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl DeliverySource for MemoryDeliverySource {
    fn queues(&self) -> usize {
        self.consumers.len()
    }

    fn register<'a>(&'a self, queue: usize, select: &mut Select<'a>) -> usize {
        select.recv(&self.consumers[queue].rx)
    }

    fn complete(&self, queue: usize, operation: SelectedOperation<'_>) -> Received {
        let consumer = &self.consumers[queue];
        let Ok(envelope) = operation.recv(&consumer.rx) else {
            // Cancelled and drained, or the queue was deleted.
            return Received::Ended;
        };
        if !consumer.alive.load(Ordering::Acquire) {
            // Closed (killed): this message is back on its queue already.
            return Received::Ended;
        }
        let message = envelope.to_message();
        let (target, id, tag) = (consumer.queue.clone(), consumer.id, envelope.tag);
        drop(envelope);
        Received::Delivery(Delivery {
            queue,
            message,
            acker: Acker::new(move |outcome| {
                let how = match outcome {
                    Outcome::Ack => Settle::Ack,
                    Outcome::Reject { requeue: true } => Settle::Requeue,
                    Outcome::Reject { requeue: false } => Settle::Drop,
                };
                target.settle(id, tag, how);
            }),
        })
    }
}

/// A reply queue consumed with automatic acks; the queue's consumer goes when this is dropped.
struct MemoryReplySource {
    broker: Arc<Broker>,
    owner: u64,
    consumer: ConsumerHandle,
}

impl fmt::Debug for MemoryReplySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryReplySource")
            .field("queue", &self.consumer.queue.name())
            .finish()
    }
}

impl Drop for MemoryReplySource {
    fn drop(&mut self) {
        self.broker
            .close(&self.consumer.queue, self.consumer.id, self.owner);
        self.broker
            .end_session(self.owner, std::slice::from_ref(&self.consumer.queue));
    }
}

impl ReplySource for MemoryReplySource {
    fn wait(&self, own: &Receiver<Result<Vec<u8>>>, deadline: Option<Instant>) -> Wait {
        let received = match crate::transport::wait_on(own, &self.consumer.rx, deadline) {
            Ok(received) => received,
            Err(done) => return done,
        };
        match received {
            Ok(envelope) => Wait::Message(envelope.into_message()),
            Err(_) => Wait::Lost(Error::broker(format!(
                "the reply queue {} was deleted",
                self.consumer.queue.name()
            ))),
        }
    }
}

/// Publishes into the broker; "confirmed" once the message sits in every queue it routes to.
struct MemoryPublisher {
    broker: Arc<Broker>,
    declared: Vec<String>,
}

impl fmt::Debug for MemoryPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPublisher").finish_non_exhaustive()
    }
}

impl Publisher for MemoryPublisher {
    fn declare_exchange(&mut self, exchange: &ExchangeSpec) -> Result<()> {
        if self.declared.contains(&exchange.name) {
            return Ok(());
        }
        self.broker.declare_exchange(exchange)?;
        self.declared.push(exchange.name.clone());
        Ok(())
    }

    fn publish(&mut self, message: Outgoing<'_>) -> Result<Published> {
        let mandatory = message.mandatory;
        match self.broker.publish(message)? {
            false if mandatory => Ok(Published::Returned),
            _ => Ok(Published::Confirmed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Properties, QueueSpec};
    use crossbeam_channel::Sender;
    use std::time::Duration;

    struct Ready(Sender<Arc<dyn DeliverySource>>);

    impl Sink for Ready {
        fn ready(&mut self, source: Arc<dyn DeliverySource>) {
            let _ = self.0.send(source);
        }
    }

    /// Runs `consume` on a thread; returns the source, the control sender and the thread.
    fn consume(
        transport: &Arc<MemoryTransport>,
        spec: ConsumeSpec,
    ) -> (
        Arc<dyn DeliverySource>,
        Sender<Control>,
        std::thread::JoinHandle<Result<()>>,
    ) {
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let transport = transport.clone();
        let thread =
            std::thread::spawn(move || transport.consume(&spec, &mut Ready(ready_tx), &control_rx));
        let source = ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("ready");
        (source, control_tx, thread)
    }

    fn next(source: &Arc<dyn DeliverySource>) -> Option<Delivery> {
        let mut select = Select::new();
        source.register(0, &mut select);
        let op = select
            .select_timeout(Duration::from_secs(5))
            .expect("a delivery or the end");
        match source.complete(0, op) {
            Received::Delivery(d) => Some(d),
            Received::Ended => None,
        }
    }

    fn publish(transport: &MemoryTransport, body: &str) -> Published {
        let mut publisher = transport.publisher().unwrap();
        publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: "jobs",
                properties: &Properties::default(),
                body: body.as_bytes(),
                mandatory: true,
            })
            .unwrap()
    }

    fn text(d: &Delivery) -> &str {
        std::str::from_utf8(&d.message.body).unwrap()
    }

    #[test]
    fn the_consume_contract_holds() {
        let transport = Arc::new(MemoryTransport::new("unit-consume-contract"));
        let spec = ConsumeSpec {
            queues: vec![QueueSpec::durable("jobs")],
            prefetch: 2,
        };
        let (source, control, thread) = consume(&transport, spec.clone());
        for body in ["1", "2", "3"] {
            assert_eq!(publish(&transport, body), Published::Confirmed);
        }
        let first = next(&source).unwrap();
        assert_eq!((text(&first), first.message.redelivered), ("1", false));
        // Dropping the acker requeues: it comes back marked redelivered, at the head of the
        // queue, so right after "2", which prefetch had already handed over.
        drop(first);
        let second = next(&source).unwrap();
        let again = next(&source).unwrap();
        assert_eq!((text(&second), second.message.redelivered), ("2", false));
        assert_eq!((text(&again), again.message.redelivered), ("1", true));
        again.acker.ack();
        second.acker.reject(false);
        let third = next(&source).unwrap();
        assert_eq!(text(&third), "3");

        // Stop: nothing new arrives, what is held can still be settled, the queue ends.
        control.send(Control::Stop).unwrap();
        assert!(next(&source).is_none());
        assert_eq!(
            publish(&transport, "4"),
            Published::Confirmed,
            "the queue stays"
        );
        third.acker.ack();
        control.send(Control::Finish).unwrap();
        thread.join().unwrap().unwrap();

        // A killed consumer gives back what it had not acked; its late acks count for nothing.
        let (source, control, thread) = consume(&transport, spec);
        let four = next(&source).unwrap();
        assert_eq!(text(&four), "4");
        control.send(Control::Kill).unwrap();
        thread.join().unwrap().unwrap();
        four.acker.ack();
        let (source, control, thread) = consume(
            &transport,
            ConsumeSpec {
                queues: vec![QueueSpec::durable("jobs")],
                prefetch: 2,
            },
        );
        let redelivered = next(&source).unwrap();
        assert_eq!(
            (text(&redelivered), redelivered.message.redelivered),
            ("4", true)
        );
        redelivered.acker.ack();
        control.send(Control::Kill).unwrap();
        thread.join().unwrap().unwrap();
    }

    #[test]
    fn mandatory_publishes_nobody_takes_are_returned() {
        let transport = MemoryTransport::new("unit-returns");
        let mut publisher = transport.publisher().unwrap();
        let exchange = ExchangeSpec::topic("rpc");
        publisher.declare_exchange(&exchange).unwrap();
        let properties = Properties::default();
        let outgoing = |mandatory| Outgoing {
            exchange: "rpc",
            routing_key: "nobody.method",
            properties: &properties,
            body: b"{}",
            mandatory,
        };
        assert_eq!(
            publisher.publish(outgoing(true)).unwrap(),
            Published::Returned
        );
        assert_eq!(
            publisher.publish(outgoing(false)).unwrap(),
            Published::Confirmed
        );
        let mut other = ExchangeSpec::topic("rpc");
        other.kind = crate::transport::ExchangeKind::Fanout;
        assert!(
            transport
                .publisher()
                .unwrap()
                .declare_exchange(&other)
                .is_err()
        );
    }

    #[test]
    fn replies_reach_the_reply_source_and_transports_share_a_broker() {
        let client = MemoryTransport::new("unit-replies");
        let server = MemoryTransport::new("unit-replies");
        let exchange = ExchangeSpec::topic("rpc");
        let mut queue = QueueSpec::durable("rpc.reply-x").bind(exchange.clone(), "uuid-1");
        queue.expires_ms = Some(300_000);
        let source = client.reply_source(&queue).unwrap();
        let mut publisher = server.publisher().unwrap();
        publisher.declare_exchange(&exchange).unwrap();
        let properties = Properties {
            correlation_id: Some("c1".into()),
            ..Properties::default()
        };
        let published = publisher
            .publish(Outgoing {
                exchange: "rpc",
                routing_key: "uuid-1",
                properties: &properties,
                body: b"reply",
                mandatory: false,
            })
            .unwrap();
        assert_eq!(published, Published::Confirmed);
        let (_own_tx, own) = crossbeam_channel::bounded(1);
        let deadline = Instant::now() + Duration::from_secs(5);
        match source.wait(&own, Some(deadline)) {
            Wait::Message(m) => {
                assert_eq!(m.body, b"reply");
                assert_eq!(m.properties.correlation_id.as_deref(), Some("c1"));
                assert_eq!(m.routing_key, "uuid-1");
            }
            other => panic!("expected the reply, got {other:?}"),
        }
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(matches!(source.wait(&own, Some(soon)), Wait::Timeout));
    }
}
