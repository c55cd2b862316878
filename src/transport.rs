//! The narrow seam between containers and a broker.
//!
//! Entrypoints and proxies talk to a broker only through [`Transport`]: declare exchanges and
//! queues, publish with confirms, consume with per-consumer prefetch, ack and reject. RabbitMQ's
//! implementation lives in `amqp.rs`, the in-process broker of `memory://` URIs in `memory/`;
//! neither knows anything of services.

use crate::Result;
use crossbeam_channel::{Receiver, Select, SelectedOperation};
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;

/// Message headers: AMQP field-table values mapped onto JSON values.
pub type Headers = Map<String, Value>;

/// The message properties Nameko reads and writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// `content_type`, e.g. `application/json`.
    pub content_type: Option<String>,
    /// `content_encoding`, e.g. `utf-8`.
    pub content_encoding: Option<String>,
    /// `correlation_id`: ties a reply to its request.
    pub correlation_id: Option<String>,
    /// `reply_to`: the routing key replies are published with.
    pub reply_to: Option<String>,
    /// `delivery_mode`: 2 is persistent.
    pub delivery_mode: Option<u8>,
    /// `priority`.
    pub priority: Option<u8>,
    /// Application headers (Nameko's context data travels here).
    pub headers: Headers,
}

/// A message received from a queue.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its properties.
    pub properties: Properties,
    /// Its body.
    pub body: Vec<u8>,
    /// True when the broker delivered it before (at-least-once redelivery).
    pub redelivered: bool,
}

/// Exchange types enoki declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routing by `.`-separated words with `*` and `#` wildcards (Nameko's RPC and events).
    Topic,
    /// Routing by exact key.
    Direct,
    /// Every bound queue gets every message.
    Fanout,
}

/// An exchange declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSpec {
    /// Its name.
    pub name: String,
    /// Its type.
    pub kind: ExchangeKind,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last queue is unbound.
    pub auto_delete: bool,
}

impl ExchangeSpec {
    /// A durable topic exchange, as Nameko declares `nameko-rpc` and `<service>.events`.
    pub fn topic(name: impl Into<String>) -> ExchangeSpec {
        ExchangeSpec {
            name: name.into(),
            kind: ExchangeKind::Topic,
            durable: true,
            auto_delete: false,
        }
    }
}

/// A queue declaration with its bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Its name.
    pub name: String,
    /// Survives a broker restart.
    pub durable: bool,
    /// Owned by the declaring connection and deleted with it.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// `x-expires` in milliseconds: deleted after this long unused.
    pub expires_ms: Option<u32>,
    /// `(exchange, routing key)` pairs the queue is bound with.
    pub bindings: Vec<(ExchangeSpec, String)>,
}

impl QueueSpec {
    /// A durable, non-exclusive, non-auto-delete queue with no bindings yet.
    pub fn durable(name: impl Into<String>) -> QueueSpec {
        QueueSpec {
            name: name.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            expires_ms: None,
            bindings: Vec::new(),
        }
    }

    /// Adds a binding.
    pub fn bind(mut self, exchange: ExchangeSpec, routing_key: impl Into<String>) -> QueueSpec {
        self.bindings.push((exchange, routing_key.into()));
        self
    }
}

/// One message to publish.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Target exchange (`""` is the default exchange).
    pub exchange: &'a str,
    /// Routing key.
    pub routing_key: &'a str,
    /// Properties.
    pub properties: &'a Properties,
    /// Body.
    pub body: &'a [u8],
    /// Ask the broker to return the message if no queue is bound for it.
    pub mandatory: bool,
}

/// What the broker did with a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Routed and confirmed.
    Confirmed,
    /// Mandatory and unroutable: the broker returned it (NO_ROUTE), then confirmed.
    Returned,
}

