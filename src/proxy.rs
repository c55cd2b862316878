//! Calling services: [`RpcProxy`] inside a service, [`ClusterRpcProxy`] from any program.
//!
//! Both sit on one client core: a reply queue named and flagged as Nameko's
//! (`rpc.reply-<caller>-<uuid>`, durable, not exclusive, `x-expires` five minutes) bound to the
//! RPC exchange by a bare UUID, which goes out as `reply_to`. The threads waiting for replies
//! read it themselves and match replies by `correlation_id`. Requests are published mandatory
//! on a confirming channel, so a request no queue is bound for comes back as
//! [`ErrorKind::UnknownService`](crate::ErrorKind::UnknownService) instead of hanging.

use crate::args::IntoArgs;
use crate::context::{Outgoing as Context, WorkerContext};
use crate::dependency::{ContainerInfo, Dependency};
use crate::rpc::{JSON, PERSISTENT, UTF8, decode_reply};
use crate::transport::{
    ExchangeSpec, Headers, Outgoing, Properties, Published, Publisher, QueueSpec, ReplySource,
    SharedTransport, Wait,
};
use crate::{Config, Error, ErrorKind, Result};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Nameko's reply queue expiry (`RPC_REPLY_QUEUE_TTL`).
const REPLY_QUEUE_TTL_MS: u32 = 300_000;

/// How long a waiting caller keeps trying to re-establish a lost reply queue before it fails
/// with the broker error: long enough for a broker restart, short enough not to hang.
const RECONNECT_WINDOW: Duration = Duration::from_secs(30);
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// How much longer a call without a timeout waits for its reply after a connection loss: the
/// reply queue consumes with automatic acks (as Nameko's), so a reply in flight on the dropped
/// connection is gone, and the caller must not wait for it forever.
const LOST_REPLY_GRACE: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(2);

type ReplySender = Sender<Result<Vec<u8>>>;

/// The shared core of every RPC caller: one reply queue and a pool of publishing channels.
///
/// There is no listener thread between the reply queue and the callers: every thread waiting
/// for a reply reads the queue itself, together with its own channel, and hands replies that
/// belong to others on by correlation id. A lone caller is woken by the broker connection's
/// I/O thread directly, as a hand-written client would be.
pub(crate) struct RpcClient {
    transport: SharedTransport,
    exchange: ExchangeSpec,
    reply_to: String,
    queue: QueueSpec,
    pending: Mutex<HashMap<String, ReplySender>>,
    publishers: Mutex<Vec<Box<dyn Publisher>>>,
    source: Mutex<Option<Arc<dyn ReplySource>>>,
    losses: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClient")
            .field("reply_queue", &self.queue.name)
            .finish_non_exhaustive()
    }
}

