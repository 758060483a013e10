"""The async client: many concurrent calls multiplexed on one connection.

Protocol work happens in ``protocol.ClientConnection``; this module moves
bytes, coalesces the requests made in one loop iteration into one write and
resolves futures.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from ssl import SSLContext
from typing import Any, Awaitable, Callable, Deque, Generator, Iterable, Optional

from .auth import AUTH_METHOD
from .errors import CallTimeout, ConnectionClosed, FastRPCError
from .limits import DEFAULT_MAX_FRAME_SIZE, check_max_frame_size
from .net import connect_failed, set_nodelay
from .protocol import ABSENT, ClientConnection
from .retry import check_retries, resendable, retry_delay

__all__ = ["Client", "connect", "DEFAULT_MAX_PENDING"]

#: Calls a client keeps sent and unanswered at once before further calls wait.
DEFAULT_MAX_PENDING = 10_000


def _deliver(future: "asyncio.Future[Any]", result: Any, error: Optional[BaseException]) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class _ClientProtocol(asyncio.BufferedProtocol):
    """Moves bytes between the socket and the ``ClientConnection``."""

    def __init__(self, core: ClientConnection, loop: asyncio.AbstractEventLoop, max_pending: int) -> None:
        self.core = core
        self.loop = loop
        self.transport: Optional[asyncio.Transport] = None
        self.lost = loop.create_future()  # done once the connection is gone
        self.error: Optional[BaseException] = None
        self._flush_scheduled = False
        self.max_pending = max_pending
        self.room: Deque["asyncio.Future[bool]"] = deque()  # calls waiting for fewer pending ones
        self.waking = 0  # calls let go that have not sent yet: their places are taken

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport.get_extra_info("socket"))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.core.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self.core.buffer_updated(nbytes)
        except FastRPCError as exc:
            self.error = exc
            self.transport.close()  # type: ignore[union-attr]
        if self.room:
            self.make_room()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.core.close(self.error or exc)
        if not self.lost.done():
            self.lost.set_result(None)
        self.make_room()

    def make_room(self) -> None:
        """Let waiting calls go, oldest first, as many as there are free places (all of them once closed)."""
        room = self.room
        if self.lost.done():
            while room:
                waiter = room.popleft()
                if not waiter.done():
                    waiter.set_result(False)
            return
        free = self.max_pending - self.core.pending - self.waking
        while room and free > 0:
            waiter = room.popleft()
            if not waiter.done():  # else it timed out meanwhile
                waiter.set_result(True)
                self.waking += 1
                free -= 1

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        data = self.core.data_to_send()
        if data and not self.transport.is_closing():  # type: ignore[union-attr]
            self.transport.write(data)  # type: ignore[union-attr]


class Client:
    """A connection to a fastrpc server. Make one with ``await fastrpc.connect(...)``."""

    def __init__(
        self,
        protocol: _ClientProtocol,
        timeout: Optional[float],
        dial: Optional[Callable[[], Awaitable[_ClientProtocol]]] = None,
        retries: int = 0,
        idempotent: Iterable[str] = (),
    ) -> None:
        self._protocol = protocol
        self._core = protocol.core
        self._loop = protocol.loop
        self.timeout = timeout
        self.retries = retries
        self.idempotent = frozenset(idempotent)
        self._dial = dial
        self._redial: "Optional[asyncio.Task[None]]" = None
        self._closing = False

    @property
    def closed(self) -> bool:
        """True once the connection is closed or lost."""
        return self._protocol.lost.done()

    async def call(
        self, method: str, params: Any = ABSENT, *, timeout: Optional[float] = ABSENT,
        idempotent: Optional[bool] = None,
    ) -> Any:
        """Call ``method`` with ``params`` and return its result.

        ``params`` may be a list (positional arguments), a dict (keyword
        arguments), any other JSON value (one argument), or left out (none).
        ``timeout`` (seconds; default: the client's) is sent along as the
        call's deadline and raises CallTimeout; the server is then told to
        stop the call, and a late reply, if any, is dropped. Remote errors raise the RemoteError
        subclass of their code; a lost connection raises ConnectionClosed.

        With ``retries`` set on the client, a call whose connection is lost
        before its reply arrives is sent again on a new connection if it is
        idempotent: ``idempotent=True`` here, or its method is in the
        client's ``idempotent`` set (``idempotent=False`` opts one call out).
        """
        if timeout is ABSENT:
            timeout = self.timeout
        if self.retries and resendable(method, idempotent, self.idempotent):
            return await self._call_retrying(method, params, timeout)
        protocol = self._protocol
        if protocol.lost.done() and self.retries and not self._closing:
            await self._reconnect(timeout)  # a call not yet sent is safe to send on a new connection
            protocol = self._protocol
        if self._core.pending + protocol.waking >= protocol.max_pending or protocol.room:
            await self._wait_for_room(method, timeout)
        if protocol.lost.done():
            raise ConnectionClosed("connection is closed")
        future = self._loop.create_future()
        key = self._core.request(method, params, future, deadline=timeout)
        protocol.schedule_flush()
        if timeout is None:
            try:
                return await future
            except asyncio.CancelledError:
                self._core.forget(key)  # and tell the server to stop it
                protocol.schedule_flush()
                protocol.make_room()
                raise
        timer = self._loop.call_later(timeout, _expire, future, method, timeout)
        try:
            return await future
        except BaseException:
            self._core.forget(key)  # a no-op if it was answered; else a cancel frame goes out
            protocol.schedule_flush()
            protocol.make_room()
            raise
        finally:
            timer.cancel()

    async def _wait_for_room(self, method: str, timeout: Optional[float]) -> None:
        """Wait, in line, until a place among ``max_pending`` is free: the client buffers no more than that."""
        protocol = self._protocol
        deadline = None if timeout is None else self._loop.time() + timeout
        while not protocol.lost.done():
            waiter: "asyncio.Future[bool]" = self._loop.create_future()
            protocol.room.append(waiter)
            protocol.make_room()  # there may be a place already
            try:
                if deadline is None:
                    counted = await waiter
                else:
                    counted = await asyncio.wait_for(waiter, deadline - self._loop.time())
            except asyncio.TimeoutError:
                raise CallTimeout(f"call to {method!r} timed out after {timeout} s waiting to be sent "
                                  f"({protocol.max_pending} calls were pending)") from None
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result():
                    protocol.waking -= 1  # it was let go, and will not take its place: pass it on
                    protocol.make_room()
                raise
            if counted:
                protocol.waking -= 1
                return

    async def _call_retrying(self, method: str, params: Any, timeout: Optional[float]) -> Any:
        """``call``, sent again on a new connection each time the connection is lost, ``retries`` times at most."""
        deadline = None if timeout is None else self._loop.time() + timeout
        for attempt in range(self.retries + 1):
            left = None if deadline is None else deadline - self._loop.time()
            if left is not None and left <= 0:
                raise CallTimeout(f"call to {method!r} timed out after {timeout} s (connection lost {attempt} times)")
            try:
                return await self.call(method, params, timeout=left, idempotent=False)
            except ConnectionClosed:
                if attempt == self.retries or self._closing:
                    raise
            await asyncio.sleep(retry_delay(attempt))
        raise AssertionError("unreachable")

    async def _reconnect(self, timeout: Optional[float]) -> None:
        """Replace a lost connection; concurrent callers share one new connection."""
        if self._dial is None:
            raise ConnectionClosed("connection is closed")
        if self._redial is None:
            self._redial = self._loop.create_task(self._replace(self._dial))
            self._redial.add_done_callback(_consume)
        try:
            await asyncio.wait_for(asyncio.shield(self._redial), timeout)
        except asyncio.TimeoutError:
            raise CallTimeout(f"reconnecting timed out after {timeout} s") from None

    async def _replace(self, dial: Callable[[], Awaitable[_ClientProtocol]]) -> None:
        try:
            protocol = await dial()
        finally:
            self._redial = None
        if self._closing:
            protocol.transport.close()  # type: ignore[union-attr]
            raise ConnectionClosed("connection is closed")
        self._protocol = protocol
        self._core = protocol.core

    async def close(self) -> None:
        """Close the connection; pending calls fail with ConnectionClosed."""
        self._closing = True
        protocol = self._protocol
        if protocol.transport is not None:
            protocol.flush()
            protocol.transport.close()
        await asyncio.shield(protocol.lost)

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


def _expire(future: "asyncio.Future[Any]", method: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(CallTimeout(f"call to {method!r} timed out after {timeout} s"))


def _consume(task: "asyncio.Task[None]") -> None:
    if not task.cancelled():
        task.exception()  # every waiter sees it; this keeps asyncio from logging it as never retrieved


async def _dial(
    host: str,
    port: int,
    *,
    ids: bool,
    max_frame_size: int,
    connect_timeout: Optional[float],
    ssl: Optional[SSLContext],
    server_hostname: Optional[str],
    token: Optional[str],
    max_pending: int,
) -> _ClientProtocol:
    """Open a connection and authenticate it: it is ready for calls."""
    loop = asyncio.get_running_loop()
    core = ClientConnection(_deliver, ids=ids, max_frame_size=max_frame_size)
    try:
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: _ClientProtocol(core, loop, max_pending), host, port, ssl=ssl,
                                   server_hostname=server_hostname if ssl is not None else None),
            connect_timeout,
        )
    except (asyncio.TimeoutError, OSError) as exc:  # ssl.SSLError too: a failed handshake
        raise connect_failed(host, port, exc, connect_timeout) from exc
    if token is not None:
        first = Client(protocol, None)
        try:
            await first.call(AUTH_METHOD, token, timeout=connect_timeout)
        except BaseException:
            await first.close()
            raise
    return protocol


class connect:
    """Open a connection: ``client = await connect(...)`` or ``async with connect(...) as client``.

    ``ids=False`` selects the ordered mode for servers that answer without
    ids, in request order. ``timeout`` is the default per-call timeout.
    ``ssl`` (an ``ssl.SSLContext``, e.g. from ``fastrpc.tls.client_context``)
    makes it a TLS connection; ``server_hostname`` overrides the name the
    server's certificate is checked against (default: ``host``). ``token``
    authenticates the connection first (``fastrpc.Unauthenticated`` if refused).
    At most ``max_pending`` calls are sent and unanswered at once; further
    calls wait (within their timeout) for room, so memory stays bounded
    however many are started.

    ``retries`` (default 0: off) makes the client reconnect when it finds its
    connection lost, and resend each call that is lost with it, up to that
    many times, if the call is idempotent: its method is in ``idempotent``,
    or it was made with ``call(..., idempotent=True)``. Calls that may have
    run and must not run twice fail with ConnectionClosed instead.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        ids: bool = True,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        timeout: Optional[float] = None,
        connect_timeout: Optional[float] = 10.0,
        ssl: Optional[SSLContext] = None,
        server_hostname: Optional[str] = None,
        token: Optional[str] = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        retries: int = 0,
        idempotent: Iterable[str] = (),
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending!r}")
        dial = functools.partial(_dial, host, port, ids=ids, max_frame_size=check_max_frame_size(max_frame_size),
                                 connect_timeout=connect_timeout, ssl=ssl, server_hostname=server_hostname,
                                 token=token, max_pending=max_pending)
        self._coro = self._open(dial, timeout, check_retries(retries), idempotent)
        self._client: Optional[Client] = None

    @staticmethod
    async def _open(dial: Callable[[], Awaitable[_ClientProtocol]], timeout: Optional[float], retries: int,
                    idempotent: Iterable[str]) -> Client:
        return Client(await dial(), timeout, dial, retries, idempotent)

    def __await__(self) -> Generator[Any, None, Client]:
        return self._coro.__await__()

    async def __aenter__(self) -> Client:
        self._client = await self._coro
        return self._client

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._client is not None
        await self._client.close()
