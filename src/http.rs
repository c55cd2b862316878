//! The `http` entrypoint: Nameko's `@http` routes, served on a hardened HTTP/1.1 server.
//!
//! ```no_run
//! use enoki::http::{Json, Request, Route};
//! use enoki::{Config, RemoteError, Runner, Service};
//!
//! # fn main() -> enoki::Result<()> {
//! let shop = Service::new("shop")
//!     .http("GET", "/items/<int:id>", |_ctx, req: &Request| {
//!         let id: u64 = req.param("id")?;
//!         Ok(Json(serde_json::json!({"id": id})))
//!     })
//!     .http("POST", "/echo", |_ctx, req: &Request| Ok(req.text()?.to_owned()))
//!     .http_route(
//!         Route::new("GET", "/stock/<name>").expected_errors(["OutOfStock"]),
//!         |_ctx, req: &Request| -> enoki::Result<(u16, String)> {
//!             Err(RemoteError::new("OutOfStock", req.param_str("name").unwrap_or("")).into())
//!         },
//!     );
//! Runner::new(Config::from_env()?).service(shop).run()
//! # }
//! ```
//!
//! # Routing
//!
//! Rules are Werkzeug's: `<name>` or `<string:name>` (one path segment), `<int:id>`,
//! `<float:x>`, `<path:rest>` (slashes included), `<uuid:id>` and `<any(a,b):kind>`. The most
//! specific rule wins, as in Werkzeug: static rules first, then rules with more static
//! segments, then lighter converters (`int`/`float` before `string` before `path`). A path no
//! rule matches gets 404; a path matched only for other methods gets 405 with an `Allow`
//! header. Methods are one or a comma list (`"GET,POST"`); a `GET` route also serves `HEAD`
//! (the body is left out). 404, 405 and malformed requests are answered by the server without
//! taking a worker.
//!
//! # Responses and errors
//!
//! A handler returns anything [`IntoResponse`]: a body (`String`/`&str` as
//! `text/plain; charset=utf-8`, `Vec<u8>` as `application/octet-stream`), `(status, body)`,
//! `(status, headers, body)`, a [`Response`] or [`Json`]. An error is answered as Nameko does,
//! `Error: <exc_type>: <value>` in plain text, with status 400 when its `exc_type` is one the
//! route expects ([`Route::expected_errors`]) or one of Nameko's bad-request errors
//! (`BadRequest`, `MalformedRequest`, `IncorrectSignature`, `MethodNotFound`) or enoki's bad
//! input, and 500 otherwise. A panic is a 500 and the worker lives on.
//! [`Route::json_errors`] answers errors as `{"error": <exc_type>, "message": <value>}`
//! instead.
//!
//! # Workers and context
//!
//! Requests run on the service's worker pool like any other entrypoint, with a fresh call id
//! stack and the service's dependencies, so a handler can call other services through an
//! [`RpcProxy`](crate::RpcProxy). Nameko puts no HTTP header into the context; a route can opt
//! in with [`Route::context_header`], so that, say, `Authorization` travels as `auth_token` to
//! every service the handler calls.
//!
//! # One server per address
//!
//! Every service in the process whose `WEB_SERVER_ADDRESS` is the same shares one server (Nameko
//! instead binds once per service, and the kernel spreads connections so that about half get a
//! 404). The first service to start opens it with its configuration's limits; the last to stop
//! closes it. Two routes with the same rule and a common method are a startup error. Port 0
//! gives each service a free port of its own, shown in the log (`http: listening on ...`).
//!
//! Threads: one acceptor per server and one thread per open connection (at most
//! `HTTP_MAX_CONNECTIONS`); handlers run on the services' workers.
//!
//! # Limits
//!
//! | key | default | what happens |
//! |---|---|---|
//! | `HTTP_MAX_CONNECTIONS` | 256 | connections over it get 503 and are closed; one thread each |
//! | `HTTP_MAX_HEADER_SIZE` | 16384 bytes | a bigger request head gets 431 |
//! | `HTTP_MAX_BODY_SIZE` | 1048576 bytes | a bigger body gets 413 (before it is read) |
//! | `HTTP_REQUEST_TIMEOUT` | 30 s | a request (head and body) not complete in time gets 408 |
//! | `HTTP_IDLE_TIMEOUT` | 15 s | a keep-alive connection idle that long is closed |
//! | `HTTP_WRITE_TIMEOUT` | 30 s | a client that does not read its response is dropped; a worker gives up writing after 50 ms and leaves the rest to the connection's thread, so such clients hold no worker |
//! | `HTTP_QUEUE_TIMEOUT` | 1 s | how long a request waits for room in the worker queue before 503 with `Retry-After` |
//!
//! Timeouts are in seconds (fractions allowed). At most `max_workers` requests per service
//! run at once and `max_workers` more wait in its queue; anything beyond waits
//! `HTTP_QUEUE_TIMEOUT`, then gets 503.

