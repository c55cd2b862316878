//! Events, as Nameko's `nameko.events`: publish-subscribe between services.
//!
//! A service dispatches an event with the [`EventDispatcher`] dependency (or any program with a
//! [`StandaloneDispatcher`]): a JSON payload published to the durable topic exchange
//! `<source>.events`, routed by the event type, persistent, with the dispatching worker's context
//! headers and publisher confirms. Handlers subscribe with [`Service::event_handler`] or
//! [`Service::event_handler_with`]; each handler consumes a queue bound to that exchange with the
//! event type, named and flagged exactly as Nameko names and flags it, so enoki and Python
//! services handle each other's events:
//!
//! | handler type | queue | auto-delete | exclusive |
//! |---|---|---|---|
//! | [`HandlerType::ServicePool`] | `evt-<source>-<type>--<service>.<name>` | `!reliable_delivery` | no |
//! | [`HandlerType::Singleton`] | `evt-<source>-<type>` | `!reliable_delivery` | no |
//! | [`HandlerType::Broadcast`] | `evt-<source>-<type>--<service>.<name>-<identifier>` | `!reliable_delivery` | `!reliable_delivery` |
//!
//! All are declared durable. A service-pool event is handled once by one instance of each
//! handling service, a singleton event once by one instance of any service, a broadcast event
//! once by every instance. Acking follows [`messaging`](crate::messaging): after the handler,
//! requeued on error only with `requeue_on_error`, never in a tight loop.

use crate::context::{Outgoing as Context, WorkerContext};
use crate::dependency::{ContainerInfo, Dependency};
use crate::entrypoint::{Entrypoint, Invocation, Invoked};
use crate::messaging::{
    Channels, Consumer, DEFAULT_REQUEUE_DELAY, PayloadHandler, Requeue, invoke_payload,
    json_properties, name_conflict, payload_handler,
};
use crate::service::Service;
use crate::transport::{ExchangeSpec, Headers, Outgoing, QueueSpec};
use crate::{Config, Error, ErrorKind, Result};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The exchange events of `source` go to, as Nameko declares it: `<source>.events`, topic,
/// durable, auto-delete only if `AUTO_DELETE_EVENT_EXCHANGES` is set.
pub(crate) fn event_exchange(source: &str, config: &Config) -> ExchangeSpec {
    let mut exchange = ExchangeSpec::topic(format!("{source}.events"));
    exchange.auto_delete = config
        .get("AUTO_DELETE_EVENT_EXCHANGES")
        .is_some_and(truthy);
    exchange
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// How the instances of handling services share an event, as Nameko's handler types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HandlerType {
    /// Each handling service gets the event once, handled by one of its instances (`service_pool`).
    #[default]
    ServicePool,
    /// Only one instance of all the services handling this event gets it (`singleton`).
    Singleton,
    /// Every instance gets the event (`broadcast`).
    Broadcast,
}

impl HandlerType {
    /// Nameko's name for it: `service_pool`, `singleton`, `broadcast`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerType::ServicePool => "service_pool",
            HandlerType::Singleton => "singleton",
            HandlerType::Broadcast => "broadcast",
        }
    }
}

/// Options of an event handler, as the arguments of Nameko's
/// `@event_handler(source_service, event_type, handler_type, reliable_delivery, requeue_on_error)`.
///
/// ```
/// use enoki::{EventHandler, HandlerType, Service};
///
/// // Every instance hears it; the queue goes away with the instance.
/// let service = Service::new("cache").event_handler_with(
///     EventHandler::new("catalog", "price_changed")
///         .handler_type(HandlerType::Broadcast)
///         .reliable_delivery(false),
///     |_ctx, change: serde_json::Value| {
///         println!("invalidate {change}");
///         Ok(())
///     },
/// );
/// # let _ = service;
/// ```
#[derive(Debug, Clone)]
pub struct EventHandler {
    source: String,
    event_type: String,
    name: Option<String>,
    handler_type: HandlerType,
    reliable_delivery: bool,
    requeue_on_error: bool,
    broadcast_identifier: Option<String>,
    requeue_delay: Duration,
}

impl EventHandler {
    /// Handles events of `event_type` dispatched by the service `source`.
    pub fn new(source: impl Into<String>, event_type: impl Into<String>) -> EventHandler {
        EventHandler {
            source: source.into(),
            event_type: event_type.into(),
            name: None,
            handler_type: HandlerType::ServicePool,
            reliable_delivery: true,
            requeue_on_error: false,
            broadcast_identifier: None,
            requeue_delay: DEFAULT_REQUEUE_DELAY,
        }
    }

