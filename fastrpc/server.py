"""The asyncio server: a method registry and a BufferedProtocol per connection.

All protocol work happens in ``protocol.ServerConnection``; this module only
moves bytes, runs async handlers as tasks and decides when to write.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import math
import random
import signal
import time
from ssl import SSLContext
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Set, Tuple, TypeVar, Union, overload

from .errors import DeadlineExceeded, ErrorCode, ShuttingDown
from . import framing
from .framing import pack_frames, ping
from .limits import DEFAULT_MAX_FRAME_SIZE, check_max_frame_size
from .auth import TokenGate
from .contracts import Contract
from .metrics import (MeteredMethods, meter, MetricsBindError, ServerMetrics, server_snapshot, traffic,
                      write_snapshot)
from .middleware import HookedMethods, Middleware
from .net import address_text, set_nodelay
from .protocol import Call, Method, ServerConnection, Stream, encode_error, enter_metadata
from .stats import CANCELLED, ServerStats

__all__ = ["Server", "run", "new_event_loop", "remaining"]

log = logging.getLogger("fastrpc.server")

#: How ``fastrpc serve`` and ``fastrpc.run`` format log lines when the application has not set logging up.
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"

F = TypeVar("F", bound=Callable[..., Any])

#: Seconds a connection of a stopping server waits, once it owes no reply, for
#: requests still on their way before it closes (they get the shutting-down error).
LINGER = 0.1

#: Seconds after the server began to stop past which a connection that owes no
#: reply closes without waiting for LINGER of quiet (its client keeps calling).
DRAIN_LIMIT = 1.0

#: Seconds after the grace ended that calls cancelled then get to be answered;
#: past it their connections end without those replies (a handler that ignores
#: cancellation cannot hold the server up).
FLUSH_LIMIT = 1.0

#: Seconds a connection hung up on after an error frame (frame too large, busy,
#: too slow, failed authentication) stays half-closed before its socket closes:
#: closing at once, with requests unread in it, sends a reset, and a reset can
#: make the peer's kernel drop the error frame before the peer has read it.
HANG_UP_LINGER = 1.0

#: A connection's own maximum age is drawn uniformly between (1 - MAX_AGE_JITTER) and 1
#: times ``max_connection_age``, so that clients connected together do not all reconnect together.
MAX_AGE_JITTER = 0.1

#: Seconds between the snapshots of its metrics a worker of ``fastrpc serve --workers N`` writes
#: for the supervisor (also written once more when it has stopped): what a worker killed with
#: SIGKILL loses of its counts is at most this long's.
SNAPSHOT_INTERVAL = 0.5

#: Handler failures logged per method and second; more are counted, and the count logged.
FAILURES_LOGGED_PER_SECOND = 5

#: Items, and bytes, a stream sends in a row before it lets the loop run (its writes go out, other
#: calls run), however much credit it holds: what one stream adds to a connection's output between writes.
STREAM_BURST = 64
STREAM_BURST_BYTES = 256 * 1024

# The states of a connection (see _Connection).
OPEN, DRAINING, ENDING, CLOSED = "open", "draining", "ending", "closed"


#: Names starting with this are fastrpc's built-in methods; applications cannot register them.
BUILTIN_PREFIX = "rpc."


class Server:
    """A registry of methods and the TCP server that serves them.

    >>> server = Server()
    >>> @server.method
    ... def add(a, b):
    ...     return a + b

    Every server answers ``ping`` (out ``pong``, result: its params) unless
    a method of that name is registered over it, and ``rpc.health``:
    ``"SERVING"``, or ``"NOT_SERVING"`` once it is stopping or the application
    set ``serving`` to False (it keeps answering while the server drains),
    and, unless ``discovery=False``, ``rpc.discover``: the OpenRPC document
    of its methods, their params and results as JSON Schema from their type
    hints (``fastrpc describe`` and ``fastrpc stubgen`` read it).

    With ``max_connection_age`` (seconds), each connection is retired once
    it is that old (less up to MAX_AGE_JITTER of it, drawn per connection):
    it drains as on a stop, its running calls get ``max_connection_age_grace``
    (default: ``shutdown_grace``), and its client reconnects, perhaps to a
    new server of a rolling deploy.
    """

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_in_flight: int = 1024,
        max_connections: Optional[int] = None,
        idle_timeout: Optional[float] = None,
        frame_timeout: Optional[float] = 60.0,
        shutdown_grace: float = 30.0,
        max_connection_age: Optional[float] = None,
        max_connection_age_grace: Optional[float] = None,
        tokens: Optional[Iterable[str]] = None,
        debug: bool = False,
        discovery: bool = True,
        max_streams: int = 1024,
    ) -> None:
        self.max_frame_size = check_max_frame_size(max_frame_size)
        for name, limit in (("max_in_flight", max_in_flight), ("max_streams", max_streams)):
            if limit < 1:
                raise ValueError(f"{name} must be at least 1, got {limit!r}")
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1 (or None: no limit), got {max_connections!r}")
        for name, value in (("idle_timeout", idle_timeout), ("frame_timeout", frame_timeout)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds (or None: none), got {value!r}")
        self.tokens: FrozenSet[bytes] = frozenset()
        if tokens is not None:
            self.set_tokens(tokens)
        self.max_in_flight = max_in_flight
        self.max_streams = max_streams
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        if not shutdown_grace >= 0:
            raise ValueError(f"shutdown_grace must be zero or more seconds, got {shutdown_grace!r}")
        self.shutdown_grace = shutdown_grace
        for name, value in (("max_connection_age", max_connection_age), ("max_connection_age_grace", max_connection_age_grace)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf):
                raise ValueError(f"{name} must be a positive, finite number of seconds (or None: off), got {value!r}")
        self.max_connection_age = max_connection_age
        self.max_connection_age_grace = max_connection_age_grace  # None: shutdown_grace
        self.aged_out = 0  # connections retired for reaching max_connection_age
        self.stats = ServerStats()  # errors, cancellations, connections: read by fastrpc.metrics
        self.metrics: Optional[ServerMetrics] = None  # set by enable_metrics
        # With metrics on, the registry connections look methods up in: each method metered, in a plain dict
        # (a dict subclass filled on a miss cost the lookup 40 ns a call).
        self._metered: Optional[Dict[str, Method]] = None
        self._metrics_at: Optional[Tuple[Optional[str], int]] = None  # (host, port) to serve /metrics on
        self._metrics_http: Any = None  # a fastrpc.prometheus.MetricsEndpoint once serving
        self._snapshot_dir: Optional[str] = None
        self._snapshot_timer: Optional[asyncio.TimerHandle] = None
        self.debug = debug
        self.serving = True  # what rpc.health says while the server is not stopping
        # The built-ins, which a stopping server keeps answering (no application method can share their names).
        self._builtins: Dict[str, Method] = {
            BUILTIN_PREFIX + "health": Method(BUILTIN_PREFIX + "health", self._health, raw_params=True),
        }
        if discovery:
            self._builtins[BUILTIN_PREFIX + "discover"] = Method(BUILTIN_PREFIX + "discover", self._discover, raw_params=True)
        self.methods: Dict[str, Method] = {"ping": Method("ping", ping, out="pong", raw_params=True), **self._builtins}
        self.middleware: List[Middleware] = []
        self._server: Optional[asyncio.AbstractServer] = None
        self._connections: Set[_Connection] = set()  # OPEN or DRAINING: served, and counted against max_connections
        self._ending: Set[_Connection] = set()  # ENDING: hung up, waiting for their sockets to close
        # CLOSED with calls still running (a handler cleaning up after its cancellation): they are
        # in flight until their tasks end, so that started never goes down.
        self._lingering: Set[_Connection] = set()
        self._closing = False
        self._all_closed: Optional[asyncio.Event] = None  # set once closing and no connection is left
        self._watchdog: Optional[asyncio.TimerHandle] = None
        self._stop_timer: Optional[asyncio.TimerHandle] = None  # the end of the grace, then of the flush after it
        self._failures = _FailureLog()

    @overload
    def method(self, func: F) -> F: ...

    @overload
    def method(self, name: Optional[str] = None, *, out: Optional[str] = None, raw_params: bool = False,
               metadata: bool = False) -> Callable[[F], F]: ...

    def method(
        self,
        func: Union[Callable[..., Any], str, None] = None,
        *,
        name: Optional[str] = None,
        out: Optional[str] = None,
        raw_params: bool = False,
        metadata: bool = False,
    ) -> Any:
        """Register a handler; use bare (``@server.method``) or with options.

        ``name`` defaults to the function's name; ``out`` is the name the
        response carries (default: ``name``); with ``raw_params`` the handler
        gets the request's params as one argument, unbound (None if absent);
        with ``metadata`` it reads its call's metadata with ``fastrpc.metadata()``
        (other handlers never look at it, and a call costs them nothing more).
        """
        if isinstance(func, str):
            if name is not None:
                raise TypeError("method name given twice")
            name, func = func, None

        def register(handler: F) -> F:
            if not callable(handler):
                raise TypeError(f"a method handler must be callable, got {handler!r}")
            method_name = handler.__name__ if name is None else name
            if not isinstance(method_name, str) or not method_name:
                raise ValueError(f"a method name must be a non-empty string, got {method_name!r}")
            if method_name.startswith(BUILTIN_PREFIX):
                raise ValueError(f"method names starting with {BUILTIN_PREFIX!r} are reserved for fastrpc's built-ins, "
                                 f"got {method_name!r}")
            # The signature is read once, here: a typed handler is called through its generated checker.
            contract = Contract(handler, method_name, check=not raw_params)
            func = _streamed(contract.func) if contract.stream else contract.func
            self.methods[method_name] = Method(method_name, func, out, raw_params, metadata, contract)
            if self._metered is not None:
                self._metered[method_name] = meter(self.methods[method_name], self.metrics.method(method_name))  # type: ignore[union-attr]
            return handler

        return register if func is None else register(func)

    def _discover(self, params: Any) -> Dict[str, Any]:
        """``rpc.discover``: the OpenRPC document of this server's methods (``fastrpc.discovery``)."""
        from .discovery import document

        return document(self.methods)

    def _health(self, params: Any) -> str:
        """``rpc.health``: whether this server takes calls, for balancers and orchestrators."""
        return "SERVING" if self.serving and not self._closing else "NOT_SERVING"

    def set_tokens(self, tokens: Iterable[str]) -> None:
        """Require connections opened from now on to call ``auth`` with one of ``tokens`` first
        (an empty collection turns authentication off)."""
        tokens = list(tokens)
        if not all(isinstance(token, str) and token for token in tokens):
            raise ValueError("tokens must be non-empty strings")
        self.tokens = frozenset(token.encode() for token in tokens)

    def use(self, middleware: Middleware) -> None:
        """Run ``middleware`` around every call of connections opened from now on (in the order added)."""
        if not isinstance(middleware, Middleware):
            raise TypeError(f"middleware must be a fastrpc.Middleware, got {type(middleware).__name__}")
        self.middleware.append(middleware)

    # -- metrics -----------------------------------------------------------------

    def enable_metrics(self, buckets: Optional[Iterable[float]] = None, *, port: Optional[int] = None,
                       host: Optional[str] = None, snapshot_dir: Optional[str] = None) -> None:
        """Count calls, their handler times and the bytes and frames moved (``self.metrics``), for
        ``metrics_snapshot`` and ``fastrpc.prometheus``; call before ``start``.

        ``buckets``: the handling-time histogram's bounds in seconds (default
        ``fastrpc.metrics.DEFAULT_BUCKETS``; a second call keeps the counts and bounds it has).
        With ``port`` (0: any free one), ``start`` also serves ``GET /metrics`` in the Prometheus
        text format from the event loop, on ``host`` (default: the server's own host), until the
        server has closed; it needs prometheus_client (``pip install fastrpc[metrics]``). Under
        ``fastrpc serve --workers N`` the workers do not serve it: each writes snapshots only, and
        the supervisor serves their sum on that port.
        With ``snapshot_dir``, the server writes its snapshot there every SNAPSHOT_INTERVAL and
        once it has closed (``fastrpc serve --workers N``: the supervisor adds them up).
        Without metrics on, a call costs exactly what it does without this feature."""
        if self._server is not None:
            raise RuntimeError("enable_metrics must be called before the server starts")
        if self.metrics is None or buckets is not None:
            self.metrics = ServerMetrics() if buckets is None else ServerMetrics(buckets)
            self._metered = {}
        if port is not None:
            self._metrics_at = (host, port)
        if snapshot_dir is not None:
            self._snapshot_dir = snapshot_dir

    @property
    def metrics_address(self) -> Optional[Tuple[Any, ...]]:
        """The address ``/metrics`` is served on, once started (None if it is not)."""
        if self._metrics_http is None or not self._metrics_http.sockets:
            return None
        return tuple(self._metrics_http.sockets[0].getsockname())

    @property
    def _registry(self) -> Mapping[str, Method]:
        """What connections look methods up in: ``methods``, or with metrics on their metered copies."""
        return self.methods if self._metered is None else self._metered

    def metrics_snapshot(self) -> Dict[str, Any]:
        """The server's metrics as plain data (``fastrpc.metrics.FAMILIES``: {"bounds": [...],
        "families": {name: [[label values], value] or [[label values], bucket counts, sum]}}).
        Read on the event loop's thread: it walks the connections the loop changes."""
        if self.metrics is None:
            raise RuntimeError("metrics are off: call enable_metrics() before start")
        in_flight: Dict[str, int] = {}
        io = list(self.metrics.closed)
        for connection in (*self._connections, *self._ending):
            for i, count in enumerate(traffic(connection._core)):
                io[i] += count
            for call in connection._tasks:
                in_flight[call.method.name] = in_flight.get(call.method.name, 0) + 1
        for connection in self._lingering:  # their traffic is in metrics.closed already
            for call in connection._tasks:
                in_flight[call.method.name] = in_flight.get(call.method.name, 0) + 1
        return server_snapshot(self.stats, self.metrics, self.methods, in_flight, len(self._connections), io)

    def _write_snapshot(self, again: bool = True) -> None:
        """Write the snapshot for the supervisor; ``again``: and the next one SNAPSHOT_INTERVAL later,
        whatever this one did (a failure must not end the snapshots, and with them the counts)."""
        assert self._snapshot_dir is not None
        try:
            write_snapshot(self._snapshot_dir, self.metrics_snapshot())
        except OSError as exc:
            log.warning("cannot write the metrics snapshot to %s: %s", self._snapshot_dir, exc)
        except Exception:
            log.exception("cannot take the metrics snapshot")
        finally:
            if again:
                self._snapshot_timer = asyncio.get_running_loop().call_later(SNAPSHOT_INTERVAL, self._write_snapshot)

    # -- lifecycle ---------------------------------------------------------------

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        ssl: Optional[SSLContext] = None,
        reuse_port: bool = False,
        backlog: int = 1024,
    ) -> None:
        """Bind and start accepting connections; returns once listening.

        ``ssl`` (an ``ssl.SSLContext``, e.g. from ``fastrpc.tls.server_context``)
        serves TLS only; a context that requires client certificates makes it
        mutual TLS.
        """
        if self._server is not None:
            raise RuntimeError("server is already started")
        loop = asyncio.get_running_loop()
        self._all_closed = asyncio.Event()
        if self._metered is not None:  # methods put in self.methods by hand are metered too (server.method meters at once)
            for name, method in self.methods.items():
                if name not in self._metered:
                    self._metered[name] = meter(method, self.metrics.method(name))  # type: ignore[union-attr]
        # A TLS handshake is held to the frame timeout too: a client that never
        # finishes one holds a socket that does not count as a connection yet.
        handshake = {} if ssl is None or self.frame_timeout is None else {"ssl_handshake_timeout": self.frame_timeout}
        if self._metrics_at is not None:  # first: once the server answers, so does /metrics
            from .prometheus import serve_metrics

            metrics_host, metrics_port = self._metrics_at
            metrics_host = host if metrics_host is None else metrics_host
            try:
                self._metrics_http = await serve_metrics(self, metrics_host, metrics_port)
            except OSError as exc:
                raise MetricsBindError(metrics_host, metrics_port, exc) from exc
            address = self.metrics_address or ("?", "?")
            log.info("fastrpc serving metrics on http://%s:%s/metrics", address[0], address[1])
        try:
            self._server = await loop.create_server(
                lambda: _Connection(self), host, port, ssl=ssl, reuse_port=reuse_port or None, backlog=backlog, **handshake
            )
        except BaseException:
            if self._metrics_http is not None:
                self._metrics_http.close()
                self._metrics_http = None
            raise
        engine = ("TLS, " if ssl is not None else "") + f"framing {framing.IMPLEMENTATION}, loop {_loop_name(loop)}"
        for address in self.addresses:
            log.info("fastrpc listening on %s:%s (%s)", address[0], address[1], engine)
        _warn_if_fallback()
        self._watch()
        if self._snapshot_dir is not None:
            self._write_snapshot()

    def _watch(self) -> None:
        """Every quarter of the shortest timeout, let each connection check its clocks."""
        timeouts = [t for t in (self.idle_timeout, self.frame_timeout) if t is not None]
        if not timeouts or (self._closing and not self._connections):
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in list(self._connections):
            connection.watch(now)
        self._watchdog = loop.call_later(min(timeouts) / 4, self._watch)

    async def serve(self, host: str = "127.0.0.1", port: int = 8080, **kwargs: Any) -> None:
        """Start, then serve until ``close()`` is called."""
        await self.start(host, port, **kwargs)
        await self.wait_closed()

    @property
    def addresses(self) -> List[Tuple[Any, ...]]:
        """The addresses listened on (empty before ``start``)."""
        if self._server is None:
            return []
        return [sock.getsockname() for sock in self._server.sockets]

    @property
    def port(self) -> int:
        """The port listened on; useful after ``start(port=0)``."""
        addresses = self.addresses
        if not addresses:
            raise RuntimeError("server is not listening")
        return int(addresses[0][1])

    @property
    def closing(self) -> bool:
        """True once ``close()`` was called."""
        return self._closing

    def close(self) -> None:
        """Shut down gracefully: stop accepting connections, answer new
        requests with the shutting-down error, let running calls finish for up
        to ``shutdown_grace`` seconds (then cancel them: they are answered with
        the same error), send every reply, and close each connection once it
        owes nothing. ``wait_closed()`` returns when all of that is done:
        within ``shutdown_grace`` and about two seconds more, whatever the
        clients do."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        log.info("fastrpc shutting down: %d connections, grace %g s", len(self._connections), self.shutdown_grace)
        for connection in list(self._connections):
            connection.shut_down()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # closed from outside a loop: nothing runs to wait for
            return
        self._stop_timer = loop.call_later(self.shutdown_grace, self._end_grace)
        self._check_all_closed()

    def _end_grace(self) -> None:
        for connection in list(self._connections):
            connection.cancel_calls()
        self._stop_timer = asyncio.get_running_loop().call_later(FLUSH_LIMIT, self._end_all)

    def _end_all(self) -> None:
        for connection in list(self._connections):
            connection.end()

    # -- the connections' bookkeeping (called by _Connection) -----------------------

    def _connection_age(self) -> Optional[float]:
        """Seconds a new connection may live (None: no limit), jittered."""
        age = self.max_connection_age
        if age is None:
            return None
        return age * random.uniform(1.0 - MAX_AGE_JITTER, 1.0)

    def _admit(self, connection: "_Connection") -> bool:
        """Count a new connection in, unless at ``max_connections``."""
        if self.max_connections is not None and len(self._connections) >= self.max_connections:
            return False
        self._connections.add(connection)
        return True

    def _retire(self, connection: "_Connection") -> None:
        """The connection hung up: it no longer counts against ``max_connections``."""
        self._connections.discard(connection)
        self._ending.add(connection)

    def _forget(self, connection: "_Connection") -> None:
        """The connection's socket is closed (calls still running: it lingers until they end)."""
        self._connections.discard(connection)
        self._ending.discard(connection)
        if connection._tasks:
            self._lingering.add(connection)
        if self._closing:
            self._check_all_closed()

    def _settled(self, connection: "_Connection") -> None:
        """The last call of a closed connection ended: nothing of it is in flight any more."""
        self._lingering.discard(connection)
        if not self._lingering and self._snapshot_dir is not None and self._all_closed is not None \
                and self._all_closed.is_set():
            self._write_snapshot(again=False)  # the final one again, now that those calls are counted

    def _check_all_closed(self) -> None:
        """Once closing and every connection is closed, ``wait_closed`` returns: calls that still
        linger (a handler that ignores cancellation) do not hold it up; the final snapshot counts
        them in flight, and ``_settled`` writes it again once they have ended."""
        if not self._connections and not self._ending:
            if self._all_closed is not None and not self._all_closed.is_set():
                self._all_closed.set()
                if self._metrics_http is not None:
                    self._metrics_http.close()
                if self._snapshot_dir is not None:
                    self._write_snapshot(again=False)  # the last counts, for the supervisor
            for timer in (self._stop_timer, self._watchdog, self._snapshot_timer):
                if timer is not None:
                    timer.cancel()

    async def wait_closed(self) -> None:
        """Wait until ``close()`` was called and has finished: every reply sent, every connection closed."""
        if self._server is None or self._all_closed is None:
            return
        if self._closing:
            self._check_all_closed()  # close() may have been called from outside the loop
        await self._all_closed.wait()
        await self._server.wait_closed()


