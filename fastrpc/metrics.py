"""Server and client metrics as plain counts: no third-party import, nothing done per call that a
scrape can do instead.

``Server.enable_metrics()`` turns the server side on. Each registered handler is then wrapped, once
per server (once per connection under middleware), in a thin function that times it into a
histogram (a list of bucket counts and a sum); the connection's core counts the bytes it reads and
the frames and bytes it writes. Everything else is read when metrics are asked for
(``Server.metrics_snapshot``): errors and cancellations from ``ServerStats`` (always on), the calls
in flight from the connections' tasks. Without ``enable_metrics`` none of this exists and the
per-call path is exactly what it is without this module.

A snapshot is plain data (JSON-able), so that a worker of ``fastrpc serve --workers N`` can write
its own to a file (``write_snapshot``) and the supervisor can add them up (``merge``);
``fastrpc.prometheus`` turns one into Prometheus metric families. Metric names follow
go-grpc-prometheus (``fastrpc_server_handled_total{method, code}`` and so on): see FAMILIES.
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
import time
from collections import Counter
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Set, Tuple, Union

from . import framing
from .errors import CallTimeout, ConnectionClosed, ErrorCode, RemoteError, code_name
from .hooks import ClientHook
from .net import listen_failed
from .protocol import Method
from .stats import CANCELLED, MAX_APPLICATION_CODES, bounded_code

# The compiled timer goes with the compiled framing (both extensions are built, or left out, together;
# FASTRPC_NO_EXTENSIONS leaves both out).
if framing.IMPLEMENTATION == "cython":
    from ._timing import MethodMetrics, Timed
else:
    from ._timing_py import MethodMetrics, Timed  # type: ignore[assignment]

__all__ = [
    "DEFAULT_BUCKETS", "FAMILIES", "OK", "UNKNOWN_METHOD", "ClientMetrics", "MethodMetrics", "MeteredMethods",
    "MetricsBindError", "ServerMetrics", "code_label", "merge", "read_snapshot",
    "traffic", "write_snapshot",
]

#: Histogram bounds in seconds: fine at the bottom, where RPC handlers mostly are (0.1 ms .. 10 s).
DEFAULT_BUCKETS: Tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                      0.5, 1.0, 2.5, 5.0, 10.0)

#: The code label of a call answered with its result.
OK = "OK"

#: The one method label of every name the server does not have registered: a client sending random
#: names cannot make the series grow.
UNKNOWN_METHOD = "[unknown]"

#: Every family a snapshot may hold: name -> (type, help, label names). Counters keep their
#: ``_total`` here; prometheus_client writes them so.
FAMILIES: Dict[str, Tuple[str, str, Tuple[str, ...]]] = {
    "fastrpc_server_started_total": ("counter", "Calls started on the server (handled + in flight).", ("method",)),
    "fastrpc_server_handled_total": ("counter", "Calls completed on the server, by code: OK, an error code's name "
                                     f"(or number; past {MAX_APPLICATION_CODES} distinct application codes, new "
                                     "ones are OTHER), or CANCELLED (no reply: cancelled by the client, connection "
                                     "lost).",
                                     ("method", "code")),
    "fastrpc_server_handling_seconds": ("histogram", "Time handlers ran (calls whose handler ran).", ("method",)),
    "fastrpc_server_calls_in_flight": ("gauge", "Async calls running now.", ()),
    "fastrpc_server_connections": ("gauge", "Connections open now (served, not hung up on).", ()),
    "fastrpc_server_connections_opened_total": ("counter", "Connections accepted and served.", ()),
    "fastrpc_server_received_bytes_total": ("counter", "Bytes read from clients.", ()),
    "fastrpc_server_sent_bytes_total": ("counter", "Bytes written to clients.", ()),
    "fastrpc_server_received_frames_total": ("counter", "Frames read from clients.", ()),
    "fastrpc_server_sent_frames_total": ("counter", "Frames written to clients.", ()),
    "fastrpc_server_protocol_errors_total": ("counter", "Frames that were no call, and connections cut off: parse, "
                                             "invalid_request, too_large, busy, timeout.", ("kind",)),
    "fastrpc_client_handled_total": ("counter", "Calls a client completed, by code: OK, an error code's name "
                                     f"(or number; past {MAX_APPLICATION_CODES} distinct application codes, new "
                                     "ones are OTHER), TIMEOUT, UNAVAILABLE (connection closed), CANCELLED, or the "
                                     "exception's class name.",
                                     ("method", "code")),
    "fastrpc_client_handling_seconds": ("histogram", "Time client calls took, retries included.", ("method",)),
    "fastrpc_client_retries_total": ("counter", "Calls sent again after an attempt failed.", ("method",)),
    "fastrpc_client_connections": ("gauge", "Client connections open now.", ()),
}

#: The codes a server counts against no method (name None) that are not calls: kind label of each.
PROTOCOL_ERRORS: Dict[int, str] = {
    ErrorCode.PARSE_ERROR: "parse",
    ErrorCode.INVALID_REQUEST: "invalid_request",
    ErrorCode.FRAME_TOO_LARGE: "too_large",
    ErrorCode.SERVER_BUSY: "busy",
    ErrorCode.TIMEOUT: "timeout",
}

Snapshot = Dict[str, Any]


def code_label(code: Union[int, str]) -> str:
    """The code label of an outcome: a string code as it is (OK, CANCELLED), an ErrorCode's name, else the number."""
    if isinstance(code, str):
        return code
    return code_name(code)


