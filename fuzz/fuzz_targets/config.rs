//! Config documents with `${VAR:default}` substitution, against a fuzzed environment, and
//! everything a service then asks of the config.
#![no_main]

use enoki::fuzzing;
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `environment NUL document`: the environment as `NAME=value` lines.
    let (env_text, document) = text.split_once('\0').unwrap_or(("", text));
    let env: HashMap<&str, &str> = env_text
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let lookup = |name: &str| env.get(name).map(|v| (*v).to_owned());

    let _ = fuzzing::substitute(document, &lookup);
    if let Ok(config) = fuzzing::config_from_json(document, lookup) {
        let _ = config.amqp();
        let _ = config.broker();
        let _ = config.masked();
        let _ = format!("{config:?}");
        let _ = (config.uri(), config.workers(), config.calls_tracked());
        let _ = (
            config.exchange(),
            config.heartbeat_secs(),
            config.prefetch(),
        );
        let _ = config.web_address();
    }
});
