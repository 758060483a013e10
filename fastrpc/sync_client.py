"""The blocking client: plain sockets over the same core as the async client.

Many threads may share one ``SyncClient``. Their calls are multiplexed by id
on its one connection: a thread sends its requests under a send lock, then
waits. Whichever waiting thread finds nobody reading becomes the reader: it
reads, hands every decoded reply to its waiter and wakes the others, and
passes the job on once its own replies are in. No event loop, no thread per
call, no background thread.
"""

from __future__ import annotations

import functools
import logging
import select
import socket
import threading
import time
from collections import deque
from ssl import MemoryBIO, SSLContext, SSLWantReadError, SSLZeroReturnError
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

from .auth import AUTH_METHOD
from .endpoints import (
    DEFAULT_RESOLVE_INTERVAL,
    Address,
    Endpoint,
    Endpoints,
    EndpointSpec,
    Resolver,
    check_addresses,
    is_ip,
    parse_endpoints,
    resolve_blocking,
)
from .contracts import decode
from .errors import CallTimeout, ConnectionClosed, FastRPCError, FrameTooLarge, ProtocolError, ShuttingDown
from .hooks import ClientHook, Hooks, checked_meta
from .limits import DEFAULT_MAX_FRAME_SIZE, check_max_frame_size
from .net import address_text, connect_failed, set_nodelay
from .protocol import ABSENT, ClientConnection, StreamEnd
from .retry import NotSent, check_retries, resendable, retry_delay
from .streams import DEFAULT_WINDOW

__all__ = ["SyncClient"]

log = logging.getLogger("fastrpc.client")

#: Times a call refused unrun by draining servers is sent again, beyond one try per endpoint.
MAX_REFUSALS = 3

#: One call as the client sends it: method, params (or ABSENT), checked metadata (or None).
_Call = Tuple[str, Any, Optional[Dict[str, str]]]


class _Batch:
    """The outcomes of the calls one thread sent together, and the event it waits on.

    The core's waiter for call ``i`` is ``(batch, i)``. The event exists only
    once its thread sleeps while another reads (a lone thread reads for
    itself and never needs one); it is set when the last outcome arrives, and
    also to hand the sleeping thread the reading.
    """

    __slots__ = ("results", "errors", "left", "event")

    def __init__(self, size: int) -> None:
        self.results: List[Any] = [None] * size
        self.errors: List[Optional[BaseException]] = [None] * size
        self.left = size
        self.event: Optional[threading.Event] = None


class _StreamBatch(_Batch):
    """A stream's waiter (``(batch, 0)`` to the core): its items as they arrive, and its outcome. ``left``
    is 0 while items wait to be taken or once the stream is over, so that a consumer waits, and reads
    for everyone, as a batch's thread does."""

    __slots__ = ("items", "over")

    def __init__(self) -> None:  # not _Batch's: its ``left = size`` would end the stream
        self.results: List[Any] = [None]
        self.errors: List[Optional[BaseException]] = [None]
        self.event: Optional[threading.Event] = None
        self.items: Deque[Any] = deque()
        self.over = False

    @property  # type: ignore[override]
    def left(self) -> int:
        return 0 if self.items or self.over else 1

    @left.setter
    def left(self, value: int) -> None:  # the core's resolve counts the outcome in: the stream is over
        self.over = True


def _on_item(waiter: Tuple[_Batch, int], item: Any) -> bool:
    """The core's ``on_item``: keep an item for the stream's consumer (False: not a stream's waiter)."""
    batch = waiter[0]
    if type(batch) is not _StreamBatch:
        return False
    batch.items.append(item)
    if batch.event is not None:
        batch.event.set()
    return True


def _failed(size: int, error: BaseException) -> _Batch:
    batch = _Batch(size)
    batch.errors = [error] * size
    batch.left = 0
    return batch


def _deliver(waiter: Tuple[_Batch, int], result: Any, error: Optional[BaseException]) -> None:
    """The core's ``deliver``: a failure (or a success, from a core without ``resolve``)."""
    waiter[0].errors[waiter[1]] = error
    _resolve(waiter, result)


def _resolve(waiter: Tuple[_Batch, int], result: Any) -> None:
    """The core's ``resolve``: a success, with one call and one store less per reply than ``_deliver``."""
    batch, index = waiter
    batch.results[index] = result
    batch.left -= 1
    if not batch.left and batch.event is not None:
        batch.event.set()


