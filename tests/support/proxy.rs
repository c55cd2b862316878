//! A loopback TCP proxy between enoki and RabbitMQ, for injecting faults without touching the
//! shared broker: [`FaultProxy::cut`] drops every connection through it (as a broker restart or
//! a network failure would), [`FaultProxy::stall`] stops forwarding bytes while keeping the
//! sockets open (a hung peer), [`FaultProxy::refuse`] makes new connections fail.

use parking_lot::Mutex;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Default)]
struct State {
    stalled: AtomicBool,
    refusing: AtomicBool,
    closed: AtomicBool,
    accepted: AtomicUsize,
    next_id: AtomicUsize,
    /// Both sockets of each open connection, by connection id.
    streams: Mutex<Vec<(usize, TcpStream, TcpStream)>>,
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
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                state.accepted.fetch_add(1, Ordering::AcqRel);
                let id = state.next_id.fetch_add(1, Ordering::AcqRel);
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    state.streams.lock().push((id, c, s));
                }
                pump(&state, id, &client, &server);
                pump(&state, id, &server, &client);
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
        for (_, client, server) in self.state.streams.lock().drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
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

    /// How many connections it has forwarded so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::Acquire)
    }

    /// How many connections are open through it now.
    pub fn open(&self) -> usize {
        self.state.streams.lock().len()
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

/// Copies `from` to `to` on a thread until either side closes.
fn pump(state: &Arc<State>, id: usize, from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let state = state.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            while state.stalled.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
        state.streams.lock().retain(|(i, _, _)| *i != id);
    });
}
