//! Test doubles for dependencies: each injects what the real one would, and records what the
//! handlers did with it.
//!
//! The doubles of dependencies that publish ([`RpcMock`], [`EventRecorder`]) run the real
//! proxy and dispatcher on an in-process broker of their own, so what they record is what
//! would have gone on the wire (arguments, payloads, context headers), and nothing reaches the
//! broker the service runs on.

use super::waiter::Completion;
use crate::args::Args;
use crate::context::WorkerContext;
use crate::dependency::{ContainerInfo, Dependency};
use crate::events::{Dispatcher, event_exchange};
use crate::memory::MemoryTransport;
use crate::messaging::Channels;
use crate::proxy::{RpcClient, ServiceProxy};
use crate::rpc::{JSON, UTF8, decode_request, encode_reply};
use crate::transport::{
    ExchangeSpec, Headers, Message, Outgoing, Properties, QueueSpec, ReplySource, SharedTransport,
    Wait,
};
use crate::{Error, ErrorKind, RemoteError, Result};
use crossbeam_channel::Sender;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The RPC exchange on a double's own broker; nothing else uses that broker.
const EXCHANGE: &str = "nameko-rpc";

/// How a mocked method answers.
type Responder = Arc<dyn Fn(Args) -> Result<Value> + Send + Sync>;

/// One call an [`RpcMock`] received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedCall {
    /// The method called.
    pub method: String,
    /// Its arguments, as they went on the wire.
    pub args: Args,
    /// The request's headers: the caller's context data as `nameko.<key>`, and
    /// `nameko.call_id_stack` ending with the calling worker's call id.
    pub headers: Headers,
}

/// Replaces an [`RpcProxy`](crate::RpcProxy) (see
/// [`replace_dependency`](super::replace_dependency)): handlers get a real
/// [`ServiceProxy`] whose calls reach a stand-in for the target service, which records each
/// call and answers as told: [`returns`](RpcMock::returns) a value,
/// [`fails`](RpcMock::fails) with a remote error, or [`responds`](RpcMock::responds) with a
/// closure of the arguments. Methods it was told nothing about return `null`, as a Python
/// `MagicMock` returns a mock for anything.
///
/// Clones share the recorded calls: keep one to assert on after giving the other to the
/// service.
///
/// ```
/// use enoki::testing::{self, Hook, RpcMock};
/// use enoki::{RemoteError, RpcProxy, Service};
/// use serde_json::json;
///
/// # fn main() -> enoki::Result<()> {
/// let service = Service::new("checkout")
///     .dependency("stock", RpcProxy::new("stock"))
///     .rpc("reserve", |ctx, (item,): (String,)| {
///         let stock = ctx.dependency::<RpcProxy>("stock")?;
///         let left: u32 = stock.call("take", (item.clone(), 1))?;
///         Ok(left)
///     });
/// let stock = RpcMock::new("stock")
///     .responds("take", |args| Ok(json!(if args.args[0] == "tea" { 9 } else { 0 })))
///     .fails("restock", RemoteError::new("PermissionError", "read only"));
/// let hook = Hook::new(testing::replace_dependency(service, "stock", stock.clone())?)?;
///
/// assert_eq!(hook.rpc::<u32>("reserve", ("tea",))?, 9);
/// let calls = stock.calls();
/// assert_eq!(calls.len(), 1);
/// assert_eq!((calls[0].method.as_str(), &calls[0].args.args), ("take", &vec![json!("tea"), json!(1)]));
/// // The call carried the worker's context: its call id stack ends with the worker's id.
/// let stack = calls[0].headers["nameko.call_id_stack"].as_array().unwrap();
/// assert!(stack[0].as_str().unwrap().starts_with("checkout.reserve."));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RpcMock {
    inner: Arc<MockInner>,
}

struct MockInner {
    target: Arc<str>,
    timeout: Option<Duration>,
    shared: Arc<MockShared>,
    running: Mutex<Option<MockRunning>>,
}

#[derive(Default)]
struct MockShared {
    responders: Mutex<HashMap<String, Responder>>,
    calls: Mutex<Vec<RecordedCall>>,
}

struct MockRunning {
    client: Arc<RpcClient>,
    /// Dropped to stop the stand-in's thread.
    stop: Sender<Result<Vec<u8>>>,
    thread: JoinHandle<()>,
}

impl fmt::Debug for RpcMock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcMock")
            .field("target", &self.inner.target)
            .field("calls", &self.inner.shared.calls.lock().len())
            .finish_non_exhaustive()
    }
}