class MetricsBindError(OSError):
    """``/metrics`` could not be served on ``host:port``: its message names that address, not the
    server's own (``fastrpc serve`` prints it)."""

    def __init__(self, host: str, port: int, exc: OSError) -> None:
        super().__init__("cannot serve metrics on " + listen_failed(host, port, exc)[len("cannot listen on "):])
        self.errno = exc.errno


def check_buckets(buckets: Iterable[float]) -> Tuple[float, ...]:
    """``buckets`` as increasing, positive, finite bounds (+Inf is always added after them)."""
    bounds = tuple(float(b) for b in buckets)
    if not bounds or any(not 0 < b < math.inf for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"buckets must be increasing positive finite numbers of seconds, got {buckets!r}")
    return bounds


class ServerMetrics:
    """What a server with metrics on counts beyond ``ServerStats``: ``server.metrics``."""

    def __init__(self, buckets: Iterable[float] = DEFAULT_BUCKETS) -> None:
        self.bounds = check_buckets(buckets)
        self.methods: Dict[str, MethodMetrics] = {}  # method name -> its handler times
        #: The traffic of connections since closed (``traffic``; open ones are read live from their cores).
        self.closed = [0, 0, 0, 0]

    def add_closed(self, core: Any) -> None:
        """Keep the traffic of a connection that closed."""
        for i, count in enumerate(traffic(core)):
            self.closed[i] += count

    def method(self, name: str) -> MethodMetrics:
        counts = self.methods.get(name)
        if counts is None:
            counts = self.methods[name] = MethodMetrics(self.bounds)
        return counts


