//! Running services: a [`Container`] runs one service on a bounded pool of worker threads; a
//! [`Runner`] runs several and stops them on SIGINT or SIGTERM.
//!
//! Threads of one container: one consumer thread that owns the consuming channel, `max_workers`
//! workers, and (when the service calls others) one thread keeping the reply queue's consumer;
//! amiquip adds an I/O thread per connection. Workers read deliveries directly from the
//! consumer's receivers, two listeners at a time, so a request wakes the worker that runs it and
//! nothing else; a full pool stops intake and the broker holds the rest (prefetch). Workers send
//! acks back to the consumer thread, which owns the channel they must go through.

use crate::amqp::AmqpTransport;
use crate::config::BrokerUri;
use crate::dependency::{ContainerInfo, NamedDependency};
use crate::describe::{Identity, Responder};
use crate::entrypoint::Entrypoint;
use crate::memory::MemoryTransport;
use crate::metrics::Metrics;
use crate::proxy::RpcClient;
use crate::rpc::RpcEntrypoint;
use crate::service::Service;
use crate::transport::{
    ConsumeSpec, Control, Delivery, DeliverySource, ExchangeSpec, Outgoing, Published, Publisher,
    Received, SharedTransport, Sink, consume_with_reconnect,
};
use crate::{Config, Error, Result};
use crossbeam_channel::{Receiver, Select, Sender};
use parking_lot::Mutex;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the transport `config` names: RabbitMQ, or the process's in-process broker of that
/// name (shared by every transport built on it).
pub(crate) fn transport_for(config: &Config) -> Result<SharedTransport> {
    Ok(match config.broker()? {
        BrokerUri::Amqp(uri) => Arc::new(
            AmqpTransport::new(uri, config.heartbeat_secs())
                .with_confirm_timeout(config.confirm_deadline()),
        ),
        BrokerUri::Memory(name) => Arc::new(MemoryTransport::new(&name)),
    })
}

/// What every worker of one container shares.
pub(crate) struct Runtime {
    pub(crate) service_name: Arc<str>,
    pub(crate) config: Config,
    pub(crate) transport: SharedTransport,
    pub(crate) dependencies: Vec<NamedDependency>,
    pub(crate) rpc_exchange: ExchangeSpec,
    pub(crate) rpc_client: Mutex<Option<Arc<RpcClient>>>,
    /// `None` unless metrics are on: the hot path then pays one branch.
    pub(crate) metrics: Option<Arc<Metrics>>,
}

impl Runtime {
    /// The runtime of a service run without a container's pool and consumers (the testing
    /// helpers call its entrypoints directly).
    pub(crate) fn detached(
        service_name: &str,
        config: Config,
        transport: SharedTransport,
        dependencies: Vec<NamedDependency>,
    ) -> Runtime {
        Runtime {
            service_name: Arc::from(service_name),
            rpc_exchange: ExchangeSpec::topic(config.exchange()),
            config,
            transport,
            dependencies,
            rpc_client: Mutex::new(None),
            metrics: None,
        }
    }

    /// The container's RPC client (one reply queue for all its proxies), started on first use.
    pub(crate) fn rpc_client(&self) -> Result<Arc<RpcClient>> {
        let mut slot = self.rpc_client.lock();
        if let Some(client) = &*slot {
            return Ok(client.clone());
        }
        let client = RpcClient::start(
            self.transport.clone(),
            &self.rpc_exchange.name,
            &self.service_name,
        )?;
        *slot = Some(client.clone());
        Ok(client)
    }
}

/// A worker thread's own resources: its publishing channel and reusable buffers.
pub(crate) struct Worker {
    transport: SharedTransport,
    publisher: Option<Box<dyn Publisher>>,
    pub(crate) buffer: Vec<u8>,
    pub(crate) result: Vec<u8>,
}

impl Worker {
    fn new(transport: SharedTransport) -> Worker {
        Worker {
            transport,
            publisher: None,
            buffer: Vec::with_capacity(256),
            result: Vec::with_capacity(256),
        }
    }

