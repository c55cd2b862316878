//! AMQP basic properties from wire bytes (amq-protocol's parser, as amiquip uses it), through
//! enoki's property and header conversion, the worker context's header handling and back.
#![no_main]

use amq_protocol::protocol::basic::parse_properties;
use enoki::fuzzing;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok((_, wire)) = parse_properties(data) else {
        return;
    };
    let first = fuzzing::properties_from_amqp(wire);
    // The first decoding may drop what JSON cannot hold (NaN, nulls in tables); after that a
    // round trip through AMQP values is exact.
    let second = fuzzing::properties_from_amqp(fuzzing::properties_to_amqp(&first));
    let third = fuzzing::properties_from_amqp(fuzzing::properties_to_amqp(&second));
    assert_eq!(second, third);

    let (context, stack) = fuzzing::context_from_headers(first.headers, 10, "svc.method.id");
    assert!(stack.len() <= 11);
    assert_eq!(stack.last().map(String::as_str), Some("svc.method.id"));
    let outgoing = fuzzing::outgoing_headers(context, stack);
    let _ = fuzzing::json_to_amqp(&Value::Object(outgoing));
});
