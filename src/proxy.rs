//! Calling services: [`RpcProxy`] inside a service, [`ClusterRpcProxy`] from any program.
//!
//! Both sit on one client core: a reply queue named and flagged as Nameko's
//! (`rpc.reply-<caller>-<uuid>`, durable, not exclusive, `x-expires` five minutes) bound to the
//! RPC exchange by a bare UUID, which goes out as `reply_to`. A listener thread consumes it and
//! hands each reply to the waiting caller by `correlation_id`. Requests are published mandatory
//! on a confirming channel, so a request no queue is bound for comes back as
//! [`ErrorKind::UnknownService`](crate::ErrorKind::UnknownService) instead of hanging.

use crate::args::IntoArgs;
use crate::context::{Outgoing as Context, WorkerContext};
use crate::dependency::{ContainerInfo, Dependency};
use crate::rpc::{JSON, PERSISTENT, UTF8, decode_reply};
use crate::transport::{
    ConsumeSpec, Control, Delivery, ExchangeSpec, Headers, Outgoing, Properties, Published,
    Publisher, QueueSpec, SharedTransport, Sink, consume_with_reconnect,
};
use crate::{Config, Error, ErrorKind, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Nameko's reply queue expiry (`RPC_REPLY_QUEUE_TTL`).
const REPLY_QUEUE_TTL_MS: u32 = 300_000;
const READY_TIMEOUT: Duration = Duration::from_secs(30);

type ReplySender = Sender<Result<Vec<u8>>>;

/// The shared core of every RPC caller: one reply queue, its listener, and a pool of
/// publishing channels.
pub(crate) struct RpcClient {
    transport: SharedTransport,
    exchange: ExchangeSpec,
    reply_to: String,
    reply_queue: String,
    pending: Mutex<HashMap<String, ReplySender>>,
    publishers: Mutex<Vec<Box<dyn Publisher>>>,
    control: Sender<Control>,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClient")
            .field("reply_queue", &self.reply_queue)
            .finish_non_exhaustive()
    }
}

impl RpcClient {
    /// Declares the reply queue, starts its listener and waits until it consumes.
    pub(crate) fn start(
        transport: SharedTransport,
        exchange: &str,
        caller: &str,
    ) -> Result<Arc<RpcClient>> {
        let reply_to = crate::id::uuid4_string();
        let reply_queue = format!("rpc.reply-{caller}-{reply_to}");
        let exchange = ExchangeSpec::topic(exchange);
        let (control, control_rx) = crossbeam_channel::unbounded();
        let client = Arc::new(RpcClient {
            transport,
            exchange: exchange.clone(),
            reply_to: reply_to.clone(),
            reply_queue: reply_queue.clone(),
            pending: Mutex::new(HashMap::new()),
            publishers: Mutex::new(Vec::new()),
            control,
            listener: Mutex::new(None),
        });
        let mut queue = QueueSpec::durable(reply_queue).bind(exchange, reply_to);
        queue.expires_ms = Some(REPLY_QUEUE_TTL_MS);
        let spec = ConsumeSpec {
            queues: vec![queue],
            prefetch: 0,
        };
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        // The listener holds only a weak reference, so dropping the last user stops it.
        let weak = Arc::downgrade(&client);
        let transport = client.transport.clone();
        let thread = std::thread::Builder::new()
            .name(format!("enoki-replies-{caller}"))
            .spawn(move || listen(transport, spec, weak, ready_tx, control_rx))?;
        *client.listener.lock() = Some(thread);
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => {
                client.stop();
                Err(e)
            }
            Err(_) => {
                client.stop();
                Err(Error::broker("the reply listener did not start"))
            }
        }
    }

    /// Publishes a request and returns the handle its reply will arrive on.
    pub(crate) fn call_async(
        self: &Arc<Self>,
        service: &str,
        method: &str,
        args: impl IntoArgs,
        context: &Context,
    ) -> Result<Pending> {
        let body = serde_json::to_vec(&args.into_args()?)?;
        let correlation_id = crate::id::uuid4_string();
        let properties = Properties {
            content_type: Some(JSON.to_owned()),
            content_encoding: Some(UTF8.to_owned()),
            correlation_id: Some(correlation_id.clone()),
            reply_to: Some(self.reply_to.clone()),
            delivery_mode: Some(PERSISTENT),
            priority: Some(0),
            headers: context.headers(),
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.pending.lock().insert(correlation_id.clone(), tx);
        let routing_key = format!("{service}.{method}");
        let published = self.with_publisher(|publisher| {
            publisher.publish(Outgoing {
                exchange: &self.exchange.name,
                routing_key: &routing_key,
                properties: &properties,
                body: &body,
                mandatory: true,
            })
        });
        match published {
            Ok(Published::Confirmed) => Ok(Pending {
                rx,
                correlation_id,
                client: self.clone(),
            }),
            Ok(Published::Returned) => {
                self.pending.lock().remove(&correlation_id);
                Err(Error::new(ErrorKind::UnknownService(service.to_owned())))
            }
            Err(e) => {
                self.pending.lock().remove(&correlation_id);
                Err(e)
            }
        }
    }

    fn with_publisher<T>(&self, f: impl FnOnce(&mut dyn Publisher) -> Result<T>) -> Result<T> {
        let pooled = self.publishers.lock().pop();
        let mut publisher = match pooled {
            Some(p) => p,
            None => {
                let mut p = self.transport.publisher()?;
                p.declare_exchange(&self.exchange)?;
                p
            }
        };
        let result = f(publisher.as_mut());
        // A channel that failed may be broken; only healthy ones go back to the pool.
        if result.is_ok() {
            self.publishers.lock().push(publisher);
        }
        result
    }

    fn deliver_reply(&self, correlation_id: Option<&str>, body: Vec<u8>) {
        let waiter = correlation_id.and_then(|id| self.pending.lock().remove(id));
        match waiter {
            Some(tx) => {
                let _ = tx.send(Ok(body));
            }
            None => log::debug!("dropping a reply with unknown correlation id {correlation_id:?}"),
        }
    }

    fn fail_pending(&self, why: &str) {
        let waiting: Vec<ReplySender> = self.pending.lock().drain().map(|(_, tx)| tx).collect();
        for tx in waiting {
            let _ = tx.send(Err(Error::broker(format!(
                "connection lost while waiting for a reply: {why}"
            ))));
        }
    }

    /// Stops the listener; calls still waiting get an error.
    pub(crate) fn stop(&self) {
        let _ = self.control.send(Control::Stop);
        let thread = self.listener.lock().take();
        if let Some(thread) = thread
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
        for tx in self.pending.lock().drain().map(|(_, tx)| tx) {
            let _ = tx.send(Err(Error::new(ErrorKind::Stopped)));
        }
        self.publishers.lock().clear();
    }
}

