//! The seam every entrypoint kind beyond RPC plugs into: event handlers and raw consumers bring
//! queues, HTTP routes and timers bring jobs. Each kind lives in its own module and adds its
//! builder method to [`Service`](crate::Service) there.

use crate::container::{DeliveryHandler, Jobs, Runtime};
use crate::transport::{Headers, QueueSpec};
use crate::{Config, Error, Result};
use std::fmt;
use std::sync::Arc;

/// One entrypoint (or a group of them that share a resource) of one service.
///
/// A container calls, in order: [`validate`](Entrypoint::validate) before anything starts,
/// [`queues`](Entrypoint::queues) to learn what to consume, [`start`](Entrypoint::start) once
/// the consumers are ready, and [`stop`](Entrypoint::stop) (or [`kill`](Entrypoint::kill))
/// before it closes the worker pool's job channel. After `stop` returns the entrypoint must
/// hold no [`Jobs`] handle, so the workers can drain and exit.
pub(crate) trait Entrypoint: Send + fmt::Debug {
    /// The kind, as Nameko names it: `event_handler`, `http`, `timer`, `consume`.
    #[allow(dead_code)] // read by nothing yet; meant for `describe` and logs
    fn kind(&self) -> &'static str;

    /// The entrypoint's name (the handler's name, the route, the interval).
    fn name(&self) -> String;

    /// What discovery reports about this entrypoint: a JSON object with at least `kind` and
    /// `name`; kinds add their options (an event's source and type, a timer's interval).
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"kind": self.kind(), "name": self.name()})
    }

    /// Checks the entrypoint's options against the service and configuration.
    fn validate(&self, _service: &str, _config: &Config) -> Result<()> {
        Ok(())
    }

    /// The queues to declare, bind and consume for this entrypoint, each with its handler.
    fn queues(
        &self,
        _service: &str,
        _config: &Config,
    ) -> Result<Vec<(QueueSpec, Arc<dyn DeliveryHandler>)>> {
        Ok(Vec::new())
    }

    /// Starts whatever produces work for the pool (a timer thread, an HTTP listener).
    fn start(&mut self, _runtime: &Arc<Runtime>, _jobs: &Jobs) -> Result<()> {
        Ok(())
    }

    /// Stops producing work and drops every [`Jobs`] handle; work already handed to the pool
    /// finishes. Blocks until its own threads have ended.
    fn stop(&mut self) {}

    /// Stops at once.
    fn kill(&mut self) {
        self.stop();
    }

    /// Runs one call of this entrypoint on the calling thread, as a worker of `runtime` would
    /// (context, dependency injection and hooks included) but with no broker or queue in
    /// between: what [`testing`](crate::testing) drives. The handler's error is returned as is.
    fn invoke(&self, runtime: &Arc<Runtime>, call: Invocation) -> Result<Invoked> {
        let _ = (runtime, call);
        Err(Error::config(format!(
            "{} `{}` cannot be invoked directly",
            self.kind(),
            self.name()
        )))
    }
}

/// One direct call of an entrypoint (see [`Entrypoint::invoke`]).
#[derive(Debug)]
pub(crate) struct Invocation {
    /// Context data, as the message's headers would carry it (`nameko.` prefixes optional).
    pub(crate) headers: Headers,
    pub(crate) input: Input,
}

/// What the entrypoint is called with; each kind takes one of these and refuses the others
/// with [`Input::refused`].
#[derive(Debug)]
pub(crate) enum Input {
    /// An event's or a raw message's JSON body.
    Payload(Vec<u8>),
    /// A timer tick.
    Tick,
    /// An HTTP request, answered with [`Invoked::Response`].
    Request(crate::http::Request),
}

impl Input {
    fn describe(&self) -> &'static str {
        match self {
            Input::Payload(_) => "a message payload",
            Input::Tick => "a timer tick",
            Input::Request(_) => "an HTTP request",
        }
    }

    /// The error for an entrypoint of `kind` named `name` given this input.
    pub(crate) fn refused(&self, kind: &str, name: &str, takes: &str) -> Error {
        Error::config(format!(
            "{kind} `{name}` takes {takes}, not {}",
            self.describe()
        ))
    }
}

/// What a direct call returned besides the handler's success.
#[derive(Debug, PartialEq)]
pub(crate) enum Invoked {
    /// The handler ran and succeeded; events, messages and ticks have no result.
    Done,
    /// The response an HTTP entrypoint gave, errors included (they are responses too).
    Response(crate::http::Response),
}