mod message;
mod rule;
mod server;

pub use message::{IntoBody, IntoResponse, Json, Request, Response};

use crate::container::{Jobs, Runtime};
use crate::context::WorkerContext;
use crate::entrypoint::{Entrypoint, Input, Invocation, Invoked};
use crate::rpc::{finish_worker, run_worker};
use crate::service::Service;
use crate::transport::Headers;
use crate::{Config, Error, ErrorKind, Result};
use rule::Rule;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The configuration keys of the HTTP limits, also read from the environment.
pub(crate) const LIMIT_KEYS: [&str; 7] = [
    "HTTP_MAX_CONNECTIONS",
    "HTTP_MAX_HEADER_SIZE",
    "HTTP_MAX_BODY_SIZE",
    "HTTP_REQUEST_TIMEOUT",
    "HTTP_IDLE_TIMEOUT",
    "HTTP_WRITE_TIMEOUT",
    "HTTP_QUEUE_TIMEOUT",
];

/// The HTTP server's limits (see the [module docs](self) for the keys and defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// `HTTP_MAX_CONNECTIONS`: open connections at once (one thread each). Default 256.
    pub max_connections: usize,
    /// `HTTP_MAX_HEADER_SIZE`: bytes of request line and headers. Default 16 KiB.
    pub max_header_bytes: usize,
    /// `HTTP_MAX_BODY_SIZE`: bytes of request body. Default 1 MiB.
    pub max_body_bytes: usize,
    /// `HTTP_REQUEST_TIMEOUT`: from a request's first byte to its last. Default 30 s.
    pub request_timeout: Duration,
    /// `HTTP_IDLE_TIMEOUT`: between requests on a keep-alive connection. Default 15 s.
    pub idle_timeout: Duration,
    /// `HTTP_WRITE_TIMEOUT`: for writing a response. Default 30 s.
    pub write_timeout: Duration,
    /// `HTTP_QUEUE_TIMEOUT`: waiting for room in the worker queue; 0 answers 503 at once.
    /// Default 1 s.
    pub queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(30),
            queue_timeout: Duration::from_secs(1),
        }
    }
}

/// Reads the limits from `config`, failing on a value that is not a non-negative number.
pub(crate) fn limits(config: &Config) -> Result<Limits> {
    let number = |key: &str| -> Result<Option<f64>> {
        let bad = || Error::config(format!("key `{key}`: must be a non-negative number"));
        match config.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_f64().filter(|n| *n >= 0.0).map(Some).ok_or_else(bad),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .map(Some)
                .ok_or_else(bad),
            Some(_) => Err(bad()),
        }
    };
    let count = |key: &str, default: usize| -> Result<usize> {
        Ok(number(key)?.map_or(default, |n| n as usize))
    };
    let seconds = |key: &str, default: Duration| -> Result<Duration> {
        match number(key)? {
            None => Ok(default),
            Some(n) => Duration::try_from_secs_f64(n)
                .map_err(|_| Error::config(format!("key `{key}`: {n} seconds is too long"))),
        }
    };
    let d = Limits::default();
    Ok(Limits {
        max_connections: count("HTTP_MAX_CONNECTIONS", d.max_connections)?.max(1),
        max_header_bytes: count("HTTP_MAX_HEADER_SIZE", d.max_header_bytes)?,
        max_body_bytes: count("HTTP_MAX_BODY_SIZE", d.max_body_bytes)?,
        request_timeout: seconds("HTTP_REQUEST_TIMEOUT", d.request_timeout)?,
        idle_timeout: seconds("HTTP_IDLE_TIMEOUT", d.idle_timeout)?,
        write_timeout: seconds("HTTP_WRITE_TIMEOUT", d.write_timeout)?
            .max(Duration::from_millis(1)),
        queue_timeout: seconds("HTTP_QUEUE_TIMEOUT", d.queue_timeout)?,
    })
}