impl Drop for RpcClient {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Kill);
    }
}

/// The listener thread: consume replies, reconnecting with capped backoff after failures.
fn listen(
    transport: SharedTransport,
    spec: ConsumeSpec,
    client: std::sync::Weak<RpcClient>,
    ready: Sender<Result<()>>,
    control: Receiver<Control>,
) {
    struct Replies {
        client: std::sync::Weak<RpcClient>,
        ready: Option<Sender<Result<()>>>,
    }
    impl Sink for Replies {
        fn ready(&mut self) {
            if let Some(tx) = self.ready.take() {
                let _ = tx.send(Ok(()));
            }
        }
        fn deliver(&mut self, delivery: Delivery) {
            let Delivery { message, acker, .. } = delivery;
            acker.ack();
            if let Some(client) = self.client.upgrade() {
                client.deliver_reply(message.properties.correlation_id.as_deref(), message.body);
            }
        }
    }
    let mut sink = Replies {
        client: client.clone(),
        ready: Some(ready),
    };
    let outcome = consume_with_reconnect(&*transport, &spec, &mut sink, &control, |e| {
        log::warn!("reply listener lost its connection: {e}; reconnecting");
        if let Some(c) = client.upgrade() {
            c.fail_pending(&e.to_string());
        }
    });
    if let (Err(e), Some(tx)) = (outcome, sink.ready.take()) {
        let _ = tx.send(Err(e));
    }
}

/// A call in flight; wait for its reply with [`wait`](Pending::wait) or
/// [`wait_timeout`](Pending::wait_timeout). Dropping it abandons the reply.
pub struct Pending {
    rx: Receiver<Result<Vec<u8>>>,
    correlation_id: String,
    client: Arc<RpcClient>,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("correlation_id", &self.correlation_id)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// Blocks until the reply arrives.
    pub fn wait<R: DeserializeOwned>(self) -> Result<R> {
        let reply = self.rx.recv().map_err(|_| Error::new(ErrorKind::Stopped))?;
        parse_reply(reply)
    }