    /// Publishes on this worker's channel, opening it on first use and again after a failure.
    ///
    /// A broker failure (the connection dropped since the last publish) is retried once on a
    /// fresh channel: the message may then arrive twice, which at-least-once delivery allows
    /// and callers absorb (a duplicate reply is dropped by correlation id).
    pub(crate) fn publish(
        &mut self,
        runtime: &Runtime,
        message: Outgoing<'_>,
    ) -> Result<Published> {
        let mut retried = false;
        loop {
            let publisher = match &mut self.publisher {
                Some(p) => p,
                None => {
                    let mut p = self.transport.publisher()?;
                    p.declare_exchange(&runtime.rpc_exchange)?;
                    self.publisher.insert(p)
                }
            };
            let result = publisher.publish(message);
            match &result {
                Ok(_) => return result,
                Err(e) => {
                    if let Some(failed) = self.publisher.take() {
                        crate::transport::retire(failed);
                    }
                    if retried || !matches!(e.kind(), crate::ErrorKind::Broker(_)) {
                        return result;
                    }
                    retried = true;
                }
            }
        }
    }
}

/// A unit of work for the pool; the container runs it without knowing what made it.
pub(crate) type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// The pool's job queue, bounded by `max_workers`: how HTTP requests and timer ticks reach the
/// workers. The pool exits once every handle is dropped and the queue is empty.
#[derive(Clone)]
pub(crate) struct Jobs {
    tx: Sender<Job>,
    pub(crate) runtime: Arc<Runtime>,
}

impl fmt::Debug for Jobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jobs")
            .field("queued", &self.tx.len())
            .field("capacity", &self.tx.capacity())
            .finish()
    }
}

impl Jobs {
    /// Queues `job`, waiting for room; gives it back if the pool has shut down.
    #[allow(dead_code)] // HTTP uses the bounded forms; for kinds that may wait (timers)
    pub(crate) fn submit(&self, job: Job) -> std::result::Result<(), Job> {
        self.tx.send(job).map_err(|e| e.into_inner())
    }

    /// Queues `job` if there is room now; gives it back if the queue is full or closed.
    pub(crate) fn try_submit(&self, job: Job) -> std::result::Result<(), Job> {
        self.tx.try_send(job).map_err(|e| e.into_inner())
    }

    /// Queues `job`, waiting at most `timeout` for room.
    pub(crate) fn submit_timeout(
        &self,
        job: Job,
        timeout: Duration,
    ) -> std::result::Result<(), Job> {
        self.tx
            .send_timeout(job, timeout)
            .map_err(|e| e.into_inner())
    }
}

/// Turns deliveries from one queue into work.
pub(crate) trait DeliveryHandler: Send + Sync {
    fn handle(&self, runtime: &Arc<Runtime>, delivery: Delivery, worker: &mut Worker);
}

struct ConsumerThread {
    control: Sender<Control>,
    thread: JoinHandle<()>,
}

enum State {
    Ready(Box<Service>),
    Running(Running),
    Done,
}

struct Running {
    runtime: Arc<Runtime>,
    jobs: Sender<Job>,
    workers: Vec<JoinHandle<()>>,
    all_exited: Receiver<()>,
    consumer: Option<ConsumerThread>,
    entrypoints: Vec<Box<dyn Entrypoint>>,
    metrics_server: Option<crate::metrics::server::Registration>,
}

/// Runs one [`Service`]: its dependencies, its consumers and a bounded pool of worker threads.
///
/// ```no_run
/// use enoki::{Config, Container, Service};
///
/// # fn main() -> enoki::Result<()> {
/// let service = Service::new("echo").rpc("echo", |_ctx, (v,): (serde_json::Value,)| Ok(v));
/// let mut container = Container::new(service, Config::from_env()?);
/// container.start()?; // returns once the service consumes its queue
/// // ... serve ...
/// container.stop(); // finish in-flight calls, ack, close
/// # Ok(())
/// # }
/// ```
///
/// Dropping a running container stops it gracefully.
pub struct Container {
    name: String,
    config: Config,
    transport: Option<SharedTransport>,
    state: State,
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Ready(_) => "ready",
            State::Running(_) => "running",
            State::Done => "stopped",
        };
        f.debug_struct("Container")
            .field("service", &self.name)
            .field("state", &state)
            .finish()
    }
}