impl RpcMock {
    /// A stand-in for the service `target` (the name the replaced proxy calls).
    pub fn new(target: impl AsRef<str>) -> RpcMock {
        RpcMock {
            inner: Arc::new(MockInner {
                target: Arc::from(target.as_ref()),
                timeout: None,
                shared: Arc::default(),
                running: Mutex::new(None),
            }),
        }
    }

    /// Calls of `method` return `value`.
    pub fn returns(self, method: &str, value: Value) -> RpcMock {
        self.responds(method, move |_args| Ok(value.clone()))
    }

    /// Calls of `method` fail with `error`, as the remote service raising it.
    pub fn fails(self, method: &str, error: RemoteError) -> RpcMock {
        self.responds(method, move |_args| Err(error.clone().into()))
    }

    /// Calls of `method` return what `f` makes of their arguments; an error goes back as a
    /// remote error (see [`Error::to_remote`]).
    pub fn responds<F>(self, method: &str, f: F) -> RpcMock
    where
        F: Fn(Args) -> Result<Value> + Send + Sync + 'static,
    {
        self.inner
            .shared
            .responders
            .lock()
            .insert(method.to_owned(), Arc::new(f));
        self
    }

    /// A default timeout for the injected proxies' `call`, as
    /// [`RpcProxy::timeout`](crate::RpcProxy::timeout). Default: none. Set it before handing
    /// the mock to the service.
    pub fn timeout(self, timeout: Duration) -> RpcMock {
        let inner = MockInner {
            target: self.inner.target.clone(),
            timeout: Some(timeout),
            shared: self.inner.shared.clone(),
            running: Mutex::new(None),
        };
        RpcMock {
            inner: Arc::new(inner),
        }
    }

    /// Every call received so far, in order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.inner.shared.calls.lock().clone()
    }

    /// The calls of `method` received so far, in order.
    pub fn calls_to(&self, method: &str) -> Vec<RecordedCall> {
        self.inner
            .shared
            .calls
            .lock()
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    fn start(&self, caller: &str) -> Result<()> {
        let mut running = self.inner.running.lock();
        if running.is_some() {
            return Ok(());
        }
        let transport: SharedTransport = Arc::new(MemoryTransport::private());
        let target = &self.inner.target;
        let queue = QueueSpec::durable(format!("rpc-{target}"))
            .bind(ExchangeSpec::topic(EXCHANGE), format!("{target}.*"));
        let source = transport.reply_source(&queue)?;
        let mut publisher = transport.publisher()?;
        publisher.declare_exchange(&ExchangeSpec::topic(EXCHANGE))?;
        let client = RpcClient::start(transport, EXCHANGE, caller)?;
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let shared = self.inner.shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("enoki-mock-{target}"))
            .spawn(move || {
                loop {
                    match source.wait(&stopped, None) {
                        Wait::Message(request) => {
                            let reply = shared.answer(request);
                            if let Some((properties, routing_key, body)) = reply {
                                let sent = publisher.publish(Outgoing {
                                    exchange: EXCHANGE,
                                    routing_key: &routing_key,
                                    properties: &properties,
                                    body: &body,
                                    mandatory: false,
                                });
                                if let Err(e) = sent {
                                    log::warn!("mock reply not sent: {e}");
                                }
                            }
                        }
                        Wait::Timeout => {}
                        Wait::Own(_) | Wait::Lost(_) => return,
                    }
                }
            })?;
        *running = Some(MockRunning {
            client,
            stop,
            thread,
        });
        Ok(())
    }
}

impl MockShared {
    /// Records a request and makes its reply: properties, routing key and body.
    fn answer(&self, request: Message) -> Option<(Properties, String, Vec<u8>)> {
        let method = request
            .routing_key
            .split_once('.')
            .map_or("", |(_, m)| m)
            .to_owned();
        let args = decode_request(request.properties.content_type.as_deref(), &request.body);
        let result = args.and_then(|args| {
            self.calls.lock().push(RecordedCall {
                method: method.clone(),
                args: args.clone(),
                headers: request.properties.headers.clone(),
            });
            let responder = self.responders.lock().get(&method).cloned();
            match responder {
                // A panicking responder must not take the stand-in (and every later call) down.
                Some(respond) => {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| respond(args)))
                        .unwrap_or_else(|_| {
                            Err(RemoteError::with_path(
                                "PanicError",
                                "enoki.PanicError",
                                format!("the mock of `{method}` panicked"),
                            )
                            .into())
                        })
                }
                None => Ok(Value::Null),
            }
        });
        let mut body = Vec::new();
        match result.and_then(|value| Ok(serde_json::to_vec(&value)?)) {
            Ok(json) => encode_reply(Ok(&json), &mut body),
            Err(e) => encode_reply(Err(&e.to_remote()), &mut body),
        }
        let properties = Properties {
            content_type: Some(JSON.to_owned()),
            content_encoding: Some(UTF8.to_owned()),
            correlation_id: request.properties.correlation_id,
            ..Properties::default()
        };
        Some((properties, request.properties.reply_to?, body))
    }
}

