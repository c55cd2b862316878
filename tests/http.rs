//! The HTTP entrypoint over real sockets on loopback: routing, responses, errors, context into
//! RPC (needs RabbitMQ), one server shared by several services, and every limit. Each test
//! serves on its own port, so they run in parallel.

mod support;

use enoki::http::{Json, Request, Response, Route};
use enoki::{Config, Container, RemoteError, RpcProxy, Runner, Service, WorkerContext};
use serde_json::{Value, json};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{Cleanup, eventually, unique};

const WAIT: Duration = Duration::from_secs(10);

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn config(port: u16) -> Config {
    Config::new().web_server_address(format!("127.0.0.1:{port}"))
}

fn serve_with(service: Service, config: Config) -> Container {
    let mut container = Container::new(service, config);
    container.start().expect("the service starts");
    container
}

fn serve(service: Service) -> (Container, u16) {
    let port = free_port();
    (serve_with(service, config(port)), port)
}

/// A minimal HTTP/1.1 client over one keep-alive connection.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("sends");
    }

    fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut out = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        self.send(&bytes);
        self.reply(method == "HEAD")
    }

    fn get(&mut self, target: &str) -> Reply {
        self.request("GET", target, &[], b"")
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("no reply: {e}"),
        }
    }

    fn reply(&mut self, head_only: bool) -> Reply {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.fill() > 0,
                "connection closed before a reply: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        self.buf.drain(..end);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.to_owned(), v.trim().to_owned())
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let length = if head_only { 0 } else { length };
        while self.buf.len() < length {
            assert!(self.fill() > 0, "connection closed inside a body");
        }
        let body = self.buf.drain(..length).collect();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// True if the server closes the connection (EOF or reset) within `within`.
    fn closed_within(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

fn routing_service(name: &str) -> Service {
    let show = |kind: &'static str| {
        move |_ctx: &WorkerContext, req: &Request| -> enoki::Result<Json<Value>> {
            Ok(Json(json!({"rule": kind, "params": req.params()})))
        }
    };
    Service::new(name)
        .http("GET", "/items/new", show("static"))
        .http("GET", "/items/<name>", show("string"))
        .http("GET", "/items/<int:id>", show("int"))
        .http("GET", "/items/<path:rest>", show("path"))
        .http("GET", "/items/<name>/edit", show("edit"))
        .http("GET", "/float/<float:x>", show("float"))
        .http("GET", "/uuid/<uuid:id>", show("uuid"))
        .http("GET", "/kind/<any(apple,pear):fruit>", show("any"))
        .http("GET,POST", "/both", show("both"))
        .http("DELETE", "/both/<int:id>", show("delete"))
        .http("GET", "/typed/<int:id>/<float:x>", |_ctx, req: &Request| {
            let id: i64 = req.param("id")?;
            let x: f64 = req.param("x")?;
            Ok(format!("{} {}", id * 2, x * 2.0))
        })
}

#[test]
fn each_converter_routes_and_the_most_specific_rule_wins() {
    let (_c, port) = serve(routing_service("routing"));
    let mut client = Client::connect(port);
    let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let cases = [
        ("/items/new", json!({"rule": "static", "params": []})),
        (
            "/items/lamp",
            json!({"rule": "string", "params": [["name", "lamp"]]}),
        ),
        (
            "/items/42",
            json!({"rule": "int", "params": [["id", "42"]]}),
        ),
        (
            "/items/a/b/c",
            json!({"rule": "path", "params": [["rest", "a/b/c"]]}),
        ),
        (
            "/items/lamp/edit",
            json!({"rule": "edit", "params": [["name", "lamp"]]}),
        ),
        (
            "/items/a%20b",
            json!({"rule": "string", "params": [["name", "a b"]]}),
        ),
        (
            "/float/2.5",
            json!({"rule": "float", "params": [["x", "2.5"]]}),
        ),
        (
            &format!("/uuid/{id}") as &str,
            json!({"rule": "uuid", "params": [["id", id]]}),
        ),
        (
            "/kind/pear",
            json!({"rule": "any", "params": [["fruit", "pear"]]}),
        ),
    ];
    for (path, expected) in cases {
        let reply = client.get(path);
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.json(), expected, "{path}");
    }
    let reply = client.get("/typed/21/1.25");
    assert_eq!((reply.status, reply.text()), (200, "42 2.5"));
    for missing in [
        "/float/2",
        "/uuid/0f8fad5b",
        "/kind/plum",
        "/nothing",
        "/items/",
    ] {
        let reply = client.get(missing);
        assert_eq!(reply.status, 404, "{missing}");
    }
}