impl Container {
    /// A container for `service` with `config`; nothing runs until [`start`](Container::start).
    pub fn new(service: Service, config: Config) -> Container {
        Container {
            name: service.name.clone(),
            config,
            transport: None,
            state: State::Ready(Box::new(service)),
        }
    }

    /// Runs on `transport` instead of one built from the configuration (the [`Runner`] shares
    /// one between its containers).
    pub(crate) fn set_transport(&mut self, transport: SharedTransport) {
        self.transport = Some(transport);
    }

    /// The service's name.
    pub fn service_name(&self) -> &str {
        &self.name
    }

    /// Sets up and starts the dependencies, starts the worker pool and the consumers, and
    /// returns once the service's queues are consumed. Calling it twice is an error.
    pub fn start(&mut self) -> Result<()> {
        let service = match std::mem::replace(&mut self.state, State::Done) {
            State::Ready(service) => *service,
            other => {
                self.state = other;
                return Err(Error::config(format!(
                    "container `{}` was already started",
                    self.name
                )));
            }
        };
        service.validate()?;
        let transport = match &self.transport {
            Some(t) => t.clone(),
            None => transport_for(&self.config)?,
        };
        let Service {
            name,
            rpc,
            dependencies,
            mut entrypoints,
            version,
        } = service;
        for entrypoint in &entrypoints {
            entrypoint.validate(&name, &self.config)?;
        }
        let identity = Identity::new(
            &name,
            version,
            rpc.iter().map(|(method, _)| method.clone()),
            &entrypoints,
        );
        let (metrics_on, metrics_address) = crate::metrics::settings(&self.config);
        let metrics = metrics_on.then(|| {
            let listed = rpc
                .iter()
                .map(|(method, _)| ("rpc", method.clone()))
                .chain(entrypoints.iter().map(|e| (e.kind(), e.name())));
            Arc::new(Metrics::new(
                Arc::from(name.as_str()),
                listed,
                self.config.workers(),
            ))
        });
        let runtime = Arc::new(Runtime {
            service_name: Arc::from(name.as_str()),
            rpc_exchange: ExchangeSpec::topic(self.config.exchange()),
            config: self.config.clone(),
            transport: transport.clone(),
            dependencies,
            rpc_client: Mutex::new(None),
            metrics: metrics.clone(),
        });
        let info = ContainerInfo {
            runtime: runtime.clone(),
        };
        for dep in &runtime.dependencies {
            dep.dependency.setup(&info)?;
        }
        for dep in &runtime.dependencies {
            dep.dependency.start()?;
        }

        let max_workers = self.config.workers();
        let mut queues = Vec::new();
        let mut handlers: Vec<Arc<dyn DeliveryHandler>> = Vec::new();
        if !rpc.is_empty() {
            queues.push(crate::rpc::service_queue(&name, self.config.exchange()));
            handlers.push(Arc::new(RpcEntrypoint::new(&name, &rpc)));
        }
        for entrypoint in &entrypoints {
            for (queue, handler) in entrypoint.queues(&name, &self.config)? {
                queues.push(queue);
                handlers.push(handler);
            }
        }
        queues.push(identity.queue());
        handlers.push(Arc::new(Responder { identity }));
        let (wake_tx, wake_rx): (Vec<_>, Vec<_>) = (0..max_workers)
            .map(|_| crossbeam_channel::bounded(1))
            .unzip();
        let pool = Arc::new(Pool {
            runtime: runtime.clone(),
            handlers,
            feed: Mutex::new(None),
            generation: AtomicU64::new(0),
            wake: wake_rx,
            wakers: wake_tx,
            listeners: AtomicUsize::new(0),
            idle: (0..max_workers).map(|_| AtomicBool::new(false)).collect(),
        });
        let (jobs, job_rx) = crossbeam_channel::bounded::<Job>(max_workers);
        // Never sent on: it disconnects when the last worker has exited, which a stop waits
        // for with a deadline (a JoinHandle has no timed join).
        let (alive, all_exited) = crossbeam_channel::bounded::<()>(0);
        let mut workers = Vec::with_capacity(max_workers);
        for i in 0..max_workers {
            let job_rx = job_rx.clone();
            let pool = pool.clone();
            let alive = alive.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("enoki-{name}-worker-{i}"))
                    .spawn(move || {
                        work(&pool, i, &job_rx);
                        drop(alive);
                    })?,
            );
        }
        drop(alive);
        let job_handle = Jobs {
            tx: jobs.clone(),
            runtime: runtime.clone(),
        };
        let mut running = Running {
            runtime: runtime.clone(),
            jobs,
            workers,
            all_exited,
            consumer: None,
            entrypoints: Vec::new(),
            metrics_server: None,
        };
        if !queues.is_empty() {
            let spec = ConsumeSpec {
                queues,
                prefetch: self.config.prefetch(),
            };
            let sink = ContainerSink { pool, ready: None };
            match start_consumer(&runtime, spec, sink) {
                Ok(consumer) => running.consumer = Some(consumer),
                Err(e) => {
                    shutdown(running, false);
                    return Err(e);
                }
            }
        }
        for mut entrypoint in entrypoints.drain(..) {
            let started = entrypoint.start(&runtime, &job_handle);
            running.entrypoints.push(entrypoint);
            if let Err(e) = started {
                drop(job_handle);
                shutdown(running, false);
                return Err(e);
            }
        }
        drop(job_handle);
        if let (Some(metrics), Some(address)) = (&metrics, &metrics_address) {
            match crate::metrics::server::register(address, metrics.clone()) {
                Ok(registration) => running.metrics_server = Some(registration),
                Err(e) => {
                    shutdown(running, false);
                    return Err(e);
                }
            }
        }
        log::info!("{name}: started with {max_workers} workers");
        self.state = State::Running(running);
        Ok(())
    }

    /// Stops gracefully: no new work is taken, in-flight workers finish and their replies are
    /// sent and acked, then dependencies stop and connections close. Blocks until done;
    /// idempotent.
    pub fn stop(&mut self) {
        if let State::Running(running) = std::mem::replace(&mut self.state, State::Done) {
            log::info!("{}: stopping", self.name);
            shutdown(running, false);
            log::info!("{}: stopped", self.name);
        }
    }

    /// Stops at once: consumers are dropped without waiting, so unacked messages go back to the
    /// broker for redelivery; workers still running are abandoned.
    pub fn kill(&mut self) {
        if let State::Running(running) = std::mem::replace(&mut self.state, State::Done) {
            log::warn!("{}: killed", self.name);
            shutdown(running, true);
        }
    }

    /// The address metrics and health are served on, when `METRICS_ADDRESS` is set and the
    /// container runs (see [`metrics`](crate::metrics)).
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        match &self.state {
            State::Running(running) => running.metrics_server.as_ref().map(|r| r.address()),
            _ => None,
        }
    }

    /// True between a successful `start` and `stop`/`kill`.
    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Running(_))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the workers of one container share: the handlers of its queues and the consumer's