class _Tls:
    """TLS over the non-blocking socket through memory BIOs, so that the select()
    design stays as it is. The reading thread and a sending thread never use
    the TLS state at once: one lock guards it."""

    def __init__(self, context: SSLContext, server_hostname: Optional[str]) -> None:
        self._incoming, self._outgoing = MemoryBIO(), MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self._lock = threading.Lock()

    def handshake(self, sock: socket.socket) -> None:
        """Run the handshake on ``sock`` while it is still blocking (with its connect timeout)."""
        while True:
            try:
                self._tls.do_handshake()
                done = True
            except SSLWantReadError:
                done = False
            data = self._outgoing.read()
            if data:
                sock.sendall(data)
            if done:
                return
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("the server closed the connection during the TLS handshake")
            self._incoming.write(data)

    def encrypt(self, data: bytes) -> bytes:
        with self._lock:
            self._tls.write(data)
            return self._outgoing.read()

    def decrypt(self, data: bytes) -> Optional[bytes]:
        """The plaintext ``data`` completes (maybe b""); None once the server closed the TLS session."""
        chunks = []
        with self._lock:
            self._incoming.write(data)
            while True:
                try:
                    chunk = self._tls.read(65536)
                except SSLWantReadError:
                    break
                except SSLZeroReturnError:
                    return None
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)


#: Seconds to spend sending the cancel frames of calls that timed out.
CANCEL_SEND_TIMEOUT = 1.0


def _readable(sock: socket.socket) -> Callable[[], Any]:
    """A check, as cheap as can be had, that ``sock`` has something to read (or has been closed) now."""
    if hasattr(select, "poll"):  # not on Windows
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return functools.partial(poller.poll, 0)
    return lambda: select.select([sock], [], [], 0)[0]


