//! SIGTERM and SIGINT on a real process: a service finishes in-flight calls, acks and
//! exits 0; a second signal exits at once with status 1 and leaves the request for redelivery.

mod support;

use enoki::ClusterRpcProxy;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{Cleanup, RawClient, unique};

const WAIT: Duration = Duration::from_secs(20);

/// When set, this test binary is the service process: see `signal_child`.
const CHILD_ENV: &str = "ENOKI_SIGNAL_CHILD";

/// The service side of these tests: the test binary runs itself with `CHILD_ENV` set and only
/// this test selected, so the process under test is a real `Runner::run` with its own signal
/// handler and nothing else in it.
#[test]
fn signal_child() {
    let Ok(name) = std::env::var(CHILD_ENV) else {
        return;
    };
    enoki::logger::init();
    let service = enoki::Service::new(name).rpc("sleep", |_ctx, (ms,): (u64,)| {
        std::thread::sleep(Duration::from_millis(ms));
        Ok(ms)
    });
    enoki::Runner::new(support::config())
        .service(service)
        .run()
        .expect("runner");
}

/// The child process and its log lines; killed and reaped if a test fails before it exits.
struct ServiceProcess(Child, crossbeam_channel::Receiver<String>);

impl ServiceProcess {
    /// Waits for a log line containing `text`.
    fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let line = self
                .1
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("the child never logged {text:?}"));
            if line.contains(text) {
                return;
            }
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a service named `name` in a child process and waits for its "started" log line.
fn spawn_echo(name: &str) -> ServiceProcess {
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "signal_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, name)
        .env("ENOKI_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("child starts");
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut child = ServiceProcess(child, rx);
    let stderr = child.0.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    child.wait_log("started with");
    child
}

/// Waits until the broker has handed every request on `name`'s queue to the service.
fn all_delivered(raw: &RawClient, name: &str) {
    let queue = format!("rpc-{name}");
    assert!(
        support::eventually(WAIT, || raw.ready_count(&queue) == 0),
        "the service never took its requests"
    );
}

fn signal(child: &ServiceProcess, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn wait_exit(child: &mut ServiceProcess) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the service did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_finishes_in_flight_calls_then_exits_zero() {
    let mut cleanup = Cleanup::new();
    let name = unique("sig_term");
    cleanup.service(&name);
    let mut child = spawn_echo(&name);
    let cluster = ClusterRpcProxy::new(&support::config()).unwrap();
    cleanup.queue(cluster.reply_queue());
    let pending: Vec<_> = (0..3)
        .map(|_| cluster.call_async(&name, "sleep", (600,)).unwrap())
        .collect();
    let raw = RawClient::new(&mut cleanup);
    all_delivered(&raw, &name);
    signal(&child, "TERM");
    for p in pending {
        assert_eq!(p.wait_timeout::<u64>(WAIT).unwrap(), 600);
    }
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    assert_eq!(raw.ready_count(&format!("rpc-{name}")), 0);
}

#[test]
fn sigint_when_idle_exits_zero() {
    let mut cleanup = Cleanup::new();
    let name = unique("sig_int");
    cleanup.service(&name);
    let mut child = spawn_echo(&name);
    signal(&child, "INT");
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

#[test]
fn a_second_signal_exits_at_once_and_the_request_is_redelivered() {
    let mut cleanup = Cleanup::new();
    let name = unique("sig_twice");
    cleanup.service(&name);
    let mut child = spawn_echo(&name);
    let cluster = ClusterRpcProxy::new(&support::config()).unwrap();
    cleanup.queue(cluster.reply_queue());
    let _pending = cluster.call_async(&name, "sleep", (5_000,)).unwrap();
    let raw = RawClient::new(&mut cleanup);
    all_delivered(&raw, &name);
    let started = Instant::now();
    signal(&child, "TERM");
    // The second signal only counts as one once the first was handled.
    child.wait_log("signal received");
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child).code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "it did not wait for the handler"
    );
    // The request was never acked: the broker holds it for the next instance.
    let queue = format!("rpc-{name}");
    assert!(support::eventually(WAIT, || raw.ready_count(&queue) == 1));
}