type Handler = Arc<dyn Fn(&WorkerContext, &Request) -> Result<Response> + Send + Sync>;

/// One HTTP route and its options, for [`Service::http_route`].
///
/// ```
/// use enoki::http::Route;
///
/// let route = Route::new("GET,POST", "/orders/<int:id>")
///     .expected_errors(["OrderNotFound"])
///     .json_errors()
///     .context_header("Authorization", "auth_token")
///     .context_header("Accept-Language", "language");
/// ```
#[derive(Clone, Debug)]
pub struct Route {
    methods: String,
    rule: String,
    name: Option<String>,
    expected: Vec<String>,
    json_errors: bool,
    context_headers: Vec<(String, String)>,
}

impl Route {
    /// A route for `methods` (one, or a comma list such as `"GET,POST"`) and the Werkzeug-style
    /// `rule`. Checked when the service starts.
    pub fn new(methods: impl Into<String>, rule: impl Into<String>) -> Route {
        Route {
            methods: methods.into(),
            rule: rule.into(),
            name: None,
            expected: Vec::new(),
            json_errors: false,
            context_headers: Vec::new(),
        }
    }

    /// The entrypoint name in call ids and logs. Default: the rule, e.g. `/items/<int:id>`.
    pub fn name(mut self, name: impl Into<String>) -> Route {
        self.name = Some(name.into());
        self
    }

    /// Error types (`exc_type`, e.g. `ValueError`) answered with 400 instead of 500, as
    /// Nameko's `expected_exceptions`. Default: none beyond Nameko's bad-request errors.
    pub fn expected_errors<I, S>(mut self, exc_types: I) -> Route
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.expected.extend(exc_types.into_iter().map(Into::into));
        self
    }

    /// Answers errors with a JSON body, `{"error": <exc_type>, "message": <value>}`. Default:
    /// Nameko's plain text, `Error: <exc_type>: <value>`.
    pub fn json_errors(mut self) -> Route {
        self.json_errors = true;
        self
    }

    /// Puts the request header `header` into the worker's context data as `key`, so it travels
    /// with every call and event the handler makes (`Authorization` → `auth_token`, say).
    /// Default: no header is mapped, as in Nameko.
    pub fn context_header(mut self, header: impl Into<String>, key: impl Into<String>) -> Route {
        self.context_headers.push((header.into(), key.into()));
        self
    }
}

/// A route ready to serve: parsed rule, methods, handler and options.
pub(crate) struct Endpoint {
    name: Arc<str>,
    rule: Rule,
    methods: Vec<String>,
    handler: Handler,
    expected: Vec<String>,
    json_errors: bool,
    context_headers: Vec<(String, String)>,
}

/// The entrypoint of one route; it registers with the shared server on start.
struct HttpEntrypoint {
    route: Route,
    endpoint: Result<Arc<Endpoint>>,
    registration: Option<server::Registration>,
}

impl fmt::Debug for HttpEntrypoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEntrypoint")
            .field("methods", &self.route.methods)
            .field("rule", &self.route.rule)
            .finish_non_exhaustive()
    }
}

fn endpoint(route: &Route, handler: Handler) -> Result<Endpoint> {
    let rule = Rule::parse(&route.rule)?;
    let mut methods: Vec<String> = Vec::new();
    for method in route.methods.split(',') {
        let method = method.trim().to_ascii_uppercase();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(Error::config(format!(
                "invalid http methods `{}` for `{}`",
                route.methods, route.rule
            )));
        }
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
        methods.push("HEAD".to_owned());
    }
    Ok(Endpoint {
        name: Arc::from(route.name.as_deref().unwrap_or(&route.rule)),
        rule,
        methods,
        handler,
        expected: route.expected.clone(),
        json_errors: route.json_errors,
        context_headers: route.context_headers.clone(),
    })
}

impl Entrypoint for HttpEntrypoint {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn name(&self) -> String {
        match &self.route.name {
            Some(name) => name.clone(),
            None => format!("{} {}", self.route.methods, self.route.rule),
        }
    }

    fn describe(&self) -> Value {
        let methods: Vec<String> = match &self.endpoint {
            Ok(endpoint) => endpoint.methods.clone(),
            Err(_) => vec![self.route.methods.clone()],
        };
        serde_json::json!({
            "kind": self.kind(),
            "name": self.name(),
            "methods": methods,
            "rule": &self.route.rule,
        })
    }

