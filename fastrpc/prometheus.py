"""fastrpc's metrics for Prometheus (needs prometheus_client: ``pip install fastrpc[metrics]``).

``SnapshotCollector`` turns a snapshot (``fastrpc.metrics``: a server's ``metrics_snapshot``, a
``ClientMetrics.snapshot``, the supervisor's sum over its workers) into metric families at scrape
time, for any ``CollectorRegistry``::

    metrics = fastrpc.metrics.ClientMetrics()
    client = await fastrpc.connect(host, port, hooks=[metrics])
    prometheus_client.REGISTRY.register(fastrpc.prometheus.SnapshotCollector(metrics.snapshot))

``Server.enable_metrics(port=...)`` serves a server's own with ``serve_metrics``: a small HTTP
responder on the server's event loop, so that a scrape reads the connections from the thread that
changes them.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Iterator, Optional, Set, Tuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.utils import floatToGoString

from .metrics import FAMILIES, Snapshot

__all__ = ["SnapshotCollector", "MetricsEndpoint", "MetricsThread", "families", "registry_of", "serve_metrics"]

#: Seconds a scrape connection may take to send its request and take the reply.
HTTP_TIMEOUT = 10.0
#: Bytes of request head a scrape may send.
HTTP_HEAD_LIMIT = 8192
#: Scrape connections served at once; more are closed as they come: a peer opening many idle ones
#: cannot take the file descriptors the RPC server needs (max_connections does not count these).
MAX_SCRAPES = 16


def families(snapshot: Snapshot) -> Iterator[Metric]:
    """The metric families of ``snapshot`` (histogram buckets made cumulative, +Inf last)."""
    bounds = [floatToGoString(b) for b in snapshot["bounds"]] + ["+Inf"]
    for name, rows in snapshot["families"].items():
        kind, text, labels = FAMILIES[name]
        family: Metric
        if kind == "histogram":
            family = HistogramMetricFamily(name, text, labels=labels)
            for row in rows:
                running, cumulative = 0, []
                for bound, count in zip(bounds, row[1]):
                    running += count
                    cumulative.append((bound, running))
                family.add_metric(row[0], cumulative, sum_value=row[2])
        else:
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, text, labels=labels)
            for row in rows:
                family.add_metric(row[0], row[1])
        yield family


class SnapshotCollector:
    """A prometheus_client collector that asks ``source`` for a snapshot at every scrape."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        return families(self._source())


def registry_of(source: Callable[[], Snapshot]) -> CollectorRegistry:
    """A registry of its own holding only ``source``'s families."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(source))  # type: ignore[arg-type]
    return registry


class _Scrape(asyncio.Protocol):
    """One HTTP connection: reads a request head, answers it, closes."""

    def __init__(self, endpoint: "MetricsEndpoint") -> None:
        self._endpoint = endpoint
        self._head = b""
        self._timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        if len(self._endpoint.open) >= MAX_SCRAPES:
            self.transport.abort()
            return
        self._endpoint.open.add(self)
        self._timer = asyncio.get_running_loop().call_later(HTTP_TIMEOUT, transport.abort)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        self._head += data
        if b"\r\n\r\n" not in self._head:
            if len(self._head) > HTTP_HEAD_LIMIT:
                self._answer("431 Request Header Fields Too Large", b"")
            return
        request = self._head.split(b"\r\n", 1)[0].split()
        path = request[1].split(b"?", 1)[0] if len(request) == 3 else b""
        if request[:1] not in ([b"GET"], [b"HEAD"]):
            self._answer("405 Method Not Allowed", b"GET or HEAD\n")
        elif path != b"/metrics":
            self._answer("404 Not Found", b"metrics are at /metrics\n")
        else:
            body = generate_latest(self._endpoint.registry)
            self._answer("200 OK", b"" if request[0] == b"HEAD" else body, CONTENT_TYPE_PLAIN_0_0_4, len(body))

    def _answer(self, status: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
                length: Optional[int] = None) -> None:
        head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n")
        self.transport.write(head.encode() + body)
        self.transport.close()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._endpoint.open.discard(self)
        if self._timer is not None:
            self._timer.cancel()


class MetricsEndpoint:
    """``/metrics`` served on an event loop; ``close()`` stops it and cuts its open connections."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.open: Set[_Scrape] = set()
        self._server: Optional[asyncio.AbstractServer] = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.get_running_loop().create_server(lambda: _Scrape(self), host, port)

    @property
    def sockets(self) -> Tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for scrape in list(self.open):
            scrape.transport.abort()


async def serve_metrics(server: Any, host: str, port: int) -> MetricsEndpoint:
    """Serve ``server``'s metrics (a started ``fastrpc.Server`` with metrics on) at
    ``http://host:port/metrics`` from the running loop, the one that serves it."""
    endpoint = MetricsEndpoint(registry_of(server.metrics_snapshot))
    await endpoint.start(host, port)
    return endpoint


class MetricsThread:
    """``source``'s families at ``http://host:port/metrics``, served by a MetricsEndpoint (capped,
    timed out, as a server's own) on an event loop of its own in a thread: for a source that is safe
    to read from any thread (the supervisor's sum over its workers). Binds before returning."""

    def __init__(self, source: Callable[[], Snapshot], host: str, port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self.endpoint = MetricsEndpoint(registry_of(source))
        try:
            self._loop.run_until_complete(self.endpoint.start(host, port))
        except BaseException:
            self._loop.close()
            raise
        self._thread = threading.Thread(target=self._loop.run_forever, name="fastrpc-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, cut the open connections, and end the thread."""
        self._loop.call_soon_threadsafe(self._stop)
        self._thread.join()
        self._loop.close()

    def _stop(self) -> None:
        self.endpoint.close()
        self._loop.stop()