    /// Blocks until the reply arrives or `timeout` passes ([`ErrorKind::Timeout`]).
    pub fn wait_timeout<R: DeserializeOwned>(self, timeout: Duration) -> Result<R> {
        match self.rx.recv_timeout(timeout) {
            Ok(reply) => parse_reply(reply),
            Err(RecvTimeoutError::Timeout) => Err(Error::new(ErrorKind::Timeout(timeout))),
            Err(RecvTimeoutError::Disconnected) => Err(Error::new(ErrorKind::Stopped)),
        }
    }

    /// The request's correlation id.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // A late reply then finds no waiter and is dropped, as Nameko drops unknown ids.
        self.client.pending.lock().remove(&self.correlation_id);
    }
}

fn parse_reply<R: DeserializeOwned>(reply: Result<Vec<u8>>) -> Result<R> {
    let value = decode_reply(&reply?)?;
    serde_json::from_value(value)
        .map_err(|e| Error::bad_input(format!("the reply does not fit the expected type: {e}")))
}

/// Calls to one service, carrying the caller's context data and call id stack.
///
/// The value an [`RpcProxy`] dependency injects into each worker, and what
/// [`ClusterRpcProxy::service`] returns.
#[derive(Clone)]
pub struct ServiceProxy {
    client: Arc<RpcClient>,
    target: Arc<str>,
    context: Arc<Context>,
    timeout: Option<Duration>,
}

impl fmt::Debug for ServiceProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceProxy")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ServiceProxy {
    /// The service called.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Calls `method` and waits for its result, as long as the proxy's default timeout allows
    /// (no limit unless set).
    pub fn call<R: DeserializeOwned>(&self, method: &str, args: impl IntoArgs) -> Result<R> {
        let pending = self.call_async(method, args)?;
        match self.timeout {
            Some(timeout) => pending.wait_timeout(timeout),
            None => pending.wait(),
        }
    }

    /// Calls `method` and waits at most `timeout` for its result.
    pub fn call_timeout<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl IntoArgs,
        timeout: Duration,
    ) -> Result<R> {
        self.call_async(method, args)?.wait_timeout(timeout)
    }

    /// Sends the call and returns at once with a handle to its reply.
    pub fn call_async(&self, method: &str, args: impl IntoArgs) -> Result<Pending> {
        self.client
            .call_async(&self.target, method, args, &self.context)
    }

    /// The same proxy with a default timeout for [`call`](ServiceProxy::call).
    pub fn with_timeout(mut self, timeout: Duration) -> ServiceProxy {
        self.timeout = Some(timeout);
        self
    }
}

/// A dependency to call another service, as Nameko's `RpcProxy(target)`.
///
/// Each worker gets a [`ServiceProxy`] that carries its context data and call id stack, so a
/// chain of calls can be traced end to end. The container shares one reply queue among all its
/// `RpcProxy` dependencies.
///
/// ```no_run
/// use enoki::{RpcProxy, Service};
///
/// let greeter = Service::new("greeter")
///     .dependency("echo", RpcProxy::new("echo"))
///     .rpc("shout", |ctx, (text,): (String,)| {
///         let echo = ctx.dependency::<RpcProxy>("echo")?;
///         let back: String = echo.call("echo", (text.to_uppercase(),))?;
///         Ok(back)
///     });
/// # let _ = greeter;
/// ```
#[derive(Debug, Clone)]
pub struct RpcProxy {
    target: Arc<str>,
    timeout: Option<Duration>,
}

impl RpcProxy {
    /// A proxy to `target`; calls wait for their reply without limit (Nameko's behaviour),
    /// unless [`timeout`](RpcProxy::timeout) sets one.
    pub fn new(target: impl AsRef<str>) -> RpcProxy {
        RpcProxy {
            target: Arc::from(target.as_ref()),
            timeout: None,
        }
    }

    /// A default timeout for `call`. Default: none.
    pub fn timeout(mut self, timeout: Duration) -> RpcProxy {
        self.timeout = Some(timeout);
        self
    }

    /// The service called.
    pub fn target(&self) -> &str {
        &self.target
    }
}

impl Dependency for RpcProxy {
    type Value = ServiceProxy;

    fn setup(&self, container: &ContainerInfo) -> Result<()> {
        // Start the shared reply listener now, so the first call does not pay for it.
        container.runtime.rpc_client().map(|_| ())
    }

    fn inject(&self, ctx: &WorkerContext) -> Result<ServiceProxy> {
        Ok(ServiceProxy {
            client: ctx.runtime.rpc_client()?,
            target: self.target.clone(),
            context: ctx.outgoing().clone(),
            timeout: self.timeout,
        })
    }
}

