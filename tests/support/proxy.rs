//! A loopback TCP proxy between enoki and RabbitMQ, for injecting faults without touching the
//! shared broker: [`FaultProxy::cut`] drops every connection through it (as a broker restart or
//! a network failure would), [`FaultProxy::stall`] stops forwarding bytes while keeping the
//! sockets open (a hung peer), [`FaultProxy::refuse`] makes new connections fail, and
//! [`FaultProxy::block`] plays a broker resource alarm on one connection (AMQP
//! `connection.blocked`, then nothing read from the client until unblocked).

use parking_lot::Mutex;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// One proxied connection.
struct Link {
    id: usize,
    client: TcpStream,
    server: TcpStream,
    /// Client-to-server bytes are held (the broker "does not read").
    upstream_stalled: AtomicBool,
    /// Frames to insert into the server-to-client stream at the next frame boundary.
    inject: Mutex<Vec<u8>>,
}

#[derive(Default)]
struct State {
    stalled: AtomicBool,
    refusing: AtomicBool,
    closed: AtomicBool,
    accepted: AtomicUsize,
    refused: AtomicUsize,
    links: Mutex<Vec<Arc<Link>>>,
}

pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
}

impl FaultProxy {
    /// Listens on an ephemeral loopback port and forwards to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let addr = listener.local_addr().expect("proxy address");
        let upstream = upstream.to_owned();
        let state = Arc::new(State::default());
        let accept_state = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let state = accept_state.clone();
                if state.closed.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                if state.refusing.load(Ordering::Acquire) {
                    state.refused.fetch_add(1, Ordering::AcqRel);
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let id = state.accepted.fetch_add(1, Ordering::AcqRel);
                let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let link = Arc::new(Link {
                    id,
                    client: c,
                    server: s,
                    upstream_stalled: AtomicBool::new(false),
                    inject: Mutex::new(Vec::new()),
                });
                state.links.lock().push(link.clone());
                upstream_pump(&state, &link);
                downstream_pump(&state, &link);
            }
        });
        FaultProxy { addr, state }
    }

    /// The AMQP URI that reaches the broker of `uri` through this proxy.
    pub fn uri(&self, uri: &str) -> String {
        let parsed = enoki::AmqpUri::parse(uri).expect("the test URI parses");
        format!(
            "amqp://{}:{}@{}/{}",
            parsed.username, parsed.password, self.addr, parsed.vhost
        )
    }

    /// Closes every connection through the proxy; new ones are accepted again at once.
    pub fn cut(&self) {
        for link in self.state.links.lock().drain(..) {
            let _ = link.client.shutdown(Shutdown::Both);
            let _ = link.server.shutdown(Shutdown::Both);
        }
    }

    /// Stops forwarding in both directions; the sockets stay open.
    pub fn stall(&self) {
        self.state.stalled.store(true, Ordering::Release);
    }

    /// Forwards again after [`stall`](FaultProxy::stall).
    pub fn resume(&self) {
        self.state.stalled.store(false, Ordering::Release);
    }

    /// Refuses (accepts and closes) new connections until told otherwise.
    pub fn refuse(&self, refusing: bool) {
        self.state.refusing.store(refusing, Ordering::Release);
    }

    /// How many connections it has forwarded so far; connection `n` (for
    /// [`block`](FaultProxy::block)) is the `n`-th accepted, from 0.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::Acquire)
    }

    /// How many connections it has refused.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::Acquire)
    }

    /// How many connections are open through it now.
    pub fn open(&self) -> usize {
        self.state.links.lock().len()
    }

    /// Plays a broker resource alarm on connection `n`: sends the client AMQP
    /// `connection.blocked` and stops passing on what the client sends, as RabbitMQ does.
    pub fn block(&self, n: usize, reason: &str) {
        let link = self.link(n);
        let mut args = vec![reason.len() as u8];
        args.extend_from_slice(reason.as_bytes());
        link.inject.lock().extend(method_frame(10, 60, &args));
        link.upstream_stalled.store(true, Ordering::Release);
    }

    /// Ends [`block`](FaultProxy::block): `connection.unblocked`, and the client's bytes flow.
    pub fn unblock(&self, n: usize) {
        let link = self.link(n);
        link.inject.lock().extend(method_frame(10, 61, &[]));
        link.upstream_stalled.store(false, Ordering::Release);
    }

    fn link(&self, n: usize) -> Arc<Link> {
        self.state
            .links
            .lock()
            .iter()
            .find(|l| l.id == n)
            .cloned()
            .unwrap_or_else(|| panic!("no open connection {n} through the proxy"))
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::Release);
        self.cut();
        // Wake the accept loop so it sees `closed` and ends.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

/// An AMQP method frame on channel 0.
fn method_frame(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&class.to_be_bytes());
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(args);
    let mut frame = vec![1u8, 0, 0];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    frame
}

fn forget(state: &State, link: &Link) {
    let _ = link.client.shutdown(Shutdown::Both);
    let _ = link.server.shutdown(Shutdown::Both);
    state.links.lock().retain(|l| l.id != link.id);
}

fn wait_while_stalled(state: &State, link_stall: Option<&AtomicBool>) {
    while state.stalled.load(Ordering::Acquire)
        || link_stall.is_some_and(|s| s.load(Ordering::Acquire))
    {
        if state.closed.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Client to server, byte for byte.
fn upstream_pump(state: &Arc<State>, link: &Arc<Link>) {
    let (Ok(mut from), Ok(mut to)) = (link.client.try_clone(), link.server.try_clone()) else {
        return;
    };
    let (state, link) = (state.clone(), link.clone());
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            wait_while_stalled(&state, Some(&link.upstream_stalled));
            if to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        forget(&state, &link);
    });
}

/// Server to client, frame by frame, so injected frames land on a frame boundary.
fn downstream_pump(state: &Arc<State>, link: &Arc<Link>) {
    let (Ok(mut from), Ok(mut to)) = (link.server.try_clone(), link.client.try_clone()) else {
        return;
    };
    let (state, link) = (state.clone(), link.clone());
    std::thread::spawn(move || {
        // A short read timeout lets an injection through on a connection with no traffic.
        let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
        let mut pending: Vec<u8> = Vec::new();
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let read = from.read(&mut buffer);
            match read {
                Ok(0) => break,
                Ok(n) => pending.extend_from_slice(&buffer[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
            // Forward whole frames only: 7-byte header (type, channel, size), payload, 0xCE.
            let mut whole = 0;
            while pending.len() >= whole + 7 {
                let size = u32::from_be_bytes([
                    pending[whole + 3],
                    pending[whole + 4],
                    pending[whole + 5],
                    pending[whole + 6],
                ]) as usize;
                if pending.len() < whole + 7 + size + 1 {
                    break;
                }
                whole += 7 + size + 1;
            }
            wait_while_stalled(&state, None);
            let injected = std::mem::take(&mut *link.inject.lock());
            if whole > 0 && to.write_all(&pending[..whole]).is_err() {
                break;
            }
            pending.drain(..whole);
            if !injected.is_empty() && to.write_all(&injected).is_err() {
                break;
            }
        }
        forget(&state, &link);
    });
}