/// current delivery source, which they read directly.
struct Pool {
    runtime: Arc<Runtime>,
    handlers: Vec<Arc<dyn DeliveryHandler>>,
    feed: Mutex<Option<Arc<dyn DeliverySource>>>,
    /// Bumped whenever `feed` changes, so workers notice a reconnection without a lock.
    generation: AtomicU64,
    /// One per worker: wakes it to lead, or to pick up a new source after a reconnection.
    wake: Vec<Receiver<()>>,
    wakers: Vec<Sender<()>>,
    /// How many workers read the source now (at most `LISTENERS`).
    listeners: AtomicUsize,
    /// Workers waiting for jobs or promotion. Flags, not a locked list: a worker marks itself
    /// on every job it waits for, and a lock there was a contended hand-off per HTTP request.
    idle: Vec<AtomicBool>,
}

/// How many idle workers read the delivery source at once. Two, so that when one takes a
/// request the other is already listening and nobody has to be woken to take its place; a
/// worker is woken (the lowest-numbered idle one, so the same few threads stay warm) only when
/// no listener is left.
const LISTENERS: usize = 2;

impl Pool {
    /// Claims a listener slot, if one is free.
    fn listen(&self) -> bool {
        self.listeners
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < LISTENERS).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives up a listener slot (the worker took work, or has nothing left to read); if that
    /// left nobody listening, wakes the lowest-numbered idle worker: the same few threads keep
    /// serving and stay warm, where crossbeam would wake waiters in turn and cycle through
    /// every cold thread.
    fn unlisten(&self) {
        if self.listeners.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.promote();
        }
    }

    fn promote(&self) {
        if self.listeners.load(Ordering::Acquire) > 0 {
            return;
        }
        // Claiming the flag makes two promoters wake two different workers.
        let next = self.idle.iter().position(|idle| {
            idle.compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        if let Some(next) = next {
            let _ = self.wakers[next].try_send(());
        }
    }
}

/// A worker thread. Up to [`LISTENERS`] idle workers read the delivery source (and the job
/// channel); the others wait for jobs (HTTP requests, timer ticks) or to be woken. A worker
/// exits once the job channel is closed and nothing is left for it to read.
fn work(pool: &Pool, id: usize, jobs: &Receiver<Job>) {
    let mut worker = Worker::new(pool.runtime.transport.clone());
    let mut jobs_open = true;
    let mut seen = u64::MAX;
    let mut source: Option<Arc<dyn DeliverySource>> = None;
    let mut ended: Vec<bool> = Vec::new();
    let mut reading: Vec<(usize, usize)> = Vec::new();
    let mut listening = false;
    let wake = &pool.wake[id];
    loop {
        let generation = pool.generation.load(Ordering::Acquire);
        if generation != seen {
            seen = generation;
            source = pool.feed.lock().clone();
            ended = vec![false; source.as_ref().map_or(0, |s| s.queues())];
        }
        let live = ended.contains(&false);
        if listening && !live {
            listening = false;
            pool.unlisten();
        }
        let leading = live && (listening || pool.listen());
        listening = leading;
        if let (true, Some(source)) = (leading, &source) {
            let mut select = Select::new();
            let jobs_index = jobs_open.then(|| select.recv(jobs));
            let wake_index = select.recv(wake);
            reading.clear();
            for queue in (0..ended.len()).filter(|q| !ended[*q]) {
                reading.push((source.register(queue, &mut select), queue));
            }
            let operation = select.select();
            let index = operation.index();
            if Some(index) == jobs_index {
                match operation.recv(jobs) {
                    Ok(job) => {
                        listening = false;
                        pool.unlisten();
                        guarded(pool, &mut worker, job);
                    }
                    Err(_) => jobs_open = false,
                }
            } else if index == wake_index {
                let _ = operation.recv(wake);
            } else if let Some(&(_, queue)) = reading.iter().find(|(i, _)| *i == index) {
                match source.complete(queue, operation) {
                    Received::Delivery(delivery) => {
                        listening = false;
                        pool.unlisten();
                        let handler = &pool.handlers[delivery.queue];
                        guarded(pool, &mut worker, |worker: &mut Worker| {
                            handler.handle(&pool.runtime, delivery, worker);
                        });
                    }
                    Received::Ended => ended[queue] = true,
                }
            }
            continue;
        }

        if !jobs_open {
            // Only deliveries could still come: leave them to the listeners, or listen if
            // nobody does and this worker has something to read.
            if !live || pool.listeners.load(Ordering::Acquire) > 0 {
                return;
            }
            continue;
        }
        pool.idle[id].store(true, Ordering::Release);
        let mut select = Select::new();
        let jobs_index = select.recv(jobs);
        select.recv(wake);
        let operation = select.select();
        pool.idle[id].store(false, Ordering::Release);
        if operation.index() == jobs_index {
            match operation.recv(jobs) {
                Ok(job) => {
                    // Promoted at the same moment a job came: pass the promotion on.
                    if wake.try_recv().is_ok() {
                        pool.promote();
                    }
                    guarded(pool, &mut worker, job);
                }
                Err(_) => jobs_open = false,
            }
        } else {
            let _ = operation.recv(wake);
        }
    }
}

/// Runs `job`; handlers catch their own panics already, this guards the framework's code so a
/// bug there costs one job, not a worker thread.
fn guarded(pool: &Pool, worker: &mut Worker, job: impl FnOnce(&mut Worker)) {
    let metrics = pool.runtime.metrics.as_deref();
    if let Some(m) = metrics {
        m.busy();
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(worker)));
    if let Some(m) = metrics {
        m.idle();
    }
    if outcome.is_err() {
        log::error!("a job panicked outside its handler");
        if let Some(publisher) = worker.publisher.take() {
            crate::transport::retire(publisher);
        }
    }
}