def meter(method: Method, counts: MethodMetrics) -> Method:
    """``method`` with its handler timed into ``counts``, from its start to its return (an async
    one's: its task's). The wrapper keeps the handler's signature (``inspect.signature`` follows
    ``__wrapped__``), so bad params are still -32602. A sync handler's wrapper is compiled
    (``fastrpc._timing.Timed``): in Python its frame and clock reads cost a pipelined request a
    quarter more (bench/results/2026-11-30-metrics.md)."""
    func = method.func
    metered: Callable[..., Any]
    if method.is_async:
        clock = time.perf_counter

        @functools.wraps(func)
        async def metered(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                result = await func(*args, **kwargs)
            except BaseException:  # CancelledError too: the handler ran
                counts.failed(clock() - started)
                raise
            counts.observe(clock() - started)
            return result
    else:
        metered = Timed(func, counts)
    wrapped = Method(method.name, metered, method.out, method.raw_params, method.context)
    wrapped.is_async = method.is_async  # as the core would have run the handler itself
    wrapped.contract = method.contract  # the handler's signature, read at registration
    return wrapped


class MeteredMethods(dict):  # type: ignore[type-arg]
    """A registry view whose methods are metered: a plain dict to the core's lookup, filled on a
    miss from ``source`` (so that methods registered later are metered too). A name ``source``
    does not know raises KeyError, and an unhashable one TypeError, as the core expects."""

    __slots__ = ("_source", "_metrics")

    def __init__(self, source: Mapping[str, Method], metrics: ServerMetrics) -> None:
        super().__init__()
        self._source = source
        self._metrics = metrics

    def __missing__(self, name: str) -> Method:
        method = self._source[name]
        wrapped = self[name] = meter(method, self._metrics.method(method.name))
        return wrapped


def traffic(core: Any) -> Tuple[int, int, int, int]:
    """A connection core's (bytes received, bytes sent, frames received, frames sent): counted by
    the core as it goes (in C where compiled), summed only when metrics are read."""
    return core.bytes_received, core.bytes_sent, core.progress[0], core.frames_sent


def server_snapshot(stats: Any, metrics: ServerMetrics, registered: Iterable[str], in_flight: Mapping[str, int],
                    connections: int, io: Sequence[int]) -> Snapshot:
    """A server's families as plain data (see ``Server.metrics_snapshot``, which gathers the live part)."""
    known = set(registered)
    label = lambda name: name if name in known else UNKNOWN_METHOD  # noqa: E731
    handled: "Counter[Tuple[str, str]]" = Counter()
    protocol: "Counter[str]" = Counter()
    for (name, code), count in stats.errors.items():
        if name is None and code in PROTOCOL_ERRORS:
            protocol[PROTOCOL_ERRORS[code]] += count  # type: ignore[index]
        else:
            handled[label(name), code_label(code)] += count
    histograms = []
    for name in sorted(known):
        counts = metrics.methods.get(name)
        if counts is None:
            handled[name, OK] += 0
            histograms.append([[name], [0] * (len(metrics.bounds) + 1), 0.0])
            continue
        handled[name, OK] += counts.count - counts.raised - stats.failed_after_return.get(name, 0)
        histograms.append([[name], list(counts.buckets), counts.sum])
    started: "Counter[str]" = Counter()
    for (name, _), count in handled.items():
        started[name] += count
    for name, count in in_flight.items():
        started[label(name)] += count
    families = {
        "fastrpc_server_started_total": [[[name], count] for name, count in sorted(started.items())],
        "fastrpc_server_handled_total": [[list(key), count] for key, count in sorted(handled.items())],
        "fastrpc_server_handling_seconds": histograms,
        "fastrpc_server_calls_in_flight": [[[], sum(in_flight.values())]],
        "fastrpc_server_connections": [[[], connections]],
        "fastrpc_server_connections_opened_total": [[[], stats.connections_opened]],
        "fastrpc_server_received_bytes_total": [[[], io[0]]],
        "fastrpc_server_sent_bytes_total": [[[], io[1]]],
        "fastrpc_server_received_frames_total": [[[], io[2]]],
        "fastrpc_server_sent_frames_total": [[[], io[3]]],
        "fastrpc_server_protocol_errors_total": [[[kind], protocol[kind]] for kind in sorted(set(PROTOCOL_ERRORS.values()))],
    }
    return {"bounds": list(metrics.bounds), "families": families}


# -- workers: snapshots in files, added up by the supervisor -----------------------------------------

def write_snapshot(directory: str, snapshot: Snapshot) -> None:
    """Write ``snapshot`` as this process's file in ``directory``, atomically (a reader sees the
    previous one or this one, whole)."""
    path = os.path.join(directory, f"{os.getpid()}.json")
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(snapshot, f, separators=(",", ":"))
    os.replace(temporary, path)


def read_snapshot(path: str) -> Optional[Snapshot]:
    """The snapshot in ``path``, or None if there is none (yet, or any more)."""
    try:
        with open(path, encoding="utf-8") as f:
            return dict(json.load(f))
    except (OSError, ValueError):
        return None


def merge(counted: Sequence[Snapshot], live: Sequence[Snapshot]) -> Snapshot:
    """One snapshot adding up counters and histograms over ``counted`` and gauges over ``live``
    (a dead worker's counts still count; what it had open does not). Histograms of other bounds
    than the first snapshot's are left out (the workers of one command share theirs)."""
    bounds = next((s["bounds"] for s in counted if s.get("bounds")), [])
    sums: Dict[str, Dict[Tuple[str, ...], Any]] = {}
    for snapshot, gauges in [(s, False) for s in counted] + [(s, True) for s in live]:
        for name, rows in snapshot.get("families", {}).items():
            kind = FAMILIES[name][0] if name in FAMILIES else None
            if kind is None or (kind == "gauge") != gauges:
                continue
            table = sums.setdefault(name, {})
            for row in rows:
                key = tuple(row[0])
                if kind == "histogram":
                    if snapshot["bounds"] != bounds:
                        continue
                    buckets, total = table.get(key, ([0] * len(row[1]), 0.0))
                    table[key] = ([a + b for a, b in zip(buckets, row[1])], total + row[2])
                else:
                    table[key] = table.get(key, 0) + row[1]
    families = {name: [[list(key), *(value if isinstance(value, tuple) else (value,))] for key, value in sorted(table.items())]
                for name, table in sums.items()}
    return {"bounds": bounds, "families": families}


# -- the client side --------------------------------------------------------------------------------

class ClientMetrics(ClientHook):
    """A client hook that counts calls by method and code, times them, and counts retries and
    connections: ``connect(..., hooks=[metrics])``; ``snapshot()`` for ``fastrpc.prometheus``.
    Calls answered METHOD_NOT_FOUND are counted under the one UNKNOWN_METHOD label, and error codes
    as a server counts them (``fastrpc.stats.bounded_code``: a server may send back any code, past
    MAX_APPLICATION_CODES distinct ones of its own they are OTHER). Safe to share between threads
    and clients."""

    def __init__(self, buckets: Iterable[float] = DEFAULT_BUCKETS) -> None:
        self.bounds = check_buckets(buckets)
        self.handled: "Counter[Tuple[str, str]]" = Counter()
        self.methods: Dict[str, MethodMetrics] = {}
        self.retries: "Counter[str]" = Counter()
        self.connections = 0
        self._codes: Set[Union[int, str]] = set()  # the application codes counted as they are (bounded_code)
        self._lock = threading.Lock()

    def call_started(self, method: str, meta: Dict[str, str]) -> Any:
        return time.perf_counter()

    def call_ended(self, method: str, state: Any, error: Optional[BaseException]) -> None:
        elapsed = time.perf_counter() - state
        with self._lock:
            code = OK if error is None else client_code(error, self._codes)
            if code == "METHOD_NOT_FOUND":
                method = UNKNOWN_METHOD
            self.handled[method, code] += 1
            counts = self.methods.get(method)
            if counts is None:
                counts = self.methods[method] = MethodMetrics(self.bounds)
            counts.observe(elapsed)

    def call_retried(self, method: str) -> None:
        with self._lock:
            self.retries[method] += 1

    def connection_opened(self, address: str) -> None:
        with self._lock:
            self.connections += 1

    def connection_closed(self, address: str) -> None:
        with self._lock:
            self.connections -= 1

    def snapshot(self) -> Snapshot:
        with self._lock:
            families = {
                "fastrpc_client_handled_total": [[list(key), count] for key, count in sorted(self.handled.items())],
                "fastrpc_client_handling_seconds": [[[name], list(c.buckets), c.sum] for name, c in sorted(self.methods.items())],
                "fastrpc_client_retries_total": [[[name], count] for name, count in sorted(self.retries.items())],
                "fastrpc_client_connections": [[[], self.connections]],
            }
        return {"bounds": list(self.bounds), "families": families}


def client_code(error: BaseException, seen: Set[Union[int, str]]) -> str:
    """The code label of a client call that failed with ``error`` (``seen``: the application codes
    labelled so far, for ``bounded_code``)."""
    if isinstance(error, RemoteError):
        return code_label(bounded_code(error.code, seen))
    if isinstance(error, CallTimeout):
        return "TIMEOUT"
    if isinstance(error, ConnectionClosed):
        return "UNAVAILABLE"
    if type(error).__name__ == "CancelledError":
        return CANCELLED
    return type(error).__name__
