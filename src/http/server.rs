//! The HTTP server: one per address and process, shared by every service with routes on it.
//!
//! Why not `tiny_http::Server`: measured and read in tiny_http 0.12, its server spawns a thread
//! per connection without bound, queues requests without bound, sets no socket timeouts, and its
//! task pool starves bursts of keep-alive connections (a connection handed to a pool thread that
//! is already taken waits until another connection closes). None of this can be bounded from
//! outside: the server owns its accept loop and cannot be fed connections. So enoki runs its
//! own accept loop and one thread per connection up to `HTTP_MAX_CONNECTIONS`, reads each
//! request head and body within the configured sizes and deadlines, and hands the request to
//! the owning service's worker pool. tiny_http still names the status codes.
//!
//! A connection thread reads a request, routes it (404 and 405 never reach a worker), and
//! submits it as a job; the worker runs the handler and writes the response itself, so a reply
//! takes one thread hop as in a bare tiny_http server. The connection thread goes back to
//! reading at once, and waits for the previous response before it dispatches the next request,
//! so responses keep their order. A worker whose write blocks for 50 ms (a client that does not
//! read) hands the rest to the connection thread, which finishes it within
//! `HTTP_WRITE_TIMEOUT`: slow readers hold their own thread, never a worker.

use super::Endpoint;
use super::Limits;
use super::message::{Request, percent_decode};
use crate::container::{Jobs, Worker};
use crate::{Config, Error, Result};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The running servers, one per address (and per container for port 0).
static SERVERS: std::sync::Mutex<Vec<Arc<Server>>> = std::sync::Mutex::new(Vec::new());

const READ_CHUNK: usize = 8192;
const CONNECTION_STACK: usize = 256 * 1024;
const RETRY_AFTER_SECS: u32 = 1;
/// How long a worker may block writing a response before it hands the rest to the connection's
/// own thread, so a client that does not read cannot hold workers.
const WORKER_WRITE: Duration = Duration::from_millis(50);
/// How often a connection thread looks for a handed-over response while a job runs.
const POLL: Duration = Duration::from_millis(25);
/// How long, and how much, a connection closed after an error response keeps reading.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;
/// How long a stop waits for open connections to finish their last response.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// One route of one service, with the way to its worker pool. The pool handle is taken out
/// when the service stops, so no connection can submit to it afterwards.
struct Slot {
    endpoint: Arc<Endpoint>,
    jobs: RwLock<Option<Jobs>>,
    owner: u64,
}

pub(crate) struct Server {
    /// The address, and for port 0 the container asking (it gets a port of its own).
    key: (SocketAddr, usize),
    local: SocketAddr,
    limits: Limits,
    routes: RwLock<Vec<Arc<Slot>>>,
    stopping: AtomicBool,
    /// Open connections, so a stop can end their reads.
    live: Mutex<HashMap<u64, Arc<TcpStream>>>,
    closed: Condvar,
    next_id: AtomicU64,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

/// A service's route on a server; [`Registration::cancel`] removes it, and stops the server
/// when it was the last route.
pub(crate) struct Registration {
    server: Arc<Server>,
    owner: u64,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("address", &self.server.local)
            .finish()
    }
}

/// Parses `WEB_SERVER_ADDRESS` as Nameko does: `[address:]port`.
pub(crate) fn resolve(address: &str) -> Result<SocketAddr> {
    let address = address.trim();
    let full = if address.bytes().all(|b| b.is_ascii_digit()) {
        format!("0.0.0.0:{address}")
    } else {
        address.to_owned()
    };
    full.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            Error::config(format!(
                "WEB_SERVER_ADDRESS `{address}` is not `[address:]port`"
            ))
        })
}

