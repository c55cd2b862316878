//! Testing services without RabbitMQ: Nameko's `nameko.testing` helpers, done the Rust way.
//!
//! | Nameko | enoki |
//! |---|---|
//! | `entrypoint_hook(container, name, context_data)` | [`Hook`]: `hook.rpc(..)`, `hook.event(..)`, `hook.timer(..)`, `hook.consume(..)`, `hook.entrypoint(name).context(..)` |
//! | `worker_factory(Service, **deps)` | [`replace_dependency`], then a [`Hook`] |
//! | `replace_dependencies(container, *names, **values)` | [`replace_dependency`] with an [`RpcMock`], an [`EventRecorder`], a [`Stub`] or any [`Dependency`] |
//! | `entrypoint_waiter(container, name, timeout)` | [`Waiter`] |
//! | `restrict_entrypoints(container, *names)` | [`restrict_entrypoints`] |
//! | `container_factory`, `runner_factory` | [`TestRunner`] |
//! | `rabbit_config` (a vhost per test) | [`isolated_config`] (an in-process broker per test) |
//!
//! A [`Hook`] calls one entrypoint on the test's own thread through a real worker: the
//! [`WorkerContext`](crate::WorkerContext) is built from the given context data as from a
//! message's headers, dependencies are injected and their `worker_setup`, `worker_result` and
//! `worker_teardown` hooks run around the handler, exactly as in a container. No queue or
//! consumer is involved, so nothing needs a broker; dependencies that publish (an
//! [`RpcProxy`](crate::RpcProxy), an [`EventDispatcher`](crate::EventDispatcher)) run on an
//! in-process broker of the hook's own, or on test doubles that record what they were asked to
//! do.
//!
//! ```
//! use enoki::testing::{self, Hook, RpcMock};
//! use enoki::{RpcProxy, Service};
//! use serde_json::json;
//!
//! # fn main() -> enoki::Result<()> {
//! let shop = Service::new("shop")
//!     .dependency("payments", RpcProxy::new("payments"))
//!     .rpc("buy", |ctx, (item, price): (String, u32)| {
//!         let payments = ctx.dependency::<RpcProxy>("payments")?;
//!         let receipt: String = payments.call("charge", (price,))?;
//!         Ok(format!("{item}: {receipt}"))
//!     });
//! let payments = RpcMock::new("payments").returns("charge", json!("paid"));
//! let shop = testing::replace_dependency(shop, "payments", payments.clone())?;
//!
//! let hook = Hook::new(shop)?;
//! let bought: String = hook.rpc("buy", ("tea", 3))?;
//! assert_eq!(bought, "tea: paid");
//! assert_eq!(payments.calls()[0].method, "charge");
//! assert_eq!(payments.calls()[0].args.args, [json!(3)]);
//! # Ok(())
//! # }
//! ```

mod doubles;
mod hook;
mod runner;
mod waiter;

pub use doubles::{EventRecorder, RecordedCall, RecordedEvent, RpcMock, Stub};
pub use hook::{Call, Hook};
pub use runner::TestRunner;
pub use waiter::{Completion, WaitTimeout, Waiter};

use crate::{Config, Dependency, Error, Result, Service};

/// A configuration on an in-process broker of its own (`memory://enoki-test-<uuid>`): every
/// container, runner and client built from it shares that broker and no other, so tests running
/// in parallel do not see each other's messages. Everything else is [`Config::new`]'s default.
///
/// ```
/// let config = enoki::testing::isolated_config();
/// assert!(config.uri().starts_with("memory://enoki-test-"));
/// assert_ne!(config.uri(), enoki::testing::isolated_config().uri());
/// ```
pub fn isolated_config() -> Config {
    isolate(Config::new())
}

/// `config` moved onto an in-process broker of its own.
pub(crate) fn isolate(config: Config) -> Config {
    config.amqp_uri(format!(
        "memory://enoki-test-{}",
        crate::id::uuid4().simple()
    ))
}