    /// The handler's name, Nameko's method name: it is part of the service-pool and broadcast
    /// queue names (a Python handler method of that name on a service of the same name shares
    /// the queue) and of the workers' call ids. Default: `handle_<event_type>`.
    pub fn name(mut self, name: impl Into<String>) -> EventHandler {
        self.name = Some(name.into());
        self
    }

    /// How instances share events. Default: [`HandlerType::ServicePool`].
    pub fn handler_type(mut self, handler_type: HandlerType) -> EventHandler {
        self.handler_type = handler_type;
        self
    }

    /// Keep the queue, and the events in it, while no instance runs. Default: true. When false
    /// the queue is auto-delete (and, for broadcast, exclusive): it goes with the last consumer.
    pub fn reliable_delivery(mut self, reliable: bool) -> EventHandler {
        self.reliable_delivery = reliable;
        self
    }

    /// Put an event back on the queue when its handler fails, instead of acking it. Default:
    /// false (the failure is logged and the event dropped), as in Nameko. See
    /// [`requeue_delay`](EventHandler::requeue_delay) for how a handler that always fails is
    /// kept from spinning.
    pub fn requeue_on_error(mut self, requeue: bool) -> EventHandler {
        self.requeue_on_error = requeue;
        self
    }

    /// How long an event that fails again (one the broker delivered before) is held before it
    /// is requeued; the first failure requeues at once. Zero requeues at once every time, as
    /// Nameko does, which makes a handler that always fails spin a CPU. Default: one second.
    pub fn requeue_delay(mut self, delay: Duration) -> EventHandler {
        self.requeue_delay = delay;
        self
    }

    /// The last part of a broadcast queue's name. Default: a fresh UUID per container start,
    /// so each instance has its own queue; that queue cannot outlive the instance, so Nameko
    /// refuses the default with `reliable_delivery` (a configuration error at start). Set a
    /// stable identifier (the hostname, say) for a broadcast queue that survives restarts.
    pub fn broadcast_identifier(mut self, identifier: impl Into<String>) -> EventHandler {
        self.broadcast_identifier = Some(identifier.into());
        self
    }

    fn method(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("handle_{}", self.event_type))
    }

    /// The queue this handler consumes, as Nameko's `EventHandler.setup` declares it.
    fn queue(&self, service: &str, config: &Config, identifier: &str) -> QueueSpec {
        let (source, event_type) = (&self.source, &self.event_type);
        let pool_name = format!("evt-{source}-{event_type}--{service}.{}", self.method());
        let name = match self.handler_type {
            HandlerType::ServicePool => pool_name,
            HandlerType::Singleton => format!("evt-{source}-{event_type}"),
            HandlerType::Broadcast => format!("{pool_name}-{identifier}"),
        };
        let mut queue =
            QueueSpec::durable(name).bind(event_exchange(source, config), event_type.clone());
        queue.auto_delete = !self.reliable_delivery;
        queue.exclusive = self.handler_type == HandlerType::Broadcast && !self.reliable_delivery;
        queue
    }
}

/// The `event_handler` entrypoint.
struct EventEntrypoint {
    options: EventHandler,
    name: String,
    handler: PayloadHandler,
    requeue: Arc<Requeue>,
    conflict: Option<String>,
}

impl fmt::Debug for EventEntrypoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventHandler")
            .field("name", &self.name)
            .field("source", &self.options.source)
            .field("event_type", &self.options.event_type)
            .field("handler_type", &self.options.handler_type)
            .field("reliable_delivery", &self.options.reliable_delivery)
            .field("requeue_on_error", &self.options.requeue_on_error)
            .finish_non_exhaustive()
    }
}

impl Entrypoint for EventEntrypoint {
    fn kind(&self) -> &'static str {
        "event_handler"
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn describe(&self) -> Value {
        serde_json::json!({
            "kind": self.kind(),
            "name": self.name,
            "source": self.options.source,
            "event_type": self.options.event_type,
            "handler_type": self.options.handler_type.as_str(),
        })
    }