#[test]
fn wrong_methods_get_405_with_allow_and_head_is_served_for_get() {
    let (_c, port) = serve(routing_service("methods"));
    let mut client = Client::connect(port);
    let reply = client.request("PUT", "/both", &[], b"");
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, POST, HEAD"));
    let reply = client.request("POST", "/both", &[], b"");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["rule"], "both");
    // Two rules match the path; the Allow header lists both rules' methods.
    let reply = client.request("PATCH", "/both/7", &[], b"");
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("DELETE"));
    let reply = client.request("DELETE", "/both/7", &[], b"");
    assert_eq!(reply.json()["rule"], "delete");

    let full = client.get("/items/lamp");
    let head = client.request("HEAD", "/items/lamp", &[], b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), full.header("content-length"));
    // The connection is still in step after a HEAD.
    assert_eq!(client.get("/items/new").json()["rule"], "static");

    // HTTP/1.0 closes unless asked to keep the connection; `Connection: close` is honoured.
    let mut old = Client::connect(port);
    old.send(b"GET /items/new HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(old.reply(false).header("connection"), Some("keep-alive"));
    old.send(b"GET /items/new HTTP/1.0\r\n\r\n");
    assert_eq!(old.reply(false).header("connection"), Some("close"));
    assert!(old.closed_within(WAIT));
    let r = client.request("GET", "/items/new", &[("Connection", "close")], b"");
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(client.closed_within(WAIT));
}

#[test]
fn shorthand_returns_headers_json_and_request_parts() {
    let service = Service::new("shapes")
        .http("GET", "/body", |_ctx, _req: &Request| Ok("plain"))
        .http("GET", "/status", |_ctx, _req: &Request| Ok((201, "made")))
        .http("GET", "/headers", |_ctx, _req: &Request| {
            Ok((202, [("X-Foo", "bar")], "with headers".to_owned()))
        })
        .http("GET", "/bytes", |_ctx, _req: &Request| Ok(vec![0u8, 1, 2]))
        .http("GET", "/response", |_ctx, _req: &Request| {
            Ok(Response::bytes("image/svg+xml", "<svg/>")
                .status(203)
                .header("Cache-Control", "no-store"))
        })
        .http("POST", "/json", |_ctx, req: &Request| {
            let mut body: Value = req.json()?;
            body["seen"] = json!({
                "method": req.method(),
                "path": req.path(),
                "q": req.query_all("q"),
                "one": req.query("one"),
                "agent": req.header("x-agent"),
                "type": req.content_type(),
            });
            Ok(Json(body))
        });
    let (_c, port) = serve(service);
    let mut client = Client::connect(port);

    let r = client.get("/body");
    assert_eq!((r.status, r.text()), (200, "plain"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let r = client.get("/status");
    assert_eq!((r.status, r.text()), (201, "made"));
    let r = client.get("/headers");
    assert_eq!((r.status, r.text()), (202, "with headers"));
    assert_eq!(r.header("x-foo"), Some("bar"));
    let r = client.get("/bytes");
    assert_eq!(r.body, [0, 1, 2]);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let r = client.get("/response");
    assert_eq!((r.status, r.text()), (203, "<svg/>"));
    assert_eq!(r.header("content-type"), Some("image/svg+xml"));
    assert_eq!(r.header("cache-control"), Some("no-store"));

    let r = client.request(
        "POST",
        "/json?q=a&q=b%20c&one=1",
        &[("Content-Type", "application/json"), ("X-Agent", "t")],
        br#"{"n": 1}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"n": 1, "seen": {"method": "POST", "path": "/json", "q": ["a", "b c"],
            "one": "1", "agent": "t", "type": "application/json"}})
    );
    // A chunked request body arrives whole.
    client.send(
        b"POST /json HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          4\r\n{\"n\"\r\n4\r\n: 2}\r\n0\r\n\r\n",
    );
    let r = client.reply(false);
    assert_eq!(r.json()["n"], 2);
}

