//! Raw messaging, as Nameko's `nameko.messaging`: the [`Publisher`] dependency (publish to any
//! exchange with any routing key) and the `consume` entrypoint (handle messages from any queue).
//!
//! The consuming half is shared with event handlers: a message is decoded as JSON into the
//! handler's payload type, its headers become context data, and it is settled after the handler
//! ran: acked on success, and on error acked too unless `requeue_on_error` is set, in which case
//! it goes back to the queue. Undecodable bodies are logged and acked, as kombu drops them.
//!
//! # Requeueing without spinning
//!
//! Nameko requeues a failed message at once, so a handler that always fails makes the broker
//! redeliver the message in a tight loop, one CPU at 100% for as long as it lasts. enoki requeues
//! a message at once the first time it fails (a passing glitch costs nothing), but a message the
//! broker has delivered before (`redelivered`) is held for the requeue delay (default one second,
//! [`Consume::requeue_delay`] and [`EventHandler::requeue_delay`](crate::EventHandler::requeue_delay))
//! before it goes back. Held messages stay unacked, so they count against the consumer's
//! prefetch: a queue of poison messages is redelivered at most `prefetch` times per delay, and the
//! workers stay free for other work. A graceful stop hands held messages back to the broker at
//! once.

use crate::container::{DeliveryHandler, Runtime, Worker};
use crate::context::{Outgoing as Context, WorkerContext};
use crate::dependency::{ContainerInfo, Dependency};
use crate::entrypoint::{Entrypoint, Input, Invocation, Invoked};
use crate::rpc::{JSON, PERSISTENT, UTF8, finish_worker, run_worker};
use crate::service::Service;
use crate::transport::{
    Acker, Delivery, ExchangeSpec, Headers, Outgoing, Properties, Published, QueueSpec,
    SharedTransport,
};
use crate::{Config, Error, Result};
use crossbeam_channel::{RecvTimeoutError, Sender};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a message that failed again waits before it is requeued, unless set otherwise.
pub(crate) const DEFAULT_REQUEUE_DELAY: Duration = Duration::from_secs(1);

/// A type-erased payload handler: decodes the JSON body into its type and runs.
pub(crate) type PayloadHandler = Arc<dyn Fn(&WorkerContext, &[u8]) -> Result<()> + Send + Sync>;

/// Wraps a typed closure as a [`PayloadHandler`].
pub(crate) fn payload_handler<T, F>(f: F) -> PayloadHandler
where
    T: DeserializeOwned,
    F: Fn(&WorkerContext, T) -> Result<()> + Send + Sync + 'static,
{
    Arc::new(move |ctx, body| f(ctx, decode_payload(body)?))
}

/// Decodes a JSON message or event body into the handler's type.
pub(crate) fn decode_payload<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice::<T>(body)
        .map_err(|e| Error::bad_input(format!("the payload does not fit the handler's type: {e}")))
}

/// Publishing channels shared by the threads of a dispatcher or publisher: each publish takes
/// one, so concurrent workers never wait on each other's confirms.
pub(crate) struct Channels {
    transport: SharedTransport,
    pool: Mutex<Vec<Box<dyn crate::transport::Publisher>>>,
}

impl fmt::Debug for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channels")
            .field("idle", &self.pool.lock().len())
            .finish_non_exhaustive()
    }
}

impl Channels {
    pub(crate) fn new(transport: SharedTransport) -> Arc<Channels> {
        Arc::new(Channels {
            transport,
            pool: Mutex::new(Vec::new()),
        })
    }

    /// Declares `exchange` (once per channel) and publishes `message` to it, waiting for the
    /// broker's confirm.
    pub(crate) fn publish(
        &self,
        exchange: Option<&ExchangeSpec>,
        message: Outgoing<'_>,
    ) -> Result<Published> {
        let pooled = self.pool.lock().pop();
        let mut publisher = match pooled {
            Some(p) => p,
            None => self.transport.publisher()?,
        };
        let result = match exchange {
            Some(exchange) => publisher.declare_exchange(exchange),
            None => Ok(()),
        }
        .and_then(|()| publisher.publish(message));
        // A channel that failed may be broken; only healthy ones go back to the pool.
        if result.is_ok() {
            self.give_back(publisher);
        }
        result
    }