    fn validate(&self, service: &str, _config: &Config) -> Result<()> {
        if let Some(conflict) = &self.conflict {
            return Err(Error::config(conflict.clone()));
        }
        let options = &self.options;
        if options.source.is_empty() || options.event_type.is_empty() {
            return Err(Error::config(format!(
                "event handler `{}` on `{service}` needs a source service and an event type",
                self.name
            )));
        }
        if options.handler_type == HandlerType::Broadcast
            && options.reliable_delivery
            && options.broadcast_identifier.is_none()
        {
            // Nameko's EventHandlerConfigurationError.
            return Err(Error::config(format!(
                "event handler `{}` on `{service}`: you are using the default broadcast \
                 identifier which is not compatible with reliable delivery; set \
                 `reliable_delivery(false)` or a stable `broadcast_identifier`",
                self.name
            )));
        }
        Ok(())
    }

    fn queues(
        &self,
        service: &str,
        config: &Config,
    ) -> Result<Vec<(QueueSpec, Arc<dyn crate::container::DeliveryHandler>)>> {
        // Chosen once per start and kept across reconnections, as Nameko picks it at setup.
        let identifier = self
            .options
            .broadcast_identifier
            .clone()
            .unwrap_or_else(|| crate::id::uuid4().simple().to_string());
        let queue = self.options.queue(service, config, &identifier);
        let consumer = Consumer {
            name: Arc::from(self.name.as_str()),
            handler: self.handler.clone(),
            requeue_on_error: self.options.requeue_on_error,
            requeue: self.requeue.clone(),
        };
        Ok(vec![(queue, Arc::new(consumer))])
    }

    fn stop(&mut self) {
        self.requeue.close();
    }

    fn invoke(
        &self,
        runtime: &Arc<crate::container::Runtime>,
        call: Invocation,
    ) -> Result<Invoked> {
        let name = Arc::from(self.name.as_str());
        invoke_payload(runtime, (self.kind(), &name), &self.handler, call)
    }
}

impl Service {
    /// Handles events of `event_type` from the service `source` with the default options of
    /// [`EventHandler`]: service pool, reliable delivery, no requeue on error, named
    /// `handle_<event_type>`.
    ///
    /// The JSON payload is decoded into the handler's type (a payload that does not fit is a
    /// handler error); the event's headers become the worker's context data, so a chain that
    /// started with an RPC call keeps its call id stack. The event is acked after the handler
    /// ran, also when it failed or panicked (then logged).
    ///
    /// ```
    /// use enoki::Service;
    /// use serde::Deserialize;
    ///
    /// #[derive(Deserialize)]
    /// struct Order {
    ///     id: u64,
    /// }
    ///
    /// let service = Service::new("billing").event_handler("shop", "order_placed", |_ctx, order: Order| {
    ///     println!("bill order {}", order.id);
    ///     Ok(())
    /// });
    /// # let _ = service;
    /// ```
    pub fn event_handler<T, F>(
        self,
        source: impl Into<String>,
        event_type: impl Into<String>,
        f: F,
    ) -> Service
    where
        T: DeserializeOwned + 'static,
        F: Fn(&WorkerContext, T) -> Result<()> + Send + Sync + 'static,
    {
        self.event_handler_with(EventHandler::new(source, event_type), f)
    }

    /// [`event_handler`](Service::event_handler) with options: handler type, reliable
    /// delivery, requeue on error, name.
    pub fn event_handler_with<T, F>(self, options: EventHandler, f: F) -> Service
    where
        T: DeserializeOwned + 'static,
        F: Fn(&WorkerContext, T) -> Result<()> + Send + Sync + 'static,
    {
        let name = options.method();
        let conflict = name_conflict(&self, "event handler", &name);
        let requeue = Requeue::new(options.requeue_delay);
        self.entrypoint(EventEntrypoint {
            options,
            name,
            handler: payload_handler(f),
            requeue,
            conflict,
        })
    }
}

/// Publishes one event on `channels`: JSON, persistent, priority 0, not mandatory (an event
/// nobody listens to is dropped by the broker, as in Nameko), confirmed.
fn publish_event<T: Serialize + ?Sized>(
    channels: &Channels,
    exchange: &ExchangeSpec,
    event_type: &str,
    payload: &T,
    headers: Headers,
) -> Result<()> {
    let body = serde_json::to_vec(payload)?;
    let properties = json_properties(headers);
    channels.publish(
        Some(exchange),
        Outgoing {
            exchange: &exchange.name,
            routing_key: event_type,
            properties: &properties,
            body: &body,
            mandatory: false,
        },
    )?;
    Ok(())
}