/// Adds `endpoint` to the server on the configured address, starting that server if needed.
pub(crate) fn register(
    config: &Config,
    endpoint: Arc<Endpoint>,
    jobs: Jobs,
) -> Result<Registration> {
    static OWNERS: AtomicU64 = AtomicU64::new(1);
    let addr = resolve(config.web_address())?;
    // Port 0 asks for any free port: one per container, shared by its routes only.
    let container = if addr.port() == 0 {
        Arc::as_ptr(&jobs.runtime) as usize
    } else {
        0
    };
    let key = (addr, container);
    let owner = OWNERS.fetch_add(1, Ordering::Relaxed);
    let mut servers = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    let server = match servers.iter().find(|s| s.key == key) {
        Some(server) => server.clone(),
        None => {
            let server = Server::start(key, super::limits(config)?)?;
            servers.push(server.clone());
            server
        }
    };
    let slot = Arc::new(Slot {
        endpoint,
        jobs: RwLock::new(Some(jobs)),
        owner,
    });
    let added = server.add(slot);
    drop(servers);
    let registration = Registration { server, owner };
    match added {
        Ok(()) => Ok(registration),
        Err(e) => {
            registration.cancel(false);
            Err(e)
        }
    }
}

impl Registration {
    /// The address the server listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.server.local
    }

    /// Removes the route; the last route out stops the server (`kill`: without waiting for open
    /// connections).
    pub(crate) fn cancel(self, kill: bool) {
        let mut servers = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
        let empty = {
            let mut routes = self.server.routes.write();
            let mut removed = Vec::new();
            routes.retain(|slot| {
                let keep = slot.owner != self.owner;
                if !keep {
                    removed.push(slot.clone());
                }
                keep
            });
            drop(routes);
            for slot in removed {
                // Waits for connections in the middle of submitting to this pool.
                *slot.jobs.write() = None;
            }
            self.server.routes.read().is_empty()
        };
        if empty {
            servers.retain(|s| !Arc::ptr_eq(s, &self.server));
            // Closed before the registry is free again, so a service starting next can bind
            // the same address.
            self.server.close_listener();
            drop(servers);
            self.server.drain(kill);
        }
    }
}

impl Server {
    fn start(key: (SocketAddr, usize), limits: Limits) -> Result<Arc<Server>> {
        let addr = key.0;
        let listener = listen(addr)
            .map_err(|e| Error::config(format!("cannot listen for HTTP on {addr}: {e}")))?;
        let local = listener.local_addr()?;
        let server = Arc::new(Server {
            key,
            local,
            limits,
            routes: RwLock::new(Vec::new()),
            stopping: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            closed: Condvar::new(),
            next_id: AtomicU64::new(0),
            acceptor: Mutex::new(None),
        });
        let accepting = server.clone();
        let thread = std::thread::Builder::new()
            .name(format!("http-a:{}", local.port()))
            .spawn(move || accepting.accept(&listener))?;
        *server.acceptor.lock() = Some(thread);
        log::info!("http: listening on {local}");
        Ok(server)
    }

    fn add(&self, slot: Arc<Slot>) -> Result<()> {
        let mut routes = self.routes.write();
        let new = &slot.endpoint;
        for other in routes.iter() {
            let old = &other.endpoint;
            if old.rule.shape() == new.rule.shape()
                && old.methods.iter().any(|m| new.methods.contains(m))
            {
                return Err(Error::config(format!(
                    "http route {} {} collides with {} {} on {}",
                    new.methods.join(","),
                    new.rule.text(),
                    old.methods.join(","),
                    old.rule.text(),
                    self.local
                )));
            }
        }
        // Stable: among rules of equal precedence the first registered is tried first.
        let at = routes.partition_point(|s| s.endpoint.rule.precedence(&new.rule).is_le());
        routes.insert(at, slot);
        Ok(())
    }

    fn close_listener(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        // accept() has no timeout: a connection of our own wakes it.
        let mut wake = self.local;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(thread) = self.acceptor.lock().take() {
            let _ = thread.join();
        }
    }