#[test]
fn errors_are_400_when_expected_500_otherwise_and_panics_spare_the_worker() {
    let service = Service::new("errors")
        .http_route(
            Route::new("GET", "/stock/<name>").expected_errors(["OutOfStock"]),
            |_ctx, req: &Request| -> enoki::Result<String> {
                Err(RemoteError::new("OutOfStock", req.param_str("name").unwrap_or("")).into())
            },
        )
        .http(
            "GET",
            "/boom",
            |_ctx, _req: &Request| -> enoki::Result<String> {
                Err(RemoteError::new("RuntimeError", "kaboom").into())
            },
        )
        .http(
            "GET",
            "/panic",
            |_ctx, _req: &Request| -> enoki::Result<String> { panic!("handler exploded") },
        )
        .http("POST", "/parse", |_ctx, req: &Request| {
            let value: Value = req.json()?;
            Ok(Json(value))
        })
        .http("GET", "/small/<name>", |_ctx, req: &Request| {
            Ok(req.param::<u8>("name")?.to_string())
        })
        .http_route(
            Route::new("GET", "/json-error")
                .json_errors()
                .expected_errors(["Nope"]),
            |_ctx, _req: &Request| -> enoki::Result<String> {
                Err(RemoteError::new("Nope", "not here").into())
            },
        );
    // One worker: if a panic killed it, nothing after would be served.
    let port = free_port();
    let _c = serve_with(service, config(port).max_workers(1));
    let mut client = Client::connect(port);

    let r = client.get("/stock/lamp");
    assert_eq!((r.status, r.text()), (400, "Error: OutOfStock: lamp\n"));
    let r = client.get("/boom");
    assert_eq!((r.status, r.text()), (500, "Error: RuntimeError: kaboom\n"));
    for _ in 0..3 {
        let r = client.get("/panic");
        assert_eq!(
            (r.status, r.text()),
            (500, "Error: PanicError: handler exploded\n")
        );
    }
    let r = client.request("POST", "/parse", &[], b"{not json");
    assert_eq!(r.status, 400);
    assert!(
        r.text().starts_with("Error: MalformedRequest: "),
        "{}",
        r.text()
    );
    let r = client.get("/small/300");
    assert_eq!(r.status, 400);
    assert!(
        r.text().starts_with("Error: IncorrectSignature: "),
        "{}",
        r.text()
    );
    let r = client.get("/json-error");
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), json!({"error": "Nope", "message": "not here"}));
    let r = client.get("/small/7");
    assert_eq!((r.status, r.text()), (200, "7"));
}

#[test]
fn malformed_requests_are_answered_400_without_reaching_a_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = Service::new("malformed").http("GET,POST", "/x", move |_ctx, _req: &Request| {
        counted.fetch_add(1, Ordering::SeqCst);
        Ok("x")
    });
    let (_c, port) = serve(service);
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /x HTTP/1.1 extra\r\n\r\n",
        b"GET x HTTP/1.1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /x HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 12x\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let mut client = Client::connect(port);
        client.send(garbage);
        let r = client.reply(false);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(garbage));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(client.closed_within(WAIT));
    }
    let mut client = Client::connect(port);
    client.send(b"GET /x HTTP/3.0\r\n\r\n");
    assert_eq!(client.reply(false).status, 505);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(Client::connect(port).get("/x").status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn two_services_in_one_runner_share_one_server() {
    let port = free_port();
    let a = Service::new("shared_a").http("GET", "/a/<name>", |ctx, req: &Request| {
        Ok(format!(
            "{} {}",
            ctx.service_name(),
            req.param_str("name").unwrap_or("")
        ))
    });
    let b = Service::new("shared_b").http("GET", "/b/<name>", |ctx, req: &Request| {
        Ok(format!(
            "{} {}",
            ctx.service_name(),
            req.param_str("name").unwrap_or("")
        ))
    });
    let mut runner = Runner::new(config(port)).service(a).service(b);
    runner.start().expect("both start");
    let mut client = Client::connect(port);
    for i in 0..20 {
        assert_eq!(
            client.get(&format!("/a/{i}")).text(),
            format!("shared_a {i}")
        );
        assert_eq!(
            client.get(&format!("/b/{i}")).text(),
            format!("shared_b {i}")
        );
    }
    // One acceptor for both services.
    assert_eq!(threads_named(&format!("http-a:{port}")), 1);
    runner.stop();
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "closed with the last service"
    );

    // Colliding routes are a startup error; the first service keeps serving.
    let first =
        Service::new("collide_a").http("GET,POST", "/same/<int:id>", |_c, _r: &Request| Ok("a"));
    let second =
        Service::new("collide_b").http("POST", "/same/<int:n>", |_c, _r: &Request| Ok("b"));
    let _first = serve_with(first, config(port));
    let error = Container::new(second, config(port))
        .start()
        .expect_err("collision");
    assert!(error.to_string().contains("collides"), "{error}");
    assert_eq!(Client::connect(port).get("/same/1").text(), "a");
}