fn shutdown(running: Running, kill: bool) {
    let Running {
        runtime,
        jobs,
        workers,
        all_exited,
        consumer,
        mut entrypoints,
        metrics_server,
    } = running;
    if let Some(metrics) = &runtime.metrics {
        metrics.consumer_stopped();
    }
    drop(metrics_server);
    let deadline = std::time::Instant::now() + runtime.config.stop_deadline();
    // Nothing new is produced; what producers queued already still runs.
    for entrypoint in &mut entrypoints {
        if kill {
            entrypoint.kill();
        } else {
            entrypoint.stop();
        }
    }
    if let Some(consumer) = &consumer {
        // Stop cancels the consumers: the queues end and the workers run dry.
        let order = if kill { Control::Kill } else { Control::Stop };
        let _ = consumer.control.send(order);
    }
    drop(jobs);
    let mut abandoned = kill;
    if !kill {
        // Disconnected once every worker has exited; nothing is ever sent.
        if let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
            all_exited.recv_deadline(deadline)
        {
            log::warn!(
                "{}: workers still running after the stop deadline ({:?}): abandoning their \
                 work, which the broker redelivers",
                runtime.service_name,
                runtime.config.stop_deadline()
            );
            abandoned = true;
        } else {
            for worker in workers {
                let _ = worker.join();
            }
        }
    }
    if let Some(consumer) = consumer {
        // Every ack the workers handed back is queued by now: settle them, then close. After
        // a missed deadline, close at once: what is unacked goes back to the queue.
        let order = if abandoned {
            Control::Kill
        } else {
            Control::Finish
        };
        let _ = consumer.control.send(order);
        if !abandoned {
            let _ = consumer.thread.join();
        }
    }
    for dep in &runtime.dependencies {
        if kill {
            dep.dependency.kill();
        } else {
            dep.dependency.stop();
        }
    }
    let client = runtime.rpc_client.lock().take();
    if let Some(client) = client {
        client.stop();
    }
}