/// A dependency that dispatches the service's events, as Nameko's `EventDispatcher()`: each
/// worker gets a [`Dispatcher`] publishing to `<service>.events` with the worker's context.
///
/// ```no_run
/// use enoki::{EventDispatcher, Service};
///
/// let shop = Service::new("shop")
///     .dependency("events", EventDispatcher::new())
///     .rpc("order", |ctx, (item,): (String,)| {
///         let events = ctx.dependency::<EventDispatcher>("events")?;
///         events.dispatch("order_placed", &serde_json::json!({"item": item}))?;
///         Ok(())
///     });
/// # let _ = shop;
/// ```
pub struct EventDispatcher {
    state: Mutex<Option<(Arc<Channels>, Arc<ExchangeSpec>)>>,
    types: Arc<EventTypes>,
}

/// The event types a dispatcher declared, and those it dispatched that it had not declared,
/// for discovery.
#[derive(Debug, Default)]
pub(crate) struct EventTypes {
    pub(crate) declared: Vec<String>,
    pub(crate) undeclared: Mutex<std::collections::BTreeSet<String>>,
}

impl EventTypes {
    fn record(&self, event_type: &str) {
        // Declared types need no lock: the common case stays lock-free.
        if !self.declared.iter().any(|t| t == event_type) {
            let mut seen = self.undeclared.lock();
            if !seen.contains(event_type) {
                seen.insert(event_type.to_owned());
            }
        }
    }

    /// Every type, declared ones first.
    pub(crate) fn all(&self) -> Vec<String> {
        let mut all = self.declared.clone();
        all.extend(self.undeclared.lock().iter().cloned());
        all
    }
}

impl fmt::Debug for EventDispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exchange = self.state.lock().as_ref().map(|(_, e)| e.name.clone());
        f.debug_struct("EventDispatcher")
            .field("exchange", &exchange)
            .field("declares", &self.types.declared)
            .finish()
    }
}

impl Default for EventDispatcher {
    fn default() -> Self {
        EventDispatcher::new()
    }
}

impl EventDispatcher {
    /// A dispatcher for the service it is declared on.
    pub fn new() -> EventDispatcher {
        EventDispatcher {
            state: Mutex::new(None),
            types: Arc::default(),
        }
    }

    /// Declares the event types this service dispatches, so `enoki describe` and `enoki graph`
    /// show them before the first one is sent. Types dispatched without being declared are
    /// reported too, once sent. Default: none declared.
    pub fn declares<I, S>(self, event_types: I) -> EventDispatcher
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut declared = self.types.declared.clone();
        for event_type in event_types {
            let event_type = event_type.into();
            if !declared.contains(&event_type) {
                declared.push(event_type);
            }
        }
        EventDispatcher {
            state: self.state,
            types: Arc::new(EventTypes {
                declared,
                undeclared: Mutex::default(),
            }),
        }
    }

    /// The event types for discovery.
    pub(crate) fn types(&self) -> &EventTypes {
        &self.types
    }
}

impl Dependency for EventDispatcher {
    type Value = Dispatcher;

    fn setup(&self, container: &ContainerInfo) -> Result<()> {
        let exchange = event_exchange(container.service_name(), container.config());
        let channels = Channels::new(container.runtime.transport.clone());
        // Declared at setup, as Nameko does, so handlers can bind before the first event.
        let mut publisher = container.runtime.transport.publisher()?;
        publisher.declare_exchange(&exchange)?;
        channels.give_back(publisher);
        *self.state.lock() = Some((channels, Arc::new(exchange)));
        Ok(())
    }

    fn stop(&self) {
        if let Some((channels, _)) = self.state.lock().take() {
            channels.clear();
        }
    }

    fn inject(&self, ctx: &WorkerContext) -> Result<Dispatcher> {
        let (channels, exchange) = self
            .state
            .lock()
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::Stopped))?;
        Ok(Dispatcher {
            channels,
            exchange,
            context: ctx.outgoing().clone(),
            types: self.types.clone(),
        })
    }
}

/// What an [`EventDispatcher`] injects into a worker.
#[derive(Clone)]
pub struct Dispatcher {
    channels: Arc<Channels>,
    exchange: Arc<ExchangeSpec>,
    context: Arc<Context>,
    types: Arc<EventTypes>,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("exchange", &self.exchange.name)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher on `channels` for one worker (test doubles build theirs so).
    pub(crate) fn for_worker(
        channels: Arc<Channels>,
        exchange: Arc<ExchangeSpec>,
        ctx: &WorkerContext,
    ) -> Dispatcher {
        Dispatcher {
            channels,
            exchange,
            context: ctx.outgoing().clone(),
            types: Arc::default(),
        }
    }

