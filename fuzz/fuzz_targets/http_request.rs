//! Raw bytes from an HTTP client, through enoki's real server on loopback: request line and
//! head parsing, Content-Length and chunked bodies, 100-continue, routing with every converter,
//! percent-decoding, query parsing, handlers reading params, query, headers and JSON, and the
//! response written back. The client half-closes after sending, so an incomplete request ends
//! at once instead of waiting for the request timeout.
//!
//! A panic anywhere (a connection thread included) aborts the process through libFuzzer's
//! panic hook, so any input that makes the server panic outside a handler is a crash here.
#![no_main]

use enoki::http::{Json, Request};
use enoki::{Config, Container, Service};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

/// The port of the server, started once per fuzzing process and kept for its lifetime.
fn port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = Config::new()
            .amqp_uri("memory://fuzz_http")
            .web_server_address(format!("127.0.0.1:{port}"))
            .set("HTTP_REQUEST_TIMEOUT", serde_json::json!(0.2))
            .and_then(|c| c.set("HTTP_IDLE_TIMEOUT", serde_json::json!(0.2)))
            .and_then(|c| c.set("HTTP_MAX_BODY_SIZE", serde_json::json!(65536)))
            .expect("config");
        let service = Service::new("fuzz_http")
            .http("GET,POST", "/s/<name>", |_ctx, req: &Request| {
                Ok(format!(
                    "{} {:?} {:?}",
                    req.param::<String>("name")?,
                    req.query("q"),
                    req.header("x-a")
                ))
            })
            .http("GET", "/i/<int:id>/<float:x>", |_ctx, req: &Request| {
                Ok(format!(
                    "{} {}",
                    req.param::<i64>("id")?,
                    req.param::<f64>("x")?
                ))
            })
            .http("GET,PUT", "/p/<path:rest>", |_ctx, req: &Request| {
                Ok((201, req.param::<String>("rest")?))
            })
            .http("GET", "/u/<uuid:id>", |_ctx, req: &Request| {
                req.param::<String>("id")
            })
            .http("DELETE", "/a/<any(x,y):kind>", |_ctx, req: &Request| {
                req.param::<String>("kind")
            })
            .http("POST", "/json", |_ctx, req: &Request| {
                let value: serde_json::Value = req.json()?;
                Ok(Json(value))
            });
        let mut container = Container::new(service, config);
        container.start().expect("the fuzz service starts");
        // Serves until the process exits.
        std::mem::forget(container);
        port
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port())) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(data);
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
});
