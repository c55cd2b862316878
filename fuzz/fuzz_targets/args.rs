//! Argument binding on its own: any JSON document as positional and keyword arguments, bound
//! to tuples, structs, unit and values the way handlers bind them.
#![no_main]

use enoki::{Args, FromArgs, IntoArgs};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::{Map, Value};

#[allow(dead_code)] // fields exist to be bound
#[derive(Deserialize)]
struct Order {
    id: u64,
    item: String,
    #[serde(default)]
    count: Option<u32>,
    tags: Vec<String>,
}

#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Strict {
    x: f64,
}

#[allow(dead_code)]
#[derive(Deserialize)]
enum Shape {
    Circle(f64),
    Square { side: f64 },
    Point,
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // As a caller would pass it...
    if let Ok(args) = value.clone().into_args() {
        let _ = <(Value, Value)>::from_args(args.clone());
        let _ = <Order>::from_args(args.clone());
        let _ = <Strict>::from_args(args);
    }
    // ...and as a request's two halves, whatever they hold.
    let (args, kwargs) = match value {
        Value::Array(mut items) => {
            let kwargs = match items.pop() {
                Some(Value::Object(map)) => map,
                Some(other) => {
                    items.push(other);
                    Map::new()
                }
                None => Map::new(),
            };
            (items, kwargs)
        }
        Value::Object(map) => (Vec::new(), map),
        other => (vec![other], Map::new()),
    };
    let args = Args { args, kwargs };
    let _ = <(String,)>::from_args(args.clone());
    let _ = <(i64, i64, i64, i64, i64, i64, i64, i64)>::from_args(args.clone());
    let _ = <Order>::from_args(args.clone());
    let _ = <Strict>::from_args(args.clone());
    let _ = <Shape>::from_args(args.clone());
    let _ = <(Shape,)>::from_args(args.clone());
    let _ = <()>::from_args(args.clone());
    let _ = <Option<Value>>::from_args(args.clone());
    let _ = <Map<String, Value>>::from_args(args);
});
