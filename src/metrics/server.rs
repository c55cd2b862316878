//! The metrics server: one small tiny_http thread per configured address, shared by every
//! container of the process configured with that address.

use super::{Metrics, render};
use crate::{Error, Result};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

type Members = Arc<Mutex<Vec<Arc<Metrics>>>>;

struct Served {
    addr: SocketAddr,
    members: Members,
    server: Arc<tiny_http::Server>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn registry() -> &'static Mutex<HashMap<String, Arc<Served>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<Served>>>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

/// A container's place on a metrics server; dropping it leaves, and the last one out stops the
/// server.
pub(crate) struct Registration {
    key: String,
    served: Arc<Served>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("address", &self.served.addr)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// The address the server listens on.
    pub(crate) fn address(&self) -> SocketAddr {
        self.served.addr
    }
}

/// Serves `metrics` on `address`, starting the server if this is its first container. An
/// address with port 0 always gets a server of its own (it cannot be found again by name).
pub(crate) fn register(address: &str, metrics: Arc<Metrics>) -> Result<Registration> {
    let key = if address.ends_with(":0") {
        format!("{address}#{}", crate::id::uuid4_string())
    } else {
        address.to_owned()
    };
    let mut registry = registry().lock();
    let served = match registry.get(&key) {
        Some(served) => served.clone(),
        None => {
            let served = start(address)?;
            registry.insert(key.clone(), served.clone());
            served
        }
    };
    served.members.lock().push(metrics.clone());
    Ok(Registration {
        key,
        served,
        metrics,
    })
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = registry().lock();
        let empty = {
            let mut members = self.served.members.lock();
            members.retain(|m| !Arc::ptr_eq(m, &self.metrics));
            members.is_empty()
        };
        if empty {
            registry.remove(&self.key);
            drop(registry);
            self.served.server.unblock();
            if let Some(thread) = self.served.thread.lock().take() {
                let _ = thread.join();
            }
        }
    }
}

fn start(address: &str) -> Result<Arc<Served>> {
    let cannot = |e: &dyn std::fmt::Display| {
        Error::config(format!("cannot serve metrics on `{address}`: {e}"))
    };
    let listener = std::net::TcpListener::bind(address).map_err(|e| cannot(&e))?;
    // tiny_http leaves Nagle on, which stalls keep-alive answers about 40 ms; accepted sockets
    // inherit the option from the listener.
    socket2::SockRef::from(&listener)
        .set_tcp_nodelay(true)
        .map_err(|e| cannot(&e))?;
    let server = tiny_http::Server::from_listener(listener, None).map_err(|e| cannot(&*e))?;
    let addr = server.server_addr().to_ip().ok_or_else(|| {
        Error::config(format!("metrics address `{address}` is not an IP address"))
    })?;
    let server = Arc::new(server);
    let members: Members = Arc::default();
    let thread = {
        let (server, members) = (server.clone(), members.clone());
        std::thread::Builder::new()
            .name("enoki-metrics".into())
            .spawn(move || {
                for request in server.incoming_requests() {
                    let snapshot = members.lock().clone();
                    respond(request, &snapshot);
                }
            })?
    };
    log::info!("metrics on http://{addr}/metrics, health on http://{addr}/health");
    Ok(Arc::new(Served {
        addr,
        members,
        server,
        thread: Mutex::new(Some(thread)),
    }))
}

fn header(name: &str, value: &str) -> Option<tiny_http::Header> {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

/// Answers one request: `/metrics`, `/health`, or 404.
fn respond(request: tiny_http::Request, members: &[Arc<Metrics>]) {
    let path = request.url().split('?').next().unwrap_or("");
    let (status, content_type, body) = match (request.method(), path) {
        (tiny_http::Method::Get, "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            render(members),
        ),
        (tiny_http::Method::Get, "/health") => {
            let services: serde_json::Map<String, serde_json::Value> = members
                .iter()
                .map(|m| (m.service().to_owned(), m.ready().into()))
                .collect();
            let ready = members.iter().all(|m| m.ready());
            let body = serde_json::json!({"ready": ready, "services": services}).to_string();
            (if ready { 200 } else { 503 }, "application/json", body)
        }
        _ => (
            404,
            "text/plain",
            "not found: try /metrics or /health\n".to_owned(),
        ),
    };
    let mut response = tiny_http::Response::from_string(body).with_status_code(status);
    if let Some(h) = header("Content-Type", content_type) {
        response = response.with_header(h);
    }
    if let Err(e) = request.respond(response) {
        log::debug!("metrics: cannot answer a request: {e}");
    }
}
