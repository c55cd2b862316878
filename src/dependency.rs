//! Dependencies: what a service uses besides its entrypoints, with Nameko's lifecycle hooks.

use crate::container::Runtime;
use crate::context::WorkerContext;
use crate::{Config, Error, Result};
use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// Something a service uses (another service, a database, a cache), managed by the container.
///
/// The container calls [`setup`](Dependency::setup) and [`start`](Dependency::start) before any
/// entrypoint runs, and [`stop`](Dependency::stop) after the last worker finished (or
/// [`kill`](Dependency::kill) on a kill). Around each worker it calls, in Nameko's order:
/// [`inject`](Dependency::inject) (Nameko's `get_dependency`), [`worker_setup`](Dependency::worker_setup),
/// the handler, then (after an RPC reply is sent) [`worker_result`](Dependency::worker_result) and
/// [`worker_teardown`](Dependency::worker_teardown). Handlers reach the injected value with
/// [`WorkerContext::dependency`].
///
/// Hooks run on worker threads, concurrently: implementations are `Sync` and keep shared state
/// behind their own locks.
///
/// ```
/// use enoki::{Dependency, Service, WorkerContext};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// /// Hands each worker a greeting and counts the workers it served.
/// #[derive(Default)]
/// struct Greeting {
///     served: AtomicUsize,
/// }
///
/// impl Dependency for Greeting {
///     type Value = String;
///     fn inject(&self, _ctx: &WorkerContext) -> enoki::Result<String> {
///         Ok("Hello".to_owned())
///     }
///     fn worker_teardown(&self, _ctx: &WorkerContext) {
///         self.served.fetch_add(1, Ordering::Relaxed);
///     }
/// }
///
/// let service = Service::new("greeter")
///     .dependency("greeting", Greeting::default())
///     .rpc("hello", |ctx, (name,): (String,)| {
///         let greeting = ctx.dependency::<Greeting>("greeting")?;
///         Ok(format!("{greeting}, {name}!"))
///     });
/// # let _ = service;
/// ```
pub trait Dependency: Send + Sync + 'static {
    /// The per-worker value handed to handlers.
    type Value: Send + 'static;

    /// Called once when the container starts, before [`start`](Dependency::start).
    fn setup(&self, container: &ContainerInfo) -> Result<()> {
        let _ = container;
        Ok(())
    }

    /// Called once when the container starts, after every dependency's `setup`.
    fn start(&self) -> Result<()> {
        Ok(())
    }

    /// Called once on a graceful stop, after the last worker finished.
    fn stop(&self) {}

    /// Called once when the container is killed. Defaults to [`stop`](Dependency::stop).
    fn kill(&self) {
        self.stop();
    }

    /// The value for one worker (Nameko's `get_dependency`).
    fn inject(&self, ctx: &WorkerContext) -> Result<Self::Value>;

    /// Before the handler runs.
    fn worker_setup(&self, ctx: &WorkerContext) {
        let _ = ctx;
    }

    /// After the handler ran and its reply was sent: the result as JSON text, or the error.
    fn worker_result(&self, ctx: &WorkerContext, result: std::result::Result<&str, &Error>) {
        let _ = (ctx, result);
    }

    /// Last, after `worker_result`.
    fn worker_teardown(&self, ctx: &WorkerContext) {
        let _ = ctx;
    }
}

/// What a dependency may learn about its container during [`Dependency::setup`].
pub struct ContainerInfo {
    pub(crate) runtime: Arc<Runtime>,
}

impl fmt::Debug for ContainerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerInfo")
            .field("service", &self.service_name())
            .finish_non_exhaustive()
    }
}

impl ContainerInfo {
    /// The service's name.
    pub fn service_name(&self) -> &str {
        &self.runtime.service_name
    }

    /// The container's configuration.
    pub fn config(&self) -> &Config {
        &self.runtime.config
    }
}

/// [`Dependency`] with its value type erased, so a service can hold many kinds.
pub(crate) trait DynDependency: Send + Sync {
    fn setup(&self, container: &ContainerInfo) -> Result<()>;
    fn start(&self) -> Result<()>;
    fn stop(&self);
    fn kill(&self);
    fn inject(&self, ctx: &WorkerContext) -> Result<Box<dyn Any + Send>>;
    fn worker_setup(&self, ctx: &WorkerContext);
    fn worker_result(&self, ctx: &WorkerContext, result: std::result::Result<&str, &Error>);
    fn worker_teardown(&self, ctx: &WorkerContext);
    /// For discovery, which recognises the dependencies it can describe (proxies, dispatchers).
    fn as_any(&self) -> &dyn Any;
    /// The type of the injected value, by name (a replacement must inject the same type).
    fn value_type(&self) -> (std::any::TypeId, &'static str);
}

impl<D: Dependency> DynDependency for D {
    fn setup(&self, container: &ContainerInfo) -> Result<()> {
        Dependency::setup(self, container)
    }
    fn start(&self) -> Result<()> {
        Dependency::start(self)
    }
    fn stop(&self) {
        Dependency::stop(self)
    }
    fn kill(&self) {
        Dependency::kill(self)
    }
    fn inject(&self, ctx: &WorkerContext) -> Result<Box<dyn Any + Send>> {
        Ok(Box::new(Dependency::inject(self, ctx)?))
    }
    fn worker_setup(&self, ctx: &WorkerContext) {
        Dependency::worker_setup(self, ctx)
    }
    fn worker_result(&self, ctx: &WorkerContext, result: std::result::Result<&str, &Error>) {
        Dependency::worker_result(self, ctx, result)
    }
    fn worker_teardown(&self, ctx: &WorkerContext) {
        Dependency::worker_teardown(self, ctx)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn value_type(&self) -> (std::any::TypeId, &'static str) {
        (
            std::any::TypeId::of::<D::Value>(),
            std::any::type_name::<D::Value>(),
        )
    }
}

/// A dependency as the service declared it: under a name handlers look it up by.
pub(crate) struct NamedDependency {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
    pub(crate) dependency: Box<dyn DynDependency>,
}

impl fmt::Debug for NamedDependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dependency")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish()
    }
}