    /// Ends every connection's reads and, unless `kill`, waits for their last responses.
    fn drain(&self, kill: bool) {
        let mut live = self.live.lock();
        for stream in live.values() {
            // Ending the read side lets in-flight responses still be written.
            let how = if kill { Shutdown::Both } else { Shutdown::Read };
            let _ = stream.shutdown(how);
        }
        if !kill {
            let deadline = Instant::now() + STOP_GRACE;
            while !live.is_empty() {
                if self.closed.wait_until(&mut live, deadline).timed_out() {
                    log::warn!(
                        "http {}: {} connections still open after {STOP_GRACE:?}",
                        self.local,
                        live.len()
                    );
                    break;
                }
            }
        }
        log::info!("http: stopped listening on {}", self.local);
    }

    fn accept(self: &Arc<Server>, listener: &TcpListener) {
        loop {
            let accepted = listener.accept();
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: the
                    // listener itself is fine, so back off briefly and go on.
                    log::warn!("http {}: accept failed: {e}", self.local);
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            // Inherited from the listener on Linux; set again for platforms that do not.
            let _ = stream.set_nodelay(true);
            // Short, so that a worker writing to a client that does not read soon hands the
            // rest to the connection thread; that one retries up to HTTP_WRITE_TIMEOUT.
            let _ = stream.set_write_timeout(Some(WORKER_WRITE.min(self.limits.write_timeout)));
            let stream = Arc::new(stream);
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            {
                let mut live = self.live.lock();
                if live.len() >= self.limits.max_connections {
                    drop(live);
                    refuse(&stream);
                    continue;
                }
                live.insert(id, stream.clone());
            }
            let server = self.clone();
            let serving = stream.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("http-c:{}", self.local.port()))
                .stack_size(CONNECTION_STACK)
                .spawn(move || {
                    Connection::new(&server, serving, peer).serve();
                    server.live.lock().remove(&id);
                    server.closed.notify_all();
                });
            if let Err(e) = spawned {
                log::warn!("http {}: cannot start a connection thread: {e}", self.local);
                self.live.lock().remove(&id);
                refuse(&stream);
            }
        }
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Without it keep-alive responses of 1 to 32 KB wait on delayed ACKs (about 40 ms each).
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Answers a connection over the limit with 503 and closes it, without a thread.
fn refuse(stream: &TcpStream) {
    let mut out = Vec::with_capacity(160);
    write_simple(
        &mut out,
        503,
        "Service Unavailable: too many connections\n",
        Some("close"),
    );
    // Take what already arrived, so closing does not reset the connection before the client
    // reads the answer.
    let _ = stream.set_nonblocking(true);
    let mut sink = [0u8; 4096];
    while matches!((&*stream).read(&mut sink), Ok(n) if n > 0) {}
    let _ = stream.set_nonblocking(false);
    let _ = (&*stream).write_all(&out);
    let _ = stream.shutdown(Shutdown::Write);
}

/// Why a connection stops reading.
enum Stop {
    /// The client closed, the socket failed, or the connection was idle too long.
    Quiet,
    /// Answer with this status, then close.
    Answer(u16, &'static str),
}

struct Head {
    method: String,
    target: String,
    minor: u8,
    headers: Vec<(String, String)>,
    /// When the whole request must have arrived (set once its first byte has).
    deadline: Option<Instant>,
}

struct Connection<'a> {
    server: &'a Server,
    stream: Arc<TcpStream>,
    peer: SocketAddr,
    buf: Vec<u8>,
    pos: usize,
    timeout: Option<Duration>,
    /// Signals when the previous request's response has been written.
    /// The previous request's job: it sends, once its response is written, what it could not
    /// write in time (if anything), for this thread to finish.
    pending: Option<Receiver<Option<Vec<u8>>>>,
}

impl<'a> Connection<'a> {
    fn new(server: &'a Server, stream: Arc<TcpStream>, peer: SocketAddr) -> Connection<'a> {
        Connection {
            server,
            stream,
            peer,
            buf: Vec::with_capacity(READ_CHUNK),
            pos: 0,
            timeout: None,
            pending: None,
        }
    }

    fn serve(&mut self) {
        loop {
            match self.next() {
                Ok(true) => {}
                Ok(false) => break,
                Err(Stop::Quiet) => break,
                Err(Stop::Answer(status, text)) => {
                    if self.settle().is_err() {
                        return;
                    }
                    let mut out = Vec::new();
                    write_simple(&mut out, status, text, Some("close"));
                    let _ = self.write(&out);
                    let _ = self.stream.shutdown(Shutdown::Write);
                    self.linger();
                    return;
                }
            }
        }
        let _ = self.settle();
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads and drops what the client still sends (the body of a refused upload, say) for a
    /// moment: closing with unread data resets the connection, and a reset can destroy the
    /// error response before the client reads it.
    fn linger(&mut self) {
        let until = Instant::now() + LINGER;
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            let wait = until.saturating_duration_since(Instant::now());
            if wait.is_zero() || self.stream.set_read_timeout(Some(wait)).is_err() {
                return;
            }
            match (&*self.stream).read(&mut sink) {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    }

    /// Waits until the previous response is written (or its job was dropped), finishing the
    /// write if the worker handed it over.
    fn settle(&mut self) -> std::result::Result<(), Stop> {
        if let Some(pending) = self.pending.take()
            && let Ok(Some(rest)) = pending.recv()
        {
            self.write(&rest)?;
        }
        Ok(())
    }

    /// Reads, routes and dispatches one request; `false` once the connection should close.
    fn next(&mut self) -> std::result::Result<bool, Stop> {
        let head = self.read_head()?;
        let limits = &self.server.limits;
        let keep_alive = keep_alive(&head);
        let connection = match (keep_alive, head.minor) {
            (false, _) => Some("close"),
            // HTTP/1.0 closes unless told otherwise.
            (true, 0) => Some("keep-alive"),
            (true, _) => None,
        };
        let body = self.read_body(&head)?;
        self.settle()?;

        let (path, query) = match head.target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (head.target.as_str(), ""),
        };
        let path = percent_decode(path, false);
        let head_only = head.method == "HEAD";
        let (found, allowed) = route(&self.server.routes.read(), &path, &head.method);
        let Some((slot, params)) = found else {
            let mut out = Vec::new();
            match allowed {
                None => write_simple(&mut out, 404, "Not Found\n", connection),
                Some(allow) => write_response(
                    &mut out,
                    405,
                    &[
                        (
                            "Content-Type".to_owned(),
                            "text/plain; charset=utf-8".to_owned(),
                        ),
                        ("Allow".to_owned(), allow),
                    ],
                    b"Method Not Allowed\n",
                    head_only,
                    connection,
                ),
            }
            self.write(&out)?;
            return Ok(keep_alive);
        };
        let request = Request::from_parts(
            head.method,
            path,
            query,
            head.headers,
            body,
            params,
            Some(self.peer),
        );

        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let reply = Reply {
            stream: self.stream.clone(),
            head_only,
            connection,
            done: done_tx,
        };
        let submitted = {
            let jobs = slot.jobs.read();
            match &*jobs {
                Some(jobs) => {
                    let endpoint = slot.endpoint.clone();
                    let runtime = jobs.runtime.clone();
                    let job: crate::container::Job = Box::new(move |worker: &mut Worker| {
                        let response = super::respond(&endpoint, &runtime, request);
                        reply.send(worker, response);
                    });
                    let timeout = limits.queue_timeout;
                    let outcome = if timeout.is_zero() {
                        jobs.try_submit(job)
                    } else {
                        jobs.submit_timeout(job, timeout)
                    };
                    outcome.is_ok()
                }
                None => false,
            }
        };
        if !submitted {
            let mut out = Vec::new();
            write_response(
                &mut out,
                503,
                &[
                    (
                        "Content-Type".to_owned(),
                        "text/plain; charset=utf-8".to_owned(),
                    ),
                    ("Retry-After".to_owned(), RETRY_AFTER_SECS.to_string()),
                ],
                b"Service Unavailable: every worker is busy\n",
                head_only,
                connection,
            );
            self.write(&out)?;
            return Ok(keep_alive);
        }
        self.pending = Some(done_rx);
        Ok(keep_alive)
    }

    fn write(&self, bytes: &[u8]) -> std::result::Result<(), Stop> {
        let deadline = Instant::now() + self.server.limits.write_timeout;
        match write_until(&self.stream, bytes, Some(deadline)) {
            (_, None) => Ok(()),
            (_, Some(_)) => Err(Stop::Quiet),
        }
    }

    fn set_timeout(&mut self, timeout: Duration) {
        let timeout = timeout.max(Duration::from_millis(1));
        if self.timeout != Some(timeout) {
            let _ = self.stream.set_read_timeout(Some(timeout));
            self.timeout = Some(timeout);
        }
    }

    /// Reads more bytes into the buffer, waiting at most until `deadline` (or, with none, the
    /// idle timeout). Ok(false) when the wait timed out.
    fn fill(&mut self, deadline: Option<Instant>) -> std::result::Result<bool, Stop> {
        let timeout = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                left
            }
            // While a job runs, look in now and then for a response to finish writing.
            None if self.pending.is_some() => POLL.min(self.server.limits.idle_timeout),
            None => self.server.limits.idle_timeout,
        };
        self.set_timeout(timeout);
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > READ_CHUNK {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        loop {
            match (&*self.stream).read(&mut self.buf[old..]) {
                Ok(0) => {
                    self.buf.truncate(old);
                    return Err(Stop::Quiet);
                }
                Ok(n) => {
                    self.buf.truncate(old + n);
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    self.buf.truncate(old);
                    return Ok(false);
                }
                Err(_) => {
                    self.buf.truncate(old);
                    return Err(Stop::Quiet);
                }
            }
        }
    }

    fn read_head(&mut self) -> std::result::Result<Head, Stop> {
        let limits = &self.server.limits;
        let max = limits.max_header_bytes;
        let mut deadline: Option<Instant> = None;
        let mut scanned = 0;
        loop {
            // Leading empty lines before a request line are allowed (RFC 9112, 2.2).
            while self.buf[self.pos..].starts_with(b"\r\n") {
                self.pos += 2;
            }
            while self.buf[self.pos..].starts_with(b"\n") {
                self.pos += 1;
            }
            let data = &self.buf[self.pos..];
            if let Some(end) = head_end(data, scanned) {
                if end > max {
                    return Err(Stop::Answer(431, "Request Header Fields Too Large\n"));
                }
                let head = parse_head(&data[..end])?;
                self.pos += end;
                return Ok(Head { deadline, ..head });
            }
            scanned = data.len().saturating_sub(3);
            if data.len() > max {
                return Err(Stop::Answer(431, "Request Header Fields Too Large\n"));
            }
            if deadline.is_none() && !data.is_empty() {
                deadline = Some(Instant::now() + limits.request_timeout);
            }
            if !self.fill(deadline)? {
                if deadline.is_some() {
                    return Err(Stop::Answer(408, "Request Timeout\n"));
                }
                // Idle: close, unless the previous request is still being worked on or
                // written, which does not count as idle.
                let Some(pending) = &self.pending else {
                    return Err(Stop::Quiet);
                };
                match pending.try_recv() {
                    Err(TryRecvError::Empty) => {}
                    Ok(rest) => {
                        self.pending = None;
                        if let Some(rest) = rest {
                            self.write(&rest)?;
                        }
                    }
                    Err(TryRecvError::Disconnected) => self.pending = None,
                }
            } else if deadline.is_none() {
                deadline = Some(Instant::now() + limits.request_timeout);
            }
        }
    }

    fn read_body(&mut self, head: &Head) -> std::result::Result<Vec<u8>, Stop> {
        let limits = &self.server.limits;
        let deadline = head
            .deadline
            .unwrap_or_else(|| Instant::now() + limits.request_timeout);
        let header = |name: &'static str| {
            head.headers
                .iter()
                .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let chunked = match header("transfer-encoding").next_back() {
            None => false,
            Some(te) if te.trim().eq_ignore_ascii_case("chunked") => true,
            Some(_) => return Err(Stop::Answer(501, "Transfer-Encoding not supported\n")),
        };
        let lengths: Vec<&str> = header("content-length").collect();
        if chunked && !lengths.is_empty() {
            // Both framings at once is how requests are smuggled past proxies.
            return Err(Stop::Answer(
                400,
                "Bad Request: Content-Length with chunked\n",
            ));
        }
        let expects_continue = head.minor == 1
            && header("expect")
                .next()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("100-continue"));
        if chunked {
            if expects_continue {
                self.settle()?;
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
            return self.read_chunked(deadline);
        }
        let length = match lengths.as_slice() {
            [] => 0,
            [first, rest @ ..] => {
                let parse = |v: &str| {
                    let v = v.trim();
                    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    v.parse::<u64>().ok()
                };
                let n = parse(first).ok_or(Stop::Answer(400, "Bad Request: Content-Length\n"))?;
                if rest.iter().any(|v| parse(v) != Some(n)) {
                    return Err(Stop::Answer(400, "Bad Request: Content-Length\n"));
                }
                n
            }
        };
        if length > limits.max_body_bytes as u64 {
            return Err(Stop::Answer(413, "Content Too Large\n"));
        }
        let length = length as usize;
        if length == 0 {
            return Ok(Vec::new());
        }
        if expects_continue && self.buf.len() - self.pos < length {
            self.settle()?;
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        while self.buf.len() - self.pos < length {
            if !self.fill(Some(deadline))? {
                return Err(Stop::Answer(408, "Request Timeout\n"));
            }
        }
        let body = self.buf[self.pos..self.pos + length].to_vec();
        self.pos += length;
        Ok(body)
    }

    fn read_chunked(&mut self, deadline: Instant) -> std::result::Result<Vec<u8>, Stop> {
        let max = self.server.limits.max_body_bytes;
        let bad = || Stop::Answer(400, "Bad Request: chunked body\n");
        let mut body = Vec::new();
        loop {
            let line = self.line(deadline)?;
            let size = line.split(|b| *b == b';').next().unwrap_or(&[]);
            let size = std::str::from_utf8(size)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .and_then(|s| usize::from_str_radix(s, 16).ok())
                .ok_or_else(bad)?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line(deadline)?.is_empty() {}
                return Ok(body);
            }
            // `size` is the client's number: checked before any arithmetic on it.
            if size > max.saturating_sub(body.len()) {
                return Err(Stop::Answer(413, "Content Too Large\n"));
            }
            while self.buf.len() - self.pos < size + 2 {
                if !self.fill(Some(deadline))? {
                    return Err(Stop::Answer(408, "Request Timeout\n"));
                }
            }
            body.extend_from_slice(&self.buf[self.pos..self.pos + size]);
            if &self.buf[self.pos + size..self.pos + size + 2] != b"\r\n" {
                return Err(bad());
            }
            self.pos += size + 2;
        }
    }

    /// One CRLF-terminated line (without it), for chunk sizes and trailers.
    fn line(&mut self, deadline: Instant) -> std::result::Result<Vec<u8>, Stop> {
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|b| *b == b'\n') {
                let mut line = self.buf[self.pos..self.pos + i].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.pos += i + 1;
                return Ok(line);
            }
            if self.buf.len() - self.pos > 4096 {
                return Err(Stop::Answer(400, "Bad Request: chunked body\n"));
            }
            if !self.fill(Some(deadline))? {
                return Err(Stop::Answer(408, "Request Timeout\n"));
            }
        }
    }
}

