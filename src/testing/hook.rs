//! Calling one entrypoint directly through a real worker: Nameko's `entrypoint_hook`.

use crate::args::IntoArgs;
use crate::container::{Runtime, transport_for};
use crate::dependency::ContainerInfo;
use crate::entrypoint::{Entrypoint, Input, Invocation, Invoked};
use crate::rpc::Handler;
use crate::service::Service;
use crate::transport::Headers;
use crate::{Config, Error, RemoteError, Result};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;

/// A service's entrypoints, callable one at a time from the test's thread, as Nameko's
/// `entrypoint_hook`: each call runs like a worker of a container (a
/// [`WorkerContext`](crate::WorkerContext) built from the context data, dependencies injected,
/// `worker_setup`, the handler with panics caught, `worker_result`, `worker_teardown`) but no
/// message, queue or consumer is involved.
///
/// [`Hook::new`] sets up and starts the service's dependencies (as a container's start does) on
/// an in-process broker of the hook's own, so dependencies that talk to a broker work without
/// RabbitMQ; [`Hook::with_config`] uses any configuration, RabbitMQ included. Dropping the hook
/// (or [`stop`](Hook::stop)) stops the dependencies.
///
/// RPC calls return what a caller would receive: the result, parsed into any type, or the
/// handler's error as the [`RemoteError`] a caller would get (a panic is a `PanicError`).
/// Event, message and timer calls return the handler's own error.
///
/// ```
/// use enoki::testing::Hook;
/// use enoki::{RemoteError, Service};
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// # fn main() -> enoki::Result<()> {
/// let ticks = Arc::new(AtomicUsize::new(0));
/// let counter = ticks.clone();
/// let service = Service::new("maths")
///     .rpc("add", |_ctx, (a, b): (i64, i64)| Ok(a + b))
///     .rpc("divide", |_ctx, (a, b): (i64, i64)| {
///         a.checked_div(b).ok_or_else(|| RemoteError::new("ZeroDivisionError", "division by zero").into())
///     })
///     .event_handler("clock", "noon", |ctx, hour: u32| {
///         assert_eq!(ctx.language(), Some("fr"));
///         Ok(println!("it is {hour}"))
///     })
///     .timer(Duration::from_secs(3600), move |_ctx| {
///         counter.fetch_add(1, Ordering::Relaxed);
///         Ok(())
///     });
///
/// let hook = Hook::new(service)?;
/// assert_eq!(hook.rpc::<i64>("add", (1, 2))?, 3);
/// let error = hook.rpc::<i64>("divide", (1, 0)).unwrap_err();
/// assert_eq!(error.as_remote().unwrap().exc_type, "ZeroDivisionError");
/// hook.entrypoint("handle_noon").context("language", "fr").event(&12)?;
/// hook.timer("timer")?; // one tick, now
/// assert_eq!(ticks.load(Ordering::Relaxed), 1);
/// # Ok(())
/// # }
/// ```
pub struct Hook {
    runtime: Arc<Runtime>,
    rpc: Vec<(Arc<str>, Handler)>,
    /// Behind a lock so the hook can be shared between threads; entrypoints other than RPC
    /// are then called one at a time.
    entrypoints: Mutex<Vec<Box<dyn Entrypoint>>>,
    stopped: bool,
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hook")
            .field("service", &self.runtime.service_name)
            .field(
                "rpc",
                &self.rpc.iter().map(|(m, _)| &**m).collect::<Vec<_>>(),
            )
            .field("entrypoints", &*self.entrypoints.lock())
            .finish()
    }
}

impl Hook {
    /// Sets up and starts `service`'s dependencies on an in-process broker of the hook's own
    /// ([`isolated_config`](super::isolated_config)). Fails where a container's start would:
    /// invalid names or options, a dependency whose `setup` or `start` fails.
    pub fn new(service: Service) -> Result<Hook> {
        Hook::with_config(service, super::isolated_config())
    }