class _Connection(asyncio.BufferedProtocol):
    """Moves bytes between one socket and its ``ServerConnection``.

    A connection is in one of four states:

    - ``OPEN``: requests are read and answered.
    - ``DRAINING`` (``shut_down``, or ``_reach_age`` for this connection
      alone): the server is stopping, or the connection reached its maximum
      age; a peer that asked for notices is sent the drain notice, new calls
      are refused with -32002, running ones go on until the grace ends
      (``cancel_calls``). It ends once it owes no reply and either nothing
      arrived for ``LINGER`` or it has drained for ``DRAIN_LIMIT``.
    - ``ENDING`` (``end``): what was written is followed by a FIN, nothing
      more is read, and the socket is closed ``HANG_UP_LINGER`` later
      (at once when the peer has half-closed already); either way it is
      aborted if the peer has not taken its replies ``HANG_UP_LINGER`` on.
    - ``CLOSED`` (``connection_lost``): the socket is gone; calls still
      running are cancelled, as nobody is left to answer.

    Every way a connection ends: the peer closes or resets it (``CLOSED``);
    the peer half-closes, and the connection ends once every reply it is
    owed is written (``_flush``); an error frame for a frame too large, a busy
    server, a frame too slow or a failed authentication (``_hang_up``, then
    ``ENDING``); ``idle_timeout`` with nothing owed (closed at once); the
    server stopping or the connection reaching its maximum age
    (``DRAINING``, then ``ENDING``).
    """

    def __init__(self, server: Server) -> None:
        self._server = server
        options = dict(cancel=self._cancel_by_id, report=self._handler_failed, stats=server.stats,
                       max_frame_size=server.max_frame_size, debug=server.debug, max_streams=server.max_streams)
        self._core = core = ServerConnection(server._registry, self._spawn, **options)  # type: ignore[arg-type]
        # The transport looks get_buffer and buffer_updated up once, before connection_made:
        # binding the core's own methods here spares a Python call per read (two at one
        # request per read, where they are a tenth of the server's instructions).
        self.get_buffer = core.get_buffer  # type: ignore[method-assign]
        self.buffer_updated = core.read_and_reply  # type: ignore[method-assign]
        core.after_read = self._after_read
        self._state = OPEN
        self._tasks: Dict[Call, asyncio.Task[None]] = {}
        # Why a call's task was cancelled, when it was not the connection going away.
        self._stopped: Dict[Call, BaseException] = {}
        self._flush_scheduled = False
        self._eof = False  # the peer will send nothing more
        self._timer: Optional[asyncio.TimerHandle] = None  # DRAINING: the quiet wait; ENDING: the close
        self._drain_until = 0.0
        # max_connection_age: the connection's age, then its grace, then the flush after it.
        self._age_timer: Optional[asyncio.TimerHandle] = None
        self._max_in_flight = server.max_in_flight
        self._held = False  # the core holds frames read past max_in_flight
        self._writing_paused = False  # the transport's write buffer is above its high-water mark
        self._reading_paused = False
        # What watch() saw last: progress (frames, bytes buffered) and since when.
        self._frame_mark: Optional[int] = None
        self._frame_since = 0.0
        self._idle_mark: Optional[Tuple[int, int]] = None
        self._idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport: asyncio.Transport = transport  # type: ignore[assignment]
        self._core.write = self._transport.write
        self._loop = asyncio.get_running_loop()
        set_nodelay(transport.get_extra_info("socket"))
        self._peer = transport.get_extra_info("peername")
        server = self._server
        if not server._admit(self):
            log.warning("refused a connection from %s: at the limit of %d connections", address_text(self._peer), server.max_connections)
            self._hang_up(ErrorCode.SERVER_BUSY, f"server busy: it has its maximum of {server.max_connections} connections")
            return
        server.stats.connections_opened += 1
        core = self._core
        registry = methods = server._registry
        if server.middleware:
            methods = HookedMethods(server.methods, server.middleware, self._peer, transport.get_extra_info("sockname"))
            if server.metrics is not None:  # timed around the middleware: a call it fails is not also counted OK
                methods = MeteredMethods(methods, server.metrics)
        if server.tokens:
            core.use_methods(TokenGate(server.tokens, methods, core.use_methods, self._auth_failed))
        elif methods is not registry:
            core.use_methods(methods)
        log.debug("connection from %s opened", address_text(self._peer))
        if server.closing:
            self.shut_down()
            return
        age = server._connection_age()
        if age is not None:
            self._age_timer = self._loop.call_later(age, self._reach_age, age)

    def get_buffer(self, sizehint: int) -> memoryview:  # replaced per instance in __init__
        return self._core.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:  # replaced per instance in __init__
        self._core.read_and_reply(nbytes)

    def _after_read(self) -> None:
        """After a read that left the core closing, or while draining (the core's ``watch_reads``)."""
        if self._core.closing:
            self.end()
        elif self._state is DRAINING:
            self._close_when_quiet()

    def eof_received(self) -> bool:
        # The peer shut down its write side: it is still owed the replies of
        # handlers in flight, so keep the connection open until they are sent.
        self._eof = True
        for stream in self._core.streams.values():
            stream.wake()  # one waiting for credit ends: none can come now
        self._flush()
        return bool(self._tasks)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._state = CLOSED
        self._cancel_timers()
        server = self._server
        for call, task in list(self._tasks.items()):
            task.cancel()
            if task.done() or inspect.getcoroutinestate(task.get_coro()) == inspect.CORO_CREATED:
                # Cancelled before its first step (now, or by end()): _run never runs, to count and forget it.
                server.stats.count_error(call.method.name, CANCELLED)
                del self._tasks[call]
                call.coro.close()  # never awaited, never to be
        if server.metrics is not None:
            server.metrics.add_closed(self._core)
        server._forget(self)
        log.debug("connection from %s closed%s", address_text(self._peer), f": {exc}" if exc else "")

    def _handler_failed(self, method: Method, exc: BaseException) -> None:
        self._server._failures.report(method.name, self._peer, exc)

    def _auth_failed(self) -> None:
        log.warning("connection from %s failed to authenticate; closing", address_text(self._peer))
        self._loop.call_soon(self.end)  # after the refusal is written

    def _hang_up(self, code: int, message: str) -> None:
        """Send one error frame, then end the connection."""
        server = self._server
        server.stats.count_error(None, code)
        data = pack_frames([encode_error(code, message)])
        if server.metrics is not None:  # written past the core: counted as a closed connection's
            server.metrics.closed[1] += len(data)
            server.metrics.closed[3] += 1
        self._transport.write(data)
        self.end()

    def _done(self) -> bool:
        """ENDING, or its transport closing (CLOSED comes after that): nothing more is read or written."""
        return self._state is ENDING or self._transport.is_closing()

    def end(self) -> None:
        """Go to ENDING: close after the data written so far (a FIN follows it at once), read nothing more."""
        if self._done():
            return
        self._state = ENDING
        self._server._retire(self)
        for task in self._tasks.values():
            task.cancel()  # their replies could not be sent
        transport = self._transport
        if self._eof or not transport.can_write_eof():  # the peer sends no more, or TLS: close after the data
            transport.close()
        else:
            transport.write_eof()
            transport.pause_reading()
        self._cancel_timers()
        self._timer = self._loop.call_later(HANG_UP_LINGER, self._close_ended)

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._age_timer):
            if timer is not None:
                timer.cancel()

    def _close_ended(self) -> None:
        # Closing at once would send a reset over requests still unread; waiting
        # longer for a peer that does not read its replies would hold the socket forever.
        transport = self._transport
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    # -- timeouts ----------------------------------------------------------------------

    def watch(self, now: float) -> None:
        """Called by the server's watchdog: cut off a frame that arrives too slowly, close an idle connection."""
        if self._done():
            return
        server = self._server
        frames, buffered = progress = self._core.progress
        if server.frame_timeout is not None and buffered and not self._reading_paused:
            # Part of a frame is here and no frame completed since the last look.
            if self._frame_mark != frames:
                self._frame_mark, self._frame_since = frames, now
            elif now - self._frame_since >= server.frame_timeout:
                log.info("connection from %s: a frame took over %g s to arrive; closing", address_text(self._peer), server.frame_timeout)
                self._hang_up(ErrorCode.TIMEOUT, f"timeout: a frame took more than {server.frame_timeout:g} s to arrive")
                return
        else:
            self._frame_mark = None
        if server.idle_timeout is not None:
            if self._tasks or progress != self._idle_mark or self._transport.get_write_buffer_size():
                self._idle_mark, self._idle_since = progress, now
            elif now - self._idle_since >= server.idle_timeout:
                log.debug("connection from %s idle for %g s; closing", address_text(self._peer), server.idle_timeout)
                self._transport.close()

    # -- backpressure ----------------------------------------------------------------

    def pause_writing(self) -> None:
        # The peer does not read its replies: stop reading its requests, so
        # that replies do not pile up in memory.
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        for stream in self._core.streams.values():
            stream.wake()
        self._update_reading()

    def _in_flight(self) -> int:
        """Calls running, streams not counted: a stream waits on its client's credit, which the
        connection must go on reading (streams have their own limit, ``max_streams``)."""
        return len(self._tasks) - len(self._core.streams)

    def _update_reading(self) -> None:
        """Read only while the peer takes its replies and calls in flight are under the limit.

        Frames read past the in-flight limit wait in the core: they are taken
        up first, whichever of the two conditions was the last to clear."""
        if self._done():
            return
        if self._held and not self._writing_paused and self._in_flight() < self._max_in_flight:
            self._held = False
            self.buffer_updated(0)  # may reach the limit again, and hold the rest
            if self._done():
                return
        pause = self._writing_paused or self._in_flight() >= self._max_in_flight
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    # -- graceful shutdown ---------------------------------------------------------

    def shut_down(self) -> None:
        """The server is stopping: go to DRAINING (the server's timers end the grace)."""
        if self._age_timer is not None and self._state is OPEN:  # the stop takes over from the age still counting
            self._age_timer.cancel()
            self._age_timer = None
        self._drain("shutdown")

    def _drain(self, reason: str) -> None:
        """Go to DRAINING: send the drain notice (if asked for), refuse new calls, end once nothing is owed."""
        if self._state is not OPEN:
            return
        self._state = DRAINING
        self._core.watch_reads = True
        self._drain_until = self._loop.time() + DRAIN_LIMIT
        core = self._core
        core.refuse_calls(self._server._builtins, self._server.methods)
        for call, task in self._tasks.items():  # a stream may never end by itself: it ends now
            if call.stream is not None:
                self._stopped[call] = ShuttingDown("the server is shutting down: the stream was ended", {"started": True})
                self._loop.call_soon(task.cancel)  # not at once: one read with this drain may not have started yet
        if core.drain_notice(reason) and not self._done():
            self._transport.write(core.data_to_send())  # at once: ahead of the replies still owed
        self._close_when_quiet()

    def _reach_age(self, age: float) -> None:
        """The connection is ``age`` seconds old: drain it alone, as on a stop, with its own grace."""
        self._age_timer = None
        if self._state is not OPEN or self._done():
            return
        server = self._server
        server.aged_out += 1
        grace = server.max_connection_age_grace
        if grace is None:
            grace = server.shutdown_grace
        log.debug("connection from %s reached its maximum age (%.3g s); draining it, %d calls running, grace %g s%s",
                  address_text(self._peer), age, len(self._tasks), grace, "" if self._core.notices else " (no notices asked for)")
        self._drain("max_age")
        if self._state is DRAINING:
            self._age_timer = self._loop.call_later(grace, self._end_age_grace)

    def _end_age_grace(self) -> None:
        """The grace of a connection past its age is over: cancel its calls, and end it FLUSH_LIMIT later."""
        self.cancel_calls()
        self._age_timer = self._loop.call_later(FLUSH_LIMIT, self.end)

    def cancel_calls(self) -> None:
        """The grace period is over: cancel the running calls (each is answered with the shutting-down error)."""
        for task in self._tasks.values():
            task.cancel()

    def _close_when_quiet(self) -> None:
        # Requests may still be on their way: ending the moment the last reply
        # is written would leave them unanswered. Wait LINGER after the last
        # read, but no longer than DRAIN_LIMIT: a client that keeps calling
        # must not keep a stopping server up.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tasks or self._held or self._done():
            return  # owes replies: the last call to finish comes back here (from _flush), held frames from buffer_updated
        if self._loop.time() >= self._drain_until:
            self.end()
        else:
            self._timer = self._loop.call_later(LINGER, self.end)

    # -- async handlers ------------------------------------------------------------

    def _spawn(self, call: Call) -> bool:
        """Run an async handler's call; True when no more may start (the core holds the next frames)."""
        tasks = self._tasks
        tasks[call] = self._loop.create_task(self._run(call))
        if len(tasks) - len(self._core.streams) >= self._max_in_flight and call.stream is None:  # _in_flight(), inline
            self._held = True
            self._update_reading()
            return True
        return False

    def _expire(self, call: Call, deadline: List[float]) -> None:
        """The call's deadline passed: stop it and answer with the timeout error. ``deadline``, what
        ``remaining()`` reads in its task, is set to 0: the timer may fire a little before the loop's
        clock reaches the deadline (uvloop counts milliseconds), and middleware asks ``remaining()``
        whether a stopped call timed out."""
        deadline[0] = 0.0
        if call in self._tasks:
            self._stopped[call] = DeadlineExceeded(f"timed out: the call's deadline of {call.deadline * 1000:g} ms passed")  # type: ignore[operator]
            self._tasks[call].cancel()

    def _cancel_by_id(self, rid: Any) -> None:
        """The client sent a cancel frame: stop the call, and send nothing for it."""
        for call, task in self._tasks.items():
            if call.id == rid and type(call.id) is type(rid):
                self._stopped[call] = _NO_REPLY
                # Not at once: a cancel read with its call would stop the task before it starts, and
                # _run, which answers and forgets the call, would never run. Its first step is queued.
                self._loop.call_soon(task.cancel)
                return

    async def _run(self, call: Call) -> None:
        timer = None
        if call.deadline is not None:
            deadline = [self._loop.time() + call.deadline]
            timer = self._loop.call_at(deadline[0], self._expire, call, deadline)
            _DEADLINE.set(deadline)  # this task's own context
        if call.meta is not None:
            enter_metadata(call.meta)
        if call.stream is not None:
            _STREAMING.set((self, call))  # for _pump, in this task's context
        try:
            result = await call.coro
        except asyncio.CancelledError:
            reason = self._stopped.get(call)
            if reason is None:
                if self._state is not DRAINING:
                    self._server.stats.count_error(call.method.name, CANCELLED)
                    raise  # the connection is gone: nobody to answer
                reason = ShuttingDown("the server shut down before the call finished", {"started": True})
            if reason is _NO_REPLY:
                self._server.stats.count_error(call.method.name, CANCELLED)
            else:
                self._core.fail(call, reason)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: a handler's fault, not the server's
            self._core.fail(call, exc)
        else:
            self._core.complete(call, result)
        finally:
            del self._tasks[call]
            self._stopped.pop(call, None)
            if call.stream is not None:
                self._core.close_stream(call)
            if timer is not None:
                timer.cancel()
            if self._state is CLOSED and not self._tasks:
                self._server._settled(self)
        if self._reading_paused:
            self._update_reading()  # a call ended: under the limit again, perhaps
        # Replies finished by tasks in one loop iteration leave in one write.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    async def pump(self, call: Call, items: Any) -> int:
        """Send a streaming call's items while its client's credit lasts, waiting for more when it is used
        up (and while the peer does not read); returns how many were sent. The generator is closed
        however the stream ends: its ``finally`` runs on a cancel, a deadline, a shutdown, a lost peer."""
        stream: Stream = call.stream  # type: ignore[assignment]
        send = self._core.stream_item
        asynchronous = hasattr(items, "__anext__")
        take = items.__anext__ if asynchronous else items.__next__
        try:
            while True:
                credit = 0 if self._writing_paused else stream.credit
                if credit <= 0:
                    if self._eof and stream.credit <= 0:  # the peer sends no more credit
                        self._stopped[call] = _NO_REPLY
                        raise asyncio.CancelledError
                    stream.waiter = self._loop.create_future()
                    await stream.waiter
                    continue
                # A burst: at most STREAM_BURST items or STREAM_BURST_BYTES in a row, then the loop runs.
                queued = 0
                for _ in range(credit if credit < STREAM_BURST else STREAM_BURST):
                    try:
                        item = await take() if asynchronous else take()
                    except (StopAsyncIteration, StopIteration):
                        return stream.sent
                    queued += send(call, item)
                    if queued >= STREAM_BURST_BYTES:
                        break
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    self._loop.call_soon(self._flush)
                if stream.credit > 0:
                    await asyncio.sleep(0)
        finally:
            if asynchronous:
                await items.aclose()
            else:
                items.close()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._done():
            return
        data = self._core.data_to_send()
        if data:
            self._transport.write(data)
        if self._eof and not self._tasks:
            self.end()
        elif self._state is DRAINING:
            self._close_when_quiet()


