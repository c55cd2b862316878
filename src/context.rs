//! The worker context: who is running, on behalf of which call chain, with which context data.

use crate::container::Runtime;
use crate::transport::Headers;
use crate::{Error, Result};
use serde_json::Value;
use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// The AMQP header prefix Nameko puts on every context key.
pub(crate) const HEADER_PREFIX: &str = "nameko.";
const CALL_ID_STACK: &str = "call_id_stack";

/// Context data as it travels to the next call: the incoming data plus this worker's call id
/// stack. Shared by reference with every proxy the worker hands out.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    pub(crate) data: Headers,
    pub(crate) call_id_stack: Vec<String>,
}

impl Outgoing {
    /// The AMQP headers for a message sent on behalf of this context: each key as
    /// `nameko.<key>`, and `nameko.call_id_stack` as an array of strings.
    pub(crate) fn headers(&self) -> Headers {
        let mut headers = Headers::new();
        for (key, value) in &self.data {
            if !value.is_null() {
                // concat, not format!: this runs for every outgoing message, and the fmt
                // machinery costs several times a plain copy (callgrind).
                headers.insert([HEADER_PREFIX, key].concat(), value.clone());
            }
        }
        if !self.call_id_stack.is_empty() {
            headers.insert(
                [HEADER_PREFIX, CALL_ID_STACK].concat(),
                Value::Array(
                    self.call_id_stack
                        .iter()
                        .map(|id| Value::String(id.clone()))
                        .collect(),
                ),
            );
        }
        headers
    }
}

/// Splits incoming message headers into context data (keys with a leading `nameko.` stripped)
/// and the parent call id stack.
pub(crate) fn split_headers(headers: Headers) -> (Headers, Vec<String>) {
    let mut data = Headers::new();
    let mut parent_stack: Vec<String> = Vec::new();
    for (key, value) in headers {
        let key = match key.strip_prefix(HEADER_PREFIX) {
            Some(stripped) => stripped.to_owned(),
            None => key,
        };
        if key == CALL_ID_STACK {
            // Only an array of strings is a stack; anything else is ignored rather than split
            // into characters (what Python's deque.extend would do with a string).
            if let Value::Array(items) = value {
                parent_stack = items
                    .into_iter()
                    .filter_map(|v| match v {
                        Value::String(s) => Some(s),
                        _ => None,
                    })
                    .collect();
            }
        } else {
            data.insert(key, value);
        }
    }
    (data, parent_stack)
}

/// Keeps the last `calls_tracked` parent ids plus this call's own id at the end of `stack`.
pub(crate) fn trim_stack(stack: &mut Vec<String>, calls_tracked: usize) {
    let keep = calls_tracked.saturating_add(1);
    if stack.len() > keep {
        stack.drain(..stack.len() - keep);
    }
}

/// What a worker knows while it runs one entrypoint call: the service and entrypoint, the call
/// id and the call id stack, the context data that came with the call, and the values its
/// dependencies injected.
///
/// Context data follows Nameko: every incoming AMQP header becomes a key, with a leading
/// `nameko.` stripped; `call_id_stack` is kept apart. Everything is passed on to calls and
/// events the worker makes.
pub struct WorkerContext {
    pub(crate) runtime: Arc<Runtime>,
    entrypoint: Arc<str>,
    call_id: String,
    origin_call_id: Option<String>,
    immediate_parent_call_id: Option<String>,
    outgoing: Arc<Outgoing>,
    pub(crate) injected: Vec<Option<Box<dyn Any + Send>>>,
}

impl fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerContext")
            .field("service", &self.service_name())
            .field("entrypoint", &self.entrypoint)
            .field("call_id_stack", &self.outgoing.call_id_stack)
            .field("data", &self.outgoing.data)
            .finish_non_exhaustive()
    }
}

impl WorkerContext {
    /// Builds the context for one call of `entrypoint` from the incoming message headers (or
    /// none, for timers and HTTP).
    pub(crate) fn new(runtime: Arc<Runtime>, entrypoint: Arc<str>, headers: Headers) -> Self {
        let (data, mut parent_stack) = split_headers(headers);
        // Once per worker: concat, not format! (about 1,300 instructions of fmt machinery).
        let call_id = crate::id::with_uuid4(|id| {
            [&*runtime.service_name, ".", &*entrypoint, ".", id].concat()
        });
        let origin_call_id = parent_stack.first().cloned();
        let immediate_parent_call_id = parent_stack.last().cloned();
        parent_stack.push(call_id.clone());
        trim_stack(&mut parent_stack, runtime.config.calls_tracked());
        let slots = runtime.dependencies.len();
        WorkerContext {
            runtime,
            entrypoint,
            call_id,
            origin_call_id,
            immediate_parent_call_id,
            outgoing: Arc::new(Outgoing {
                data,
                call_id_stack: parent_stack,
            }),
            injected: (0..slots).map(|_| None).collect(),
        }
    }