    /// Adds an open channel to the pool.
    pub(crate) fn give_back(&self, publisher: Box<dyn crate::transport::Publisher>) {
        self.pool.lock().push(publisher);
    }

    /// Closes the idle channels.
    pub(crate) fn clear(&self) {
        self.pool.lock().clear();
    }
}

/// The properties Nameko's publishers put on every message: JSON, persistent, priority 0, and
/// the context headers.
pub(crate) fn json_properties(headers: Headers) -> Properties {
    Properties {
        content_type: Some(JSON.to_owned()),
        content_encoding: Some(UTF8.to_owned()),
        correlation_id: None,
        reply_to: None,
        delivery_mode: Some(PERSISTENT),
        priority: Some(0),
        headers,
    }
}

/// Holds failed messages for a while before handing them back to the broker.
pub(crate) struct Requeue {
    delay: Duration,
    state: Mutex<RequeueState>,
}

#[derive(Default)]
struct RequeueState {
    tx: Option<Sender<(Instant, Acker)>>,
    thread: Option<JoinHandle<()>>,
    closed: bool,
}

impl Requeue {
    pub(crate) fn new(delay: Duration) -> Arc<Requeue> {
        Arc::new(Requeue {
            delay,
            state: Mutex::new(RequeueState::default()),
        })
    }

