"""A Python Nameko 2.14.1 service used as the peer in enoki's interop tests.

Environment:
    AMQP_URI        broker URI, e.g. amqp://guest:guest@localhost:5672/enoki_test
    SERVICE_NAME    the service name (unique per test, e.g. py_svc_1234)
    TARGET_SERVICE  optional: a service this one may call through `relay`
    EVENTS          optional: "1" adds an EventDispatcher and `dispatch(event_type, payload)`
                    (it declares the exchange <SERVICE_NAME>.events)
    EVENT_SOURCE    optional: handle events from this service with one handler per type:
                    `handle_pool` (service_pool, event type `pool_evt`), `handle_single`
                    (singleton, `single_evt`), `handle_bcast` (broadcast, reliable_delivery
                    False, `bcast_evt`); `received()` returns what they saw, in order
    DELETE_QUEUE_ON_EXIT  optional: "1" deletes the durable queue rpc-<SERVICE_NAME>
                    after a graceful stop (Nameko itself leaves it; off by default)

Prints exactly `READY` on stdout once the service consumes. Stops gracefully on
SIGTERM, SIGINT, or when stdin (if it is a pipe) reaches EOF. Logs go to stderr.
"""

# Patch before anything else imports socket/threading, as `nameko run` does.
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)
# eventlet >= 0.36 warns on import that it is deprecated (multi-line message).
warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()

import errno  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from nameko.events import (  # noqa: E402
    BROADCAST,
    SERVICE_POOL,
    SINGLETON,
    EventDispatcher,
    event_handler,
)
from nameko.extensions import DependencyProvider  # noqa: E402
from nameko.rpc import RpcProxy, rpc  # noqa: E402
from nameko.runners import ServiceRunner  # noqa: E402


def json_safe(value):
    """Make a value JSON-serialisable (AMQP header values may be any type)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    return str(value)


class WorkerCtx(DependencyProvider):
    """Injects the current WorkerContext (Nameko 2.x has no `self.worker_ctx` built in)."""

    def get_dependency(self, worker_ctx):
        return worker_ctx


def echo(self, value):
    return value


def add(self, a, b):
    return a + b


def fail(self, message):
    raise ValueError(message)


def whoami(self):
    ctx = self.worker_ctx
    return {
        "call_id_stack": json_safe(ctx.call_id_stack),
        "context_data": json_safe(ctx.data),
        "call_id": ctx.call_id,
    }


def relay(self, method, args):
    return getattr(self.target, method)(*args)


def sleep(self, ms):
    time.sleep(ms / 1000.0)
    return ms


# What the event handlers saw, in order (one service per process).
RECEIVED = []


def make_event_handler(kind):
    def handle(self, payload):
        ctx = self.worker_ctx
        RECEIVED.append(
            {
                "kind": kind,
                "payload": json_safe(payload),
                "call_id_stack": json_safe(ctx.call_id_stack),
                "context_data": json_safe(ctx.data),
            }
        )

    return handle


def received(self):
    return RECEIVED


def dispatch(self, event_type, payload):
    self.dispatch_event(event_type, payload)


EVENT_HANDLERS = [
    # (method name, kind, event type, extra event_handler options)
    ("handle_pool", "pool", "pool_evt", {"handler_type": SERVICE_POOL}),
    ("handle_single", "single", "single_evt", {"handler_type": SINGLETON}),
    (
        "handle_bcast",
        "bcast",
        "bcast_evt",
        {"handler_type": BROADCAST, "reliable_delivery": False},
    ),
]


def build_service(name, target=None, event_source=None, events=False):
    attrs = {
        "name": name,
        "worker_ctx": WorkerCtx(),
        "echo": rpc(echo),
        "add": rpc(add),
        "fail": rpc(fail),
        "whoami": rpc(whoami),
        "relay": rpc(relay),
        "sleep": rpc(sleep),
        "received": rpc(received),
    }
    if events:
        attrs["dispatch_event"] = EventDispatcher()
        attrs["dispatch"] = rpc(dispatch)
    if target:
        attrs["target"] = RpcProxy(target)
    if event_source:
        for method, kind, event_type, options in EVENT_HANDLERS:
            attrs[method] = event_handler(event_source, event_type, **options)(
                make_event_handler(kind)
            )
    return type("InteropService", (object,), attrs)


def stdin_is_pipe():
    try:
        return stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode)
    except (OSError, ValueError):
        return False


def watch_stdin(stop):
    """Call `stop` once stdin reaches EOF (the parent test went away)."""
    fd = sys.stdin.fileno()
    while True:
        try:
            eventlet.hubs.trampoline(fd, read=True)
            data = os.read(fd, 4096)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                continue
            data = b""
        if not data:
            stop()
            return


def main():
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    amqp_uri = os.environ["AMQP_URI"]
    service_name = os.environ["SERVICE_NAME"]
    target = os.environ.get("TARGET_SERVICE") or None
    event_source = os.environ.get("EVENT_SOURCE") or None

    runner = ServiceRunner(config={"AMQP_URI": amqp_uri, "max_workers": 10})
    events = os.environ.get("EVENTS") == "1"
    runner.add_service(build_service(service_name, target, event_source, events))

    stopping = []

    def stop():
        if not stopping:
            stopping.append(True)
            runner.stop()

    def on_signal(signum, frame):
        # Signal handlers run in the main loop; eventlet primitives need a
        # greenlet (same as `nameko run`).
        eventlet.spawn_n(stop)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    runner.start()
    sys.stdout.write("READY\n")
    sys.stdout.flush()

    if stdin_is_pipe():
        eventlet.spawn_n(watch_stdin, stop)

    runnlet = eventlet.spawn(runner.wait)
    while True:
        try:
            runnlet.wait()
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            raise
        except KeyboardInterrupt:
            stop()
            continue
        break

    if os.environ.get("DELETE_QUEUE_ON_EXIT") == "1":
        from kombu import Connection

        try:
            with Connection(amqp_uri) as conn:
                conn.default_channel.queue_delete("rpc-" + service_name)
        except Exception as exc:
            logging.getLogger(__name__).warning("queue delete failed: %s", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
