//! Event and message payloads decoded into the types handlers take.
#![no_main]

use enoki::fuzzing;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;

#[allow(dead_code)] // fields exist to be decoded
#[derive(Deserialize)]
struct Order {
    id: u64,
    items: Vec<Item>,
    note: Option<String>,
    meta: HashMap<String, Value>,
}

#[allow(dead_code)]
#[derive(Deserialize)]
struct Item {
    sku: String,
    price: f64,
    qty: u16,
}

#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(tag = "kind")]
enum Tagged {
    Created { id: i64 },
    Deleted { id: i64, reason: Option<String> },
}

fuzz_target!(|data: &[u8]| {
    let _ = fuzzing::decode_payload::<Value>(data);
    let _ = fuzzing::decode_payload::<Order>(data);
    let _ = fuzzing::decode_payload::<Tagged>(data);
    let _ = fuzzing::decode_payload::<(String, i32)>(data);
    let _ = fuzzing::decode_payload::<String>(data);
    let _ = fuzzing::decode_payload::<()>(data);
    let _ = fuzzing::decode_payload::<Vec<u8>>(data);
});
