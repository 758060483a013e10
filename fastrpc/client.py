"""The async client: many concurrent calls multiplexed on one connection.

Protocol work happens in ``protocol.ClientConnection``; this module moves
bytes, coalesces the requests made in one loop iteration into one write and
resolves futures.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import socket
from collections import deque
from ssl import SSLContext
from typing import Any, Awaitable, Callable, Deque, Dict, Generator, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from .auth import AUTH_METHOD
from .endpoints import (
    DEFAULT_RESOLVE_INTERVAL,
    Address,
    Endpoint,
    Endpoints,
    EndpointSpec,
    Resolver,
    addresses_from,
    check_addresses,
    is_ip,
    parse_endpoints,
)
from .errors import CallTimeout, ConnectionClosed, FastRPCError, ShuttingDown
from .hooks import ClientHook, Hooks, checked_meta
from .limits import DEFAULT_MAX_FRAME_SIZE, check_max_frame_size
from .net import address_text, connect_failed, set_nodelay
from .protocol import ABSENT, ClientConnection
from .retry import NotSent, check_retries, resendable, retry_delay

__all__ = ["Client", "connect", "DEFAULT_MAX_PENDING"]

log = logging.getLogger("fastrpc.client")

#: Calls a client keeps sent and unanswered at once before further calls wait.
DEFAULT_MAX_PENDING = 10_000
#: Times a call refused unrun by draining servers is sent again, beyond one try per endpoint.
MAX_REFUSALS = 3


def _deliver(future: "asyncio.Future[Any]", result: Any, error: Optional[BaseException]) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class _ClientProtocol(asyncio.BufferedProtocol):
    """One connection: moves bytes between the socket and its ``ClientConnection``, makes calls on it."""

    def __init__(self, core: ClientConnection, loop: asyncio.AbstractEventLoop, max_pending: int) -> None:
        self.core = core
        self.loop = loop
        self.transport: Optional[asyncio.Transport] = None
        self.lost = loop.create_future()  # done once the connection is gone
        self.open = True  # takes new calls: neither lost nor drained
        self.error: Optional[BaseException] = None
        self._flush_scheduled = False
        self.max_pending = max_pending
        self.room: Deque["asyncio.Future[bool]"] = deque()  # calls waiting for fewer pending ones
        self.waking = 0  # calls let go that have not sent yet: their places are taken
        core.on_drain = self.drained

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
        self.open = False
        self.core.close(self.error or exc)
        if not self.lost.done():
            self.lost.set_result(None)
        self.make_room()

    @property
    def draining(self) -> Optional[str]:
        """The reason of the server's drain notice (or of a refusal), or None."""
        return self.core.draining

    def drained(self, reason: str) -> None:
        """The server sent its drain notice (or refused a call unrun: the notice may still be on its
        way): no new calls here; those sent are still answered."""
        if self.core.draining is None:
            self.core.draining = reason
        self.open = False
        self.make_room()

    def close_when_idle(self, wait: float = 0.5) -> None:
        """Take no new calls (calls waiting for room go elsewhere); close once none is pending
        (checked every ``wait`` s): the replies owed still arrive."""
        self.drained("retired")
        if self.lost.done():
            return
        if self.core.pending:
            self.loop.call_later(wait, self.close_when_idle, wait)
        else:
            self.flush()
            self.transport.close()  # type: ignore[union-attr]

    def make_room(self) -> None:
        """Let waiting calls go, oldest first, as many as there are free places (all of them once
        the connection takes no more calls: they find it so and go elsewhere or fail)."""
        room = self.room
        if not self.open:
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

    async def call(self, method: str, params: Any, timeout: Optional[float], stated: Optional[float] = None,
                   meta: Optional[Dict[str, str]] = None) -> Any:
        """Make one call on this connection (see ``Client.call``); NotSent if it took no new calls.
        ``stated``: the timeout to name in a CallTimeout, when ``timeout`` is what is left of it;
        ``meta``: checked metadata (``checked_meta``)."""
        core = self.core
        if core.pending + self.waking >= self.max_pending or self.room:
            await self._wait_for_room(method, timeout, timeout if stated is None else stated)
        if not self.open:
            raise NotSent("connection is closed")
        future = self.loop.create_future()
        key = core.request(method, params, future, timeout, meta)
        self.schedule_flush()
        if timeout is None:
            try:
                return await future
            except asyncio.CancelledError:
                core.forget(key)  # and tell the server to stop it
                self.schedule_flush()
                self.make_room()
                raise
        timer = self.loop.call_later(timeout, _expire, future, method, timeout if stated is None else stated)
        try:
            return await future
        except BaseException:
            core.forget(key)  # a no-op if it was answered; else a cancel frame goes out
            self.schedule_flush()
            self.make_room()
            raise
        finally:
            timer.cancel()

    async def _wait_for_room(self, method: str, timeout: Optional[float], stated: Optional[float]) -> None:
        """Wait, in line, until a place among ``max_pending`` is free: the client buffers no more than that."""
        loop = self.loop
        deadline = None if timeout is None else loop.time() + timeout
        while self.open:
            waiter: "asyncio.Future[bool]" = loop.create_future()
            self.room.append(waiter)
            self.make_room()  # there may be a place already
            try:
                if deadline is None:
                    counted = await waiter
                else:
                    counted = await asyncio.wait_for(waiter, deadline - loop.time())
            except asyncio.TimeoutError:
                raise CallTimeout(f"call to {method!r} timed out after {stated} s waiting to be sent "
                                  f"({self.max_pending} calls were pending)") from None
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result():
                    self.waking -= 1  # it was let go, and will not take its place: pass it on
                    self.make_room()
                raise
            if counted:
                self.waking -= 1
                return


