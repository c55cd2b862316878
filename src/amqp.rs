//! RabbitMQ over amiquip: the [`Transport`] enoki deploys on.
//!
//! Two connections per transport, one for consuming and one for publishing, so a broker that
//! blocks publishers (resource alarm) cannot stall acks and consumers. Each consuming thread and
//! each publishing thread gets its own channel: amiquip's `Channel` is `Send` but not `Sync`.
//! Sockets are opened here, not by amiquip, because amiquip never sets `TCP_NODELAY` and every
//! round trip would otherwise wait about 40 ms on Nagle's algorithm and delayed ACKs.

use crate::config::AmqpUri;
use crate::transport::{
    Acker, ConsumeSpec, Control, Delivery, DeliverySource, ExchangeKind, ExchangeSpec, Headers,
    Message, Outcome, Outgoing, Properties, Published, Publisher, QueueSpec, Received, ReplySource,
    Sink, Transport, Wait,
};
use crate::{Error, Result};
use amiquip::{
    AmqpProperties, AmqpValue, Auth, Channel, Confirm, Connection, ConnectionBlockedNotification,
    ConnectionOptions, ConnectionTuning, ConsumerMessage, ConsumerOptions, ExchangeDeclareOptions,
    ExchangeType, FieldTable, Publish, QueueDeclareOptions, Return,
};
use crossbeam_channel::{Receiver, RecvTimeoutError, Select, SelectedOperation};
use parking_lot::Mutex;
use serde_json::{Number, Value};
use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// A RabbitMQ broker reached over AMQP 0-9-1.
pub(crate) struct AmqpTransport {
    uri: AmqpUri,
    heartbeat: u16,
    confirm_timeout: Duration,
    consuming: Arc<Mutex<Slot>>,
    publishing: Mutex<Slot>,
}

/// One lazily opened connection, replaced after it fails.
#[derive(Default)]
struct Slot {
    connection: Option<Connection>,
    generation: u64,
    /// Set while the broker has blocked the connection (a resource alarm).
    blocked: Arc<AtomicBool>,
}

impl fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // AmqpUri's Debug masks the password.
        f.debug_struct("AmqpTransport")
            .field("uri", &self.uri)
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

impl AmqpTransport {
    /// A transport for the broker at `uri`; `heartbeat` (seconds) applies to the consuming
    /// connection, as in Nameko. Nothing is opened until first use.
    pub(crate) fn new(uri: AmqpUri, heartbeat: u16) -> AmqpTransport {
        AmqpTransport {
            uri,
            heartbeat,
            confirm_timeout: CONFIRM_TIMEOUT,
            consuming: Arc::new(Mutex::new(Slot::default())),
            publishing: Mutex::new(Slot::default()),
        }
    }

    /// How long a publish without a deadline of its own waits for its confirm while the
    /// connection is not blocked. Default: 30 s.
    pub(crate) fn with_confirm_timeout(mut self, timeout: Duration) -> AmqpTransport {
        self.confirm_timeout = timeout;
        self
    }

    /// Opens a channel on the connection in `slot`, connecting first if needed.
    /// A connection that died while idle is only found out here, so a failure on a cached
    /// connection is retried once on a fresh one.
    fn channel(&self, slot: &Mutex<Slot>, heartbeat: u16) -> Result<(Channel, u64)> {
        let publishing = std::ptr::eq(slot, &self.publishing);
        let mut slot = slot.lock();
        loop {
            let fresh = slot.connection.is_none();
            if fresh {
                let mut connection = connect(&self.uri, heartbeat)?;
                // RabbitMQ blocks only connections that publish.
                if publishing {
                    slot.blocked = watch_blocked(&mut connection, &self.uri);
                }
                slot.connection = Some(connection);
                slot.generation += 1;
            }
            let generation = slot.generation;
            let opened = slot
                .connection
                .as_mut()
                .map(|c| c.open_channel(None))
                .ok_or_else(|| Error::broker("no connection"))?;
            match opened {
                Ok(channel) => return Ok((channel, generation)),
                Err(e) => {
                    slot.connection = None;
                    if fresh {
                        return Err(broker_error("opening a channel", &e));
                    }
                }
            }
        }
    }

