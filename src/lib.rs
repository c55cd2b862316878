//! # enoki
//!
//! Nameko-style microservices in Rust: a service is a name, entrypoints and dependencies, run by
//! a container on a bounded pool of plain OS threads, speaking Nameko's AMQP wire protocol, so
//! enoki and Python Nameko services call each other on the same RabbitMQ.
//!
//! ## Quick start
//!
//! ```no_run
//! use enoki::{Config, RemoteError, Runner, Service};
//!
//! # fn main() -> enoki::Result<()> {
//! let echo = Service::new("echo")
//!     .rpc("echo", |_ctx, (value,): (serde_json::Value,)| Ok(value))
//!     .rpc("add", |_ctx, (a, b): (i64, i64)| Ok(a + b))
//!     .rpc("fail", |_ctx, (message,): (String,)| -> enoki::Result<()> {
//!         Err(RemoteError::new("ValueError", message).into())
//!     });
//! Runner::new(Config::from_env()?).service(echo).run() // Ctrl-C stops gracefully
//! # }
//! ```
//!
//! And from any program (or Python's `ClusterRpcProxy`):
//!
//! ```no_run
//! # fn main() -> enoki::Result<()> {
//! let cluster = enoki::ClusterRpcProxy::new(&enoki::Config::from_env()?)?;
//! let sum: i64 = cluster.call("echo", "add", (1, 2))?;
//! # Ok(())
//! # }
//! ```
//!
//! With `AMQP_URI=memory://` the same services run on an in-process broker (RabbitMQ's routing,
//! queue, prefetch and ack semantics, no persistence, nothing outside the process): every
//! container and client of the process on that URI shares it, so services can start as one
//! binary and be split out later by changing the URI. `memory://<name>` is an isolated one.
//!
//! ## Testing
//!
//! [`testing`] has Nameko's testing helpers, none of which needs RabbitMQ: call one entrypoint
//! through a real worker ([`testing::Hook`], Nameko's `entrypoint_hook`), swap dependencies for
//! doubles that record what handlers did ([`testing::replace_dependency`],
//! [`testing::RpcMock`], [`testing::EventRecorder`]), wait for entrypoints to complete
//! ([`testing::Waiter`]), run only some entrypoints ([`testing::restrict_entrypoints`]), and
//! run services on an in-process broker of their own ([`testing::TestRunner`]).
//!
//! ## Threads, queues and backpressure
//!
//! A container owns one consumer thread (one AMQP channel for all its queues, prefetch =
//! `max_workers` per consumer unless `PREFETCH_COUNT` is set), `max_workers` worker threads
//! (default 10), and, if it calls other services, a thread that keeps its reply queue's
//! consumer. Two idle workers at a time read the deliveries straight from the consumer's
//! receivers (no hand-off through the consumer thread); when one takes a delivery and no
//! listener is left, an idle worker is woken to listen. The worker runs the handler, publishes
//! the reply on its own channel with publisher confirms, and only then hands the ack back to the
//! consumer thread, which owns the channel acks must go through. A full pool stops intake; the
//! broker holds the rest (prefetch). Consuming and publishing use separate connections, so a
//! broker that blocks publishers does not stall acks.
//!
//! A caller waiting for a reply reads the reply queue itself, together with its own channel,
//! and hands on replies that belong to other callers, so a reply wakes its caller directly.
//!
//! Other entrypoints feed the same pool through a bounded job queue: each timer has a thread
//! that hands its ticks to a worker (the next tick waits for the running one; on Linux 6.12+
//! that thread, and the worker while it waits for the tick's due time, ask the scheduler for a
//! short time slice, so that a tick starts on time even when every core is busy), and the HTTP
//! server (one per address, shared by the process's services) has an acceptor thread and one
//! thread per open connection up to `HTTP_MAX_CONNECTIONS`; requests run on the owning
//! service's workers. The publishing connection has a small thread that watches for the broker
//! blocking it.
//!
//! What blocks: handlers run on workers and may block (a call to another service waits for its
//! reply on that worker). [`Container::stop`] blocks until in-flight work is done, at most
//! `STOP_TIMEOUT` (30 s); work still running then is abandoned unacked, for redelivery.
//!
//! ## Thread safety
//!
//! [`ClusterRpcProxy`] and [`ServiceProxy`] are `Send + Sync` and can be shared; every thread's
//! calls share one reply queue. Handlers and dependency hooks run concurrently on workers.
//!
//! ## Seeing the system
//!
//! Every running container answers discovery requests with its [`describe::Description`]
//! (entrypoints, the services it calls, the events it dispatches, host, pid);
//! [`describe::discover`] collects them and [`describe::Graph`] draws the dependency graph, as
//! `enoki describe` and `enoki graph` do. [`metrics`] (off by default) counts calls, errors and
//! latencies per entrypoint and serves them with a health check.
//!
//! ## Not supported
//!
//! TLS (`amqps://`), serializers other than JSON, and Nameko's eventlet backdoor.
// unsafe only for system calls the standard library does not wrap: src/wake.rs.
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod amqp;
mod args;
pub mod config;
mod container;
mod context;
mod dependency;
pub mod describe;
mod entrypoint;
mod error;
mod events;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
mod id;
pub mod logger;
mod memory;
pub mod messaging;
pub mod metrics;
mod proxy;
mod rpc;
mod service;
pub mod testing;
mod timer;
pub mod transport;
mod wake;

pub use args::{Args, FromArgs, IntoArgs};
pub use config::{AmqpUri, BrokerUri, Config};
pub use container::{Container, Runner};
pub use context::WorkerContext;
pub use dependency::{ContainerInfo, Dependency};
pub use error::{Error, ErrorKind, RemoteError, Result};
pub use events::{Dispatcher, EventDispatcher, EventHandler, HandlerType, StandaloneDispatcher};
pub use messaging::{Consume, MessagePublisher, PublishOptions, Publisher};
pub use proxy::{ClusterRpcProxy, Pending, RpcProxy, ServiceProxy};
pub use service::Service;
pub use timer::Timer;