    /// Requeues the message of `acker`: at once if this is its first failure (or the delay is
    /// zero), after the delay if the broker delivered it before.
    pub(crate) fn requeue(&self, acker: Acker, redelivered: bool) {
        if !redelivered || self.delay.is_zero() {
            acker.reject(true);
            return;
        }
        let due = Instant::now() + self.delay;
        let mut state = self.state.lock();
        if state.closed {
            drop(state);
            acker.reject(true);
            return;
        }
        if state.tx.is_none() {
            let (tx, rx) = crossbeam_channel::unbounded::<(Instant, Acker)>();
            let spawned = std::thread::Builder::new()
                .name("enoki-requeue".into())
                .spawn(move || {
                    // The delay is fixed, so messages fall due in the order they arrive.
                    let mut held: VecDeque<(Instant, Acker)> = VecDeque::new();
                    loop {
                        let next = match held.front() {
                            Some((due, _)) => rx.recv_deadline(*due),
                            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                        };
                        match next {
                            Ok(item) => held.push_back(item),
                            Err(RecvTimeoutError::Timeout) => {
                                if let Some((_, acker)) = held.pop_front() {
                                    acker.reject(true);
                                }
                            }
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    for (_, acker) in held {
                        acker.reject(true);
                    }
                });
            match spawned {
                Ok(thread) => {
                    state.tx = Some(tx);
                    state.thread = Some(thread);
                }
                Err(e) => {
                    log::error!("cannot start the requeue thread: {e}; requeueing at once");
                    drop(state);
                    acker.reject(true);
                    return;
                }
            }
        }
        if let Some(tx) = &state.tx
            && let Err(e) = tx.send((due, acker))
        {
            let (_, acker) = e.into_inner();
            acker.reject(true);
        }
    }

    /// Hands every held message back to the broker now; later failures requeue at once.
    pub(crate) fn close(&self) {
        let thread = {
            let mut state = self.state.lock();
            state.closed = true;
            state.tx = None;
            state.thread.take()
        };
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// Handles the deliveries of one queue with Nameko's consumer rules: decode, run the handler
/// in a worker, settle.
pub(crate) struct Consumer {
    pub(crate) name: Arc<str>,
    pub(crate) handler: PayloadHandler,
    pub(crate) requeue_on_error: bool,
    pub(crate) requeue: Arc<Requeue>,
}

impl DeliveryHandler for Consumer {
    fn handle(&self, runtime: &Arc<Runtime>, delivery: Delivery, _worker: &mut Worker) {
        let Delivery {
            mut message, acker, ..
        } = delivery;
        let headers = std::mem::take(&mut message.properties.headers);
        // Like kombu, a message in a content type we do not accept, or whose body is not JSON,
        // is logged and dropped: no handler could ever take it.
        let content_type = message.properties.content_type.as_deref();
        if content_type.is_some_and(|t| t != JSON) {
            log::warn!(
                "{}.{}: dropping a message in unsupported content type {content_type:?} (from \
                 call {})",
                runtime.service_name,
                self.name,
                crate::rpc::caller_call_id(&headers)
            );
            acker.ack();
            return;
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&message.body) {
            log::warn!(
                "{}.{}: dropping a message that is not JSON: {e} (from call {})",
                runtime.service_name,
                self.name,
                crate::rpc::caller_call_id(&headers)
            );
            acker.ack();
            return;
        }
        let mut ctx = WorkerContext::new(runtime.clone(), self.name.clone(), headers);
        let outcome = run_worker(runtime, &mut ctx, |ctx| (self.handler)(ctx, &message.body));
        match (&outcome, self.requeue_on_error) {
            (Err(_), true) => self.requeue.requeue(acker, message.redelivered),
            _ => acker.ack(),
        }
        finish_worker(runtime, &ctx, outcome.as_ref().map(|()| "null"));
    }
}

/// Runs `handler` once on `call`'s payload as the worker of a delivery would (for
/// [`Entrypoint::invoke`] of event handlers and consumers).
pub(crate) fn invoke_payload(
    runtime: &Arc<Runtime>,
    (kind, name): (&str, &Arc<str>),
    handler: &PayloadHandler,
    call: Invocation,
) -> Result<Invoked> {
    let Input::Payload(body) = &call.input else {
        return Err(call.input.refused(kind, name, "a JSON payload"));
    };
    let mut ctx = WorkerContext::new(runtime.clone(), name.clone(), call.headers);
    let outcome = run_worker(runtime, &mut ctx, |ctx| handler(ctx, body));
    finish_worker(runtime, &ctx, outcome.as_ref().map(|()| "null"));
    outcome.map(|()| Invoked::Done)
}

/// Options of a `consume` entrypoint, as Nameko's `@consume(queue, requeue_on_error=False)`.
///
/// ```
/// use enoki::transport::{ExchangeSpec, QueueSpec};
/// use enoki::{Consume, Service};
///
/// let queue = QueueSpec::durable("orders").bind(ExchangeSpec::topic("shop"), "order.*");
/// let service = Service::new("fulfilment").consume_with(
///     Consume::new(queue).name("take_order").requeue_on_error(true),
///     |_ctx, order: serde_json::Value| {
///         println!("{order}");
///         Ok(())
///     },
/// );
/// # let _ = service;
/// ```
#[derive(Debug, Clone)]
pub struct Consume {
    queue: QueueSpec,
    name: Option<String>,
    requeue_on_error: bool,
    requeue_delay: Duration,
}

impl Consume {
    /// Consumes `queue`, which is declared (with its bindings and their exchanges) whenever the
    /// consumer connects.
    pub fn new(queue: QueueSpec) -> Consume {
        Consume {
            queue,
            name: None,
            requeue_on_error: false,
            requeue_delay: DEFAULT_REQUEUE_DELAY,
        }
    }

    /// The entrypoint's name, Nameko's method name: it makes the workers' call ids
    /// (`<service>.<name>.<uuid>`). Default: `consume_<queue>`.
    pub fn name(mut self, name: impl Into<String>) -> Consume {
        self.name = Some(name.into());
        self
    }

    /// Put a message back on the queue when its handler fails, instead of acking it. Default:
    /// false (the failure is logged and the message dropped), as in Nameko.
    pub fn requeue_on_error(mut self, requeue: bool) -> Consume {
        self.requeue_on_error = requeue;
        self
    }

    /// How long a message that fails again is held before it is requeued (see the module
    /// docs); zero requeues at once, as Nameko does. Default: one second.
    pub fn requeue_delay(mut self, delay: Duration) -> Consume {
        self.requeue_delay = delay;
        self
    }
}

/// The `consume` entrypoint.
struct ConsumeEntrypoint {
    options: Consume,
    name: String,
    handler: PayloadHandler,
    requeue: Arc<Requeue>,
    conflict: Option<String>,
}

impl fmt::Debug for ConsumeEntrypoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consume")
            .field("name", &self.name)
            .field("queue", &self.options.queue.name)
            .field("requeue_on_error", &self.options.requeue_on_error)
            .finish_non_exhaustive()
    }
}

impl Entrypoint for ConsumeEntrypoint {
    fn kind(&self) -> &'static str {
        "consume"
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"kind": self.kind(), "name": self.name, "queue": self.options.queue.name})
    }

    fn validate(&self, _service: &str, _config: &Config) -> Result<()> {
        if let Some(conflict) = &self.conflict {
            return Err(Error::config(conflict.clone()));
        }
        if self.options.queue.name.is_empty() {
            return Err(Error::config(
                "consume needs a named queue (the broker would name an empty one)",
            ));
        }
        Ok(())
    }

    fn queues(
        &self,
        _service: &str,
        _config: &Config,
    ) -> Result<Vec<(QueueSpec, Arc<dyn DeliveryHandler>)>> {
        let consumer = Consumer {
            name: Arc::from(self.name.as_str()),
            handler: self.handler.clone(),
            requeue_on_error: self.options.requeue_on_error,
            requeue: self.requeue.clone(),
        };
        Ok(vec![(self.options.queue.clone(), Arc::new(consumer))])
    }

    fn stop(&mut self) {
        self.requeue.close();
    }

    fn invoke(&self, runtime: &Arc<Runtime>, call: Invocation) -> Result<Invoked> {
        let name = Arc::from(self.name.as_str());
        invoke_payload(runtime, (self.kind(), &name), &self.handler, call)
    }
}

