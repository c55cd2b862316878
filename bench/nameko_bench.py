"""The Python Nameko 2.14.1 side of `scripts/bench --with-nameko`: the same workloads the Rust
benches drive against enoki, served by Nameko, so both are measured by one load generator in one
run.

Environment:
    AMQP_URI            broker URI
    SERVICE_NAME        the service name
    TARGET_SERVICE      optional: `relay(value)` calls `<TARGET_SERVICE>.echo(value)`, and
                        `GET /rpc/<value>` does the same over HTTP (HTTP -> RPC)
    EVENT_SOURCE        optional: a service-pool handler of `tick` events from this source
                        counts them; `count()` returns the count
    WEB_SERVER_ADDRESS  optional: the HTTP address (`POST /echo` echoes the body)

Prints `READY` once the service consumes; stops on SIGTERM or when its stdin pipe closes.
"""

import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()

import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

from nameko.events import SERVICE_POOL, event_handler  # noqa: E402
from nameko.rpc import RpcProxy, rpc  # noqa: E402
from nameko.runners import ServiceRunner  # noqa: E402
from nameko.web.handlers import http  # noqa: E402
from werkzeug.wrappers import Response  # noqa: E402

COUNT = [0]


def echo(self, value):
    return value


def relay(self, value):
    return self.target.echo(value)


def count(self):
    return COUNT[0]


def handle_tick(self, payload):
    COUNT[0] += 1


def http_echo(self, request):
    return Response(request.get_data(), content_type=request.content_type)


def http_rpc(self, request, value):
    return self.target.echo(value)


def build_service(name, target, event_source):
    attrs = {
        "name": name,
        "echo": rpc(echo),
        "count": rpc(count),
        "http_echo": http("POST", "/echo")(http_echo),
    }
    if target:
        attrs["target"] = RpcProxy(target)
        attrs["relay"] = rpc(relay)
        attrs["http_rpc"] = http("GET", "/rpc/<value>")(http_rpc)
    if event_source:
        attrs["handle_tick"] = event_handler(
            event_source, "tick", handler_type=SERVICE_POOL
        )(handle_tick)
    return type("BenchService", (object,), attrs)


def main():
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    config = {"AMQP_URI": os.environ["AMQP_URI"], "max_workers": 10}
    if os.environ.get("WEB_SERVER_ADDRESS"):
        config["WEB_SERVER_ADDRESS"] = os.environ["WEB_SERVER_ADDRESS"]
    runner = ServiceRunner(config=config)
    runner.add_service(
        build_service(
            os.environ["SERVICE_NAME"],
            os.environ.get("TARGET_SERVICE") or None,
            os.environ.get("EVENT_SOURCE") or None,
        )
    )
    stopping = []

    def stop():
        if not stopping:
            stopping.append(True)
            runner.stop()

    signal.signal(signal.SIGTERM, lambda *_: eventlet.spawn_n(stop))
    runner.start()
    sys.stdout.write("READY\n")
    sys.stdout.flush()

    def watch_stdin():
        fd = sys.stdin.fileno()
        while True:
            try:
                eventlet.hubs.trampoline(fd, read=True)
                if not os.read(fd, 4096):
                    break
            except OSError:
                break
        stop()

    eventlet.spawn_n(watch_stdin)
    runner.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
