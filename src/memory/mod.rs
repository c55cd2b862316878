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
mod topic;

use crate::transport::{
    Acker, ConsumeSpec, Control, Delivery, DeliverySource, ExchangeSpec, Outcome, Outgoing,
    Published, Publisher, QueueSpec, Received, ReplySource, Sink, Transport, Wait,
};
use crate::{Error, ErrorKind, Result};
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
        let mut select = Select::new();
        let own_index = select.recv(own);
        select.recv(&self.consumer.rx);
        let op = match deadline {
            Some(deadline) => match select.select_deadline(deadline) {
                Ok(op) => op,
                Err(_) => return Wait::Timeout,
            },
            None => select.select(),
        };
        if op.index() == own_index {
            return match op.recv(own) {
                Ok(reply) => Wait::Own(reply),
                Err(_) => Wait::Own(Err(Error::new(ErrorKind::Stopped))),
            };
        }
        match op.recv(&self.consumer.rx) {
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