struct ContainerSink {
    pool: Arc<Pool>,
    ready: Option<Sender<Result<()>>>,
}

impl Sink for ContainerSink {
    fn ready(&mut self, source: Arc<dyn DeliverySource>) {
        *self.pool.feed.lock() = Some(source);
        if let Some(metrics) = &self.pool.runtime.metrics {
            metrics.consumer_ready();
        }
        self.pool.generation.fetch_add(1, Ordering::AcqRel);
        for wake in &self.pool.wakers {
            // A full slot already holds a wake-up the worker has not seen yet.
            let _ = wake.try_send(());
        }
        if let Some(tx) = self.ready.take() {
            let _ = tx.send(Ok(()));
        }
    }
}

fn start_consumer(
    runtime: &Runtime,
    spec: ConsumeSpec,
    mut sink: ContainerSink,
) -> Result<ConsumerThread> {
    let (control, control_rx) = crossbeam_channel::unbounded();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    sink.ready = Some(ready_tx);
    let name = runtime.service_name.clone();
    let transport = runtime.transport.clone();
    let metrics = runtime.metrics.clone();
    let thread = std::thread::Builder::new()
        .name(format!("enoki-{name}-consumer"))
        .spawn(move || {
            let outcome = consume_with_reconnect(&*transport, &spec, &mut sink, &control_rx, |e| {
                log::warn!("{name}: consumer lost its connection: {e}; reconnecting");
                if let Some(metrics) = &metrics {
                    metrics.consumer_lost();
                }
            });
            if let (Err(e), Some(tx)) = (outcome, sink.ready.take()) {
                let _ = tx.send(Err(e));
            }
        })?;
    match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(())) => Ok(ConsumerThread { control, thread }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = control.send(Control::Kill);
            Err(Error::broker("the consumer did not start in time"))
        }
    }
}

