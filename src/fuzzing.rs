//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, off by default).
//!
//! Not part of the public API: these are thin wrappers over the crate's decoders, kept stable
//! only for the fuzz targets. Each takes exactly what arrives from outside (message bytes,
//! AMQP property values, config text) so a target needs nothing else.
//!
//! HTTP needs no wrapper: `fuzz/fuzz_targets/http_request.rs` drives the real server over
//! loopback through the public API.

use crate::transport::{Headers, Properties};
use crate::{Args, Config, RemoteError, Result};
use amiquip::{AmqpProperties, AmqpValue};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Decodes AMQP basic properties into enoki's [`Properties`], as every consumer does.
pub fn properties_from_amqp(properties: AmqpProperties) -> Properties {
    crate::amqp::properties_from_amqp(properties)
}

/// Encodes enoki's [`Properties`] for amiquip, as every publish does.
pub fn properties_to_amqp(properties: &Properties) -> AmqpProperties {
    crate::amqp::properties_to_amqp(properties)
}

/// An AMQP field value as JSON.
pub fn amqp_to_json(value: &AmqpValue) -> Value {
    crate::amqp::amqp_to_json(value)
}

/// JSON as an AMQP field value (`None` for `null`).
pub fn json_to_amqp(value: &Value) -> Option<AmqpValue> {
    crate::amqp::json_to_amqp(value)
}

/// Decodes an RPC request body.
pub fn decode_request(content_type: Option<&str>, body: &[u8]) -> Result<Args> {
    crate::rpc::decode_request(content_type, body)
}

/// Encodes an RPC reply body from a JSON result or a remote error.
pub fn encode_reply(result: std::result::Result<&[u8], &RemoteError>, out: &mut Vec<u8>) {
    crate::rpc::encode_reply(result, out)
}

/// Decodes an RPC reply body.
pub fn decode_reply(body: &[u8]) -> Result<Value> {
    crate::rpc::decode_reply(body)
}

/// Splits incoming headers into context data and the parent call id stack, trimmed as a worker
/// with `calls_tracked` would trim it after pushing `own_call_id`.
pub fn context_from_headers(
    headers: Headers,
    calls_tracked: usize,
    own_call_id: &str,
) -> (Headers, Vec<String>) {
    let (data, mut stack) = crate::context::split_headers(headers);
    stack.push(own_call_id.to_owned());
    crate::context::trim_stack(&mut stack, calls_tracked);
    (data, stack)
}

/// The headers a worker with this context data and stack puts on outgoing messages.
pub fn outgoing_headers(data: Headers, call_id_stack: Vec<String>) -> Headers {
    crate::context::Outgoing {
        data,
        call_id_stack,
    }
    .headers()
}

/// Decodes an event or message payload into a handler's type.
pub fn decode_payload<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    crate::messaging::decode_payload(body)
}

/// Parses a config document with `lookup` as the environment.
pub fn config_from_json(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
    Config::from_json_str_with(text, lookup)
}

/// Nameko's `${VAR:default}` substitution on one string.
pub fn substitute(
    input: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> std::result::Result<Value, String> {
    crate::config::substitute(input, lookup)
}

/// True when the `memory://` broker routes `key` to a topic binding `binding`.
pub fn topic_matches(binding: &str, key: &str) -> bool {
    crate::memory::topic::Pattern::new(binding).matches(key)
}

/// True when `binding` has a wildcard word.
pub fn topic_is_pattern(binding: &str) -> bool {
    crate::memory::topic::is_pattern(binding)
}