/// Replaces the dependency declared as `name` with `replacement`, as Nameko's
/// `replace_dependencies`: handlers keep looking it up by the same name and type, and get what
/// the replacement injects. The replacement must inject the same type as the original (an
/// [`RpcMock`] for an [`RpcProxy`](crate::RpcProxy), an [`EventRecorder`] for an
/// [`EventDispatcher`](crate::EventDispatcher), a [`Stub`] or a dependency of your own for
/// anything else). Together with a [`Hook`] this is Nameko's `worker_factory`.
///
/// Fails if the service declares no dependency of that name, or if the replacement injects
/// another type.
///
/// ```
/// use enoki::testing::{self, Hook, Stub};
/// use enoki::{Dependency, Service, WorkerContext};
///
/// /// The real one would read the greeting from a remote configuration service.
/// struct Greeting;
/// impl Dependency for Greeting {
///     type Value = String;
///     fn inject(&self, _ctx: &WorkerContext) -> enoki::Result<String> {
///         unimplemented!("needs the configuration service")
///     }
/// }
///
/// # fn main() -> enoki::Result<()> {
/// let greeter = Service::new("greeter")
///     .dependency("greeting", Greeting)
///     .rpc("hello", |ctx, (name,): (String,)| {
///         Ok(format!("{}, {name}!", ctx.dependency::<Greeting>("greeting")?))
///     });
/// let greeting = Stub::new("Bonjour".to_owned());
/// let greeter = testing::replace_dependency(greeter, "greeting", greeting.clone())?;
/// let hello: String = Hook::new(greeter)?.rpc("hello", ("Ada",))?;
/// assert_eq!(hello, "Bonjour, Ada!");
/// assert_eq!(greeting.completions().len(), 1);
/// # Ok(())
/// # }
/// ```
pub fn replace_dependency<D: Dependency>(
    mut service: Service,
    name: &str,
    replacement: D,
) -> Result<Service> {
    let service_name = service.name.clone();
    let Some(slot) = service.dependencies.iter_mut().find(|d| d.name == name) else {
        return Err(Error::config(format!(
            "`{service_name}` has no dependency named `{name}`"
        )));
    };
    let (expected, expected_name) = slot.dependency.value_type();
    let replacement: Box<dyn crate::dependency::DynDependency> = Box::new(replacement);
    let (given, given_name) = replacement.value_type();
    if given != expected {
        return Err(Error::config(format!(
            "the replacement for dependency `{name}` of `{service_name}` injects a \
             `{given_name}`, but its handlers expect a `{expected_name}`"
        )));
    }
    slot.kind = std::any::type_name::<D>();
    slot.dependency = replacement;
    Ok(service)
}

/// Keeps only the entrypoints named in `names` (RPC methods, event handlers, timers,
/// consumers, by the names workers see in [`WorkerContext::entrypoint`](crate::WorkerContext::entrypoint)),
/// as Nameko's `restrict_entrypoints`: a container started with the result consumes nothing
/// for the others (no queue is declared for them, no timer runs). Dependencies are kept.
///
/// Fails if a name matches no entrypoint.
///
/// ```
/// use enoki::Service;
/// use std::time::Duration;
///
/// # fn main() -> enoki::Result<()> {
/// let service = Service::new("reports")
///     .rpc("latest", |_ctx, ()| Ok("none yet"))
///     .rpc("purge", |_ctx, ()| Ok(()))
///     .timer(Duration::from_secs(60), |_ctx| Ok(()));
/// let only = enoki::testing::restrict_entrypoints(service, &["latest"])?;
/// assert_eq!(only.rpc_methods().collect::<Vec<_>>(), ["latest"]);
/// # Ok(())
/// # }
/// ```
pub fn restrict_entrypoints(mut service: Service, names: &[&str]) -> Result<Service> {
    for name in names {
        let known = service.rpc_methods().any(|m| m == *name)
            || service.entrypoints.iter().any(|e| e.name() == *name);
        if !known {
            return Err(Error::config(format!(
                "`{}` has no entrypoint named `{name}`",
                service.name
            )));
        }
    }
    service
        .rpc
        .retain(|(method, _)| names.contains(&method.as_str()));
    service
        .entrypoints
        .retain(|e| names.contains(&e.name().as_str()));
    Ok(service)
}