    /// [`Hook::new`] with `config`, for its settings or its broker (`AMQP_URI`).
    pub fn with_config(service: Service, config: Config) -> Result<Hook> {
        service.validate()?;
        for entrypoint in &service.entrypoints {
            entrypoint.validate(&service.name, &config)?;
        }
        let transport = transport_for(&config)?;
        let Service {
            name,
            rpc,
            dependencies,
            entrypoints,
            ..
        } = service;
        let runtime = Arc::new(Runtime::detached(&name, config, transport, dependencies));
        let hook = Hook {
            rpc: rpc
                .into_iter()
                .map(|(method, handler)| (Arc::from(method), handler))
                .collect(),
            entrypoints: Mutex::new(entrypoints),
            runtime,
            // A failed setup drops the hook, which stops what was set up.
            stopped: false,
        };
        let info = ContainerInfo {
            runtime: hook.runtime.clone(),
        };
        for dep in &hook.runtime.dependencies {
            dep.dependency.setup(&info)?;
        }
        for dep in &hook.runtime.dependencies {
            dep.dependency.start()?;
        }
        Ok(hook)
    }

    /// The service's name.
    pub fn service_name(&self) -> &str {
        &self.runtime.service_name
    }

    /// The configuration the dependencies were set up with.
    pub fn config(&self) -> &Config {
        &self.runtime.config
    }