    /// Forgets the connection of `generation` after a connection-level failure, so the next
    /// caller reconnects. Channel-level failures (a refused declaration) keep it: other
    /// consumers on it are healthy.
    fn reset(slot: &Mutex<Slot>, generation: u64, err: &amiquip::Error) {
        if matches!(err, amiquip::Error::ServerClosedChannel { .. }) {
            return;
        }
        forget(slot, generation);
    }
}

/// Follows the broker's `connection.blocked` / `unblocked` notifications for `connection` on
/// a small thread that ends with the connection: the state is logged (a resource alarm is
/// otherwise invisible from here) and kept in the returned flag, which publishers read to wait
/// out a block instead of failing.
fn watch_blocked(connection: &mut Connection, uri: &AmqpUri) -> Arc<AtomicBool> {
    let blocked = Arc::new(AtomicBool::new(false));
    let Ok(notifications) = connection.listen_for_connection_blocked() else {
        return blocked;
    };
    let flag = blocked.clone();
    let broker = uri.addr();
    let spawned = std::thread::Builder::new()
        .name("enoki-blocked".into())
        .spawn(move || {
            for notification in notifications {
                match notification {
                    ConnectionBlockedNotification::Blocked(reason) => {
                        flag.store(true, Ordering::Release);
                        log::warn!(
                            "broker {broker} blocked the connection ({reason}): publishing \
                             pauses until it is unblocked"
                        );
                    }
                    ConnectionBlockedNotification::Unblocked => {
                        flag.store(false, Ordering::Release);
                        log::info!("broker {broker} unblocked the connection: publishing resumes");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot watch for blocked connections: {e}");
    }
    blocked
}

/// Drops the connection of `generation` so the next caller reconnects.
fn forget(slot: &Mutex<Slot>, generation: u64) {
    let mut slot = slot.lock();
    if slot.generation == generation {
        slot.connection = None;
    }
}

/// Opens a TCP connection with `TCP_NODELAY` and keepalive and runs the AMQP handshake on it.
pub(crate) fn connect(uri: &AmqpUri, heartbeat: u16) -> Result<Connection> {
    let addrs = uri
        .addr()
        .to_socket_addrs()
        .map_err(|e| Error::broker(format!("cannot resolve {}: {e}", uri.addr())))?;
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = stream.ok_or_else(|| {
        let why = last.map_or_else(|| "no address".to_owned(), |e| e.to_string());
        Error::broker(format!("cannot connect to {}: {why}", uri.addr()))
    })?;
    stream.set_nodelay(true)?;
    socket2::SockRef::from(&stream).set_keepalive(true)?;
    let stream = mio::net::TcpStream::from_stream(stream)?;
    let options = ConnectionOptions::default()
        .auth(Auth::Plain {
            username: uri.username.clone(),
            password: uri.password.clone(),
        })
        .virtual_host(uri.vhost.clone())
        .heartbeat(heartbeat)
        .connection_timeout(Some(CONNECT_TIMEOUT))
        .information(Some(format!("enoki {}", env!("CARGO_PKG_VERSION"))));
    Connection::insecure_open_stream(stream, options, ConnectionTuning::default()).map_err(|e| {
        // amiquip's errors never carry the URI, so no password can leak from here.
        Error::broker(format!("cannot open AMQP connection to {uri}: {e}"))
    })
}

fn broker_error(doing: &str, e: &amiquip::Error) -> Error {
    Error::broker(format!("{doing}: {e}"))
}

impl Transport for AmqpTransport {
    fn publisher(&self) -> Result<Box<dyn Publisher>> {
        // Nameko's publishers run without heartbeats; a publisher idles between calls.
        let (channel, generation) = self.channel(&self.publishing, 0)?;
        let blocked = self.publishing.lock().blocked.clone();
        let setup = (|| {
            let returns = channel.listen_for_returns()?;
            let confirms = channel.listen_for_publisher_confirms()?;
            channel.enable_publisher_confirms()?;
            Ok::<_, amiquip::Error>((returns, confirms))
        })();
        match setup {
            Ok((returns, confirms)) => Ok(Box::new(AmqpPublisher {
                channel,
                blocked,
                confirm_timeout: self.confirm_timeout,
                confirms,
                returns,
                seq: 0,
                declared: Vec::new(),
            })),
            Err(e) => {
                Self::reset(&self.publishing, generation, &e);
                Err(broker_error("enabling publisher confirms", &e))
            }
        }
    }

    fn consume(
        &self,
        spec: &ConsumeSpec,
        sink: &mut dyn Sink,
        control: &Receiver<Control>,
    ) -> Result<()> {
        let (channel, generation) = self.channel(&self.consuming, self.heartbeat)?;
        match consume_on(&channel, spec, sink, control) {
            Ok(()) => {
                let _ = channel.close();
                Ok(())
            }
            Err(e) => {
                Self::reset(&self.consuming, generation, &e);
                Err(broker_error("consuming", &e))
            }
        }
    }

    fn reply_source(&self, queue: &QueueSpec) -> Result<Arc<dyn ReplySource>> {
        let (channel, generation) = self.channel(&self.consuming, self.heartbeat)?;
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let queue = queue.clone();
        let slot = self.consuming.clone();
        // amiquip's Consumer borrows its Channel, so a thread keeps both alive while callers
        // read a clone of the consumer's receiver.
        let thread = std::thread::Builder::new()
            .name("enoki-reply-queue".into())
            .spawn(move || {
                // Automatic acks, as Nameko consumes replies: acking them cost about 90 µs per
                // call at p50 here (a persistent message held unacked in a durable queue). A
                // reply lost in flight with its connection is covered by the caller instead
                // (see `Pending`).
                let consumer = declare_queue(&channel, &queue).and_then(|()| {
                    channel.basic_consume(
                        queue.name.clone(),
                        ConsumerOptions {
                            no_local: false,
                            no_ack: true,
                            exclusive: false,
                            arguments: FieldTable::default(),
                        },
                    )
                });
                match consumer {
                    Ok(consumer) => {
                        let _ = ready_tx.send(Ok(consumer.receiver().clone()));
                        // Until the source is dropped (the sender goes with it).
                        let _ = stop_rx.recv();
                        if consumer.cancel().is_ok() {
                            await_cancelled(consumer.receiver());
                        }
                        // The channel closes when this thread ends and drops it.
                    }
                    Err(e) => {
                        AmqpTransport::reset(&slot, generation, &e);
                        let _ = ready_tx.send(Err(broker_error("consuming the reply queue", &e)));
                    }
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok(rx)) => Ok(Arc::new(AmqpReplySource {
                rx,
                _keeper: Keeper {
                    stop: Some(stop_tx),
                    thread: Some(thread),
                },
                slot: self.consuming.clone(),
                generation,
            })),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(Error::broker(
                "the reply queue consumer died while starting",
            )),
        }
    }
}

/// A reply queue consumer whose deliveries the waiting callers read themselves.
struct AmqpReplySource {
    rx: Receiver<ConsumerMessage>,
    _keeper: Keeper,
    slot: Arc<Mutex<Slot>>,
    generation: u64,
}

impl fmt::Debug for AmqpReplySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpReplySource")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// The thread that owns the reply queue's channel and consumer; told to stop by a dropped
/// sender.
struct Keeper {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

impl ReplySource for AmqpReplySource {
    fn wait(&self, own: &Receiver<Result<Vec<u8>>>, deadline: Option<Instant>) -> Wait {
        let received = match crate::transport::wait_on(own, &self.rx, deadline) {
            Ok(received) => received,
            Err(done) => return done,
        };
        let lost = match received {
            Ok(ConsumerMessage::Delivery(mut delivery)) => {
                let message = Message {
                    exchange: std::mem::take(&mut delivery.exchange),
                    routing_key: std::mem::take(&mut delivery.routing_key),
                    properties: properties_from_amqp(std::mem::take(&mut delivery.properties)),
                    body: std::mem::take(&mut delivery.body),
                    redelivered: delivery.redelivered,
                };
                return Wait::Message(message);
            }
            Ok(ConsumerMessage::ServerClosedChannel(e)) => {
                broker_error("reply queue channel closed", &e)
            }
            Ok(ConsumerMessage::ServerClosedConnection(e)) => {
                forget(&self.slot, self.generation);
                broker_error("reply queue connection closed", &e)
            }
            Ok(other) => Error::broker(format!("the reply queue consumer ended: {other:?}")),
            Err(_) => {
                forget(&self.slot, self.generation);
                Error::broker("the reply queue connection is gone")
            }
        };
        Wait::Lost(lost)
    }
}

fn exchange_type(kind: ExchangeKind) -> ExchangeType {
    match kind {
        ExchangeKind::Topic => ExchangeType::Topic,
        ExchangeKind::Direct => ExchangeType::Direct,
        ExchangeKind::Fanout => ExchangeType::Fanout,
    }
}

fn declare_exchange(channel: &Channel, exchange: &ExchangeSpec) -> amiquip::Result<()> {
    if exchange.name.is_empty() {
        return Ok(()); // the default exchange always exists
    }
    channel.exchange_declare(
        exchange_type(exchange.kind),
        exchange.name.clone(),
        ExchangeDeclareOptions {
            durable: exchange.durable,
            auto_delete: exchange.auto_delete,
            internal: false,
            arguments: FieldTable::default(),
        },
    )?;
    Ok(())
}

fn declare_queue(channel: &Channel, queue: &QueueSpec) -> amiquip::Result<()> {
    let mut arguments = FieldTable::default();
    if let Some(ms) = queue.expires_ms {
        // Nameko (kombu) sends x-expires as a signed 32-bit integer.
        arguments.insert("x-expires".into(), AmqpValue::LongInt(ms as i32));
    }
    channel.queue_declare(
        queue.name.clone(),
        QueueDeclareOptions {
            durable: queue.durable,
            exclusive: queue.exclusive,
            auto_delete: queue.auto_delete,
            arguments,
        },
    )?;
    for (exchange, key) in &queue.bindings {
        declare_exchange(channel, exchange)?;
        channel.queue_bind(
            queue.name.clone(),
            exchange.name.clone(),
            key.clone(),
            FieldTable::default(),
        )?;
    }
    Ok(())
}

/// A delivery handed to a worker, with the outcome it asks for: acks must go through the
/// channel that received it, which only the consumer thread may touch.
type Settlement = (amiquip::Delivery, Outcome);

/// The consume loop: declare and consume, hand the receivers to the workers, then settle what
/// they send back and follow `control`.
fn consume_on(
    channel: &Channel,
    spec: &ConsumeSpec,
    sink: &mut dyn Sink,
    control: &Receiver<Control>,
) -> amiquip::Result<()> {
    // Per-consumer QoS: RabbitMQ 4 rejects global QoS, and Nameko sets it per consumer.
    channel.qos(0, spec.prefetch, false)?;
    let mut consumers = Vec::with_capacity(spec.queues.len());
    for queue in &spec.queues {
        declare_queue(channel, queue)?;
        consumers.push(channel.basic_consume(
            queue.name.clone(),
            ConsumerOptions {
                no_local: false,
                no_ack: false,
                exclusive: false,
                arguments: FieldTable::default(),
            },
        )?);
    }
    let (settle_tx, settle_rx) = crossbeam_channel::unbounded::<Settlement>();
    let (lost_tx, lost_rx) = crossbeam_channel::bounded::<amiquip::Error>(1);
    // The source holds clones of the consumers' receivers for as long as any worker reads it,
    // so amiquip's ClientCancelled, sent after cancel() returns, always finds a receiver: a
    // receiver dropped before then makes amiquip close the whole (shared) connection.
    sink.ready(Arc::new(AmqpDeliverySource {
        receivers: consumers.iter().map(|c| c.receiver().clone()).collect(),
        settle: settle_tx,
        lost: lost_tx,
    }));

    let mut stopping = false;
    let settle = |(delivery, outcome): Settlement| match outcome {
        Outcome::Ack => delivery.ack(channel),
        Outcome::Reject { requeue } => delivery.reject(channel, requeue),
    };
    loop {
        crossbeam_channel::select! {
            recv(settle_rx) -> settlement => {
                if let Ok(settlement) = settlement {
                    settle(settlement)?;
                }
            }
            recv(lost_rx) -> lost => {
                // While stopping, ended receivers are the cancellation, not a lost connection.
                if let (Ok(error), false) = (lost, stopping) {
                    return Err(error);
                }
            }
            recv(control) -> order => match order {
                Ok(Control::Stop) => {
                    if !stopping {
                        stopping = true;
                        for consumer in &consumers {
                            consumer.cancel()?;
                        }
                    }
                }
                Ok(Control::Finish) => {
                    while let Ok(settlement) = settle_rx.try_recv() {
                        settle(settlement)?;
                    }
                    return Ok(());
                }
                // A dropped control sender means the owner is gone: same as kill.
                Ok(Control::Kill) | Err(_) => {
                    for consumer in &consumers {
                        let _ = consumer.cancel();
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// The consumers' receivers, read by the workers.
struct AmqpDeliverySource {
    receivers: Vec<Receiver<ConsumerMessage>>,
    settle: crossbeam_channel::Sender<Settlement>,
    lost: crossbeam_channel::Sender<amiquip::Error>,
}

impl fmt::Debug for AmqpDeliverySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpDeliverySource")
            .field("queues", &self.receivers.len())
            .finish_non_exhaustive()
    }
}

impl DeliverySource for AmqpDeliverySource {
    fn queues(&self) -> usize {
        self.receivers.len()
    }

    fn register<'a>(&'a self, queue: usize, select: &mut Select<'a>) -> usize {
        select.recv(&self.receivers[queue])
    }

    fn complete(&self, queue: usize, operation: SelectedOperation<'_>) -> Received {
        match operation.recv(&self.receivers[queue]) {
            Ok(ConsumerMessage::Delivery(mut delivery)) => {
                let message = Message {
                    exchange: std::mem::take(&mut delivery.exchange),
                    routing_key: std::mem::take(&mut delivery.routing_key),
                    properties: properties_from_amqp(std::mem::take(&mut delivery.properties)),
                    body: std::mem::take(&mut delivery.body),
                    redelivered: delivery.redelivered,
                };
                let settle = self.settle.clone();
                Received::Delivery(Delivery {
                    queue,
                    message,
                    acker: Acker::new(move |outcome| {
                        // The consumer thread may be gone (connection lost); the broker then
                        // redelivers anyway.
                        let _ = settle.send((delivery, outcome));
                    }),
                })
            }
            Ok(ConsumerMessage::ClientCancelled) => Received::Ended,
            Ok(ConsumerMessage::ServerClosedChannel(e))
            | Ok(ConsumerMessage::ServerClosedConnection(e)) => {
                let _ = self.lost.try_send(e);
                Received::Ended
            }
            Ok(ConsumerMessage::ServerCancelled) => {
                let _ = self.lost.try_send(amiquip::Error::ServerClosedChannel {
                    channel_id: 0,
                    code: 0,
                    message: "the broker cancelled the consumer".into(),
                });
                Received::Ended
            }
            Ok(ConsumerMessage::ClientClosedChannel)
            | Ok(ConsumerMessage::ClientClosedConnection)
            | Err(_) => {
                let _ = self.lost.try_send(amiquip::Error::EventLoopDropped);
                Received::Ended
            }
        }
    }
}

/// Waits (briefly) for a cancelled consumer's `ClientCancelled`, dropping deliveries that
/// arrive first: unacked, they go back to the queue when the channel closes.
fn await_cancelled(receiver: &Receiver<ConsumerMessage>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match receiver.recv_timeout(left) {
            Ok(ConsumerMessage::Delivery(_)) => continue,
            Ok(_) | Err(_) => return,
        }
    }
}

struct AmqpPublisher {
    channel: Channel,
    blocked: Arc<AtomicBool>,
    confirm_timeout: Duration,
    confirms: Receiver<Confirm>,
    returns: Receiver<Return>,
    seq: u64,
    declared: Vec<String>,
}

impl Publisher for AmqpPublisher {
    fn declare_exchange(&mut self, exchange: &ExchangeSpec) -> Result<()> {
        if self.declared.contains(&exchange.name) {
            return Ok(());
        }
        declare_exchange(&self.channel, exchange)
            .map_err(|e| broker_error(&format!("declaring exchange {}", exchange.name), &e))?;
        self.declared.push(exchange.name.clone());
        Ok(())
    }

    fn publish(&mut self, message: Outgoing<'_>) -> Result<Published> {
        self.publish_by(message, None)
    }

    fn publish_by(
        &mut self,
        message: Outgoing<'_>,
        deadline: Option<Instant>,
    ) -> Result<Published> {
        let started = Instant::now();
        let caller_deadline = deadline.is_some();
        let mut deadline = deadline.unwrap_or(started + self.confirm_timeout);
        self.channel
            .basic_publish(
                message.exchange,
                Publish {
                    body: message.body,
                    routing_key: message.routing_key.to_owned(),
                    mandatory: message.mandatory,
                    immediate: false,
                    properties: properties_to_amqp(message.properties),
                },
            )
            .map_err(|e| broker_error("publishing", &e))?;
        self.seq += 1;
        let seq = self.seq;
        loop {
            match self.confirms.recv_deadline(deadline) {
                Ok(Confirm::Ack(p))
                    if p.delivery_tag == seq || (p.multiple && p.delivery_tag > seq) =>
                {
                    break;
                }
                Ok(Confirm::Nack(p))
                    if p.delivery_tag == seq || (p.multiple && p.delivery_tag > seq) =>
                {
                    return Err(Error::broker("the broker nacked the publish"));
                }
                // Confirms for earlier publishes (one at a time per channel, so only stale ones).
                Ok(_) => continue,
                // Either way the caller retires this publisher: a late confirm would put its
                // sequence out of step.
                Err(RecvTimeoutError::Timeout) if caller_deadline => {
                    return Err(Error::new(crate::ErrorKind::Timeout(
                        deadline.saturating_duration_since(started),
                    )));
                }
                // A blocked broker reads nothing from us until the alarm clears: waiting it
                // out is the pause; failing would only make callers retry into the block.
                Err(RecvTimeoutError::Timeout) if self.blocked.load(Ordering::Acquire) => {
                    deadline = Instant::now() + self.confirm_timeout;
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::broker(format!(
                        "no publisher confirm within {:?}",
                        self.confirm_timeout
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::broker(
                        "connection lost while waiting for a publisher confirm",
                    ));
                }
            }
        }
        // The broker sends basic.return before the confirm of the same message, and amiquip's
        // I/O thread forwards frames in order, so a return for this publish is already queued.
        if self.returns.try_recv().is_ok() {
            return Ok(Published::Returned);
        }
        Ok(Published::Confirmed)
    }
}

pub(crate) fn properties_to_amqp(p: &Properties) -> AmqpProperties {
    let mut out = AmqpProperties::default();
    if let Some(v) = &p.content_type {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = &p.content_encoding {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = &p.correlation_id {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = &p.reply_to {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.delivery_mode {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        out = out.with_priority(v);
    }
    let mut table = FieldTable::default();
    for (key, value) in &p.headers {
        if let Some(v) = json_to_amqp(value) {
            table.insert(key.clone(), v);
        }
    }
    out.with_headers(table)
}

pub(crate) fn properties_from_amqp(p: AmqpProperties) -> Properties {
    let headers: Headers = p
        .headers()
        .as_ref()
        .map(|table| {
            table
                .iter()
                .map(|(k, v)| (k.clone(), amqp_to_json(v)))
                .collect()
        })
        .unwrap_or_default();
    Properties {
        content_type: p.content_type().clone(),
        content_encoding: p.content_encoding().clone(),
        correlation_id: p.correlation_id().clone(),
        reply_to: p.reply_to().clone(),
        delivery_mode: *p.delivery_mode(),
        priority: *p.priority(),
        headers,
    }
}

/// JSON to an AMQP field value the way py-amqp encodes Python values; `null` is dropped, as
/// Nameko drops `None` context values.
pub(crate) fn json_to_amqp(value: &Value) -> Option<AmqpValue> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => AmqpValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                AmqpValue::LongLongInt(i)
            } else if let Some(f) = n.as_f64() {
                AmqpValue::Double(f)
            } else {
                return None;
            }
        }
        Value::String(s) => AmqpValue::LongString(s.clone()),
        Value::Array(items) => AmqpValue::FieldArray(
            items
                .iter()
                .map(|v| json_to_amqp(v).unwrap_or(AmqpValue::Void))
                .collect(),
        ),
        Value::Object(map) => AmqpValue::FieldTable(
            map.iter()
                .filter_map(|(k, v)| json_to_amqp(v).map(|v| (k.clone(), v)))
                .collect(),
        ),
    })
}

/// How deep header values are read: as deep as serde_json reads a JSON body. A header frame
/// can nest arrays some 26,000 levels deep, enough to overflow a thread's stack when converted
/// recursively.
const MAX_HEADER_DEPTH: usize = 128;

/// An AMQP field value as JSON; decimals become numbers, byte arrays lossy UTF-8 text. Arrays and
/// tables nested deeper than [`MAX_HEADER_DEPTH`] read as `null`.
pub(crate) fn amqp_to_json(value: &AmqpValue) -> Value {
    to_json(value, MAX_HEADER_DEPTH)
}

fn to_json(value: &AmqpValue, depth: usize) -> Value {
    match value {
        AmqpValue::Boolean(b) => Value::Bool(*b),
        AmqpValue::ShortShortInt(i) => Value::from(*i),
        AmqpValue::ShortShortUInt(i) => Value::from(*i),
        AmqpValue::ShortInt(i) => Value::from(*i),
        AmqpValue::ShortUInt(i) => Value::from(*i),
        AmqpValue::LongInt(i) => Value::from(*i),
        AmqpValue::LongUInt(i) => Value::from(*i),
        AmqpValue::LongLongInt(i) => Value::from(*i),
        AmqpValue::Float(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        AmqpValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AmqpValue::DecimalValue(d) => {
            let v = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        AmqpValue::LongString(s) => Value::String(s.clone()),
        AmqpValue::FieldArray(_) | AmqpValue::FieldTable(_) if depth == 0 => Value::Null,
        AmqpValue::FieldArray(items) => {
            Value::Array(items.iter().map(|item| to_json(item, depth - 1)).collect())
        }
        AmqpValue::Timestamp(t) => Value::from(*t),
        AmqpValue::FieldTable(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v, depth - 1)))
                .collect(),
        ),
        AmqpValue::ByteArray(bytes) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        AmqpValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headers_round_trip_through_amqp_values() {
        let value = json!({"s": "x", "i": -3, "f": 1.5, "b": true, "a": ["p", 1], "t": {"k": "v"}});
        let amqp = json_to_amqp(&value).expect("encodable");
        assert_eq!(amqp_to_json(&amqp), value);
    }

    #[test]
    fn null_header_values_are_dropped() {
        let amqp = json_to_amqp(&json!({"keep": 1, "drop": null})).expect("table");
        assert_eq!(amqp_to_json(&amqp), json!({"keep": 1}));
    }

    #[test]
    fn deeply_nested_headers_are_cut_off_not_recursed() {
        // Found by reasoning behind the amqp_properties fuzz target: a frame_max-sized header can
        // nest ~26,000 arrays; converting that recursively overflowed a worker's stack.
        let mut deep = AmqpValue::LongString("bottom".to_owned());
        for _ in 0..30_000 {
            deep = AmqpValue::FieldArray(vec![deep]);
        }
        let json = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let json = amqp_to_json(&deep);
                // Dropping 30,000 nested values recursively would overflow too.
                let mut items = Vec::new();
                if let AmqpValue::FieldArray(v) = deep {
                    items = v;
                }
                while let Some(AmqpValue::FieldArray(v)) = items.pop() {
                    items = v;
                }
                json
            })
            .expect("spawn")
            .join()
            .expect("no stack overflow");
        let mut levels = 0;
        let mut at = &json;
        while let Value::Array(items) = at {
            levels += 1;
            at = &items[0];
        }
        assert_eq!(levels, MAX_HEADER_DEPTH);
        assert_eq!(*at, Value::Null);
    }
}
