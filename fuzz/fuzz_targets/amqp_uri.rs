//! `AMQP_URI` parsing: any text either parses or is a config error, never echoes the password,
//! and what parses prints back to a URI that parses to the same broker address.
#![no_main]

use enoki::{AmqpUri, BrokerUri};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = BrokerUri::parse(text);
    let Ok(uri) = AmqpUri::parse(text) else {
        return;
    };
    let _ = uri.addr();
    let shown = uri.to_string();
    let again = AmqpUri::parse(&shown).expect("a displayed URI parses");
    assert_eq!(again.host, uri.host);
    assert_eq!(again.port, uri.port);
    assert_eq!(again.username, uri.username);
    assert_eq!(again.vhost, uri.vhost);
    assert!(format!("{uri:?}").contains("password: \"***\""));
    assert!(shown.contains(":***@"));
});