/// A publishing channel, used by one thread at a time.
pub trait Publisher: Send {
    /// Declares an exchange (cached: declaring the same name twice is one round trip).
    fn declare_exchange(&mut self, exchange: &ExchangeSpec) -> Result<()>;
    /// Publishes and waits for the broker's confirm.
    fn publish(&mut self, message: Outgoing<'_>) -> Result<Published>;

    /// Publishes and waits for the broker's confirm until `deadline` at most: a caller with a
    /// timeout is not held longer by a stalled broker. A confirm that misses the deadline is a
    /// [`Timeout`](crate::ErrorKind::Timeout) error, and the message may still have been routed.
    fn publish_by(
        &mut self,
        message: Outgoing<'_>,
        deadline: Option<std::time::Instant>,
    ) -> Result<Published> {
        let _ = deadline;
        self.publish(message)
    }
}

/// Closes a publisher that failed, off the caller's thread: closing a channel waits for the
/// broker's answer, which a stalled connection never sends, and a caller with a deadline must
/// not be held by it.
pub(crate) fn retire(publisher: Box<dyn Publisher>) {
    let spawned = std::thread::Builder::new()
        .name("enoki-retire".into())
        .spawn(move || drop(publisher));
    if let Err(e) = spawned {
        log::warn!("cannot spawn a thread to close a failed channel: {e}");
    }
}

/// How a consumed message is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done with: remove it from the queue.
    Ack,
    /// Give it back; `requeue: false` drops it (or dead-letters it).
    Reject {
        /// Put it back on the queue for redelivery.
        requeue: bool,
    },
}

/// The right, and duty, to settle one delivery.
///
/// Settling travels back to whatever owns the consuming channel (for AMQP, the consumer thread),
/// so no lock is taken on a channel. Dropping an unsettled `Acker` (a worker that died, a job
/// dropped at shutdown) rejects the delivery with requeue, so the broker redelivers it: nothing
/// is lost silently.
pub struct Acker {
    settle: Option<Box<dyn FnOnce(Outcome) + Send>>,
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker")
            .field("settled", &self.settle.is_none())
            .finish()
    }
}

impl Acker {
    /// An acker that settles through `settle`, called exactly once.
    pub fn new(settle: impl FnOnce(Outcome) + Send + 'static) -> Acker {
        Acker {
            settle: Some(Box::new(settle)),
        }
    }

    /// Acknowledges the delivery.
    pub fn ack(mut self) {
        self.settle(Outcome::Ack);
    }

    /// Rejects the delivery.
    pub fn reject(mut self, requeue: bool) {
        self.settle(Outcome::Reject { requeue });
    }

    fn settle(&mut self, outcome: Outcome) {
        if let Some(settle) = self.settle.take() {
            settle(outcome);
        }
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        self.settle(Outcome::Reject { requeue: true });
    }
}

/// A consumed message with the means to settle it.
#[derive(Debug)]
pub struct Delivery {
    /// Index of the queue (in the consume request) it came from.
    pub queue: usize,
    /// The message.
    pub message: Message,
    /// Settles it.
    pub acker: Acker,
}

/// What a worker got from one queue of a [`DeliverySource`].
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // moved once per delivery, straight into the handler
pub enum Received {
    /// A delivery to handle.
    Delivery(Delivery),
    /// The queue's consumer has ended (cancelled, or its connection is gone): stop reading it.
    Ended,
}

/// The deliveries of a running consumer, read directly by the worker threads, so a delivery
/// wakes the worker that handles it rather than a consumer thread that would hand it on.
///
/// A worker adds the receivers of the queues it still reads to a crossbeam [`Select`] together
/// with its own job channel, and completes whichever operation is ready.
pub trait DeliverySource: Send + Sync + fmt::Debug {
    /// The number of queues.
    fn queues(&self) -> usize;
    /// Adds queue `queue`'s receiver to `select`; returns the operation index.
    fn register<'a>(&'a self, queue: usize, select: &mut Select<'a>) -> usize;
    /// Completes a receive selected on queue `queue`.
    fn complete(&self, queue: usize, operation: SelectedOperation<'_>) -> Received;
}

/// Hears from a consumer.
pub trait Sink {
    /// All queues are declared, bound and consumed: workers may read `source`. Called again
    /// with a new source after each reconnection.
    fn ready(&mut self, source: Arc<dyn DeliverySource>);
}

/// Orders for a running consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Cancel the consumers (no new deliveries) but keep settling what workers hand back.
    Stop,
    /// Settle what has been handed back, then return: sent once the workers are done.
    Finish,
    /// Return at once; unsettled deliveries are redelivered by the broker.
    Kill,
}

/// What to consume.
#[derive(Debug, Clone)]
pub struct ConsumeSpec {
    /// Queues to declare, bind and consume; deliveries carry the index into this list.
    pub queues: Vec<QueueSpec>,
    /// Unacked deliveries per consumer (per-consumer QoS, never global).
    pub prefetch: u16,
}