class Client:
    """A client of one or several fastrpc servers. Make one with ``await fastrpc.connect(...)``."""

    def __init__(
        self,
        endpoints: Endpoints,
        dial: Callable[[Address], Awaitable[_ClientProtocol]],
        resolve: Callable[[], Awaitable[List[Address]]],
        *,
        timeout: Optional[float],
        retries: int,
        idempotent: Iterable[str],
        loop: asyncio.AbstractEventLoop,
        hooks: Sequence[ClientHook] = (),
    ) -> None:
        self._endpoints = endpoints
        self._dial = dial
        self._resolve = resolve
        self._loop = loop
        self.timeout = timeout
        self.retries = retries
        self.idempotent = frozenset(idempotent)
        # A lost connection is replaced (and calls not yet sent go on) when there is somewhere to go or
        # retries are asked for; one fixed address without retries reports its loss, as it always did.
        self._replace_lost = retries > 0 or endpoints.dynamic or len(endpoints.all) > 1
        # While there is one endpoint, calls go straight to its connection while it takes them.
        self._link: Optional[_ClientProtocol] = None
        self._old: Set[_ClientProtocol] = set()  # drained or dropped connections still owed replies
        self._resolving: "Optional[asyncio.Task[None]]" = None
        self._resolve_timer: Optional[asyncio.Handle] = None
        self._resolve_planned = math.inf  # when that timer fires
        self._closing = False
        self._hooks: Optional[Hooks] = None
        if hooks:
            self._hooks = Hooks(hooks)
            self.call = self._call_hooked  # type: ignore[method-assign]  # chosen once: calls without hooks pay nothing
        self._plan_resolution()

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called, or the connection of a client that does not
        replace lost ones (one address, no ``retries``) is lost."""
        if self._closing:
            return True
        if self._replace_lost:
            return False
        link = self._endpoints.all[0].link
        return link is None or (link.lost.done() and link.core.draining is None)

    async def call(
        self, method: str, params: Any = ABSENT, *, timeout: Optional[float] = ABSENT,
        idempotent: Optional[bool] = None, meta: Optional[Mapping[str, str]] = None,
    ) -> Any:
        """Call ``method`` with ``params`` and return its result.

        ``params`` may be a list (positional arguments), a dict (keyword
        arguments), any other JSON value (one argument), or left out (none).
        ``timeout`` (seconds; default: the client's) is sent along as the
        call's deadline and raises CallTimeout; the server is then told to
        stop the call, and a late reply, if any, is dropped. Remote errors raise the RemoteError
        subclass of their code; a lost connection raises ConnectionClosed.

        A call a draining server refused before running it (ShuttingDown with
        ``never_ran``) is sent again at once: to another endpoint, or on a new
        connection to the same address (through a balancer, another instance).
        With ``retries`` set on the client, a call whose connection is lost
        before its reply arrives is sent again, to another endpoint if there
        is one, if it is idempotent: ``idempotent=True`` here, or its method is
        in the client's ``idempotent`` set (``idempotent=False`` opts one call
        out). Other calls lost in flight raise ConnectionClosed: they may have
        run, and are never run twice.

        ``meta``: the call's metadata, string keys and values (at most 64
        entries and 8 KiB), which handlers registered with ``metadata=True``
        read with ``fastrpc.metadata()``; ValueError, with nothing sent, if it
        is not valid.
        """
        if timeout is ABSENT:
            timeout = self.timeout
        if meta is not None:
            meta = checked_meta(meta)
        deadline = None if timeout is None else self._loop.time() + timeout
        link = self._link
        if link is not None and link.open and not self.retries:  # one endpoint: no choice to make
            refused: Optional[ShuttingDown] = None
            try:
                return await link.call(method, params, timeout, None, meta)
            except ShuttingDown as exc:
                if not exc.never_ran:
                    raise
                link.drained("refused")  # the notice may still be on its way
                refused = exc
            except NotSent:
                pass
            return await self._call_anywhere(method, params, timeout, deadline, idempotent, refused, meta, True)
        return await self._call_anywhere(method, params, timeout, deadline, idempotent, None, meta, False)

    async def _call_hooked(
        self, method: str, params: Any = ABSENT, *, timeout: Optional[float] = ABSENT,
        idempotent: Optional[bool] = None, meta: Optional[Mapping[str, str]] = None,
    ) -> Any:
        """``call`` of a client with hooks (its ``call``): the hooks are told of the call's start, with the
        metadata it is to carry, and of its outcome, whatever it is (cancellation too)."""
        hooks: Hooks = self._hooks  # type: ignore[assignment]
        sent, states = hooks.started(method, None if meta is None else checked_meta(meta))
        try:
            result = await Client.call(self, method, params, timeout=timeout, idempotent=idempotent, meta=sent)
        except BaseException as exc:
            hooks.ended(method, states, exc)
            raise
        hooks.ended(method, states, None)
        return result

    async def _call_anywhere(self, method: str, params: Any, timeout: Optional[float], deadline: Optional[float],
                             idempotent: Optional[bool], refused: Optional[ShuttingDown], meta: Optional[Dict[str, str]],
                             again: bool) -> Any:
        """``call`` through the balancer, by ``deadline`` (loop time): a connection is chosen (opened if need
        be) and the call is sent again where that is safe: refused unrun, not sent, or lost and idempotent
        with ``retries``. ``again``: an attempt was made already (on the direct path)."""
        loop = self._loop
        endpoints = self._endpoints
        lost = 0
        for _ in range(len(endpoints.all) + self.retries + MAX_REFUSALS):
            endpoint = endpoints.pick(loop.time())
            link = None if endpoint is None else endpoint.link
            if link is None or not link.open:  # a connection to open, or a lost one to retire
                try:
                    endpoint, link = await self._choose(deadline, method, timeout)
                except ConnectionClosed:
                    if refused is not None:
                        raise refused from None  # nowhere else to send it: the refusal says most
                    raise
            if deadline is None:
                left = None
            else:
                left = deadline - loop.time()
                if left <= 0:
                    raise CallTimeout(f"call to {method!r} timed out after {timeout} s")
            if again and self._hooks is not None:
                self._hooks.retried(method)
            endpoint.load += 1
            try:
                return await link.call(method, params, left, timeout, meta)
            except NotSent:
                pass
            except ShuttingDown as exc:
                if not exc.never_ran:
                    raise
                link.drained("refused")  # the notice may still be on its way
                refused = exc
            except ConnectionClosed:
                if lost >= self.retries or self._closing or not resendable(method, idempotent, self.idempotent):
                    raise
                await asyncio.sleep(retry_delay(lost))
                lost += 1
            finally:
                endpoint.load -= 1
            again = True  # only a failed attempt gets here
        if refused is not None:
            raise refused
        raise ConnectionClosed(f"call to {method!r} found no connection to send it on")

    async def _choose(self, deadline: Optional[float], method: str = "", timeout: Optional[float] = None,
                      ) -> Tuple[Endpoint, _ClientProtocol]:
        """The endpoint for a call and its open connection. One that has none gets one opened; the call
        waits for it (by ``deadline``, loop time) only if no other endpoint has an open connection. One
        that cannot be reached is set aside and the next is tried. ConnectionClosed if none can be."""
        endpoints = self._endpoints
        loop = self._loop
        if self._closing:
            raise ConnectionClosed("connection is closed")
        now = loop.time()
        failure: Optional[ConnectionClosed] = None
        tried: Set[Endpoint] = set()
        while True:
            endpoint = endpoints.choose(now, tried, self._replace_lost, _ignore)  # a lost link has closed already
            self._plan_resolution()  # sooner, if a lost link set an endpoint aside
            if endpoint is None:
                assert failure is not None
                raise failure
            link = endpoint.link
            if link is not None and link.open:
                return endpoint, link
            task = endpoint.dialing
            if task is None:
                task = endpoint.dialing = loop.create_task(self._dial_endpoint(endpoint))
                task.add_done_callback(_consume)
            other = endpoints.pick_open(endpoint)
            if other is not None:
                return other, other.link
            tried.add(endpoint)
            endpoint.load += 1  # calls waiting for its connection count, so that others go elsewhere
            try:
                return endpoint, await asyncio.wait_for(asyncio.shield(task), None if deadline is None else deadline - now)
            except asyncio.TimeoutError:
                if task.done():
                    raise  # the dial's own (its authentication timed out), not this wait's
                raise CallTimeout(f"call to {method!r} timed out after {timeout} s connecting to "
                                  f"{address_text(endpoint.address)}") from None
            except asyncio.CancelledError:
                if task.cancelled() and self._closing:  # close() stopped the dial, not our caller
                    raise ConnectionClosed("connection is closed") from None
                raise
            except ConnectionClosed as exc:
                failure = exc
            finally:
                endpoint.load -= 1
            now = loop.time()

    async def _dial_endpoint(self, endpoint: Endpoint) -> _ClientProtocol:
        try:
            link = await self._dial(endpoint.address)
        except ConnectionClosed:
            self._endpoints.failed(endpoint, self._loop.time())
            self._plan_resolution()
            raise
        finally:
            endpoint.dialing = None
        if self._hooks is not None:
            self._watch(link, address_text(endpoint.address))
        if self._closing:
            link.transport.close()  # type: ignore[union-attr]
            raise ConnectionClosed("connection is closed")
        self._endpoints.succeeded(endpoint)
        if endpoint in self._endpoints.all:
            self._set_link(endpoint, link)
        else:
            self._retire(link)  # the endpoint was dropped meanwhile: this call only, then close
        return link

    def _watch(self, link: _ClientProtocol, address: str) -> None:
        """Tell the hooks that ``link`` opened, and that it closed once it does."""
        hooks: Hooks = self._hooks  # type: ignore[assignment]
        hooks.opened(address)
        link.lost.add_done_callback(lambda _: hooks.closed(address))

    def _set_link(self, endpoint: Endpoint, link: Optional[_ClientProtocol]) -> None:
        old = endpoint.link
        if old is not None and old is not link:
            self._retire(old)
        endpoint.link = link
        self._link = self._endpoints.direct_link()

    def _retire(self, link: _ClientProtocol) -> None:
        """``link`` takes no new calls: it closes (or its server closes it) once its replies are in."""
        if not link.lost.done():
            self._old.add(link)
            link.lost.add_done_callback(lambda _: self._old.discard(link))
            link.close_when_idle()

    def _plan_resolution(self) -> None:
        """Have the names resolved again at ``resolve_at`` (sooner after a failure): by a timer, so that
        calls do not look at the clock for it."""
        at = self._endpoints.resolve_at
        timer = self._resolve_timer
        if at == math.inf or self._closing or (timer is not None and self._resolve_planned <= at):
            return
        if timer is not None:
            timer.cancel()
        self._resolve_timer = self._loop.call_at(at, self._start_resolving)
        self._resolve_planned = at

    def _start_resolving(self) -> None:
        self._resolve_timer = None
        if self._resolving is None and not self._closing:
            self._resolving = self._loop.create_task(self._resolve_again())

    async def _resolve_again(self) -> None:
        """Resolve the names (or ask the resolver) again: new addresses get calls, vanished ones none."""
        endpoints = self._endpoints
        try:
            addresses = await self._resolve()
        except Exception as exc:  # DNS down, a resolver's bug: keep what we have, try again later
            log.warning("fastrpc client: resolving the servers' addresses failed (keeping %d): %s",
                        len(endpoints.all), exc)
            addresses = []
        else:
            if not addresses:
                log.warning("fastrpc client: resolving found no server addresses (keeping %d)", len(endpoints.all))
        finally:
            self._resolving = None
        for endpoint in endpoints.update(addresses, self._loop.time()):
            self._set_link(endpoint, None)
        self._link = endpoints.direct_link()
        self._plan_resolution()

    async def close(self) -> None:
        """Close every connection; pending calls fail with ConnectionClosed."""
        self._closing = True
        if self._resolve_timer is not None:
            self._resolve_timer.cancel()
        for task in [self._resolving] + [e.dialing for e in self._endpoints.all]:
            if task is not None:
                task.cancel()
        links = [e.link for e in self._endpoints.all if e.link is not None] + list(self._old)
        for link in links:
            if link.transport is not None:
                link.flush()
                link.transport.close()
        if links:
            await asyncio.shield(asyncio.gather(*(link.lost for link in links)))

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


def _expire(future: "asyncio.Future[Any]", method: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(CallTimeout(f"call to {method!r} timed out after {timeout} s"))


def _ignore(link: Any) -> None:
    pass


def _consume(task: "asyncio.Task[None]") -> None:
    if not task.cancelled():
        task.exception()  # every waiter sees it; this keeps asyncio from logging it as never retrieved


async def _dial(
    address: Address,
    *,
    ids: bool,
    max_frame_size: int,
    connect_timeout: Optional[float],
    ssl: Optional[SSLContext],
    server_hostname: Optional[str],
    token: Optional[str],
    max_pending: int,
) -> _ClientProtocol:
    """Open a connection, authenticate it and ask for notices: it is ready for calls."""
    host, port = address
    loop = asyncio.get_running_loop()
    core = ClientConnection(_deliver, ids=ids, max_frame_size=max_frame_size)
    try:
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: _ClientProtocol(core, loop, max_pending), host, port, ssl=ssl,
                                   server_hostname=(server_hostname or host) if ssl is not None else None),
            connect_timeout,
        )
    except (asyncio.TimeoutError, OSError) as exc:  # ssl.SSLError too: a failed handshake
        raise connect_failed(host, port, exc, connect_timeout) from exc
    if token is not None:
        try:
            await protocol.call(AUTH_METHOD, token, connect_timeout)
        except BaseException as exc:
            protocol.transport.close()  # type: ignore[union-attr]
            if isinstance(exc, CallTimeout):  # a server that takes connections and never answers: unreachable
                raise connect_failed(host, port, exc, connect_timeout) from exc
            raise
    core.ask_for_notices()
    protocol.schedule_flush()
    return protocol


async def _resolve_names(loop: asyncio.AbstractEventLoop, targets: Sequence[Address]) -> List[Address]:
    """Every address of ``targets``: IP addresses as they are, names by ``getaddrinfo`` (A and AAAA)."""
    found: List[Address] = []
    for host, port in targets:
        if is_ip(host):
            found.append((host, port))
        else:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise connect_failed(host, port, exc) from exc
            found.extend(addresses_from(infos, port))
    return list(dict.fromkeys(found))


async def _ask(resolver: Resolver, port: int) -> List[Address]:
    result = resolver()
    if inspect.isawaitable(result):
        result = await result
    return check_addresses(result, port)


class connect:
    """Open a client: ``client = await connect(...)`` or ``async with connect(...) as client``.

    ``host`` is one host (with ``port``), or a list of ``"host:port"``
    strings or ``(host, port)`` pairs. A host name is resolved to all its
    addresses (A and AAAA records: a Kubernetes headless Service gives one per
    ready pod), and resolved again every ``resolve_interval`` seconds and soon
    after a failure, so that new instances get calls and vanished ones none.
    ``resolver`` (a function, or a coroutine function, returning a list of
    ``"host:port"`` or ``(host, port)``) replaces that for any other discovery
    system; a plain function runs on the event loop, so it must not block. Each call goes to the less loaded (fewest calls outstanding) of two
    endpoints drawn at random; one that refuses or drops connections is set
    aside with backoff. One connection per endpoint, opened when first
    chosen; ``connect`` returns once one is open. A server's drain notice moves
    new calls off its connection at once (for a single address, onto a new
    connection to it: through a balancer, to another instance).

    ``ids=False`` selects the ordered mode for servers that answer without
    ids, in request order. ``timeout`` is the default per-call timeout.
    ``ssl`` (an ``ssl.SSLContext``, e.g. from ``fastrpc.tls.client_context``)
    makes it a TLS connection; ``server_hostname`` overrides the name the
    server's certificate is checked against (default: the host name given).
    ``token`` authenticates each connection first (``fastrpc.Unauthenticated``
    if refused). At most ``max_pending`` calls are sent and unanswered at once
    on a connection; further calls wait (within their timeout) for room, so
    memory stays bounded however many are started.

    ``retries`` (default 0: off) makes the client replace a lost connection,
    and resend each call lost with it, up to that many times, if the call is
    idempotent: its method is in ``idempotent``, or it was made with
    ``call(..., idempotent=True)``. Calls that may have run and must not run
    twice fail with ConnectionClosed instead.

    ``hooks`` (``fastrpc.hooks.ClientHook`` instances, for metrics and
    tracing) are told of every call's start (and may add to its metadata),
    its outcome and its resends, and of every connection opened and closed.
    """

    def __init__(
        self,
        host: EndpointSpec = "127.0.0.1",
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
        resolver: Optional[Resolver] = None,
        resolve_interval: Optional[float] = DEFAULT_RESOLVE_INTERVAL,
        hooks: Sequence[ClientHook] = (),
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending!r}")
        targets = parse_endpoints(host, port)
        if server_hostname is None and ssl is not None and len(targets) == 1 and not is_ip(targets[0][0]):
            server_hostname = targets[0][0]  # the certificate names the host, not the addresses it resolves to
        dial = functools.partial(_dial, ids=ids, max_frame_size=check_max_frame_size(max_frame_size),
                                 connect_timeout=connect_timeout, ssl=ssl, server_hostname=server_hostname,
                                 token=token, max_pending=max_pending)
        self._coro = self._open(targets, port, resolver, resolve_interval, dial,
                                dict(timeout=timeout, retries=check_retries(retries), idempotent=idempotent,
                                     hooks=hooks))
        self._client: Optional[Client] = None

    @staticmethod
    async def _open(targets: List[Address], port: int, resolver: Optional[Resolver], resolve_interval: Optional[float],
                    dial: Callable[[Address], Awaitable[_ClientProtocol]], options: Dict[str, Any]) -> Client:
        loop = asyncio.get_running_loop()
        if resolver is not None:
            resolve: Callable[[], Awaitable[List[Address]]] = functools.partial(_ask, resolver, port)
        else:
            resolve = functools.partial(_resolve_names, loop, targets)
        dynamic = resolver is not None or not all(is_ip(host) for host, _ in targets)
        addresses = await resolve() if dynamic else targets
        if not addresses:
            raise ConnectionClosed("no server to call: the resolver found no addresses")
        endpoints = Endpoints(addresses, dynamic=dynamic, resolve_interval=resolve_interval, now=loop.time())
        client = Client(endpoints, dial, resolve, loop=loop, **options)
        # Open one connection now, so that a wrong address or token shows here and not at the first call.
        try:
            await client._choose(None)
        except BaseException:
            await client.close()
            raise
        return client

    def __await__(self) -> Generator[Any, None, Client]:
        return self._coro.__await__()

    async def __aenter__(self) -> Client:
        self._client = await self._coro
        return self._client

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._client is not None
        await self._client.close()