impl MockInner {
    fn stop(&self) {
        let running = self.running.lock().take();
        if let Some(running) = running {
            drop(running.stop);
            let _ = running.thread.join();
            running.client.stop();
        }
    }
}

impl Drop for MockInner {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Dependency for RpcMock {
    type Value = ServiceProxy;

    fn setup(&self, container: &ContainerInfo) -> Result<()> {
        self.start(container.service_name())
    }

    fn stop(&self) {
        self.inner.stop();
    }

    fn inject(&self, ctx: &WorkerContext) -> Result<ServiceProxy> {
        let client = self
            .inner
            .running
            .lock()
            .as_ref()
            .map(|r| r.client.clone())
            .ok_or_else(|| Error::new(ErrorKind::Stopped))?;
        Ok(ServiceProxy::for_worker(
            client,
            self.inner.target.clone(),
            ctx,
            self.inner.timeout,
        ))
    }
}

/// One event an [`EventRecorder`] caught.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// The event type.
    pub event_type: String,
    /// The payload, as it went on the wire.
    pub payload: Value,
    /// The message headers: the worker's context data as `nameko.<key>`, and
    /// `nameko.call_id_stack` ending with the dispatching worker's call id.
    pub headers: Headers,
}

/// Replaces an [`EventDispatcher`](crate::EventDispatcher) (see
/// [`replace_dependency`](super::replace_dependency)): handlers get a real
/// [`Dispatcher`] whose events are caught and recorded instead of reaching any handler.
/// Clones share the recording.
///
/// ```
/// use enoki::testing::{self, EventRecorder, Hook};
/// use enoki::{EventDispatcher, Service};
/// use serde_json::json;
///
/// # fn main() -> enoki::Result<()> {
/// let service = Service::new("shop")
///     .dependency("events", EventDispatcher::new())
///     .rpc("order", |ctx, (item,): (String,)| {
///         let events = ctx.dependency::<EventDispatcher>("events")?;
///         events.dispatch("order_placed", &json!({"item": item}))
///     });
/// let events = EventRecorder::new();
/// let hook = Hook::new(testing::replace_dependency(service, "events", events.clone())?)?;
/// hook.rpc::<()>("order", ("tea",))?;
/// let recorded = events.events();
/// assert_eq!(recorded.len(), 1);
/// assert_eq!(recorded[0].event_type, "order_placed");
/// assert_eq!(recorded[0].payload, json!({"item": "tea"}));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct EventRecorder {
    inner: Arc<RecorderInner>,
}

#[derive(Default)]
struct RecorderInner {
    state: Mutex<Option<RecorderState>>,
    recorded: Mutex<Vec<RecordedEvent>>,
}

#[derive(Clone)]
struct RecorderState {
    channels: Arc<Channels>,
    exchange: Arc<ExchangeSpec>,
    source: Arc<dyn ReplySource>,
}

impl fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRecorder")
            .field("events", &self.events().len())
            .finish()
    }
}

impl EventRecorder {
    /// A recorder that has caught nothing yet.
    pub fn new() -> EventRecorder {
        EventRecorder::default()
    }

    /// Every event dispatched so far, in order.
    pub fn events(&self) -> Vec<RecordedEvent> {
        let source = self.inner.state.lock().as_ref().map(|s| s.source.clone());
        let mut recorded = self.inner.recorded.lock();
        if let Some(source) = source {
            // Dispatching returns once the event sits in the queue: nothing is in flight.
            let never = crossbeam_channel::never();
            while let Wait::Message(message) = source.wait(&never, Some(Instant::now())) {
                recorded.push(RecordedEvent {
                    event_type: message.routing_key,
                    payload: serde_json::from_slice(&message.body).unwrap_or(Value::Null),
                    headers: message.properties.headers,
                });
            }
        }
        recorded.clone()
    }