    /// The service's name.
    pub fn service_name(&self) -> &str {
        &self.runtime.service_name
    }

    /// The entrypoint being run: the RPC method name, for example.
    pub fn entrypoint(&self) -> &str {
        &self.entrypoint
    }

    /// This worker's call id, `<service>.<entrypoint>.<uuid4>`.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The incoming stack with this worker's call id appended, keeping the last
    /// `parent_calls_tracked + 1` entries.
    pub fn call_id_stack(&self) -> &[String] {
        &self.outgoing.call_id_stack
    }

    /// The first call id of the whole chain, if this call came from another.
    pub fn origin_call_id(&self) -> Option<&str> {
        self.origin_call_id.as_deref()
    }

    /// The call id of the direct caller, if any.
    pub fn immediate_parent_call_id(&self) -> Option<&str> {
        self.immediate_parent_call_id.as_deref()
    }

    /// The context data that came with the call (without `call_id_stack`).
    pub fn data(&self) -> &Headers {
        &self.outgoing.data
    }

    /// One context value, e.g. `ctx.get("x-request-id")`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.outgoing.data.get(key)
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.outgoing.data.get(key).and_then(Value::as_str)
    }

    /// Nameko's `auth_token` context value.
    pub fn auth_token(&self) -> Option<&str> {
        self.text("auth_token")
    }

    /// Nameko's `language` context value.
    pub fn language(&self) -> Option<&str> {
        self.text("language")
    }

    /// Nameko's `user_id` context value.
    pub fn user_id(&self) -> Option<&str> {
        self.text("user_id")
    }

    /// Nameko's `user_agent` context value.
    pub fn user_agent(&self) -> Option<&str> {
        self.text("user_agent")
    }

    /// The service's configuration.
    pub fn config(&self) -> &crate::Config {
        &self.runtime.config
    }

    /// The value dependency `name` injected into this worker.
    ///
    /// ```no_run
    /// # use enoki::{RpcProxy, Service};
    /// let service = Service::new("greeter")
    ///     .dependency("payments", RpcProxy::new("payments"))
    ///     .rpc("pay", |ctx, (amount,): (u64,)| {
    ///         let payments = ctx.dependency::<RpcProxy>("payments")?;
    ///         payments.call::<serde_json::Value>("charge", (amount,))
    ///     });
    /// ```
    pub fn dependency<D: crate::Dependency>(&self, name: &str) -> Result<&D::Value> {
        let index = self
            .runtime
            .dependencies
            .iter()
            .position(|d| d.name == name)
            .ok_or_else(|| Error::config(format!("no dependency named `{name}`")))?;
        self.injected[index]
            .as_ref()
            .and_then(|v| v.downcast_ref::<D::Value>())
            .ok_or_else(|| {
                Error::config(format!(
                    "dependency `{name}` is not a {}",
                    std::any::type_name::<D>()
                ))
            })
    }

    pub(crate) fn outgoing(&self) -> &Arc<Outgoing> {
        &self.outgoing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s.m.{i}")).collect()
    }

    #[test]
    fn stack_keeps_the_tracked_parents_and_the_own_id() {
        let mut stack = ids(5);
        trim_stack(&mut stack, 2);
        assert_eq!(stack, ["s.m.2", "s.m.3", "s.m.4"]);
        let mut stack = ids(5);
        trim_stack(&mut stack, 0);
        assert_eq!(stack, ["s.m.4"]);
    }

    #[test]
    fn unlimited_calls_tracked_does_not_overflow() {
        // `parent_calls_tracked` can be usize::MAX from a config file; `+ 1` overflowed (a
        // panic in debug builds, an emptied stack in release).
        let mut stack = ids(3);
        trim_stack(&mut stack, usize::MAX);
        assert_eq!(stack, ids(3));
    }

    #[test]
    fn headers_split_into_context_and_stack() {
        let headers = json!({
            "nameko.call_id_stack": ["a.b.1", 7, "c.d.2"],
            "nameko.auth_token": "t",
            "language": "en",
        });
        let Value::Object(headers) = headers else {
            unreachable!()
        };
        let (data, stack) = split_headers(headers);
        assert_eq!(stack, ["a.b.1", "c.d.2"]);
        assert_eq!(
            Value::Object(data),
            json!({"auth_token": "t", "language": "en"})
        );
    }
}