type Found = Option<(Arc<Slot>, Vec<(String, String)>)>;

/// The first rule (in precedence order) matching `path` and `method`; when none does but some
/// match the path, the `Allow` header listing their methods.
fn route(routes: &[Arc<Slot>], path: &str, method: &str) -> (Found, Option<String>) {
    let mut allowed: Vec<&str> = Vec::new();
    for slot in routes {
        if let Some(params) = slot.endpoint.rule.matches(path) {
            if slot.endpoint.methods.iter().any(|m| m == method) {
                return (Some((slot.clone(), params)), None);
            }
            for m in &slot.endpoint.methods {
                if !allowed.contains(&m.as_str()) {
                    allowed.push(m);
                }
            }
        }
    }
    (None, (!allowed.is_empty()).then(|| allowed.join(", ")))
}

/// Where a worker writes its response.
struct Reply {
    stream: Arc<TcpStream>,
    head_only: bool,
    connection: Option<&'static str>,
    done: Sender<Option<Vec<u8>>>,
}

impl Reply {
    fn send(self, worker: &mut Worker, response: super::Response) {
        let mut out = std::mem::take(&mut worker.buffer);
        out.clear();
        let (status, headers, body) = response.into_parts();
        write_response(
            &mut out,
            status,
            &headers,
            &body,
            self.head_only,
            self.connection,
        );
        // Signalled first thing after the write: the connection thread may be waiting.
        match write_until(&self.stream, &out, None) {
            (_, None) => {
                let _ = self.done.send(None);
            }
            (written, Some(e)) if is_timeout(&e) => {
                let _ = self.done.send(Some(out[written..].to_vec()));
            }
            (_, Some(_)) => {
                let _ = self.stream.shutdown(Shutdown::Both);
                let _ = self.done.send(None);
            }
        }
        if out.capacity() > 64 * 1024 {
            out = Vec::with_capacity(256);
        }
        worker.buffer = out;
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Writes `bytes`, retrying writes that time out until `deadline` (without one, gives up at the
/// first timeout). Returns how much was written and the error that stopped it, if any.
fn write_until(
    stream: &TcpStream,
    bytes: &[u8],
    deadline: Option<Instant>,
) -> (usize, Option<std::io::Error>) {
    let mut written = 0;
    while written < bytes.len() {
        match (&*stream).write(&bytes[written..]) {
            Ok(0) => return (written, Some(ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) && deadline.is_some_and(|d| Instant::now() < d) => {}
            Err(e) => return (written, Some(e)),
        }
    }
    (written, None)
}

fn keep_alive(head: &Head) -> bool {
    let connection = head
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .map(|(_, v)| v.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    let has = |token: &str| connection.split(',').any(|t| t.trim() == token);
    if head.minor == 0 {
        has("keep-alive")
    } else {
        !has("close")
    }
}

/// The end of the request head (just past the empty line), searching from `from`.
fn head_end(data: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(n) = data[i..].iter().position(|b| *b == b'\n') {
        let at = i + n;
        if data[at + 1..].starts_with(b"\r\n") {
            return Some(at + 3);
        }
        if data[at + 1..].starts_with(b"\n") {
            return Some(at + 2);
        }
        i = at + 1;
    }
    None
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_head(data: &[u8]) -> std::result::Result<Head, Stop> {
    let bad = |why: &'static str| Stop::Answer(400, why);
    // Header values are sometimes Latin-1; they are kept, not refused.
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or("");
    let mut words = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(bad("Bad Request: request line\n"));
    };
    if !is_token(method) {
        return Err(bad("Bad Request: method\n"));
    }
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.starts_with("HTTP/") => {
            return Err(Stop::Answer(505, "HTTP Version Not Supported\n"));
        }
        _ => return Err(bad("Bad Request: version\n")),
    };
    let target = if target.starts_with('/') {
        target.to_owned()
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        // Absolute form: keep the path (and query).
        match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => rest[i..].to_owned(),
            Some(i) => format!("/{}", &rest[i..]),
            None => "/".to_owned(),
        }
    } else {
        return Err(bad("Bad Request: target\n"));
    };
    if target.bytes().any(|b| b.is_ascii_control()) {
        return Err(bad("Bad Request: target\n"));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            // Obsolete line folding (RFC 9112, 5.2).
            return Err(bad("Bad Request: folded header\n"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(bad("Bad Request: header line\n"))?;
        if !is_token(name) {
            return Err(bad("Bad Request: header name\n"));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    Ok(Head {
        method: method.to_owned(),
        target,
        minor,
        headers,
        deadline: None,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        431 => "Request Header Fields Too Large",
        413 => "Content Too Large",
        _ => tiny_http::StatusCode(status).default_reason_phrase(),
    }
}

fn write_simple(out: &mut Vec<u8>, status: u16, body: &str, connection: Option<&'static str>) {
    let mut headers = vec![(
        "Content-Type".to_owned(),
        "text/plain; charset=utf-8".to_owned(),
    )];
    if status == 503 {
        headers.push(("Retry-After".to_owned(), RETRY_AFTER_SECS.to_string()));
    }
    write_response(out, status, &headers, body.as_bytes(), false, connection);
}

thread_local! {
    /// The `Date` header of the current second.
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) for seconds since the Unix epoch.
fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Writes a whole HTTP/1.1 response into `out`. The framing headers are the server's own.
fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    head_only: bool,
    connection: Option<&'static str>,
) {
    use std::io::Write as _;
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason(status));
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if date.0 != now {
            *date = (now, http_date(now));
        }
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("connection")
        {
            continue;
        }
        if !is_token(name) || value.bytes().any(|b| b == b'\r' || b == b'\n') {
            log::warn!("http: dropping response header {name:?} with invalid characters");
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = matches!(status, 100..=199 | 204 | 304);
    if !bodiless {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    if let Some(connection) = connection {
        out.extend_from_slice(b"Connection: ");
        out.extend_from_slice(connection.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && !bodiless {
        out.extend_from_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_reject() {
        let head = parse_head(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A:  y \r\n\r\n")
            .ok()
            .unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/a?b=1");
        assert_eq!(head.headers[1], ("X-A".to_owned(), "y".to_owned()));
        let head = parse_head(b"GET http://h:1/p?q HTTP/1.0\r\n\r\n")
            .ok()
            .unwrap();
        assert_eq!((head.target.as_str(), head.minor), ("/p?q", 0));
        for bad in [
            &b"GET /a\r\n\r\n"[..],
            b"GET /a HTTP/1.1 x\r\n\r\n",
            b"G(T /a HTTP/1.1\r\n\r\n",
            b"GET a HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nNo colon\r\n\r\n",
            b"GET /a HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
            b"GET /a FTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad), Err(Stop::Answer(400, _))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse_head(b"GET /a HTTP/2.0\r\n\r\n"),
            Err(Stop::Answer(505, _))
        ));
    }

    #[test]
    fn head_end_finds_the_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nrest", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
    }

    #[test]
    fn responses_carry_their_framing() {
        let mut out = Vec::new();
        let headers = vec![
            ("X-Foo".to_owned(), "bar".to_owned()),
            ("Content-Length".to_owned(), "99".to_owned()),
            ("Bad".to_owned(), "a\r\nInjected: 1".to_owned()),
        ];
        write_response(&mut out, 201, &headers, b"hey", false, Some("close"));
        let text = String::from_utf8(out).unwrap();
        let date = text.split("\r\n").nth(1).unwrap().to_owned();
        assert!(
            date.starts_with("Date: ") && date.ends_with(" GMT"),
            "{date}"
        );
        assert_eq!(
            text.replace(&format!("{date}\r\n"), ""),
            "HTTP/1.1 201 Created\r\nX-Foo: bar\r\nContent-Length: 3\r\nConnection: close\r\n\r\nhey"
        );
        let mut out = Vec::new();
        write_response(&mut out, 200, &[], b"hey", true, None);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nDate: "), "{text}");
        assert!(
            text.ends_with(" GMT\r\nContent-Length: 3\r\n\r\n"),
            "{text}"
        );
    }

    #[test]
    fn accepted_sockets_have_nodelay() {
        // On loopback a response written at once never waits on Nagle, so the bench cannot
        // catch losing this; check the option itself.
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn dates_are_imf_fixdates() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(1_798_761_599), "Thu, 31 Dec 2026 23:59:59 GMT");
    }
}
