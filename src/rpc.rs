//! The `rpc` entrypoint and Nameko's RPC wire format: request, reply, remote error.
//!
//! One durable queue per service, `rpc-<service>`, bound to the RPC exchange with
//! `<service>.*`; the method comes from the routing key. A reply goes back to the **same**
//! exchange, routed by the request's `reply_to` (a bare UUID), carrying its `correlation_id`.
//! The request is acked only after the reply is published.

use crate::args::{Args, FromArgs};
use crate::container::{DeliveryHandler, Runtime, Worker};
use crate::context::WorkerContext;
use crate::transport::{Delivery, ExchangeSpec, Headers, Outgoing, Properties, QueueSpec};
use crate::{Error, ErrorKind, RemoteError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

pub(crate) const JSON: &str = "application/json";
pub(crate) const UTF8: &str = "utf-8";
pub(crate) const PERSISTENT: u8 = 2;

/// A type-erased handler: parses its arguments, runs, and writes its result as JSON to `out`.
pub(crate) type Handler =
    Arc<dyn Fn(&WorkerContext, Args, &mut Vec<u8>) -> Result<()> + Send + Sync>;

/// Wraps a typed closure as a [`Handler`].
pub(crate) fn handler<A, R, F>(f: F) -> Handler
where
    A: FromArgs,
    R: Serialize,
    F: Fn(&WorkerContext, A) -> Result<R> + Send + Sync + 'static,
{
    Arc::new(move |ctx, args, out| {
        let args = A::from_args(args)?;
        let result = f(ctx, args)?;
        serde_json::to_writer(&mut *out, &result).map_err(|e| {
            Error::from(
                RemoteError::with_path(
                    "UnserializableValueError",
                    "nameko.exceptions.UnserializableValueError",
                    format!("Unserializable value: `{e}`"),
                )
                .args(Vec::new()),
            )
        })
    })
}

/// The queue a service's RPC consumer reads.
pub(crate) fn service_queue(service: &str, exchange: &str) -> QueueSpec {
    QueueSpec::durable(format!("rpc-{service}"))
        .bind(ExchangeSpec::topic(exchange), format!("{service}.*"))
}

/// The request body: `{"args": [...], "kwargs": {...}}`; other keys are ignored.
#[derive(Deserialize)]
struct RequestBody {
    args: Option<Vec<Value>>,
    kwargs: Option<Map<String, Value>>,
}

/// Decodes a request body; anything but an object with both keys is `MalformedRequest`.
pub(crate) fn decode_request(content_type: Option<&str>, body: &[u8]) -> Result<Args> {
    if content_type != Some(JSON) {
        return Err(RemoteError::malformed_request(format!(
            "unsupported content type {:?}; enoki accepts {JSON}",
            content_type.unwrap_or("")
        ))
        .into());
    }
    let request: RequestBody = serde_json::from_slice(body).map_err(|e| {
        Error::from(RemoteError::malformed_request(format!(
            "cannot decode the request body: {e}"
        )))
    })?;
    match (request.args, request.kwargs) {
        (Some(args), Some(kwargs)) => Ok(Args { args, kwargs }),
        _ => Err(RemoteError::malformed_request("Message missing `args` or `kwargs`").into()),
    }
}

/// Writes a reply body into `out`, given the result already encoded as JSON.
pub(crate) fn encode_reply(result: std::result::Result<&[u8], &RemoteError>, out: &mut Vec<u8>) {
    #[derive(Serialize)]
    struct ErrorReply<'a> {
        result: Option<()>,
        error: &'a RemoteError,
    }
    match result {
        Ok(json) => {
            out.extend_from_slice(b"{\"result\": ");
            out.extend_from_slice(json);
            out.extend_from_slice(b", \"error\": null}");
        }
        Err(error) => {
            // A RemoteError is plain strings and JSON values: it always serializes.
            let _ = serde_json::to_writer(
                &mut *out,
                &ErrorReply {
                    result: None,
                    error,
                },
            );
        }
    }
}

/// A reply as it arrives: `{"result": ..., "error": null | {...}}`.
#[derive(Deserialize)]
struct ReplyBody {
    #[serde(default)]
    result: Value,
    #[serde(default)]
    error: Option<RemoteError>,
}

/// Decodes a reply body into the result or the remote error.
pub(crate) fn decode_reply(body: &[u8]) -> Result<Value> {
    let reply: ReplyBody = serde_json::from_slice(body)
        .map_err(|e| Error::bad_input(format!("cannot decode the reply: {e}")))?;
    match reply.error {
        Some(error) => Err(error.into()),
        None => Ok(reply.result),
    }
}

/// The RPC methods of one service, routed by the delivery's routing key.
pub(crate) struct RpcEntrypoint {
    prefix_len: usize,
    methods: HashMap<String, (Arc<str>, Handler)>,
}