_NO_REPLY = ShuttingDown("cancelled by the client")  # a marker: the client asked for no reply
# The running call's deadline (loop time) in a box that _expire sets to 0, or None.
_DEADLINE: "contextvars.ContextVar[Optional[List[float]]]" = contextvars.ContextVar("fastrpc_deadline", default=None)


# A streaming call's connection and call, set in its task for _pump.
_STREAMING: "contextvars.ContextVar[Tuple[_Connection, Call]]" = contextvars.ContextVar("fastrpc_streaming")


def _streamed(func: Callable[..., Any]) -> Callable[..., Any]:
    """A generator function (or its checker) as the server calls it: a function returning the coroutine
    that sends the generator's items, so that the core, middleware and metrics see one async call."""
    @functools.wraps(func)  # keeps the signature: bad params are still -32602
    def streamed(*args: Any, **kwargs: Any) -> Any:
        return _pump(func(*args, **kwargs))

    return streamed


async def _pump(items: Any) -> int:
    connection, call = _STREAMING.get()
    return await connection.pump(call, items)


def remaining() -> Optional[float]:
    """Inside a handler: seconds left before the call's deadline (None if it has none), to pass on
    to the calls it makes. Only async handlers run under a deadline."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return None
    return max(0.0, deadline[0] - asyncio.get_running_loop().time())


class _FailureWindow:
    """One method's second of handler failures."""

    __slots__ = ("start", "logged", "held_back")

    def __init__(self, start: float) -> None:
        self.start = start
        self.logged = 0
        self.held_back = 0