/// Runs several services in one process and stops them all on SIGINT or SIGTERM: the first
/// signal stops gracefully (in-flight calls finish and are acked), a second one exits at once.
///
/// ```no_run
/// use enoki::{Config, Runner, Service};
///
/// # fn main() -> enoki::Result<()> {
/// let echo = Service::new("echo").rpc("echo", |_ctx, (v,): (serde_json::Value,)| Ok(v));
/// Runner::new(Config::from_env()?).service(echo).run()
/// # }
/// ```
pub struct Runner {
    config: Config,
    containers: Vec<Container>,
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("containers", &self.containers)
            .finish()
    }
}

impl Runner {
    /// A runner whose services share `config` and one broker connection pair.
    pub fn new(config: Config) -> Runner {
        Runner {
            config,
            containers: Vec::new(),
        }
    }

    /// Adds a service.
    pub fn service(mut self, service: Service) -> Runner {
        self.containers
            .push(Container::new(service, self.config.clone()));
        self
    }

    /// Starts every service; if one fails, those already started are stopped.
    pub fn start(&mut self) -> Result<()> {
        let transport = transport_for(&self.config)?;
        for i in 0..self.containers.len() {
            self.containers[i].set_transport(transport.clone());
            if let Err(e) = self.containers[i].start() {
                self.stop();
                return Err(e);
            }
        }
        Ok(())
    }

    /// The address metrics and health are served on, once started with `METRICS_ADDRESS` set
    /// (the first container's, when port 0 gave each its own).
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.containers.iter().find_map(Container::metrics_address)
    }

    /// Stops every service gracefully, concurrently.
    pub fn stop(&mut self) {
        std::thread::scope(|scope| {
            for container in &mut self.containers {
                scope.spawn(move || container.stop());
            }
        });
    }

    /// Kills every service.
    pub fn kill(&mut self) {
        for container in &mut self.containers {
            container.kill();
        }
    }

    /// Starts every service, blocks until SIGINT or SIGTERM, then stops gracefully. A second
    /// signal during the stop exits the process with status 1; the broker then redelivers
    /// whatever was not acked.
    pub fn run(mut self) -> Result<()> {
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        let signals = std::sync::atomic::AtomicUsize::new(0);
        ctrlc::set_handler(move || {
            if signals.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
                log::warn!("second signal: exiting now");
                std::process::exit(1);
            }
            let _ = tx.try_send(());
        })
        .map_err(|e| Error::config(format!("cannot install the signal handler: {e}")))?;
        self.start()?;
        let _ = rx.recv();
        log::info!("signal received: stopping gracefully (send it again to exit at once)");
        self.stop();
        Ok(())
    }
}
