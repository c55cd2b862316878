//! The service definition: a name, entrypoints and dependencies. Plain data, no threads.

use crate::Result;
use crate::args::FromArgs;
use crate::context::WorkerContext;
use crate::dependency::{Dependency, NamedDependency};
use crate::entrypoint::Entrypoint;
use crate::rpc::{Handler, handler};
use serde::Serialize;
use std::fmt;

/// A service: a name, its entrypoints and its dependencies, built with closures.
///
/// Nothing runs until a [`Container`](crate::Container) or [`Runner`](crate::Runner) starts it.
///
/// ```
/// use enoki::{RemoteError, Service};
///
/// let echo = Service::new("echo")
///     .rpc("echo", |_ctx, (value,): (serde_json::Value,)| Ok(value))
///     .rpc("add", |_ctx, (a, b): (i64, i64)| Ok(a + b))
///     .rpc("fail", |_ctx, (message,): (String,)| -> enoki::Result<()> {
///         Err(RemoteError::new("ValueError", message).into())
///     });
/// assert_eq!(echo.name(), "echo");
/// assert_eq!(echo.rpc_methods().collect::<Vec<_>>(), ["echo", "add", "fail"]);
/// ```
pub struct Service {
    pub(crate) name: String,
    pub(crate) rpc: Vec<(String, Handler)>,
    pub(crate) dependencies: Vec<NamedDependency>,
    pub(crate) entrypoints: Vec<Box<dyn Entrypoint>>,
    /// Reported by discovery; set with `Service::version` (in describe.rs).
    pub(crate) version: Option<String>,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("rpc", &self.rpc_methods().collect::<Vec<_>>())
            .field("dependencies", &self.dependencies)
            .field("entrypoints", &self.entrypoints)
            .finish()
    }
}

impl Service {
    /// A service named `name`, with no entrypoints yet. The name makes its queues: RPC requests
    /// arrive on `rpc-<name>`, routed by `<name>.<method>`.
    pub fn new(name: impl Into<String>) -> Service {
        Service {
            name: name.into(),
            rpc: Vec::new(),
            dependencies: Vec::new(),
            entrypoints: Vec::new(),
            version: None,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Exposes `method` over RPC.
    ///
    /// The handler gets the [`WorkerContext`] and its arguments, either raw as
    /// [`Args`](crate::Args) or bound to any deserializable type (a tuple from positional
    /// arguments, a struct from positional and keyword arguments; see
    /// [`Args::parse`](crate::Args::parse)). Arguments that do not fit are answered with
    /// Nameko's `IncorrectSignature`. The result is anything `Serialize`; an error is sent as a
    /// remote error, and a panic as a `PanicError` remote error (the worker survives).
    pub fn rpc<A, R, F>(mut self, method: impl Into<String>, f: F) -> Service
    where
        A: FromArgs + 'static,
        R: Serialize + 'static,
        F: Fn(&WorkerContext, A) -> Result<R> + Send + Sync + 'static,
    {
        self.rpc.push((method.into(), handler(f)));
        self
    }

    /// Declares a dependency under `name`; handlers reach its per-worker value with
    /// [`WorkerContext::dependency`].
    pub fn dependency<D: Dependency>(mut self, name: impl Into<String>, dependency: D) -> Service {
        self.dependencies.push(NamedDependency {
            name: name.into(),
            kind: std::any::type_name::<D>(),
            dependency: Box::new(dependency),
        });
        self
    }

    /// Adds an entrypoint of a kind other than RPC; each kind's module has the public builder.
    pub(crate) fn entrypoint(mut self, entrypoint: impl Entrypoint + 'static) -> Service {
        self.entrypoints.push(Box::new(entrypoint));
        self
    }

    /// The RPC method names, in the order they were added.
    pub fn rpc_methods(&self) -> impl Iterator<Item = &str> {
        self.rpc.iter().map(|(name, _)| name.as_str())
    }

    /// Checks what can only be checked as a whole: unique method and dependency names.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.name.is_empty() || self.name.contains(['.', '*', '#']) {
            return Err(crate::Error::config(format!(
                "invalid service name `{}`: it must be non-empty and free of `.`, `*` and `#`",
                self.name
            )));
        }
        for (i, (method, _)) in self.rpc.iter().enumerate() {
            if method.is_empty() || method.contains('.') {
                return Err(crate::Error::config(format!(
                    "invalid rpc method name `{method}`: Nameko routes `<service>.*`, so it \
                     must be non-empty and free of `.`"
                )));
            }
            if self.rpc[..i].iter().any(|(m, _)| m == method) {
                return Err(crate::Error::config(format!(
                    "rpc method `{method}` is registered twice on `{}`",
                    self.name
                )));
            }
        }
        for (i, dep) in self.dependencies.iter().enumerate() {
            if self.dependencies[..i].iter().any(|d| d.name == dep.name) {
                return Err(crate::Error::config(format!(
                    "dependency `{}` is declared twice on `{}`",
                    dep.name, self.name
                )));
            }
        }
        Ok(())
    }
}