/// The error to report at start if `name` is already taken by an entrypoint of `service`.
pub(crate) fn name_conflict(service: &Service, kind: &str, name: &str) -> Option<String> {
    service
        .entrypoints
        .iter()
        .any(|e| e.name() == name && matches!(e.kind(), "event_handler" | "consume"))
        .then(|| {
            format!(
                "{kind} `{name}` on `{}` clashes with another handler of that name; give one \
                 of them another name with `.name(...)`",
                service.name
            )
        })
}

impl Service {
    /// Handles messages from any queue, as Nameko's `@consume(queue)`: the JSON body is decoded
    /// into the handler's payload type, headers become context data, and the message is acked
    /// after the handler ran (also when it failed: see [`consume_with`](Service::consume_with)
    /// for `requeue_on_error`). A panic is an error like any other.
    ///
    /// ```
    /// use enoki::Service;
    /// use enoki::transport::{ExchangeSpec, QueueSpec};
    ///
    /// let queue = QueueSpec::durable("audit").bind(ExchangeSpec::topic("audit"), "#");
    /// let service = Service::new("auditor").consume(queue, |ctx, entry: serde_json::Value| {
    ///     println!("{}: {entry}", ctx.call_id());
    ///     Ok(())
    /// });
    /// # let _ = service;
    /// ```
    pub fn consume<T, F>(self, queue: QueueSpec, f: F) -> Service
    where
        T: DeserializeOwned + 'static,
        F: Fn(&WorkerContext, T) -> Result<()> + Send + Sync + 'static,
    {
        self.consume_with(Consume::new(queue), f)
    }

    /// [`consume`](Service::consume) with options.
    pub fn consume_with<T, F>(self, options: Consume, f: F) -> Service
    where
        T: DeserializeOwned + 'static,
        F: Fn(&WorkerContext, T) -> Result<()> + Send + Sync + 'static,
    {
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| format!("consume_{}", options.queue.name));
        let conflict = name_conflict(&self, "consume", &name);
        let requeue = Requeue::new(options.requeue_delay);
        self.entrypoint(ConsumeEntrypoint {
            options,
            name,
            handler: payload_handler(f),
            requeue,
            conflict,
        })
    }
}

/// A dependency that publishes messages, as Nameko's `Publisher(exchange=...)`: each worker
/// gets a [`MessagePublisher`] that publishes JSON to the exchange with the worker's context
/// headers, persistent, with publisher confirms.
///
/// The exchange is declared when the container starts. Nameko's `declare=[queue, ...]` has no
/// counterpart: a queue is declared, with its bindings, by the service that consumes it
/// ([`Service::consume`]).
///
/// ```no_run
/// use enoki::transport::ExchangeSpec;
/// use enoki::{MessagePublisher, Publisher, Service};
///
/// let service = Service::new("shop")
///     .dependency("orders", Publisher::new(ExchangeSpec::topic("shop")))
///     .rpc("order", |ctx, (item,): (String,)| {
///         let orders = ctx.dependency::<Publisher>("orders")?;
///         orders.publish("order.placed", &serde_json::json!({"item": item}))?;
///         Ok(())
///     });
/// # let _ = service;
/// ```
pub struct Publisher {
    exchange: Option<ExchangeSpec>,
    channels: Mutex<Option<Arc<Channels>>>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Publishes to `exchange`, declared when the container starts.
    pub fn new(exchange: ExchangeSpec) -> Publisher {
        Publisher {
            exchange: Some(exchange),
            channels: Mutex::new(None),
        }
    }