    /// A call of the entrypoint named `name`, to which context data can be added before it is
    /// made (Nameko's `context_data`).
    pub fn entrypoint(&self, name: &str) -> Call<'_> {
        Call {
            hook: self,
            name: name.to_owned(),
            headers: Headers::new(),
        }
    }

    /// Calls RPC method `method` with `args` (a tuple, [`Args`](crate::Args) or a JSON value)
    /// and parses its result into `R` (`serde_json::Value` takes any). An unknown method is
    /// Nameko's `MethodNotFound`, arguments that do not fit are `IncorrectSignature`, as a
    /// caller over the broker would see them.
    pub fn rpc<R: DeserializeOwned>(&self, method: &str, args: impl IntoArgs) -> Result<R> {
        self.entrypoint(method).rpc(args)
    }

    /// Calls the event handler named `handler` (by default `handle_<event_type>`) with
    /// `payload`, as if that event had been dispatched, and returns the handler's outcome.
    pub fn event<T: Serialize + ?Sized>(&self, handler: &str, payload: &T) -> Result<()> {
        self.entrypoint(handler).event(payload)
    }

    /// Calls the `consume` entrypoint named `name` with `payload` as the message body.
    pub fn consume<T: Serialize + ?Sized>(&self, name: &str, payload: &T) -> Result<()> {
        self.entrypoint(name).consume(payload)
    }

    /// Runs one tick of the timer named `name` (by default `timer`) now, regardless of its
    /// schedule.
    pub fn timer(&self, name: &str) -> Result<()> {
        self.entrypoint(name).tick()
    }

    /// Sends `request` to the HTTP route named `route` (its [`Route::name`](crate::http::Route::name),
    /// or `"<methods> <rule>"` as declared, e.g. `"GET /echo/<value>"`) and returns its
    /// response, as the server would give it: path values bound by the rule, 404 for a path
    /// the rule does not fit, 405 for another method, error responses for failed handlers.
    ///
    /// ```
    /// use enoki::Service;
    /// use enoki::http::Request;
    /// use enoki::testing::Hook;
    ///
    /// # fn main() -> enoki::Result<()> {
    /// let service = Service::new("greeter").http("GET", "/hello/<name>", |_ctx, req: &Request| {
    ///     Ok(format!("Hello, {}!", req.param::<String>("name")?))
    /// });
    /// let hook = Hook::new(service)?;
    /// let response = hook.http("GET /hello/<name>", Request::new("GET", "/hello/Ada"))?;
    /// assert_eq!(response.status_code(), 200);
    /// assert_eq!(response.body_bytes(), b"Hello, Ada!");
    /// # Ok(())
    /// # }
    /// ```
    pub fn http(
        &self,
        route: &str,
        request: crate::http::Request,
    ) -> Result<crate::http::Response> {
        self.entrypoint(route).http(request)
    }

    /// Stops the dependencies, as a container's graceful stop does. Dropping the hook does the
    /// same.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        for entrypoint in self.entrypoints.lock().iter_mut() {
            entrypoint.stop();
        }
        for dep in &self.runtime.dependencies {
            dep.dependency.stop();
        }
        let client = self.runtime.rpc_client.lock().take();
        if let Some(client) = client {
            client.stop();
        }
    }

    fn invoke(&self, kind: &str, name: &str, call: Invocation) -> Result<Invoked> {
        let entrypoints = self.entrypoints.lock();
        let Some(entrypoint) = entrypoints
            .iter()
            .find(|e| e.kind() == kind && e.name() == name)
        else {
            let known: Vec<String> = entrypoints
                .iter()
                .map(|e| format!("{} `{}`", e.kind(), e.name()))
                .collect();
            return Err(Error::config(format!(
                "`{}` has no {kind} named `{name}` (it has: {})",
                self.runtime.service_name,
                if known.is_empty() {
                    "no entrypoints besides RPC".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        };
        entrypoint.invoke(&self.runtime, call)
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One call through a [`Hook`], with the context data it carries; made by one of the
/// terminal methods ([`rpc`](Call::rpc), [`event`](Call::event), [`consume`](Call::consume),
/// [`tick`](Call::tick)).
///
/// ```
/// use enoki::Service;
/// use enoki::testing::Hook;
///
/// # fn main() -> enoki::Result<()> {
/// let service = Service::new("i18n").rpc("hello", |ctx, ()| {
///     Ok(match ctx.language() {
///         Some("fr") => "bonjour",
///         _ => "hello",
///     })
/// });
/// let hook = Hook::new(service)?;
/// let hello: String = hook.entrypoint("hello").context("language", "fr").rpc(())?;
/// assert_eq!(hello, "bonjour");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a call does nothing until rpc, event, consume or tick makes it"]
pub struct Call<'a> {
    hook: &'a Hook,
    name: String,
    headers: Headers,
}

impl Call<'_> {
    /// Adds one context value, as a `nameko.<key>` header would bring it (e.g. `language`,
    /// `auth_token`, or `call_id_stack` to continue a chain).
    pub fn context(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.headers.insert(key.to_owned(), value.into());
        self
    }

    /// Adds context data (keys with or without the `nameko.` prefix).
    pub fn context_data(mut self, data: Headers) -> Self {
        self.headers.extend(data);
        self
    }

    /// Calls the RPC method (see [`Hook::rpc`]).
    pub fn rpc<R: DeserializeOwned>(self, args: impl IntoArgs) -> Result<R> {
        let hook = self.hook;
        let Some((method, handler)) = hook.rpc.iter().find(|(m, _)| **m == *self.name) else {
            return Err(RemoteError::method_not_found(&self.name).into());
        };
        let args = args.into_args()?;
        let json = crate::rpc::invoke(&hook.runtime, method.clone(), handler, args, self.headers)?;
        serde_json::from_slice(&json).map_err(|e| {
            Error::bad_input(format!(
                "the result of `{}` does not fit the expected type: {e}",
                self.name
            ))
        })
    }

    /// Calls the event handler with `payload` (see [`Hook::event`]).
    pub fn event<T: Serialize + ?Sized>(self, payload: &T) -> Result<()> {
        self.payload("event_handler", payload)
    }

    /// Calls the `consume` entrypoint with `payload` (see [`Hook::consume`]).
    pub fn consume<T: Serialize + ?Sized>(self, payload: &T) -> Result<()> {
        self.payload("consume", payload)
    }

    /// Runs one tick of the timer (see [`Hook::timer`]).
    pub fn tick(self) -> Result<()> {
        let call = Invocation {
            headers: self.headers,
            input: Input::Tick,
        };
        self.hook.invoke("timer", &self.name, call).map(|_| ())
    }

    /// Sends an HTTP request to the route (see [`Hook::http`]).
    pub fn http(self, request: crate::http::Request) -> Result<crate::http::Response> {
        let call = Invocation {
            headers: self.headers,
            input: Input::Request(request),
        };
        match self.hook.invoke("http", &self.name, call)? {
            Invoked::Response(response) => Ok(response),
            Invoked::Done => Err(Error::config(format!(
                "http route `{}` gave no response",
                self.name
            ))),
        }
    }

    fn payload<T: Serialize + ?Sized>(self, kind: &str, payload: &T) -> Result<()> {
        let call = Invocation {
            headers: self.headers,
            input: Input::Payload(serde_json::to_vec(payload)?),
        };
        self.hook.invoke(kind, &self.name, call).map(|_| ())
    }
}