impl RpcClient {
    /// Declares the reply queue and starts consuming it, so replies have somewhere to go
    /// before the first request is sent.
    pub(crate) fn start(
        transport: SharedTransport,
        exchange: &str,
        caller: &str,
    ) -> Result<Arc<RpcClient>> {
        let reply_to = crate::id::uuid4_string();
        let exchange = ExchangeSpec::topic(exchange);
        let mut queue = QueueSpec::durable(format!("rpc.reply-{caller}-{reply_to}"))
            .bind(exchange.clone(), reply_to.clone());
        queue.expires_ms = Some(REPLY_QUEUE_TTL_MS);
        let source = transport.reply_source(&queue)?;
        Ok(Arc::new(RpcClient {
            transport,
            exchange,
            reply_to,
            queue,
            pending: Mutex::new(HashMap::new()),
            publishers: Mutex::new(Vec::new()),
            source: Mutex::new(Some(source)),
            losses: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// The name of the reply queue.
    pub(crate) fn reply_queue(&self) -> &str {
        &self.queue.name
    }

    /// Publishes a request and returns the handle its reply will arrive on.
    pub(crate) fn call_async(
        self: &Arc<Self>,
        service: &str,
        method: &str,
        args: impl IntoArgs,
        context: &Context,
    ) -> Result<Pending> {
        self.call_by(service, method, args, context, None)
    }

    /// [`call_async`](RpcClient::call_async), waiting for the publisher confirm until
    /// `deadline` at most.
    pub(crate) fn call_by(
        self: &Arc<Self>,
        service: &str,
        method: &str,
        args: impl IntoArgs,
        context: &Context,
        deadline: Option<Instant>,
    ) -> Result<Pending> {
        self.check_source()?;
        let losses = self.losses();
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
        // Two slots: a forwarded reply and a failure may both arrive before anyone reads.
        let (tx, rx) = crossbeam_channel::bounded(2);
        self.pending.lock().insert(correlation_id.clone(), tx);
        let routing_key = [service, ".", method].concat();
        let published = self.with_publisher(|publisher| {
            publisher.publish_by(
                Outgoing {
                    exchange: &self.exchange.name,
                    routing_key: &routing_key,
                    properties: &properties,
                    body: &body,
                    mandatory: true,
                },
                deadline,
            )
        });
        match published {
            Ok(Published::Confirmed) => Ok(Pending {
                rx,
                correlation_id,
                client: self.clone(),
                losses,
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

    /// Runs `f` on a pooled publishing channel. A broker failure (the connection dropped while
    /// the channel sat in the pool) is retried once on a fresh channel: the request may then
    /// go out twice, and the second reply is dropped by correlation id.
    fn with_publisher<T>(&self, mut f: impl FnMut(&mut dyn Publisher) -> Result<T>) -> Result<T> {
        let mut retried = false;
        loop {
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
            match &result {
                // A channel that failed may be broken; only healthy ones go back to the pool.
                Ok(_) => {
                    self.publishers.lock().push(publisher);
                    return result;
                }
                Err(e) if !retried && matches!(e.kind(), ErrorKind::Broker(_)) => {
                    crate::transport::retire(publisher);
                    // Every pooled channel shares the dead connection: close them all.
                    for stale in std::mem::take(&mut *self.publishers.lock()) {
                        crate::transport::retire(stale);
                    }
                    retried = true;
                }
                Err(_) => {
                    crate::transport::retire(publisher);
                    return result;
                }
            }
        }
    }

    /// Makes sure the reply queue is consumed before a request goes out: a connection lost
    /// while nobody was waiting is noticed here (one non-blocking look at the queue) rather than
    /// by the next caller after its request has gone, and the consumer is re-established.
    /// Replies found on the way are handed to their callers.
    fn check_source(&self) -> Result<()> {
        let never = crossbeam_channel::never();
        loop {
            let source = self.source()?;
            match source.wait(&never, Some(Instant::now())) {
                Wait::Timeout | Wait::Own(_) => return Ok(()),
                Wait::Message(message) => {
                    self.forward(message.properties.correlation_id.as_deref(), message.body)
                }
                Wait::Lost(error) => self.lost(&source, &error),
            }
        }
    }

    /// The reply queue consumer, re-established after a loss.
    fn source(&self) -> Result<Arc<dyn ReplySource>> {
        let mut slot = self.source.lock();
        if let Some(source) = &*slot {
            return Ok(source.clone());
        }
        let source = self.transport.reply_source(&self.queue)?;
        *slot = Some(source.clone());
        Ok(source)
    }

    /// The consumer `source` lost its connection: the next waiter re-establishes it. Waiting
    /// calls keep waiting, since the reply queue is durable and a reply published while the
    /// connection was down waits in it; see [`Pending`] for the bound on that wait.
    fn lost(&self, source: &Arc<dyn ReplySource>, error: &Error) {
        let dead = {
            let mut slot = self.source.lock();
            match &*slot {
                Some(current) if Arc::ptr_eq(current, source) => slot.take(),
                _ => None,
            }
        };
        if dead.is_some() {
            self.losses
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            log::warn!(
                "reply queue {} lost: {error}; reconnecting",
                self.queue.name
            );
        }
    }

    /// How many times the reply queue's connection has been lost.
    fn losses(&self) -> u64 {
        self.losses.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Hands a reply read by some waiter to the caller it belongs to.
    fn forward(&self, correlation_id: Option<&str>, body: Vec<u8>) {
        let waiter = correlation_id.and_then(|id| self.pending.lock().remove(id));
        match waiter {
            Some(tx) => {
                let _ = tx.try_send(Ok(body));
            }
            None => log::debug!("dropping a reply with unknown correlation id {correlation_id:?}"),
        }
    }

    /// Stops consuming replies; calls still waiting get [`ErrorKind::Stopped`].
    pub(crate) fn stop(&self) {
        let source = self.source.lock().take();
        drop(source);
        for tx in self.pending.lock().drain().map(|(_, tx)| tx) {
            let _ = tx.try_send(Err(Error::new(ErrorKind::Stopped)));
        }
        self.publishers.lock().clear();
    }
}

/// A call in flight; wait for its reply with [`wait`](Pending::wait) or
/// [`wait_timeout`](Pending::wait_timeout). Dropping it abandons the reply.
pub struct Pending {
    rx: Receiver<Result<Vec<u8>>>,
    correlation_id: String,
    client: Arc<RpcClient>,
    /// The client's loss count when the request went out.
    losses: u64,
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
        // Without a deadline `receive` only returns with a reply or a failure.
        parse_reply(
            self.receive(None)
                .unwrap_or_else(|| Err(Error::new(ErrorKind::Stopped))),
        )
    }

    /// Blocks until the reply arrives or `timeout` passes ([`ErrorKind::Timeout`]).
    pub fn wait_timeout<R: DeserializeOwned>(self, timeout: Duration) -> Result<R> {
        let deadline = Instant::now().checked_add(timeout);
        self.wait_until(timeout, deadline)
    }

    /// Waits until `deadline` (none: forever); a timeout reports `timeout` as the limit.
    fn wait_until<R: DeserializeOwned>(
        self,
        timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<R> {
        match deadline {
            Some(deadline) => match self.receive(Some(deadline)) {
                Some(reply) => parse_reply(reply),
                None => Err(Error::new(ErrorKind::Timeout(timeout))),
            },
            None => self.wait(),
        }
    }

    /// The request's correlation id.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// The reply (or the failure that ended the wait), or `None` once `deadline` passed.
    fn receive(&self, deadline: Option<Instant>) -> Option<Result<Vec<u8>>> {
        let mut reconnecting: Option<(Instant, Duration)> = None;
        // Set once a connection loss has happened since the request went out: a caller with no
        // deadline of its own then waits at most LOST_REPLY_GRACE more, since its reply may
        // have been delivered (auto-acked) to the dead connection.
        let mut after_loss: Option<Instant> = None;
        loop {
            if let Ok(reply) = self.rx.try_recv() {
                return Some(reply);
            }
            if deadline.is_none() && after_loss.is_none() && self.client.losses() != self.losses {
                after_loss = Some(Instant::now() + LOST_REPLY_GRACE);
            }
            let until = deadline.or(after_loss);
            let source = match self.client.source() {
                Ok(source) => {
                    reconnecting = None;
                    source
                }
                Err(e) => {
                    // The broker is away: retry with backoff while the deadline and the
                    // reconnect window allow, then give up with the reason.
                    let (since, backoff) = reconnecting.unwrap_or((Instant::now(), RETRY_FIRST));
                    if since.elapsed() >= RECONNECT_WINDOW {
                        return Some(Err(Error::broker(format!(
                            "lost the reply queue and could not reconnect within {} s: {e}",
                            RECONNECT_WINDOW.as_secs()
                        ))));
                    }
                    let pause = match until {
                        Some(d) => backoff.min(d.saturating_duration_since(Instant::now())),
                        None => backoff,
                    };
                    match self.rx.recv_timeout(pause) {
                        Ok(reply) => return Some(reply),
                        Err(_) if until.is_some_and(|d| Instant::now() >= d) => {
                            return self.expired(deadline);
                        }
                        Err(_) => {}
                    }
                    reconnecting = Some((since, (backoff * 2).min(RETRY_MAX)));
                    continue;
                }
            };
            match source.wait(&self.rx, until) {
                Wait::Own(reply) => return Some(reply),
                Wait::Message(message) => {
                    let id = message.properties.correlation_id.as_deref();
                    if id == Some(self.correlation_id.as_str()) {
                        self.client.pending.lock().remove(&self.correlation_id);
                        return Some(Ok(message.body));
                    }
                    self.client.forward(id, message.body);
                }
                Wait::Lost(error) => self.client.lost(&source, &error),
                Wait::Timeout => return self.expired(deadline),
            }
        }
    }

    /// The wait ran out: a timeout for a caller's own `deadline`, else the bound after a
    /// connection loss, which is a broker error.
    fn expired(&self, deadline: Option<Instant>) -> Option<Result<Vec<u8>>> {
        if deadline.is_some() {
            return None;
        }
        Some(Err(Error::broker(format!(
            "the connection was lost while waiting for this reply, and it did not arrive within \
             {} s of that; it may have been lost with the connection",
            LOST_REPLY_GRACE.as_secs()
        ))))
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
    /// A proxy on `client` for one worker, carrying its context (test doubles build theirs so).
    pub(crate) fn for_worker(
        client: Arc<RpcClient>,
        target: Arc<str>,
        ctx: &WorkerContext,
        timeout: Option<Duration>,
    ) -> ServiceProxy {
        ServiceProxy {
            client,
            target,
            context: ctx.outgoing().clone(),
            timeout,
        }
    }

    /// The service called.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Calls `method` and waits for its result, as long as the proxy's default timeout allows
    /// (no limit unless set).
    pub fn call<R: DeserializeOwned>(&self, method: &str, args: impl IntoArgs) -> Result<R> {
        match self.timeout {
            Some(timeout) => self.call_timeout(method, args, timeout),
            None => self.call_async(method, args)?.wait(),
        }
    }

    /// Calls `method` and waits at most `timeout` for its result.
    pub fn call_timeout<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl IntoArgs,
        timeout: Duration,
    ) -> Result<R> {
        let deadline = Instant::now().checked_add(timeout);
        self.client
            .call_by(&self.target, method, args, &self.context, deadline)?
            .wait_until(timeout, deadline)
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
        // Declare and consume the shared reply queue now, so the first call does not pay for it.
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
        match self.timeout {
            Some(timeout) => self.call_timeout(service, method, args, timeout),
            None => self.call_async(service, method, args)?.wait(),
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
        let deadline = Instant::now().checked_add(timeout);
        self.client
            .call_by(service, method, args, &self.context, deadline)?
            .wait_until(timeout, deadline)
    }

    /// Sends the call and returns at once with a handle to its reply.
    pub fn call_async(&self, service: &str, method: &str, args: impl IntoArgs) -> Result<Pending> {
        self.client.call_async(service, method, args, &self.context)
    }

    /// The name of this client's reply queue.
    pub fn reply_queue(&self) -> &str {
        self.client.reply_queue()
    }

    /// Stops listening for replies; calls still waiting get [`ErrorKind::Stopped`]. Dropping
    /// the client does the same.
    pub fn close(self) {
        self.client.stop();
    }
}

impl Drop for ClusterRpcProxy {
    fn drop(&mut self) {
        // Service proxies handed out share the client; its reply consumer stops with the last.
        if Arc::strong_count(&self.client) == 1 {
            self.client.stop();
        }
    }
}
