//! The seam every entrypoint kind beyond RPC plugs into: event handlers and raw consumers bring
//! queues, HTTP routes and timers bring jobs. Each kind lives in its own module and adds its
//! builder method to [`Service`](crate::Service) there.

use crate::Config;
use crate::Result;
use crate::container::{DeliveryHandler, Jobs, Runtime};
use crate::transport::QueueSpec;
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
}
