//! The `memory://` broker's topic matcher against a plain backtracking reference, on keys small
//! enough for the reference to stay fast.
#![no_main]

use enoki::fuzzing;
use libfuzzer_sys::fuzz_target;

fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

fn reference(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| reference(rest, &key[skip..])),
        Some((&"*", rest)) => !key.is_empty() && reference(rest, &key[1..]),
        Some((word, rest)) => key.first() == Some(word) && reference(rest, &key[1..]),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (binding, key) = text.split_once('\0').unwrap_or((text, ""));
    let matched = fuzzing::topic_matches(binding, key);
    let _ = fuzzing::topic_is_pattern(binding);
    let (b, k) = (words(binding), words(key));
    // The reference is exponential in `#` count; only check where it is cheap.
    if b.iter().filter(|w| **w == "#").count() <= 4 && k.len() <= 24 {
        assert_eq!(
            matched,
            reference(&b, &k),
            "binding {binding:?} key {key:?}"
        );
    }
});