/// A standalone client for calling any service in the cluster, as Nameko's
/// `ClusterRpcProxy`. Safe to share across threads (Nameko's is not): one reply queue serves
/// every thread's calls.
///
/// Calls carry the context of Nameko 2's standalone proxy: a call id stack of
/// `standalone_rpc_proxy.call.<uuid>`, the same id for every call through one client, plus any
/// context data given with [`context_data`](ClusterRpcProxy::context_data).
///
/// ```no_run
/// use enoki::{ClusterRpcProxy, Config};
///
/// # fn main() -> enoki::Result<()> {
/// let cluster = ClusterRpcProxy::new(&Config::from_env()?)?;
/// let sum: i64 = cluster.call("echo", "add", (1, 2))?;
/// assert_eq!(sum, 3);
/// # Ok(())
/// # }
/// ```
pub struct ClusterRpcProxy {
    client: Arc<RpcClient>,
    context: Arc<Context>,
    timeout: Option<Duration>,
}

impl fmt::Debug for ClusterRpcProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterRpcProxy")
            .field("client", &self.client)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The service name Nameko 2's standalone proxy runs as.
const STANDALONE: &str = "standalone_rpc_proxy";

impl ClusterRpcProxy {
    /// Connects to the broker in `config` and starts listening for replies.
    pub fn new(config: &Config) -> Result<ClusterRpcProxy> {
        let transport = crate::container::transport_for(config)?;
        Self::with_transport(transport, config)
    }

    pub(crate) fn with_transport(
        transport: SharedTransport,
        config: &Config,
    ) -> Result<ClusterRpcProxy> {
        let client = RpcClient::start(transport, config.exchange(), STANDALONE)?;
        let call_id = format!("{STANDALONE}.call.{}", crate::id::uuid4_string());
        Ok(ClusterRpcProxy {
            client,
            context: Arc::new(Context {
                data: Headers::new(),
                call_id_stack: vec![call_id],
            }),
            timeout: None,
        })
    }

    /// Context data sent with every call (Nameko's `context_data`), e.g. `language` or
    /// `auth_token`. Default: none.
    pub fn context_data(mut self, data: Headers) -> ClusterRpcProxy {
        let stack = self.context.call_id_stack.clone();
        self.context = Arc::new(Context {
            data,
            call_id_stack: stack,
        });
        self
    }

    /// A default timeout for [`call`](ClusterRpcProxy::call). Default: none (wait forever).
    pub fn timeout(mut self, timeout: Duration) -> ClusterRpcProxy {
        self.timeout = Some(timeout);
        self
    }

    /// A proxy to one service, as Nameko's `proxy.<service>` / `proxy["service"]`.
    pub fn service(&self, name: &str) -> ServiceProxy {
        ServiceProxy {
            client: self.client.clone(),
            target: Arc::from(name),
            context: self.context.clone(),
            timeout: self.timeout,
        }
    }

    /// Calls `service.method` and waits for the result (up to the default timeout, if set).
    pub fn call<R: DeserializeOwned>(
        &self,
        service: &str,
        method: &str,
        args: impl IntoArgs,
    ) -> Result<R> {
        let pending = self.call_async(service, method, args)?;
        match self.timeout {
            Some(timeout) => pending.wait_timeout(timeout),
            None => pending.wait(),
        }
    }

    /// Calls `service.method` and waits at most `timeout`.
    pub fn call_timeout<R: DeserializeOwned>(
        &self,
        service: &str,
        method: &str,
        args: impl IntoArgs,
        timeout: Duration,
    ) -> Result<R> {
        self.call_async(service, method, args)?
            .wait_timeout(timeout)
    }

    /// Sends the call and returns at once with a handle to its reply.
    pub fn call_async(&self, service: &str, method: &str, args: impl IntoArgs) -> Result<Pending> {
        self.client.call_async(service, method, args, &self.context)
    }

    /// The name of this client's reply queue.
    pub fn reply_queue(&self) -> &str {
        &self.client.reply_queue
    }

    /// Stops listening for replies; calls still waiting get [`ErrorKind::Stopped`]. Dropping
    /// the client does the same.
    pub fn close(self) {
        self.client.stop();
    }
}

impl Drop for ClusterRpcProxy {
    fn drop(&mut self) {
        // Service proxies handed out share the client; the listener stops with the last one.
        if Arc::strong_count(&self.client) == 1 {
            self.client.stop();
        }
    }
}