impl fmt::Debug for RpcEntrypoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcEntrypoint")
            .field("methods", &self.methods.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RpcEntrypoint {
    pub(crate) fn new(service: &str, methods: &[(String, Handler)]) -> RpcEntrypoint {
        RpcEntrypoint {
            prefix_len: service.len() + 1,
            methods: methods
                .iter()
                .map(|(name, h)| (name.clone(), (Arc::from(name.as_str()), h.clone())))
                .collect(),
        }
    }
}

impl DeliveryHandler for RpcEntrypoint {
    /// Runs one request on a worker: decode, run, reply, ack, then the result hooks.
    fn handle(&self, runtime: &Arc<Runtime>, delivery: Delivery, worker: &mut Worker) {
        let Delivery {
            mut message, acker, ..
        } = delivery;
        // The context takes the headers; the reply needs only the other properties.
        let headers = std::mem::take(&mut message.properties.headers);
        let props = message.properties;
        let Some(reply_to) = props.reply_to.as_deref() else {
            // Nameko crashes on this (KeyError), and the requeued message crashes the next
            // instance too. There is nobody to answer: log it and drop it.
            log::warn!(
                "{}: dropping request {} without reply_to (from call {})",
                runtime.service_name,
                message.routing_key,
                caller_call_id(&headers)
            );
            acker.ack();
            return;
        };
        if props.content_type.is_none() {
            log::warn!(
                "{}: dropping request {} without content_type (from call {})",
                runtime.service_name,
                message.routing_key,
                caller_call_id(&headers)
            );
            acker.ack();
            return;
        }
        let method = message.routing_key.get(self.prefix_len..).unwrap_or("");
        let reply = |worker: &mut Worker, result: std::result::Result<&[u8], &RemoteError>| {
            let mut body = std::mem::take(&mut worker.buffer);
            body.clear();
            encode_reply(result, &mut body);
            let outcome = send_reply(runtime, worker, &props, reply_to, &body);
            worker.buffer = body;
            outcome
        };
        let Some((entrypoint, handler)) = self.methods.get(method) else {
            let error = RemoteError::method_not_found(method);
            if reply(worker, Err(&error)).is_ok() {
                acker.ack();
            }
            return;
        };
        let args = match decode_request(props.content_type.as_deref(), &message.body) {
            Ok(args) => args,
            Err(e) => {
                log::warn!(
                    "{}.{method}: {e} (from call {})",
                    runtime.service_name,
                    caller_call_id(&headers)
                );
                if reply(worker, Err(&e.to_remote())).is_ok() {
                    acker.ack();
                }
                return;
            }
        };

        let mut ctx = WorkerContext::new(runtime.clone(), entrypoint.clone(), headers);
        let mut out = std::mem::take(&mut worker.result);
        out.clear();
        let outcome = run_worker(runtime, &mut ctx, |ctx| handler(ctx, args, &mut out));
        let remote = outcome.as_ref().err().map(Error::to_remote);
        let sent = match &remote {
            None => reply(worker, Ok(&out)),
            Some(error) => reply(worker, Err(error)),
        };
        match sent {
            Ok(()) => acker.ack(),
            // Left unacked (the acker requeues on drop): the broker redelivers it.
            Err(e) => log::error!("{}: cannot publish reply: {e}", ctx.call_id()),
        }
        let json = std::str::from_utf8(&out).unwrap_or("null");
        finish_worker(runtime, &ctx, outcome.as_ref().map(|()| json));
        worker.result = out;
    }
}

/// The caller's call id (the last of the request's `call_id_stack`), for log lines about
/// messages refused before a worker, and so a call id of their own, exists.
pub(crate) fn caller_call_id(headers: &Headers) -> &str {
    headers
        .get("nameko.call_id_stack")
        .and_then(Value::as_array)
        .and_then(|stack| stack.last())
        .and_then(Value::as_str)
        .unwrap_or("-")
}

/// Runs one call of `handler` on the calling thread as a worker of `runtime` would run a
/// request (context from `headers`, dependencies, hooks), with no broker in between: the
/// result as JSON text, or the error as the caller would receive it (a remote error).
pub(crate) fn invoke(
    runtime: &Arc<Runtime>,
    method: Arc<str>,
    handler: &Handler,
    args: Args,
    headers: Headers,
) -> Result<Vec<u8>> {
    let mut ctx = WorkerContext::new(runtime.clone(), method, headers);
    let mut out = Vec::new();
    let outcome = run_worker(runtime, &mut ctx, |ctx| handler(ctx, args, &mut out));
    let json = std::str::from_utf8(&out).unwrap_or("null");
    finish_worker(runtime, &ctx, outcome.as_ref().map(|()| json));
    match outcome {
        Ok(()) => Ok(out),
        Err(e) => Err(e.to_remote().into()),
    }
}

/// Injects dependencies, runs `worker_setup`, then the handler with panics caught.
pub(crate) fn run_worker(
    runtime: &Runtime,
    ctx: &mut WorkerContext,
    body: impl FnOnce(&WorkerContext) -> Result<()>,
) -> Result<()> {
    for (slot, dep) in runtime.dependencies.iter().enumerate() {
        match dep.dependency.inject(ctx) {
            Ok(value) => ctx.injected[slot] = Some(value),
            Err(e) => return Err(e),
        }
    }
    for dep in &runtime.dependencies {
        dep.dependency.worker_setup(ctx);
    }
    let ctx = &*ctx;
    let started = runtime.metrics.as_ref().map(|_| std::time::Instant::now());
    let result = run_body(ctx, body);
    if let (Some(metrics), Some(started)) = (&runtime.metrics, started) {
        metrics.record(ctx.entrypoint(), started.elapsed(), result.is_err());
    }
    result
}

/// Runs the handler with panics caught; a panic becomes a `PanicError` remote error.
fn run_body(ctx: &WorkerContext, body: impl FnOnce(&WorkerContext) -> Result<()>) -> Result<()> {
    match catch_unwind(AssertUnwindSafe(|| body(ctx))) {
        Ok(result) => {
            if let Err(e) = &result {
                log_failure(ctx, e);
            }
            result
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".to_owned());
            log::error!("{}: handler panicked: {message}", ctx.call_id());
            Err(RemoteError::with_path("PanicError", "enoki.PanicError", message).into())
        }
    }
}

fn log_failure(ctx: &WorkerContext, error: &Error) {
    match error.kind() {
        // Raised on purpose by the handler: a warning, as Nameko's expected_exceptions.
        ErrorKind::Remote(_) => log::debug!("{}: {error}", ctx.call_id()),
        _ => log::warn!("{}: {error}", ctx.call_id()),
    }
}

/// Runs `worker_result` and `worker_teardown` for every dependency.
pub(crate) fn finish_worker(
    runtime: &Runtime,
    ctx: &WorkerContext,
    result: std::result::Result<&str, &Error>,
) {
    for dep in &runtime.dependencies {
        dep.dependency.worker_result(ctx, result);
    }
    for dep in &runtime.dependencies {
        dep.dependency.worker_teardown(ctx);
    }
}

fn send_reply(
    runtime: &Runtime,
    worker: &mut Worker,
    request: &Properties,
    reply_to: &str,
    body: &[u8],
) -> Result<()> {
    // The reply uses the request's serializer, copies correlation_id (omitted if the request had
    // none) and carries empty headers.
    let properties = Properties {
        content_type: request.content_type.clone(),
        content_encoding: Some(
            request
                .content_encoding
                .clone()
                .unwrap_or_else(|| UTF8.to_owned()),
        ),
        correlation_id: request.correlation_id.clone(),
        reply_to: None,
        delivery_mode: Some(PERSISTENT),
        priority: Some(0),
        headers: Headers::new(),
    };
    worker.publish(
        runtime,
        Outgoing {
            exchange: &runtime.rpc_exchange.name,
            routing_key: reply_to,
            properties: &properties,
            body,
            mandatory: false,
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_decoding_follows_nameko() {
        let args = decode_request(Some(JSON), br#"{"args": [1], "kwargs": {"b": 2}, "x": 0}"#)
            .expect("valid request");
        assert_eq!(args.args, vec![json!(1)]);
        assert_eq!(args.kwargs.get("b"), Some(&json!(2)));

        let e = decode_request(Some(JSON), br#"{"args": []}"#).unwrap_err();
        let r = e.as_remote().expect("remote");
        assert_eq!(r.exc_path, "nameko.exceptions.MalformedRequest");
        assert_eq!(r.value, "Message missing `args` or `kwargs`");

        let e = decode_request(Some(JSON), b"{not json").unwrap_err();
        assert_eq!(e.as_remote().expect("remote").exc_type, "MalformedRequest");
        let e = decode_request(Some("text/plain"), b"{}").unwrap_err();
        assert_eq!(e.as_remote().expect("remote").exc_type, "MalformedRequest");
    }

    #[test]
    fn replies_encode_and_decode() {
        let mut out = Vec::new();
        encode_reply(Ok(b"[1,2]"), &mut out);
        assert_eq!(out, br#"{"result": [1,2], "error": null}"#);
        assert_eq!(decode_reply(&out).unwrap(), json!([1, 2]));

        out.clear();
        let error = RemoteError::new("ValueError", "boom");
        encode_reply(Err(&error), &mut out);
        let parsed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            parsed,
            json!({"result": null, "error": {"exc_type": "ValueError",
                "exc_path": "builtins.ValueError", "exc_args": ["boom"], "value": "boom"}})
        );
        let e = decode_reply(&out).unwrap_err();
        assert_eq!(e.as_remote(), Some(&error));
    }
}