    fn validate(&self, _service: &str, config: &Config) -> Result<()> {
        if let Err(e) = &self.endpoint {
            return Err(Error::config(e.to_string()));
        }
        server::resolve(config.web_address())?;
        limits(config)?;
        Ok(())
    }

    fn start(&mut self, runtime: &Arc<Runtime>, jobs: &Jobs) -> Result<()> {
        let endpoint = match &self.endpoint {
            Ok(endpoint) => endpoint.clone(),
            Err(e) => return Err(Error::config(e.to_string())),
        };
        let registration = server::register(&runtime.config, endpoint, jobs.clone())?;
        log::debug!(
            "{}: http {} on {}",
            runtime.service_name,
            self.name(),
            registration.local_addr()
        );
        self.registration = Some(registration);
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(registration) = self.registration.take() {
            registration.cancel(false);
        }
    }

    fn kill(&mut self) {
        if let Some(registration) = self.registration.take() {
            registration.cancel(true);
        }
    }

    /// Answers `request` as the server would for this route: 404 when the path does not fit
    /// the rule, 405 with `Allow` for another method, else the handler's response.
    fn invoke(&self, runtime: &Arc<Runtime>, call: Invocation) -> Result<Invoked> {
        let endpoint = match &self.endpoint {
            Ok(endpoint) => endpoint,
            Err(e) => return Err(Error::config(e.to_string())),
        };
        let request = match call.input {
            Input::Request(request) => request,
            other => return Err(other.refused("http", &self.name(), "an HTTP request")),
        };
        let Some(params) = endpoint.rule.matches(request.path()) else {
            return Ok(Invoked::Response(Response::text("Not Found\n").status(404)));
        };
        if !endpoint.methods.iter().any(|m| m == request.method()) {
            return Ok(Invoked::Response(
                Response::text("Method Not Allowed\n")
                    .status(405)
                    .header("Allow", endpoint.methods.join(", ")),
            ));
        }
        let request = params.into_iter().fold(request, |request, (name, value)| {
            request.with_param(name, value)
        });
        Ok(Invoked::Response(respond_with(
            endpoint,
            runtime,
            request,
            call.headers,
        )))
    }
}

impl Service {
    /// Serves `rule` for `methods` over HTTP (Nameko's `@http`); see the [`http`](crate::http)
    /// module for rules, responses, errors and limits.
    ///
    /// ```
    /// use enoki::Service;
    /// use enoki::http::Request;
    ///
    /// let service = Service::new("hello")
    ///     .http("GET", "/hello/<name>", |_ctx, req: &Request| {
    ///         Ok(format!("Hello, {}!", req.param::<String>("name")?))
    ///     });
    /// ```
    pub fn http<R, F>(self, methods: &str, rule: &str, handler: F) -> Service
    where
        R: IntoResponse + 'static,
        F: Fn(&WorkerContext, &Request) -> Result<R> + Send + Sync + 'static,
    {
        self.http_route(Route::new(methods, rule), handler)
    }

    /// [`Service::http`] with options: expected errors, JSON error bodies, headers mapped into
    /// the context.
    pub fn http_route<R, F>(self, route: Route, handler: F) -> Service
    where
        R: IntoResponse + 'static,
        F: Fn(&WorkerContext, &Request) -> Result<R> + Send + Sync + 'static,
    {
        let handler: Handler = Arc::new(move |ctx, req| handler(ctx, req)?.into_response());
        let endpoint = endpoint(&route, handler).map(Arc::new);
        self.entrypoint(HttpEntrypoint {
            route,
            endpoint,
            registration: None,
        })
    }
}

/// Nameko's `BadRequest` family, always answered with 400.
const BAD_REQUEST: [&str; 5] = [
    "BadRequest",
    "MalformedRequest",
    "IncorrectSignature",
    "MethodNotFound",
    "ConnectionNotFound",
];

/// Runs one request on a worker: context, dependencies, handler, hooks.
fn respond(endpoint: &Endpoint, runtime: &Arc<Runtime>, request: Request) -> Response {
    respond_with(endpoint, runtime, request, Headers::new())
}