def _remaining(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class SyncClient:
    """A blocking client of one or several fastrpc servers, safe to share between threads.

    >>> with SyncClient("127.0.0.1", 8080, timeout=5.0) as client:   # doctest: +SKIP
    ...     client.call("add", [1, 2])
    3

    ``timeout`` is the default per-call timeout in seconds (None: wait
    forever); it covers sending and waiting for the reply. ``ids=False`` is
    the ordered mode for servers that answer without ids, in request order.
    Errors are those of the async client: ``RemoteError`` subclasses for
    error replies, ``CallTimeout``, ``ConnectionClosed``. Endpoints
    (``host`` a list, names resolved to all their addresses, ``resolver``,
    ``resolve_interval``), balancing, drain notices, ``retries`` and
    ``idempotent`` work as with ``fastrpc.connect``; ``resolver`` is a plain
    function, and names are resolved again in a short-lived thread, so that a
    slow resolution holds no call. ``hooks`` (``fastrpc.hooks.ClientHook``
    instances) are told of every call, as by ``fastrpc.connect``, in the
    calling thread.
    """

    def __init__(
        self,
        host: EndpointSpec = "127.0.0.1",
        port: int = 8080,
        *,
        timeout: Optional[float] = None,
        connect_timeout: Optional[float] = 10.0,
        ids: bool = True,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        token: Optional[str] = None,
        ssl: Optional[SSLContext] = None,
        server_hostname: Optional[str] = None,
        retries: int = 0,
        idempotent: Iterable[str] = (),
        resolver: Optional[Resolver] = None,
        resolve_interval: Optional[float] = DEFAULT_RESOLVE_INTERVAL,
        hooks: Sequence[ClientHook] = (),
    ) -> None:
        self.timeout = timeout
        self.retries = check_retries(retries)
        self.idempotent = frozenset(idempotent)
        targets = parse_endpoints(host, port)
        if server_hostname is None and ssl is not None and len(targets) == 1 and not is_ip(targets[0][0]):
            server_hostname = targets[0][0]  # the certificate names the host, not the addresses it resolves to
        self._dial = functools.partial(_Link, ids=ids, max_frame_size=check_max_frame_size(max_frame_size),
                                       token=token, ssl=ssl, server_hostname=server_hostname)
        self._connect_timeout = connect_timeout
        if resolver is not None:
            self._resolve: Callable[[], List[Address]] = lambda: check_addresses(resolver(), port)  # type: ignore[misc]
        else:
            self._resolve = functools.partial(_resolve_names, targets)
        dynamic = resolver is not None or not all(is_ip(name) for name, _ in targets)
        addresses = self._resolve() if dynamic else targets
        if not addresses:
            raise ConnectionClosed("no server to call: the resolver found no addresses")
        self._endpoints = Endpoints(addresses, dynamic=dynamic, resolve_interval=resolve_interval, now=time.monotonic())
        # As with the async client: one fixed address without retries reports its loss.
        self._replace_lost = self.retries > 0 or dynamic or len(addresses) > 1
        # While there is one endpoint, calls go straight to its connection while it takes them.
        self._link: Optional[_Link] = None
        self._old: List[_Link] = []  # drained or dropped connections still owed replies
        self._lock = threading.Lock()  # guards the endpoints, their loads and links, and _old
        self._resolving = threading.Lock()  # held by the thread resolving names again
        self._closing = False
        self._hooks: Optional[Hooks] = None
        if hooks:
            self._hooks = Hooks(hooks)
            self._run = self._run_hooked  # type: ignore[method-assign]  # chosen once: calls without hooks pay nothing
        # Open one connection now, so that a wrong address or token shows here and not at the first call.
        self._choose(None)

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called, or the connection of a client that does not
        replace lost ones (one address, no ``retries``) is lost."""
        if self._closing:
            return True
        if self._replace_lost:
            return False
        link = self._endpoints.all[0].link
        return link is None or (link.failure is not None and link.draining is None)

    def call(
        self, method: str, params: Any = ABSENT, *, timeout: Optional[float] = ABSENT,
        idempotent: Optional[bool] = None, meta: Optional[Mapping[str, str]] = None, result_type: Any = None,
    ) -> Any:
        """Call ``method`` with ``params`` and return its result (see ``Client.call``, ``meta`` and
        ``result_type`` too)."""
        if meta is not None:
            meta = checked_meta(meta)
        batch = self._run([(method, params, meta)], timeout, idempotent)
        if batch.errors[0] is not None:
            raise batch.errors[0]
        return batch.results[0] if result_type is None else decode(batch.results[0], result_type, path="result")

    def stream(
        self, method: str, params: Any = ABSENT, *, window: int = DEFAULT_WINDOW, timeout: Optional[float] = ABSENT,
        meta: Optional[Mapping[str, str]] = None,
    ) -> Iterator[Any]:
        """Call streaming ``method`` with ``params`` and iterate over its items as they come (see
        ``Client.stream``: ``window``, ``timeout`` over the whole stream, ``meta``). Sent when first
        iterated; leaving the loop early (``break``, an exception) or ``close()`` on the iterator stops
        the stream on the server. The iterator's return value (``StopIteration.value``) is the count
        of items the server sent."""
        if meta is not None:
            meta = checked_meta(meta)
        if timeout is ABSENT:
            timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        states = None
        if self._hooks is not None:
            meta, states = self._hooks.started(method, meta)
        error: Optional[BaseException] = None
        refused: Optional[ShuttingDown] = None
        try:
            for attempt in range(len(self._endpoints.all) + MAX_REFUSALS):
                if attempt and self._hooks is not None:
                    self._hooks.retried(method)
                link = self._link
                if link is None or not link.open:
                    _, link = self._choose(deadline, timeout)
                try:
                    batch, key = link.open_stream(method, params, meta, window, deadline)
                except NotSent:  # it took no new calls (draining, lost): choose again
                    continue
                try:
                    return (yield from link.stream(batch, key, method, window, deadline, timeout))
                except ShuttingDown as exc:  # refused unrun (no item came): sent again, elsewhere
                    if not exc.never_ran:
                        raise
                    link.drained("refused")  # the notice may still be on its way
                    refused = exc
            if refused is not None:
                raise refused
            raise ConnectionClosed(f"stream of {method!r} found no connection to send it on")
        except BaseException as exc:  # GeneratorExit too: the consumer stopped
            error = None if isinstance(exc, GeneratorExit) else exc
            raise
        finally:
            if states is not None:
                self._hooks.ended(method, states, error)  # type: ignore[union-attr]

    def call_many(
        self,
        calls: Iterable[Union[Tuple[str], Tuple[str, Any]]],
        *,
        timeout: Optional[float] = ABSENT,
        return_exceptions: bool = False,
        idempotent: Optional[bool] = None,
        meta: Optional[Mapping[str, str]] = None,
    ) -> List[Any]:
        """Send ``(method, params)`` calls in one write; return their results in order.

        An entry of just ``(method,)`` sends no params. Every reply is waited for before anything is raised. If a call
        failed, its exception is raised (the first in list order), unless
        ``return_exceptions`` is true: failed calls then hold their exception
        in the list, as with ``asyncio.gather``. ``timeout`` bounds the whole
        batch. Calls refused unrun by a draining server, and with ``retries``
        the idempotent calls lost with a connection, are sent again, together.
        ``meta`` is the metadata of every call of the batch (ValueError, with
        nothing sent, if it is not valid).
        """
        if meta is not None:
            meta = checked_meta(meta)
        batch = self._run([(call[0], call[1] if len(call) > 1 else ABSENT, meta) for call in calls], timeout, idempotent)
        errors = batch.errors
        if not return_exceptions:
            for error in errors:
                if error is not None:
                    raise error
        return [result if error is None else error for result, error in zip(batch.results, errors)]

    def close(self) -> None:
        """Close every connection; calls still waiting fail with ConnectionClosed."""
        self._closing = True
        with self._lock:
            links = [e.link for e in self._endpoints.all if e.link is not None] + self._old
            self._old = []
        for link in links:
            link.close()

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _run(self, calls: Sequence[_Call], timeout: Optional[float], idempotent: Optional[bool]) -> _Batch:
        if timeout is ABSENT:
            timeout = self.timeout
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        if now >= self._endpoints.resolve_at and self._resolving.acquire(blocking=False):
            # Off the calling thread: a slow resolver must not hold calls past their timeouts.
            threading.Thread(target=self._resolve_again, name="fastrpc-resolve", daemon=True).start()
        link = self._link
        if link is not None and not self.retries and link.open:  # one endpoint: no choice to make
            try:
                batch = link.run(calls, deadline, timeout)
            except NotSent:
                return self._run_anywhere(calls, timeout, deadline, idempotent, _Batch(len(calls)),
                                          list(range(len(calls))), True)
            if batch.errors.count(None) == len(calls):
                return batch
            refused = [i for i, error in enumerate(batch.errors) if _refused_unrun(error)]
            if not refused:
                return batch
            link.drained("refused")  # the notice may still be on its way
            return self._run_anywhere(calls, timeout, deadline, idempotent, batch, refused, True)
        return self._run_anywhere(calls, timeout, deadline, idempotent, _Batch(len(calls)), list(range(len(calls))),
                                  False)

    def _run_hooked(self, calls: Sequence[_Call], timeout: Optional[float], idempotent: Optional[bool]) -> _Batch:
        """``_run`` of a client with hooks (its ``_run``): the hooks are told of each call's start, with the
        metadata it is to carry, and of its own outcome."""
        hooks: Hooks = self._hooks  # type: ignore[assignment]
        started = [hooks.started(method, meta) for method, _, meta in calls]
        try:
            batch = SyncClient._run(self, [(method, params, sent) for (method, params, _), (sent, _) in zip(calls, started)],
                                    timeout, idempotent)
        except BaseException as exc:  # the batch's CallTimeout, an interrupt: every call ends with it
            for (method, _, _), (_, states) in zip(calls, started):
                hooks.ended(method, states, exc)
            raise
        for (method, _, _), (_, states), error in zip(calls, started, batch.errors):
            hooks.ended(method, states, error)
        return batch

    def _run_anywhere(self, calls: Sequence[_Call], timeout: Optional[float], deadline: Optional[float],
                      idempotent: Optional[bool], batch: _Batch, todo: List[int], again: bool) -> _Batch:
        """``_run`` through the balancer, by ``deadline``: each attempt sends the calls still ``todo``
        (indices into ``calls``, outcomes into ``batch``) on a chosen connection; refused unrun, not
        sent, or (with ``retries``) lost and idempotent ones go again. ``again``: they were tried already
        (on the direct path)."""
        lost = 0
        for _ in range(len(self._endpoints.all) + self.retries + MAX_REFUSALS):
            try:
                endpoint, link = self._choose(deadline, timeout)
            except (ConnectionClosed, ShuttingDown) as exc:
                self._give_up(batch, todo, exc)
                break
            if again and self._hooks is not None:
                for i in todo:
                    self._hooks.retried(calls[i][0])
            again = True
            with self._lock:
                endpoint.load += len(todo)
            try:
                part = link.run([calls[i] for i in todo], deadline, timeout)
            except NotSent:
                continue
            except ConnectionClosed as exc:  # some may have gone out before the connection broke
                part = _failed(len(todo), exc)
            finally:
                with self._lock:
                    endpoint.load -= len(todo)
            redo, lost_now = [], []
            for i, result, error in zip(todo, part.results, part.errors):
                batch.results[i], batch.errors[i] = result, error
                if _refused_unrun(error):
                    redo.append(i)
                elif isinstance(error, ConnectionClosed) and resendable(calls[i][0], idempotent, self.idempotent):
                    lost_now.append(i)
            if redo:
                link.drained("refused")  # the notice may still be on its way
            if lost_now and lost < self.retries and not self._closing:
                delay = retry_delay(lost)
                lost += 1
                if deadline is None or time.monotonic() + delay < deadline:
                    time.sleep(delay)
                    redo += lost_now
            if not redo:
                break
            todo = sorted(redo)
        else:
            self._give_up(batch, todo, ConnectionClosed("found no connection to send the call on"))
        batch.left = 0
        return batch

    @staticmethod
    def _give_up(batch: _Batch, todo: List[int], error: FastRPCError) -> None:
        """The calls ``todo`` can go nowhere: each fails with ``error``, or keeps its refusal if it had one
        (a refusal says more)."""
        for i in todo:
            if not _refused_unrun(batch.errors[i]):
                batch.errors[i] = error

    def _choose(self, deadline: Optional[float], timeout: Optional[float] = None) -> Tuple[Endpoint, "_Link"]:
        """The endpoint for a call and its open connection, opened now (by ``deadline``) if need be,
        unless another thread is opening it and another endpoint has one open. Endpoints that cannot
        be reached are set aside and the next is tried. ConnectionClosed if none can be
        (``Endpoints.unreachable``: ShuttingDown while a server it is connected to drains)."""
        endpoints = self._endpoints
        failure: Optional[ConnectionClosed] = None
        tried: Set[Endpoint] = set()
        while True:
            if self._closing:
                raise ConnectionClosed("connection is closed")
            with self._lock:
                self._sweep()
                endpoint = endpoints.choose(time.monotonic(), tried, self._replace_lost, self._old.append)
                if endpoint is None:
                    assert failure is not None
                    raise endpoints.unreachable(failure)
                link = endpoint.link
                if link is not None and link.open:
                    return endpoint, link
                if endpoint.dialing:
                    other = endpoints.pick_open(endpoint)
                    if other is not None:
                        return other, other.link
                tried.add(endpoint)
                endpoint.dialing = True
            try:
                link = self._dial_in_time(endpoint, deadline, timeout)
            except ConnectionClosed as exc:
                failure = exc
                continue
            finally:
                endpoint.dialing = None
            if self._hooks is not None:
                self._watch(link, address_text(endpoint.address))
            with self._lock:
                spare = link
                if not self._closing and endpoint in endpoints.all:
                    endpoints.succeeded(endpoint)
                    if endpoint.link is None or not endpoint.link.open:
                        self._set_link(endpoint, link)
                        return endpoint, link
                    link = endpoint.link  # another thread opened one meanwhile: use it, close ours
            spare.close()
            if link is not spare:
                return endpoint, link
            # The client is closing, or the endpoint was dropped meanwhile: choose again.

    def _dial_in_time(self, endpoint: Endpoint, deadline: Optional[float], timeout: Optional[float]) -> "_Link":
        """A new connection to ``endpoint`` within ``connect_timeout`` and ``deadline``. An endpoint that
        cannot be reached is set aside (ConnectionClosed); running out of the call's time is a CallTimeout."""
        limit = self._connect_timeout
        if deadline is not None:
            left = _remaining(deadline)
            if not left:
                raise CallTimeout(f"call timed out after {timeout} s before a connection to "
                                  f"{address_text(endpoint.address)} could be opened")
            limit = left if limit is None else min(limit, left)
        try:
            return self._dial(endpoint.address, limit)
        except ConnectionClosed:
            # Set aside even when it is the call's time that ran out: the next calls try the others first.
            with self._lock:
                self._endpoints.failed(endpoint, time.monotonic())
            if deadline is not None and not _remaining(deadline):
                raise CallTimeout(f"call timed out after {timeout} s connecting to {address_text(endpoint.address)}") from None
            raise

    def _watch(self, link: "_Link", address: str) -> None:
        """Tell the hooks that ``link`` opened, and that it closed once it does (no other thread has it yet)."""
        hooks: Hooks = self._hooks  # type: ignore[assignment]
        hooks.opened(address)
        link.on_lost = functools.partial(hooks.closed, address)

    def _set_link(self, endpoint: Endpoint, link: "Optional[_Link]") -> None:
        """Under ``_lock``: ``link`` is ``endpoint``'s connection; the one it replaces takes no new
        calls and closes when idle."""
        old = endpoint.link
        if old is not None and old is not link:
            old.drained("retired")
            self._old.append(old)
        endpoint.link = link
        self._link = self._endpoints.direct_link()

    def _sweep(self) -> None:
        """Under ``_lock``: close the retired connections that owe nothing any more."""
        if self._old:
            idle = [link for link in self._old if not link.busy]
            if idle:
                self._old = [link for link in self._old if link.busy]
                for link in idle:
                    link.close()

    def _resolve_again(self) -> None:
        """Resolve the names (or ask the resolver) again: new addresses get calls, vanished ones none.
        Runs in a thread of its own, holding ``_resolving``."""
        try:
            try:
                addresses = self._resolve()
            except Exception as exc:  # DNS down, a resolver's bug: keep what we have, try again later
                log.warning("fastrpc client: resolving the servers' addresses failed (keeping %d): %s",
                            len(self._endpoints.all), exc)
                addresses = []
            else:
                if not addresses:
                    log.warning("fastrpc client: resolving found no server addresses (keeping %d)",
                                len(self._endpoints.all))
            with self._lock:
                for endpoint in self._endpoints.update(addresses, time.monotonic()):
                    self._set_link(endpoint, None)
                self._link = self._endpoints.direct_link()
        finally:
            self._resolving.release()


def _refused_unrun(error: Optional[BaseException]) -> bool:
    return isinstance(error, ShuttingDown) and error.never_ran


def _resolve_names(targets: Sequence[Address]) -> List[Address]:
    try:
        return resolve_blocking(targets)
    except OSError as exc:
        raise ConnectionClosed(f"could not resolve {', '.join(address_text(t) for t in targets)}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from exc


class _Link:
    """One connection and its core: the calls of many threads multiplexed on one socket."""

    def __init__(
        self,
        address: Address,
        connect_timeout: Optional[float],
        *,
        ids: bool,
        max_frame_size: int,
        token: Optional[str],
        ssl: Optional[SSLContext],
        server_hostname: Optional[str],
    ) -> None:
        host, port = address
        self._core = ClientConnection(_deliver, resolve=_resolve, ids=ids, max_frame_size=max_frame_size, on_item=_on_item)
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:  # socket.timeout among them
            raise connect_failed(host, port, exc, connect_timeout) from exc
        set_nodelay(sock)
        self._tls: Optional[_Tls] = None
        if ssl is not None:
            try:
                self._tls = _Tls(ssl, server_hostname or host)
                self._tls.handshake(sock)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                sock.close()
                raise connect_failed(host, port, exc, tls=True) from exc
        # Non-blocking: every wait goes through select() with the caller's deadline.
        sock.setblocking(False)
        self._sock = sock
        self._send_lock = threading.Lock()  # keeps frames whole and in core order on the wire
        self._state = threading.Lock()  # guards the core's call table and the fields below
        self._reading = False  # a thread is reading for everyone
        self._read_done = threading.Condition(self._state)  # notified when that thread stops reading
        self._waiting: Set[_Batch] = set()  # batches whose threads sleep while another reads
        self.failure: Optional[str] = None  # why the connection is unusable (None while it is usable)
        self.open = True  # takes new calls: neither lost nor drained
        self._has_news = _readable(sock)
        self._core.on_drain = self.drained
        self.on_lost: Optional[Callable[[], None]] = None  # called once the connection is lost (perhaps under the client's locks)
        if token is not None:
            deadline = None if connect_timeout is None else time.monotonic() + connect_timeout
            try:
                batch = self.run([(AUTH_METHOD, token, None)], deadline, connect_timeout)
            except CallTimeout as exc:  # a server that takes connections and never answers: unreachable
                self.close()
                raise connect_failed(host, port, exc, connect_timeout) from exc
            if batch.errors[0] is not None:
                self.close()
                raise batch.errors[0]
        self._core.ask_for_notices()
        self._send((), _Batch(0), None)

    @property
    def draining(self) -> Optional[str]:
        """The reason of the server's drain notice (or of a refusal), or None."""
        return self._core.draining

    def connected(self) -> bool:
        """The connection is up (it may be draining): what came on it while nobody read, its close
        perhaps, is taken in first."""
        if self.failure is None and not self.busy and self._has_news():
            self._catch_up()
        return self.failure is None

    @property
    def busy(self) -> bool:
        """Calls are pending, or a thread reads."""
        return bool(self._reading or self._core.pending)

    def drained(self, reason: str) -> None:
        """No new calls here: the server's drain notice came (called by the core, under ``_state``), a
        call was refused unrun (the notice may still be on its way), or the client retires it."""
        if self._core.draining is None:
            self._core.draining = reason
        self.open = False

    def close(self) -> None:
        self._lost(None)
        # Readers and senders wake up on the shut-down socket; close the
        # descriptor only once neither uses it.
        with self._state:
            self._read_done.wait_for(lambda: not self._reading, timeout=5.0)
        with self._send_lock:
            self._sock.close()

    def run(self, calls: Sequence[_Call], deadline: Optional[float], timeout: Optional[float]) -> _Batch:
        """Send ``calls`` and wait for all their outcomes, by ``deadline`` (``time.monotonic()``;
        ``timeout`` is what a CallTimeout names)."""
        batch = _Batch(len(calls))
        keys = self._send(calls, batch, deadline)
        if not self._wait(batch, deadline):
            with self._state:
                for key in keys:
                    self._core.forget(key)  # a late reply is dropped; a cancel frame is queued
            try:
                self._send((), batch, time.monotonic() + CANCEL_SEND_TIMEOUT)  # tell the server to stop them
            except (CallTimeout, ConnectionClosed):
                pass  # the calls timed out either way; the connection's state says the rest
            what = f"call to {calls[0][0]!r}" if len(calls) == 1 else f"batch of {len(calls)} calls"
            raise CallTimeout(f"{what} timed out after {timeout} s")
        return batch

    def open_stream(self, method: str, params: Any, meta: Optional[Dict[str, str]], window: int,
                    deadline: Optional[float]) -> Tuple[_StreamBatch, int]:
        """Send a streaming call: its waiter and key, for ``stream``; NotSent if the connection takes no new calls."""
        batch = _StreamBatch()
        return batch, self._send([(method, params, meta)], batch, deadline, window)[0]

    def stream(self, batch: _StreamBatch, key: int, method: str, window: int, deadline: Optional[float],
               timeout: Optional[float]) -> Iterator[Any]:
        """A stream's items, as the server sends them and its consumer takes them (``SyncClient.stream``)."""
        core = self._core
        taken = 0
        over = False
        try:
            while True:
                if not self._wait(batch, deadline):
                    raise CallTimeout(f"stream of {method!r} timed out after {timeout} s")
                items = batch.items
                while items:
                    item = items.popleft()
                    taken += 1
                    if taken * 2 >= window and not batch.over:  # half the window taken: grant it again
                        with self._state:
                            core.grant(key, taken)
                        taken = 0
                        try:
                            self._send((), batch, deadline)
                        except (NotSent, CallTimeout, ConnectionClosed):
                            pass  # the connection failed: the stream's outcome says so
                    yield item
                if batch.over:
                    break
            over = True
        finally:
            if not over:  # stopped early, or timed out: stop it on the server
                with self._state:
                    core.forget(key)
                try:
                    self._send((), batch, time.monotonic() + CANCEL_SEND_TIMEOUT)
                except (NotSent, CallTimeout, ConnectionClosed):
                    pass
        error, result = batch.errors[0], batch.results[0]
        if error is not None:
            raise error
        if type(result) is not StreamEnd:
            raise ProtocolError(f"{method!r} is not a streaming method: it answered with one result")
        return result.sent

    def _send(self, calls: Sequence[_Call], batch: _Batch, deadline: Optional[float], window: int = 0) -> List[int]:
        """Send ``calls`` (their outcomes go to ``batch``) and whatever else is queued; ``window``: the
        one call is a stream with that first credit."""
        core = self._core
        with self._send_lock:
            if calls and not core.pending and self._has_news():
                self._catch_up()
            with self._state:
                if self.failure is not None:
                    raise NotSent(self.failure)
                if calls and core.draining is not None:
                    raise NotSent(f"connection is draining ({core.draining})")
                keys: List[int] = []
                request: Callable[..., int]
                if window:
                    def request(method: str, params: Any, waiter: Any, left: Optional[float], meta: Any) -> int:
                        return core.request_stream(method, params, waiter, window, left, meta)
                else:
                    request = core.request
                try:
                    left = _remaining(deadline)
                    for index, (method, params, meta) in enumerate(calls):
                        keys.append(request(method, params, (batch, index), left, meta))
                except FrameTooLarge:
                    # Nothing of the batch goes out.
                    core.data_to_send()
                    for key in keys:
                        core.forget(key, cancel=False)
                    raise
                data = core.data_to_send()
            if self._tls is not None and data:
                data = self._tls.encrypt(data)  # under the send lock: records leave in order
            view = memoryview(data)
            while view:
                try:
                    view = view[self._sock.send(view):]
                except BlockingIOError:
                    pass
                except OSError as exc:
                    self._lost(exc)
                    raise ConnectionClosed(self.failure) from exc
                if view and not select.select([], [self._sock], [], _remaining(deadline))[1]:
                    if len(view) < len(data):
                        # Half a frame is on the wire: the stream cannot be resynchronised.
                        self._lost(CallTimeout("a send timed out halfway through a frame"))
                    with self._state:
                        for key in keys:
                            core.forget(key, cancel=False)  # not (all) sent: nothing to cancel
                    raise CallTimeout(f"sending timed out after {len(data) - len(view)} of {len(data)} bytes")
        return keys

    def _wait(self, batch: _Batch, deadline: Optional[float]) -> bool:
        """Wait until the batch is complete (True) or the deadline passes (False)."""
        state = self._state
        while True:
            with state:
                if not batch.left:
                    return True
                if not self._reading:
                    self._reading = True
                    break
                # Someone else reads: sleep until our replies are in or the
                # reading is handed to us.
                if batch.event is None:
                    batch.event = threading.Event()
                else:
                    batch.event.clear()
                event = batch.event
                self._waiting.add(batch)
            woken = event.wait(_remaining(deadline))
            with state:
                self._waiting.discard(batch)
                if not woken:
                    return not batch.left
        try:
            return self._read_until(batch, deadline)
        finally:
            self._stop_reading()

    def _stop_reading(self) -> None:
        with self._state:
            self._reading = False
            if self.failure is not None:
                self._read_done.notify_all()  # close() may be waiting (it sets failure first)
            for other in self._waiting:
                if other.left:
                    other.event.set()  # type: ignore[union-attr]  # your turn to read
                    break

    def _catch_up(self) -> None:
        """Before sending on a connection nobody reads (nothing pending) where something came
        meanwhile, take it in: a drain notice or the server's close, so that the calls go elsewhere
        rather than be lost unanswered."""
        with self._state:
            if self._reading or self.failure is not None:
                return
            self._reading = True
        try:
            self._read_until(_Batch(1), time.monotonic())  # reads until nothing is left to read
        finally:
            self._stop_reading()

    def _read_until(self, batch: _Batch, deadline: Optional[float]) -> bool:
        """Read for everyone until ``batch`` is complete (True) or the deadline passes (False)."""
        core = self._core
        sock = self._sock
        while batch.left:
            if self.failure is not None:
                return True  # the core failed every pending call
            if not select.select([sock], [], [], _remaining(deadline))[0]:
                return False
            try:
                if self._tls is None:
                    nbytes = sock.recv_into(core.get_buffer(-1))
                else:
                    raw = sock.recv(65536)
                    data = self._tls.decrypt(raw) if raw else None  # None: the connection ended
                    nbytes = -1 if data is None else len(data)  # 0: part of a TLS record, no plaintext yet
            except BlockingIOError:
                continue
            except OSError as exc:  # ssl.SSLError among them
                self._lost(exc)
                continue
            if nbytes < 0 or (nbytes == 0 and self._tls is None):
                self._lost(None)
                continue
            try:
                with self._state:
                    if self._tls is None:
                        core.buffer_updated(nbytes)
                    elif data:
                        core.receive_data(data)
            except FastRPCError as exc:  # outside the (non-reentrant) lock, which _lost takes
                self._lost(exc)
        return True

    def _lost(self, cause: Optional[BaseException]) -> None:
        """The connection is unusable: fail every pending call, naming ``cause``."""
        with self._state:
            if self.failure is not None:
                return
            self.failure = "connection closed" + (f": {cause}" if cause else "")
            self.open = False
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._core.close(cause)
        if self.on_lost is not None:
            self.on_lost()