    /// Dispatches `payload` (anything `Serialize`; it is the whole body, with no envelope) as
    /// an event of `event_type`, with the worker's context headers (its `call_id_stack` ends
    /// with the dispatching worker's call id). Returns once the broker confirmed it.
    pub fn dispatch<T: Serialize + ?Sized>(&self, event_type: &str, payload: &T) -> Result<()> {
        self.types.record(event_type);
        publish_event(
            &self.channels,
            &self.exchange,
            event_type,
            payload,
            self.context.headers(),
        )
    }
}

/// Dispatches events from any program, as Nameko's standalone `event_dispatcher(config)`.
/// Safe to share across threads; each concurrent dispatch uses its own channel.
///
/// Like Nameko's, it sends no context headers unless [`context_data`](Self::context_data)
/// sets some. Unlike Nameko's, it declares `<source>.events` before publishing (with Nameko's
/// flags), so an event dispatched before any handler started is dropped by the broker rather
/// than failing with `NOT_FOUND`.
///
/// ```no_run
/// use enoki::{Config, StandaloneDispatcher};
///
/// # fn main() -> enoki::Result<()> {
/// let dispatcher = StandaloneDispatcher::new(&Config::from_env()?)?;
/// dispatcher.dispatch("shop", "order_placed", &serde_json::json!({"id": 7}))?;
/// # Ok(())
/// # }
/// ```
pub struct StandaloneDispatcher {
    channels: Arc<Channels>,
    config: Config,
    headers: Headers,
}

impl fmt::Debug for StandaloneDispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandaloneDispatcher")
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl StandaloneDispatcher {
    /// Connects (lazily, on the first dispatch) to the broker in `config`.
    pub fn new(config: &Config) -> Result<StandaloneDispatcher> {
        let transport = crate::container::transport_for(config)?;
        Ok(StandaloneDispatcher {
            channels: Channels::new(transport),
            config: config.clone(),
            headers: Headers::new(),
        })
    }

    /// Context data sent with every event as `nameko.<key>` headers (e.g. `language`).
    /// Default: none, as Nameko's standalone dispatcher.
    pub fn context_data(mut self, data: Headers) -> StandaloneDispatcher {
        self.headers = Context {
            data,
            call_id_stack: Vec::new(),
        }
        .headers();
        self
    }

    /// Dispatches `payload` as an event of `event_type` from the service `source`, and waits
    /// for the broker's confirm.
    pub fn dispatch<T: Serialize + ?Sized>(
        &self,
        source: &str,
        event_type: &str,
        payload: &T,
    ) -> Result<()> {
        let exchange = event_exchange(source, &self.config);
        publish_event(
            &self.channels,
            &exchange,
            event_type,
            payload,
            self.headers.clone(),
        )
    }

    /// Closes the publishing channels. Dropping the dispatcher does the same.
    pub fn close(self) {
        self.channels.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_are_named_and_flagged_as_nameko_declares_them() {
        let config = Config::new();
        let pool = EventHandler::new("src", "ping").queue("svc", &config, "id");
        assert_eq!(pool.name, "evt-src-ping--svc.handle_ping");
        assert!(pool.durable && !pool.auto_delete && !pool.exclusive);
        assert_eq!(pool.bindings.len(), 1);
        assert_eq!(pool.bindings[0].0, ExchangeSpec::topic("src.events"));
        assert_eq!(pool.bindings[0].1, "ping");

        let single = EventHandler::new("src", "ping")
            .handler_type(HandlerType::Singleton)
            .reliable_delivery(false)
            .queue("svc", &config, "id");
        assert_eq!(single.name, "evt-src-ping");
        assert!(single.durable && single.auto_delete && !single.exclusive);

        let broadcast = EventHandler::new("src", "ping")
            .name("on_ping")
            .handler_type(HandlerType::Broadcast)
            .reliable_delivery(false)
            .queue("svc", &config, "abc");
        assert_eq!(broadcast.name, "evt-src-ping--svc.on_ping-abc");
        assert!(broadcast.durable && broadcast.auto_delete && broadcast.exclusive);

        let auto = Config::new()
            .set("AUTO_DELETE_EVENT_EXCHANGES", Value::Bool(true))
            .expect("any key");
        assert!(event_exchange("src", &auto).auto_delete);
        assert!(!event_exchange("src", &config).auto_delete);
    }
}