class _FailureLog:
    """Logs handlers' unexpected exceptions with their tracebacks, at most
    FAILURES_LOGGED_PER_SECOND per method and second: a client that makes a
    handler fail in a loop cannot flood the log. What is held back is
    counted, and the count logged when the second is over."""

    def __init__(self) -> None:
        self._windows: Dict[str, _FailureWindow] = {}

    def report(self, method: str, peer: Any, exc: BaseException) -> None:
        now = time.monotonic()
        window = self._windows.get(method)
        if window is None or now - window.start >= 1.0:
            if window is not None:
                self._held_back(method, window)
            window = self._windows[method] = _FailureWindow(now)
        if window.logged < FAILURES_LOGGED_PER_SECOND:
            window.logged += 1
            log.error("handler %r failed for %s: %s: %s", method, address_text(peer), type(exc).__name__, exc, exc_info=exc)
            return
        window.held_back += 1
        if window.held_back == 1:  # the first held back: report the count once the second is over
            asyncio.get_running_loop().call_later(1.0 - (now - window.start), self._held_back, method, window)

    def _held_back(self, method: str, window: _FailureWindow) -> None:
        if window.held_back:
            log.error("handler %r failed %d more times in that second (not logged one by one)", method, window.held_back)
            window.held_back = 0


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