/// [`respond`] with context data besides what the route maps from the request's headers.
fn respond_with(
    endpoint: &Endpoint,
    runtime: &Arc<Runtime>,
    request: Request,
    mut data: Headers,
) -> Response {
    for (header, key) in &endpoint.context_headers {
        if let Some(value) = request.header(header) {
            data.insert(key.clone(), Value::String(value.to_owned()));
        }
    }
    let mut ctx = WorkerContext::new(runtime.clone(), endpoint.name.clone(), data);
    let mut response = None;
    let outcome = run_worker(runtime, &mut ctx, |ctx| {
        response = Some((endpoint.handler)(ctx, &request)?);
        Ok(())
    });
    let response = match (&outcome, response) {
        (Ok(()), Some(response)) => response,
        (Err(e), _) => error_response(endpoint, e),
        (Ok(()), None) => Response::new(500),
    };
    let status = response.status_code().to_string();
    finish_worker(runtime, &ctx, outcome.as_ref().map(|()| status.as_str()));
    response
}

fn error_response(endpoint: &Endpoint, error: &Error) -> Response {
    let remote = error.to_remote();
    let expected = matches!(error.kind(), ErrorKind::BadInput(_))
        || BAD_REQUEST.contains(&remote.exc_type.as_str())
        || endpoint.expected.contains(&remote.exc_type);
    let status = if expected { 400 } else { 500 };
    if endpoint.json_errors {
        let body = serde_json::json!({"error": remote.exc_type, "message": remote.value});
        Response::bytes("application/json", body.to_string()).status(status)
    } else {
        Response::text(format!("Error: {}: {}\n", remote.exc_type, remote.value)).status(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn limits_come_from_keys_and_the_environment() {
        assert_eq!(Config::new().http_limits().unwrap(), Limits::default());
        let config = Config::new()
            .set("HTTP_MAX_CONNECTIONS", json!(8))
            .unwrap()
            .set("HTTP_IDLE_TIMEOUT", json!(0.25))
            .unwrap()
            .set("HTTP_QUEUE_TIMEOUT", json!("0"))
            .unwrap();
        let limits = config.http_limits().unwrap();
        assert_eq!(limits.max_connections, 8);
        assert_eq!(limits.idle_timeout, Duration::from_millis(250));
        assert_eq!(limits.queue_timeout, Duration::ZERO);
        assert_eq!(limits.max_body_bytes, Limits::default().max_body_bytes);

        let env = |key: &str| match key {
            "HTTP_MAX_BODY_SIZE" => Some("2048".to_owned()),
            "HTTP_WRITE_TIMEOUT" => Some(" ".to_owned()),
            _ => None,
        };
        let limits = Config::from_env_with(env).unwrap().http_limits().unwrap();
        assert_eq!(limits.max_body_bytes, 2048);
        assert_eq!(limits.write_timeout, Limits::default().write_timeout);

        let error = Config::new()
            .set("HTTP_IDLE_TIMEOUT", json!(1e30))
            .unwrap()
            .http_limits()
            .unwrap_err();
        assert!(error.to_string().contains("too long"), "{error}");
        for bad in [json!(-1), json!("soon"), json!([1]), json!("inf")] {
            let config = Config::new()
                .set("HTTP_REQUEST_TIMEOUT", bad.clone())
                .unwrap();
            let error = config.http_limits().unwrap_err();
            assert_eq!(
                error.to_string(),
                "configuration: key `HTTP_REQUEST_TIMEOUT`: must be a non-negative number",
                "{bad}"
            );
        }
        let bad_env = |key: &str| (key == "HTTP_MAX_CONNECTIONS").then(|| "many".to_owned());
        assert!(Config::from_env_with(bad_env).is_err());
    }

    #[test]
    fn methods_are_normalized_and_head_follows_get() {
        let handler: Handler = Arc::new(|_ctx, _req| Ok(Response::new(200)));
        let e = endpoint(&Route::new("get, post,GET", "/x"), handler.clone()).unwrap();
        assert_eq!(e.methods, ["GET", "POST", "HEAD"]);
        assert_eq!(&*e.name, "/x");
        let e = endpoint(&Route::new("DELETE", "/x").name("remove"), handler.clone()).unwrap();
        assert_eq!(
            (e.methods.as_slice(), &*e.name),
            (&["DELETE".to_owned()][..], "remove")
        );
        assert!(endpoint(&Route::new("", "/x"), handler.clone()).is_err());
        assert!(endpoint(&Route::new("GET", "x"), handler).is_err());
    }
}
