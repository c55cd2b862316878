//! RPC request bodies: decoding, then binding the arguments to handler signatures of every
//! shape (tuple, struct, unit, raw `Args`, a JSON value).
#![no_main]

use enoki::{Args, FromArgs, fuzzing};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;

#[allow(dead_code)] // fields exist to be bound
#[derive(Deserialize)]
struct Add {
    a: i64,
    b: Option<String>,
    #[serde(default)]
    rest: Vec<Value>,
}

fn bind(args: &Args) {
    let _ = <(Value,)>::from_args(args.clone());
    let _ = <(i64, String)>::from_args(args.clone());
    let _ = <(u8, f64, bool, Option<Value>)>::from_args(args.clone());
    let _ = <Add>::from_args(args.clone());
    let _ = <()>::from_args(args.clone());
    let _ = <Vec<Value>>::from_args(args.clone());
    let _ = <Value>::from_args(args.clone());
    let raw = Args::from_args(args.clone()).expect("Args binds anything");
    assert_eq!(&raw, args);
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the content type, as a poison message can carry any.
    let (content_type, body) = match data.split_first() {
        Some((0, body)) => (None, body),
        Some((1, body)) => (Some("text/plain"), body),
        Some((_, body)) => (Some("application/json"), body),
        None => return,
    };
    if let Ok(args) = fuzzing::decode_request(content_type, body) {
        bind(&args);
    }
});
