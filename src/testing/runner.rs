//! Running services for a test on a broker of their own: Nameko's `container_factory` and
//! `runner_factory`.

use crate::{ClusterRpcProxy, Config, Result, Runner, Service, StandaloneDispatcher};
use std::fmt;
use std::time::Duration;

/// The default timeout of [`TestRunner::proxy`]'s calls: a test that waits on a reply that
/// never comes fails instead of hanging.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A [`Runner`] on an in-process broker of its own ([`isolated_config`](super::isolated_config)),
/// with clients on the same broker: several services run and call each other in one test, in
/// parallel with other tests, with nothing installed. Dropping it kills the services, as
/// Nameko's fixtures do at teardown; [`stop`](TestRunner::stop) stops them gracefully.
///
/// ```
/// use enoki::testing::TestRunner;
/// use enoki::{RpcProxy, Service};
///
/// # fn main() -> enoki::Result<()> {
/// let echo = Service::new("echo").rpc("echo", |_ctx, (v,): (serde_json::Value,)| Ok(v));
/// let greeter = Service::new("greeter")
///     .dependency("echo", RpcProxy::new("echo"))
///     .rpc("hello", |ctx, (name,): (String,)| {
///         let echo = ctx.dependency::<RpcProxy>("echo")?;
///         Ok(format!("Hello, {}!", echo.call::<String>("echo", (name,))?))
///     });
/// let runner = TestRunner::new().service(echo).service(greeter).start()?;
/// let hello: String = runner.proxy()?.call("greeter", "hello", ("Ada",))?;
/// assert_eq!(hello, "Hello, Ada!");
/// runner.stop();
/// # Ok(())
/// # }
/// ```
pub struct TestRunner {
    config: Config,
    runner: Option<Runner>,
}

impl fmt::Debug for TestRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestRunner")
            .field("uri", &self.config.uri())
            .field("runner", &self.runner)
            .finish()
    }
}

impl Default for TestRunner {
    fn default() -> Self {
        TestRunner::new()
    }
}

impl TestRunner {
    /// A runner with the default configuration on a fresh in-process broker.
    pub fn new() -> TestRunner {
        TestRunner::with_config(Config::new())
    }

    /// A runner with `config`'s settings (workers, exchange, custom keys), on a fresh
    /// in-process broker whatever `config`'s `AMQP_URI` says.
    pub fn with_config(config: Config) -> TestRunner {
        let config = super::isolate(config);
        TestRunner {
            runner: Some(Runner::new(config.clone())),
            config,
        }
    }

    /// Adds a service.
    pub fn service(mut self, service: Service) -> TestRunner {
        self.runner = self.runner.take().map(|r| r.service(service));
        self
    }

    /// Starts every service; returns once they all consume their queues.
    pub fn start(mut self) -> Result<TestRunner> {
        if let Some(runner) = &mut self.runner {
            runner.start()?;
        }
        Ok(self)
    }

    /// The configuration the services run with; build other clients, containers or
    /// [`Hook`](super::Hook)s on the same broker with it.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A standalone RPC client on the services' broker, with a default call timeout of 30 s.
    pub fn proxy(&self) -> Result<ClusterRpcProxy> {
        Ok(ClusterRpcProxy::new(&self.config)?.timeout(CALL_TIMEOUT))
    }

    /// A standalone event dispatcher on the services' broker.
    pub fn dispatcher(&self) -> Result<StandaloneDispatcher> {
        StandaloneDispatcher::new(&self.config)
    }

    /// Stops every service gracefully: in-flight work finishes.
    pub fn stop(mut self) {
        if let Some(mut runner) = self.runner.take() {
            runner.stop();
        }
    }
}

impl Drop for TestRunner {
    fn drop(&mut self) {
        if let Some(mut runner) = self.runner.take() {
            runner.kill();
        }
    }
}