    /// The events of `event_type` dispatched so far, in order.
    pub fn events_of(&self, event_type: &str) -> Vec<RecordedEvent> {
        self.events()
            .into_iter()
            .filter(|e| e.event_type == event_type)
            .collect()
    }
}

impl Dependency for EventRecorder {
    type Value = Dispatcher;

    fn setup(&self, container: &ContainerInfo) -> Result<()> {
        let mut state = self.inner.state.lock();
        if state.is_some() {
            return Ok(());
        }
        let transport: SharedTransport = Arc::new(MemoryTransport::private());
        let exchange = event_exchange(container.service_name(), container.config());
        let mut publisher = transport.publisher()?;
        publisher.declare_exchange(&exchange)?;
        let source = transport
            .reply_source(&QueueSpec::durable("recorded-events").bind(exchange.clone(), "#"))?;
        let channels = Channels::new(transport);
        channels.give_back(publisher);
        *state = Some(RecorderState {
            channels,
            exchange: Arc::new(exchange),
            source,
        });
        Ok(())
    }

    fn inject(&self, ctx: &WorkerContext) -> Result<Dispatcher> {
        let state = self
            .inner
            .state
            .lock()
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::Stopped))?;
        Ok(Dispatcher::for_worker(state.channels, state.exchange, ctx))
    }
}

/// A stand-in for any dependency: injects a clone of a fixed value (or what a closure makes)
/// and records every worker it served, with its result. Clones share the record.
///
/// The value's type must be the replaced dependency's
/// [`Value`](crate::Dependency::Value).
///
/// ```
/// use enoki::testing::{self, Hook, Stub};
/// use enoki::{Dependency, RemoteError, Service, WorkerContext};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// /// Hands each worker a fresh ticket number from a remote sequence.
/// struct Tickets;
/// impl Dependency for Tickets {
///     type Value = u64;
///     fn inject(&self, _ctx: &WorkerContext) -> enoki::Result<u64> {
///         Err(RemoteError::new("ConnectionError", "no sequence server in tests").into())
///     }
/// }
///
/// # fn main() -> enoki::Result<()> {
/// let service = Service::new("desk")
///     .dependency("tickets", Tickets)
///     .rpc("next", |ctx, ()| Ok(*ctx.dependency::<Tickets>("tickets")?));
/// let counter = Arc::new(AtomicU64::new(100));
/// let tickets = Stub::with(move || counter.fetch_add(1, Ordering::Relaxed));
/// let hook = Hook::new(testing::replace_dependency(service, "tickets", tickets.clone())?)?;
/// assert_eq!(hook.rpc::<u64>("next", ())?, 100);
/// assert_eq!(hook.rpc::<u64>("next", ())?, 101);
/// let served = tickets.completions();
/// assert_eq!(served.len(), 2);
/// assert_eq!(served[1].result, Ok(serde_json::json!(101)));
/// # Ok(())
/// # }
/// ```
pub struct Stub<V> {
    make: Arc<dyn Fn() -> V + Send + Sync>,
    completions: Arc<Mutex<Vec<Completion>>>,
}

impl<V> Clone for Stub<V> {
    fn clone(&self) -> Self {
        Stub {
            make: self.make.clone(),
            completions: self.completions.clone(),
        }
    }
}

impl<V> fmt::Debug for Stub<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stub")
            .field("value", &std::any::type_name::<V>())
            .field("completions", &self.completions.lock().len())
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> Stub<V> {
    /// Injects a clone of `value` into every worker.
    pub fn new(value: V) -> Stub<V> {
        Stub::with(move || value.clone())
    }
}

impl<V: Send + 'static> Stub<V> {
    /// Injects what `make` returns, called once per worker.
    pub fn with(make: impl Fn() -> V + Send + Sync + 'static) -> Stub<V> {
        Stub {
            make: Arc::new(make),
            completions: Arc::default(),
        }
    }

    /// The workers served so far, in the order they finished, with their results.
    pub fn completions(&self) -> Vec<Completion> {
        self.completions.lock().clone()
    }
}

impl<V: Send + 'static> Dependency for Stub<V> {
    type Value = V;

    fn inject(&self, _ctx: &WorkerContext) -> Result<V> {
        Ok((self.make)())
    }

    fn worker_result(&self, ctx: &WorkerContext, result: std::result::Result<&str, &Error>) {
        self.completions.lock().push(Completion::new(ctx, result));
    }
}