_fallback_warned = False


def _warn_if_fallback() -> None:
    """Once per process: say so when the compiled framing was expected and could not be loaded."""
    global _fallback_warned
    if framing.FALLBACK_REASON is not None and not _fallback_warned:
        _fallback_warned = True
        log.warning("fastrpc is running its pure-Python framing, about 2x slower pipelined: the compiled one could not "
                    "be loaded (%s). Install a wheel or build the extension (pip install .); set "
                    "FASTRPC_NO_EXTENSIONS=1 to choose the pure-Python framing on purpose.", framing.FALLBACK_REASON)


def new_event_loop(loop: str = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop: ``"uvloop"``, ``"asyncio"``, or ``"auto"`` (uvloop where installed)."""
    if loop not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"loop must be 'auto', 'uvloop' or 'asyncio', got {loop!r}")
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise RuntimeError("loop='uvloop' was asked for but uvloop is not installed") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(server: Server, host: str = "127.0.0.1", port: int = 8080, *, loop: str = "auto", **kwargs: Any) -> None:
    """Serve ``server`` until SIGINT or SIGTERM; blocks. Returns after a clean shutdown.

    Unless the application set up logging, fastrpc's INFO lines (listening,
    shutting down) and its warnings and errors go to stderr."""
    if not logging.getLogger("fastrpc").hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        package_log = logging.getLogger("fastrpc")
        package_log.addHandler(handler)
        if package_log.level == logging.NOTSET:
            package_log.setLevel(logging.INFO)
    event_loop = new_event_loop(loop)
    try:
        asyncio.set_event_loop(event_loop)
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                event_loop.add_signal_handler(signum, server.close)
            except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread (uvloop: ValueError)
                pass
        event_loop.run_until_complete(server.serve(host, port, **kwargs))
    finally:
        asyncio.set_event_loop(None)
        event_loop.close()