/// A message broker.
pub trait Transport: Send + Sync + fmt::Debug {
    /// Opens a publishing channel on the publishing connection.
    fn publisher(&self) -> Result<Box<dyn Publisher>>;

    /// Declares and consumes `spec`'s queues, hands their [`DeliverySource`] to `sink`, then
    /// settles deliveries on the calling thread until `control` says finish or kill (returns
    /// `Ok`) or the connection fails (returns `Err`; call again to reconnect, with backoff).
    fn consume(
        &self,
        spec: &ConsumeSpec,
        sink: &mut dyn Sink,
        control: &Receiver<Control>,
    ) -> Result<()>;

    /// Declares `queue` and consumes it with automatic acks, for direct reading by the threads
    /// waiting for replies. The consumer lives until the returned source is dropped.
    fn reply_source(&self, queue: &QueueSpec) -> Result<Arc<dyn ReplySource>>;
}

/// What a thread waiting for a reply woke up to.
#[derive(Debug)]
pub enum Wait {
    /// Its own channel delivered: a reply forwarded by another waiter, or a failure.
    Own(Result<Vec<u8>>),
    /// A message arrived on the reply queue; it may belong to another caller.
    Message(Message),
    /// The reply queue's connection is gone.
    Lost(crate::Error),
    /// The deadline passed.
    Timeout,
}

/// A reply queue read directly by the threads waiting on it, so a reply wakes its caller
/// without passing through a listener thread: every waiting caller reads the queue and its own
/// channel at once, and hands on replies that belong to others.
pub trait ReplySource: Send + Sync + fmt::Debug {
    /// Waits for whichever comes first: a message on `own`, a message on the reply queue, the
    /// loss of the connection, or `deadline`.
    fn wait(&self, own: &Receiver<Result<Vec<u8>>>, deadline: Option<std::time::Instant>) -> Wait;
}

/// The common part of every [`ReplySource::wait`]: waits on the caller's own channel and on
/// the reply queue's receiver `queue` at once. What comes on the caller's channel, or the
/// deadline passing, is the finished [`Wait`] (`Err`); what comes from the queue is handed back
/// for the transport to read (`Ok`).
#[allow(clippy::result_large_err)] // a Wait is returned by value anyway, once per wake
pub(crate) fn wait_on<T>(
    own: &Receiver<Result<Vec<u8>>>,
    queue: &Receiver<T>,
    deadline: Option<std::time::Instant>,
) -> std::result::Result<std::result::Result<T, crossbeam_channel::RecvError>, Wait> {
    let mut select = Select::new();
    let own_index = select.recv(own);
    select.recv(queue);
    let op = match deadline {
        Some(deadline) => match select.select_deadline(deadline) {
            Ok(op) => op,
            Err(_) => return Err(Wait::Timeout),
        },
        None => select.select(),
    };
    if op.index() == own_index {
        return Err(match op.recv(own) {
            Ok(reply) => Wait::Own(reply),
            Err(_) => Wait::Own(Err(crate::Error::new(crate::ErrorKind::Stopped))),
        });
    }
    Ok(op.recv(queue))
}

/// A shared transport.
pub type SharedTransport = Arc<dyn Transport>;

/// The longest pause between reconnection attempts.
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

/// Consumes until `control` says stop or kill, reconnecting with capped exponential backoff after
/// a lost connection (`lost` is told first). A failure before the sink was ever ready is
/// returned instead: there is nothing to recover yet, and the caller reports it.
pub(crate) fn consume_with_reconnect(
    transport: &dyn Transport,
    spec: &ConsumeSpec,
    sink: &mut dyn Sink,
    control: &Receiver<Control>,
    mut lost: impl FnMut(&crate::Error),
) -> Result<()> {
    struct Tracking<'a> {
        inner: &'a mut dyn Sink,
        ready: bool,
    }
    impl Sink for Tracking<'_> {
        fn ready(&mut self, source: Arc<dyn DeliverySource>) {
            self.ready = true;
            self.inner.ready(source);
        }
    }
    let mut tracking = Tracking {
        inner: sink,
        ready: false,
    };
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        match transport.consume(spec, &mut tracking, control) {
            Ok(()) => return Ok(()),
            Err(e) if !tracking.ready => return Err(e),
            Err(e) => {
                lost(&e);
                match control.recv_timeout(backoff) {
                    Ok(_) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Ok(()),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