#[test]
fn http_handlers_call_rpc_services_with_mapped_context() {
    let mut cleanup = Cleanup::new();
    let backend = unique("http_backend");
    cleanup.service(&backend);
    let backend_service = Service::new(backend.clone()).rpc("whoami", |ctx, ()| {
        Ok(json!({
            "auth_token": ctx.auth_token(),
            "language": ctx.language(),
            "stack": ctx.call_id_stack(),
        }))
    });
    let mut backend_container = Container::new(backend_service, support::config());
    backend_container.start().expect("backend starts");
    let front = Service::new("http_front")
        .dependency("backend", RpcProxy::new(backend.clone()))
        .http_route(
            Route::new("GET", "/whoami")
                .name("whoami")
                .context_header("Authorization", "auth_token")
                .context_header("Accept-Language", "language"),
            |ctx, _req: &Request| {
                let seen: Value = ctx.dependency::<RpcProxy>("backend")?.call("whoami", ())?;
                Ok(Json(json!({"backend": seen, "stack": ctx.call_id_stack()})))
            },
        );
    let port = free_port();
    let _front = serve_with(
        front,
        support::config().web_server_address(format!("127.0.0.1:{port}")),
    );
    let mut client = Client::connect(port);
    let r = client.request(
        "GET",
        "/whoami",
        &[
            ("Authorization", "Bearer tok"),
            ("Accept-Language", "fr-FR"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["backend"]["auth_token"], "Bearer tok");
    assert_eq!(seen["backend"]["language"], "fr-FR");
    let front_stack = seen["stack"].as_array().unwrap();
    assert_eq!(front_stack.len(), 1, "a fresh stack per request: {seen}");
    assert!(
        front_stack[0]
            .as_str()
            .unwrap()
            .starts_with("http_front.whoami.")
    );
    let back_stack = seen["backend"]["stack"].as_array().unwrap();
    assert_eq!(back_stack[0], front_stack[0]);
    assert!(
        back_stack[1]
            .as_str()
            .unwrap()
            .starts_with(&format!("{backend}.whoami."))
    );
    // Without the headers, nothing is made up.
    let r = client.get("/whoami");
    assert_eq!(r.json()["backend"]["auth_token"], Value::Null);
}

fn limited(port: u16, limits: &[(&str, Value)]) -> Config {
    let mut config = config(port);
    for (key, value) in limits {
        config = config.set(key, value.clone()).unwrap();
    }
    config
}

/// Threads in this process with the given name (as /proc shows it, at most 15 bytes).
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[test]
fn slow_headers_are_cut_off_with_408() {
    let port = free_port();
    let service = Service::new("slowloris").http("GET", "/x", |_c, _r: &Request| Ok("x"));
    let _c = serve_with(
        service,
        limited(port, &[("HTTP_REQUEST_TIMEOUT", json!(0.5))]),
    );
    let mut client = Client::connect(port);
    let started = Instant::now();
    let request = b"GET /x HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut sent = 0;
    for byte in request {
        if client.stream.write_all(&[*byte]).is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > WAIT {
            break;
        }
    }
    assert!(sent < request.len(), "the whole request went through");
    let r = client.reply(false);
    assert_eq!(r.status, 408);
    assert!(client.closed_within(WAIT));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let port = free_port();
    let service = Service::new("idle").http("GET", "/x", |_c, _r: &Request| Ok("x"));
    let _c = serve_with(service, limited(port, &[("HTTP_IDLE_TIMEOUT", json!(0.3))]));
    let mut client = Client::connect(port);
    assert_eq!(client.get("/x").status, 200);
    let idle = Instant::now();
    assert!(client.closed_within(WAIT));
    assert!(
        idle.elapsed() >= Duration::from_millis(250),
        "{:?}",
        idle.elapsed()
    );
    assert!(client.buf.is_empty(), "closed without a response");
    eventually(WAIT, || threads_named(&format!("http-c:{port}")) == 0);
    assert_eq!(threads_named(&format!("http-c:{port}")), 0);
}

#[test]
fn oversized_bodies_and_heads_are_refused() {
    let port = free_port();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = Service::new("sizes").http("POST", "/x", move |_c, req: &Request| {
        counted.fetch_add(1, Ordering::SeqCst);
        Ok(req.body().len().to_string())
    });
    let _c = serve_with(
        service,
        limited(
            port,
            &[
                ("HTTP_MAX_BODY_SIZE", json!(1000)),
                ("HTTP_MAX_HEADER_SIZE", json!(2048)),
            ],
        ),
    );
    let mut client = Client::connect(port);
    assert_eq!(
        client.request("POST", "/x", &[], &[b'a'; 1000]).text(),
        "1000"
    );
    // Refused from the Content-Length alone, before the body is sent.
    client.send(b"POST /x HTTP/1.1\r\nContent-Length: 1001\r\n\r\n");
    let r = client.reply(false);
    assert_eq!(r.status, 413);
    assert!(client.closed_within(WAIT));

    let mut client = Client::connect(port);
    client.send(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n");
    client.send(&[b'a'; 1000]);
    client.send(b"\r\n1\r\na\r\n0\r\n\r\n");
    assert_eq!(client.reply(false).status, 413);

    // A chunk size near usize::MAX must be refused, not overflow the length arithmetic.
    let mut client = Client::connect(port);
    client.send(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n");
    client.send(b"ffffffffffffffff\r\naa\r\n0\r\n\r\n");
    assert_eq!(client.reply(false).status, 413);

    let mut client = Client::connect(port);
    let big = "b".repeat(4096);
    client.send(format!("POST /x HTTP/1.1\r\nX-Big: {big}\r\n\r\n").as_bytes());
    assert_eq!(client.reply(false).status, 431);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Expect: 100-continue is answered before the body is sent.
    let mut client = Client::connect(port);
    client.send(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(client.reply(false).status, 100);
    client.send(b"hello");
    assert_eq!(client.reply(false).text(), "5");
}

#[test]
fn a_flood_beyond_capacity_gets_503_and_the_server_stays_responsive() {
    let port = free_port();
    let (entered_tx, entered) = crossbeam_channel::unbounded::<()>();
    let (release, gate) = crossbeam_channel::unbounded::<()>();
    let service = Service::new("flood").http("GET", "/slow", move |_c, _r: &Request| {
        entered_tx.send(()).unwrap();
        gate.recv_timeout(WAIT).expect("released");
        Ok("done")
    });
    // Two workers and a queue of two: four requests in, the rest 503 at once.
    let _c = serve_with(
        service,
        limited(port, &[("HTTP_QUEUE_TIMEOUT", json!(0))]).max_workers(2),
    );
    let mut busy: Vec<Client> = (0..2).map(|_| Client::connect(port)).collect();
    for c in &mut busy {
        c.send(b"GET /slow HTTP/1.1\r\n\r\n");
    }
    for _ in 0..2 {
        entered.recv_timeout(WAIT).expect("both workers busy");
    }
    // Twenty more: two fit in the queue, eighteen are refused at once. Which two get in is up
    // to the scheduler, so each waits for its reply on its own thread.
    let (replies_tx, replies) = crossbeam_channel::unbounded();
    let started = Instant::now();
    for _ in 0..20 {
        let replies_tx = replies_tx.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(port);
            let r = c.get("/slow");
            replies_tx.send((r, c)).unwrap();
        });
    }
    let mut refused = Vec::new();
    for _ in 0..18 {
        let (r, c) = replies.recv_timeout(WAIT).expect("a refusal");
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.header("retry-after"), Some("1"));
        refused.push(c);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503s were slow: {:?}",
        started.elapsed()
    );
    assert!(replies.try_recv().is_err(), "only two requests were queued");
    // Still responsive: refused connections stay usable, and 404s need no worker.
    for c in &mut refused {
        assert_eq!(c.get("/nothing").status, 404);
    }
    for _ in 0..4 {
        release.send(()).unwrap();
    }
    for c in &mut busy {
        assert_eq!(c.reply(false).text(), "done");
    }
    for _ in 0..2 {
        let (r, _c) = replies
            .recv_timeout(WAIT)
            .expect("the queued requests finish");
        assert_eq!((r.status, r.text()), (200, "done"));
    }
    // Capacity is back.
    let mut c = Client::connect(port);
    release.send(()).unwrap();
    assert_eq!(c.get("/slow").text(), "done");
    assert_eq!(entered.try_iter().count(), 3);
}

#[test]
fn connections_and_server_threads_stay_bounded() {
    let port = free_port();
    let service = Service::new("bounded").http("GET", "/x", |_c, _r: &Request| Ok("x"));
    let _c = serve_with(
        service,
        limited(port, &[("HTTP_MAX_CONNECTIONS", json!(4))]),
    );
    let name = format!("http-c:{port}");
    let mut open: Vec<Client> = (0..4).map(|_| Client::connect(port)).collect();
    for c in &mut open {
        assert_eq!(c.get("/x").status, 200);
    }
    assert_eq!(threads_named(&name), 4);
    // Over the limit: an immediate 503, and no new thread.
    for _ in 0..30 {
        let mut extra = Client::connect(port);
        let r = extra.get("/x");
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(extra.closed_within(WAIT));
        assert!(threads_named(&name) <= 4);
    }
    open.pop();
    assert!(eventually(WAIT, || threads_named(&name) == 3));
    let mut again = Client::connect(port);
    assert_eq!(again.get("/x").status, 200);
    assert_eq!(threads_named(&name), 4);
}

#[test]
fn bad_routes_and_settings_fail_at_start() {
    let port = free_port();
    for (service, config) in [
        (
            Service::new("bad_rule").http("GET", "/<nope:x>", |_c, _r: &Request| Ok("x")),
            config(port),
        ),
        (
            Service::new("bad_method").http("G T", "/x", |_c, _r: &Request| Ok("x")),
            config(port),
        ),
        (
            Service::new("bad_limit").http("GET", "/x", |_c, _r: &Request| Ok("x")),
            config(port)
                .set("HTTP_IDLE_TIMEOUT", json!("soon"))
                .unwrap(),
        ),
    ] {
        let error = Container::new(service, config)
            .start()
            .expect_err("refused");
        assert!(
            matches!(error.kind(), enoki::ErrorKind::Config(_)),
            "{error}"
        );
    }
}

#[test]
fn stopping_finishes_requests_in_flight_and_closes_the_port() {
    let port = free_port();
    let (entered_tx, entered) = crossbeam_channel::unbounded::<()>();
    let (release, gate) = crossbeam_channel::unbounded::<()>();
    let service = Service::new("stopping").http("GET", "/slow", move |_c, _r: &Request| {
        entered_tx.send(()).unwrap();
        gate.recv_timeout(WAIT).expect("released");
        Ok("done")
    });
    let mut container = serve_with(service, config(port));
    let mut client = Client::connect(port);
    client.send(b"GET /slow HTTP/1.1\r\n\r\n");
    entered.recv_timeout(WAIT).expect("in flight");
    let stopper = std::thread::spawn(move || container.stop());
    assert!(
        eventually(WAIT, || TcpStream::connect(("127.0.0.1", port)).is_err()),
        "the listener closes first"
    );
    assert!(
        !stopper.is_finished(),
        "the stop waits for the request in flight"
    );
    release.send(()).unwrap();
    assert_eq!(client.reply(false).text(), "done");
    stopper.join().expect("stopped");
    assert!(client.closed_within(WAIT));
    // Their last act is to leave the list the stop waits on; then the threads end.
    assert!(eventually(WAIT, || {
        threads_named(&format!("http-c:{port}")) + threads_named(&format!("http-a:{port}")) == 0
    }));
}

#[test]
fn a_burst_of_keep_alive_connections_is_served_at_once() {
    // tiny_http's own pool serves only a few of these until its pool grows.
    let service = Service::new("burst").http("GET", "/x", |_c, _r: &Request| Ok("x"));
    let (_c, port) = serve(service);
    let barrier = Arc::new(std::sync::Barrier::new(32));
    let started = Instant::now();
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut c = Client::connect(port);
                (0..10).map(|_| c.get("/x").status).collect::<Vec<_>>()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), [200; 10]);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_client_that_does_not_read_holds_no_worker() {
    const BIG: usize = 32 * 1024 * 1024;
    let service = Service::new("nonreader")
        .http("GET", "/big", |_c, _r: &Request| Ok(vec![7u8; BIG]))
        .http("GET", "/small", |_c, _r: &Request| Ok("small"));
    // One worker: if the big response held it, nothing else would be served.
    let port = free_port();
    let _c = serve_with(service, config(port).max_workers(1));
    let mut stuck = Client::connect(port);
    stuck.send(b"GET /big HTTP/1.1\r\n\r\n");
    let started = Instant::now();
    let mut other = Client::connect(port);
    for _ in 0..5 {
        assert_eq!(other.get("/small").text(), "small");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The connection's own thread finishes the write once the client reads.
    let r = stuck.reply(false);
    assert_eq!(r.body.len(), BIG);
    assert!(r.body.iter().all(|b| *b == 7));
    assert_eq!(stuck.get("/small").text(), "small");
}
