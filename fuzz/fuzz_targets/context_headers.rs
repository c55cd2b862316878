//! The worker context's handling of incoming headers (`nameko.` prefixes, the call id stack and
//! its trimming), for any header map and any `parent_calls_tracked`.
#![no_main]

use enoki::fuzzing;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // The first byte picks `parent_calls_tracked`, extremes included.
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    let calls_tracked = match pick {
        255 => usize::MAX,
        254 => usize::MAX - 1,
        n => usize::from(n % 16),
    };
    let Ok(Value::Object(headers)) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    let own = "svc.method.0";
    let (context, stack) = fuzzing::context_from_headers(headers, calls_tracked, own);
    assert!(stack.len() <= calls_tracked.saturating_add(1));
    assert_eq!(stack.last().map(String::as_str), Some(own));
    assert!(!context.contains_key("call_id_stack"));
    let outgoing = fuzzing::outgoing_headers(context.clone(), stack.clone());
    // What goes out comes back in as the same context (nulls are not sent).
    let (again, again_stack) = fuzzing::context_from_headers(outgoing, usize::MAX, "next");
    let sent: serde_json::Map<String, Value> =
        context.into_iter().filter(|(_, v)| !v.is_null()).collect();
    assert_eq!(again, sent);
    assert_eq!(&again_stack[..again_stack.len() - 1], &stack[..]);
});