    /// Publishes to the default exchange (`""`), which routes to the queue named by the
    /// routing key.
    pub fn default_exchange() -> Publisher {
        Publisher {
            exchange: None,
            channels: Mutex::new(None),
        }
    }
}

impl Dependency for Publisher {
    type Value = MessagePublisher;

    fn setup(&self, container: &ContainerInfo) -> Result<()> {
        let channels = Channels::new(container.runtime.transport.clone());
        if let Some(exchange) = &self.exchange {
            // Declared now, as Nameko's Publisher does at setup, so a misconfigured exchange
            // fails the start rather than the first publish.
            let mut publisher = container.runtime.transport.publisher()?;
            publisher.declare_exchange(exchange)?;
            channels.give_back(publisher);
        }
        *self.channels.lock() = Some(channels);
        Ok(())
    }

    fn stop(&self) {
        if let Some(channels) = self.channels.lock().take() {
            channels.clear();
        }
    }

    fn inject(&self, ctx: &WorkerContext) -> Result<MessagePublisher> {
        let channels = self
            .channels
            .lock()
            .clone()
            .ok_or_else(|| Error::new(crate::ErrorKind::Stopped))?;
        Ok(MessagePublisher {
            channels,
            exchange: self.exchange.clone(),
            context: ctx.outgoing().clone(),
        })
    }
}

/// Options of one publish beyond the routing key.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Extra headers; the context headers (`nameko.*`) win over them, as in Nameko.
    pub headers: Headers,
    /// Ask the broker to return the message if no queue is bound for it; the publish then fails
    /// with a broker error. Default false, as in Nameko.
    pub mandatory: bool,
    /// `delivery_mode`; `None` means 2 (persistent), as in Nameko.
    pub delivery_mode: Option<u8>,
    /// `priority`; `None` means 0.
    pub priority: Option<u8>,
}

/// What a [`Publisher`] injects: publishes with the worker's context headers.
#[derive(Clone)]
pub struct MessagePublisher {
    channels: Arc<Channels>,
    exchange: Option<ExchangeSpec>,
    context: Arc<Context>,
}

impl fmt::Debug for MessagePublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessagePublisher")
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl MessagePublisher {
    /// Publishes `payload` as JSON with `routing_key` and waits for the broker's confirm.
    pub fn publish<T: Serialize + ?Sized>(&self, routing_key: &str, payload: &T) -> Result<()> {
        self.publish_with(routing_key, payload, PublishOptions::default())
    }

    /// [`publish`](MessagePublisher::publish) with options.
    pub fn publish_with<T: Serialize + ?Sized>(
        &self,
        routing_key: &str,
        payload: &T,
        options: PublishOptions,
    ) -> Result<()> {
        let body = serde_json::to_vec(payload)?;
        let mut headers = options.headers;
        headers.extend(self.context.headers());
        let mut properties = json_properties(headers);
        if options.delivery_mode.is_some() {
            properties.delivery_mode = options.delivery_mode;
        }
        if options.priority.is_some() {
            properties.priority = options.priority;
        }
        let exchange = self.exchange.as_ref().map_or("", |e| e.name.as_str());
        let published = self.channels.publish(
            self.exchange.as_ref(),
            Outgoing {
                exchange,
                routing_key,
                properties: &properties,
                body: &body,
                mandatory: options.mandatory,
            },
        )?;
        match published {
            Published::Confirmed => Ok(()),
            Published::Returned => Err(Error::broker(format!(
                "undeliverable: no queue is bound to `{exchange}` for `{routing_key}`"
            ))),
        }
    }
}
