"""A batch client on Python Nameko 2.14.1's standalone RPC proxy, for interop tests.

Environment: AMQP_URI (e.g. amqp://guest:guest@localhost:5672/enoki_test).

RPC mode (default): reads JSON lines from stdin, each
    {"service": s, "method": m, "args": [...], "kwargs": {...},
     "timeout": optional seconds, "context_data": optional dict}
and for each writes one JSON line to stdout:
    {"ok": true, "result": <result>}
    {"ok": false, "class": <exception class name>, "exc_type": <e.exc_type or null>,
     "value": <e.value or null>, "args": <list(e.args)>, "str": str(e)}
Calls with the same (context_data, timeout) share one ClusterRpcProxy.
Exits 0 at EOF.

Event mode:
    python nameko_client.py dispatch [--declare] <source_service> <event_type> '<json payload>'
dispatches one event with nameko.standalone.events.event_dispatcher and prints
{"ok": true} (or an error line as above, exit 1). Note: Nameko 2.x's standalone
dispatcher does not declare the `<source>.events` exchange, so publishing fails with
NOT_FOUND until a handler (or a service-side dispatcher) has declared it; --declare
makes the dispatcher declare it first (topic, durable, as Nameko declares it).
"""

import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)
# eventlet >= 0.36 warns on import that it is deprecated (multi-line message).
warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


def json_safe(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    return str(value)


def emit(obj):
    try:
        line = json.dumps(obj)
    except (TypeError, ValueError):
        line = json.dumps(json_safe(obj))
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def error_record(exc):
    return {
        "ok": False,
        "class": type(exc).__name__,
        "exc_type": json_safe(getattr(exc, "exc_type", None)),
        "value": json_safe(getattr(exc, "value", None)),
        "args": json_safe(list(exc.args)),
        "str": str(exc),
    }


def config():
    return {"AMQP_URI": os.environ["AMQP_URI"]}


def rpc_mode():
    from nameko.standalone.rpc import ClusterRpcProxy

    proxies = {}  # (context_data json, timeout) -> (ClusterRpcProxy, started proxy)

    def get_proxy(context_data, timeout):
        key = (json.dumps(context_data, sort_keys=True), timeout)
        if key not in proxies:
            # WorkerContext pops call_id_stack from the dict it is given: pass a copy.
            cluster = ClusterRpcProxy(
                config(),
                context_data=dict(context_data) if context_data else None,
                timeout=timeout,
            )
            proxies[key] = (cluster, cluster.start())
        return proxies[key][1]

    try:
        for raw in sys.stdin:
            raw = raw.strip()
            if not raw:
                continue
            try:
                req = json.loads(raw)
                proxy = get_proxy(req.get("context_data"), req.get("timeout"))
                method = getattr(proxy[req["service"]], req["method"])
                result = method(*req.get("args", []), **req.get("kwargs", {}))
                emit({"ok": True, "result": result})
            except Exception as exc:  # report every failure as a JSON line
                emit(error_record(exc))
    finally:
        for cluster, _ in proxies.values():
            try:
                cluster.stop()
            except Exception:
                pass
    return 0


def dispatch_mode(argv):
    declare = bool(argv) and argv[0] == "--declare"
    if declare:
        argv = argv[1:]
    if len(argv) != 3:
        sys.stderr.write(
            "usage: nameko_client.py dispatch [--declare] <source_service> <event_type> '<json>'\n"
        )
        return 2
    from nameko.standalone.events import event_dispatcher, get_event_exchange

    source, event_type, payload = argv[0], argv[1], json.loads(argv[2])
    kwargs = {}
    if declare:
        kwargs["declare"] = [get_event_exchange(source, config())]
    try:
        event_dispatcher(config(), **kwargs)(source, event_type, payload)
    except Exception as exc:
        emit(error_record(exc))
        return 1
    emit({"ok": True})
    return 0


def main(argv):
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if argv and argv[0] == "dispatch":
        return dispatch_mode(argv[1:])
    if argv:
        sys.stderr.write("unknown arguments: %r\n" % (argv,))
        return 2
    return rpc_mode()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
