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
from heapq import heapify, heappop, heappush
from ssl import SSLContext
from typing import Any, Awaitable, Callable, Deque, Dict, Generator, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

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
from .contracts import decode
from .errors import CallTimeout, ConnectionClosed, FastRPCError, ShuttingDown
from .framing import TIMER_SLACK
from .hooks import ClientHook, Hooks, checked_meta
from .limits import DEFAULT_MAX_FRAME_SIZE, check_max_frame_size
from .net import address_text, connect_failed, set_nodelay
from .protocol import ABSENT, ClientConnection
from .retry import NotSent, check_retries, resendable, retry_delay
from .streams import DEFAULT_WINDOW, Stream, on_item

__all__ = ["Client", "connect", "DEFAULT_MAX_PENDING"]

log = logging.getLogger("fastrpc.client")

#: Calls a client keeps sent and unanswered at once before further calls wait.
DEFAULT_MAX_PENDING = 10_000
#: Times a call refused unrun by draining servers is sent again, beyond one try per endpoint.
MAX_REFUSALS = 3

_get_running_loop = asyncio._get_running_loop


class _Call(asyncio.Future):
    """One call's future: what ``Client.call`` returns on its direct path, so that ``gather`` takes it as
    it is (no Task per call) and its reply resolves it with ``set_result`` alone.

    Giving up on it (``cancel()``: its caller was cancelled, or a timeout around it fired) forgets the
    call and tells the server to stop it. It is a coroutine in form too (``send``, ``throw``,
    ``close``), so that ``create_task(client.call(...))`` works as it did when ``call`` was a coroutine
    function.
    """

    __slots__ = ("_link", "_key", "_again", "_steps")

    _link: "_ClientProtocol"
    _key: int
    #: With a refusal resent by the call itself (the direct path): ``Client._call_anywhere``'s
    #: arguments (set by ``ClientCore.send``), then the task resending it. Left unset otherwise (a
    #: store per call saved): read with ``getattr``, on the rare paths only.
    _again: "Union[Tuple[Any, ...], asyncio.Task[Any]]"

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        again = getattr(self, "_again", None)
        if again is not None and type(again) is not tuple:
            again.cancel()
        self._link.forget(self._key)  # a no-op if it was answered; else a cancel frame goes out
        return True

    def resend(self, refused: ShuttingDown) -> None:
        """A draining server refused it unrun: send it again, as ``Client.call`` would, and take that outcome."""
        client, method, params, meta, idempotent, timeout, deadline = self._again  # type: ignore[misc]
        self._link.drained("refused")  # the notice may still be on its way
        task = self.get_loop().create_task(
            client._call_anywhere(method, params, timeout, deadline, idempotent, refused, meta, True))
        self._again = task
        task.add_done_callback(self._resent)

    def _resent(self, task: "asyncio.Task[Any]") -> None:
        if self.done():
            return
        if task.cancelled():
            self.cancel()
        elif task.exception() is not None:
            self.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            self.set_result(task.result())

    # The coroutine form: a Task running it awaits the future, step by step.

    def _awaiting(self) -> Any:
        steps = getattr(self, "_steps", None)  # an unset slot: first step
        if steps is None:
            steps = self._steps = self.__await__()
        return steps

    def send(self, value: Any) -> Any:
        return self._awaiting().send(value)

    def throw(self, *exc: Any) -> Any:
        self.cancel()  # its caller gives up on it
        return self._awaiting().throw(*exc)

    def close(self) -> None:
        self.cancel()


def _deliver(call: _Call, result: Any, error: Optional[BaseException]) -> None:
    """The core's ``deliver`` (its successes go to ``_Call.set_result`` straight)."""
    if call.done():
        return
    if error is None:
        call.set_result(result)
    elif getattr(call, "_again", None) is not None and isinstance(error, ShuttingDown) and error.never_ran:
        call.resend(error)
    else:
        call.set_exception(error)


def _coroutine_function(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` marked for ``asyncio.iscoroutinefunction`` (and ``inspect``'s, where Python can mark it)."""
    marker = getattr(asyncio.coroutines, "_is_coroutine", None)
    if marker is not None:
        func._is_coroutine = marker  # type: ignore[attr-defined]
    mark = getattr(inspect, "markcoroutinefunction", None)
    return mark(func) if mark is not None else func


def _failed(loop: asyncio.AbstractEventLoop, error: BaseException) -> "asyncio.Future[Any]":
    future = loop.create_future()
    future.set_exception(error)
    return future


class _ClientProtocol(asyncio.BufferedProtocol):
    """One connection: moves bytes between the socket and its ``ClientConnection``, makes calls on it."""

    def __init__(self, core: ClientConnection, loop: asyncio.AbstractEventLoop, max_pending: int) -> None:
        self.core = core
        self.waiters = core.waiters  # its pending calls: their count, read on each call
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
        # Timeouts: calls sent one after another with one method and timeout form a group, [when, first key,
        # last key, method, stated timeout] (TIMER_SLACK), with one timer for the earliest group.
        self._timeouts: List[List[Any]] = []  # a heap of groups; answered ones are dropped lazily
        self._group: Optional[List[Any]] = None  # the group the next call may join
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = math.inf

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
        if self._timeouts and not self.waiters:
            self._timeouts.clear()  # every call was answered (a timer left armed finds nothing)
            self._group = None

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.open = False
        self.core.close(self.error or exc)
        self._timeouts.clear()
        self._group = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.lost.done():
            self.lost.set_result(None)
        self.make_room()

    @property
    def draining(self) -> Optional[str]:
        """The reason of the server's drain notice (or of a refusal), or None."""
        return self.core.draining

    def connected(self) -> bool:
        """The connection is up (it may be draining)."""
        return not self.lost.done()

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
        free = self.max_pending - len(self.waiters) - self.waking
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
        """Make one call on this connection (see ``Client.call``), waiting for room if need be; NotSent if
        it took no new calls. ``stated``: the timeout to name in a CallTimeout, when ``timeout`` is what is
        left of it; ``meta``: checked metadata (``checked_meta``)."""
        stated = timeout if stated is None else stated
        if len(self.waiters) + self.waking >= self.max_pending or self.room:
            await self._wait_for_room(method, timeout, stated)
        if not self.open:
            raise NotSent("connection is closed")
        deadline = None if timeout is None else self.loop.time() + timeout
        # Sent now, room or not: the core makes its _Call (of the running loop, this one: a loop argument
        # costs a third of the future), which fails with CallTimeout naming ``stated`` s at ``deadline``.
        return await self.core.send(self, _Call, method, params, timeout, stated, meta, deadline, self._group)

    def _start_group(self, key: int, method: str, stated: Optional[float], deadline: float) -> None:
        """A new timeout group, of call ``key`` so far: it fires at ``deadline``."""
        heap = self._timeouts
        core = self.core
        if len(heap) > 2 * len(self.waiters) + 64:  # mostly answered groups (calls never all answered at once)
            heap[:] = [group for group in heap if core.any_pending(group[1], group[2])]
            heapify(heap)
        group = self._group = [deadline, key, key, method, stated]
        heappush(heap, group)
        if group[0] < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(group[0], self._expire)
            self._timer_at = group[0]

    def _expire(self) -> None:
        """The earliest group's time came: its calls still pending fail with CallTimeout (and are
        cancelled on the server); the timer is set for the next group."""
        self._timer = None
        self._timer_at = math.inf
        heap = self._timeouts
        # Loops round timers (uvloop to the millisecond): a group within the slack of its time is due, lest
        # the timer be set again and again for what is left.
        now = self.loop.time() + TIMER_SLACK
        expired = False
        while heap and heap[0][0] <= now:
            _, first, last, method, stated = heappop(heap)
            for call in self.core.forget_range(first, last):
                expired = True
                if not call.done():
                    call.set_exception(CallTimeout(f"call to {method!r} timed out after {stated} s"))
        self._group = None
        if expired:
            self.schedule_flush()  # the cancel frames
            self.make_room()
        if heap:
            self._timer = self.loop.call_at(heap[0][0], self._expire)
            self._timer_at = heap[0][0]

    def forget(self, key: int) -> None:
        """Its caller gave up on call ``key``: forget it (a no-op if it was answered; else a cancel frame goes out)."""
        self.core.forget(key)
        self.schedule_flush()
        self.make_room()

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

    def call(
        self, method: str, params: Any = ABSENT, *, timeout: Optional[float] = ABSENT,
        idempotent: Optional[bool] = None, meta: Optional[Mapping[str, str]] = None, result_type: Any = None,
    ) -> Awaitable[Any]:
        """Call ``method`` with ``params`` and return its result.

        ``params`` may be a list (positional arguments), a dict (keyword
        arguments), any other JSON value (one argument), or left out (none).
        ``timeout`` (seconds; default: the client's) is sent along as the
        call's deadline and raises CallTimeout; the server is then told to
        stop the call, and a late reply, if any, is dropped. Remote errors raise the RemoteError
        subclass of their code; a lost connection raises ConnectionClosed.

        A call a draining server refused before running it (ShuttingDown with
        ``never_ran``) is sent again at once: to another endpoint, or on a new
        connection to the same address (through a balancer, another instance);
        if no connection can be opened while the server drains, ShuttingDown
        (never ran), even when the drain notice came before the call.
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

        ``result_type``: a type hint (a dataclass, ``List[Order]``, an Enum...)
        the result is converted into, as typed handlers' params are
        (``fastrpc.contracts.decode``); ``contracts.DecodeError``, listing each
        mismatch under ``result``, if it does not fit.

        The call is written when ``call`` is called, with the others of the
        same loop iteration, and an awaitable is returned: its future on the
        direct path (one endpoint with an open connection that has room, no
        ``retries``, no hooks, called on the client's loop), so that
        ``asyncio.gather`` needs no Task per call; a coroutine elsewhere.
        Either may be awaited, gathered, or given to ``create_task``.
        """
        if result_type is not None:
            return self._decoded(self.call(method, params, timeout=timeout, idempotent=idempotent, meta=meta), result_type)
        link = self._link
        if link is not None and link.open and not self.retries and not link.room and _get_running_loop() is self._loop:
            if len(link.waiters) + link.waking < link.max_pending:
                if timeout is ABSENT:
                    timeout = self.timeout
                try:
                    if meta is not None:
                        meta = checked_meta(meta)
                    deadline = None if timeout is None else self._loop.time() + timeout
                    # One C call (ClientCore.send): the future, the request, its timeout group; it resends
                    # itself through this client if refused unrun.
                    return link.core.send(link, _Call, method, params, timeout, timeout, meta, deadline, link._group,
                                          self, idempotent)
                except Exception as exc:  # raised when awaited, as the coroutine raised it
                    return _failed(self._loop, exc)
        return self._call(method, params, timeout, idempotent, meta)

    @staticmethod
    async def _decoded(call: Awaitable[Any], result_type: Any) -> Any:
        return decode(await call, result_type, path="result")

    async def _call(self, method: str, params: Any, timeout: Optional[float], idempotent: Optional[bool],
                    meta: Optional[Mapping[str, str]]) -> Any:
        """``call`` off its direct path: waiting for room, or for a connection, or resent after a refusal,
        a lost connection (``retries``) or one that took no new calls."""
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

    # Code that tells async callables from blocking ones (a server given ``client.call`` as a handler) takes
    # it as one: it returns an awaitable, a coroutine or not.
    call = _coroutine_function(call)

    def stream(
        self, method: str, params: Any = ABSENT, *, window: int = DEFAULT_WINDOW, timeout: Optional[float] = ABSENT,
        meta: Optional[Mapping[str, str]] = None,
    ) -> Stream:
        """Call streaming ``method`` (a generator on the server) with ``params``: ``async for item in
        client.stream(...)`` takes its items as they come (docs/protocol.md section 12).

        At most ``window`` items are sent ahead of the consumer: the server's generator waits while the
        consumer does not take them, so a slow consumer bounds memory on both sides. ``timeout``
        (default: the client's) covers the whole stream, as the deadline sent to the server:
        CallTimeout when it passes. Leaving the loop early (``break``, an exception, a cancelled task)
        or ``aclose()`` stops the stream on the server, whose generator's ``finally`` runs. A failure
        on the server mid-stream raises its RemoteError once the items before it are taken.
        """
        return Stream(self, method, params, window, self.timeout if timeout is ABSENT else timeout,
                      None if meta is None else checked_meta(meta))

    async def call_many(
        self, calls: Iterable[Union[Tuple[str], Tuple[str, Any]]], *, timeout: Optional[float] = ABSENT,
        return_exceptions: bool = False, idempotent: Optional[bool] = None, meta: Optional[Mapping[str, str]] = None,
    ) -> List[Any]:
        """Make ``calls``, each ``(method,)`` or ``(method, params)``, in one write (as
        ``SyncClient.call_many`` does); return their results in order. Every
        outcome is waited for before anything is raised; then the first failure in list order is
        raised, unless ``return_exceptions`` is true: failed calls then hold their exception in the
        list, as with ``asyncio.gather``. ``timeout``, ``idempotent`` and ``meta`` apply to each call as
        in ``call``: each is resent, or fails, on its own. Cancelled, it cancels every call still pending.

        Cheaper than ``gather`` of ``call``: the calls' futures are awaited in turn (a future already
        answered costs no wait), with no callback per call.
        """
        made = [self.call(*call, timeout=timeout, idempotent=idempotent, meta=meta) for call in calls]
        if not all(type(call) is _Call for call in made):  # off the direct path: coroutines, to run at once
            made = [asyncio.ensure_future(call) for call in made]
        results: List[Any] = []
        first: Optional[Exception] = None  # the first failure
        try:
            for call in made:
                try:
                    results.append(await call)
                except Exception as exc:
                    results.append(exc)
                    if first is None:
                        first = exc
        except BaseException:  # cancelled: so are the calls still pending
            for call in made:
                call.cancel()
            raise
        if first is not None and not return_exceptions:
            raise first
        return results

    async def _call_hooked(
        self, method: str, params: Any = ABSENT, *, timeout: Optional[float] = ABSENT,
        idempotent: Optional[bool] = None, meta: Optional[Mapping[str, str]] = None,
    ) -> Any:
        """``call`` of a client with hooks (its ``call``): the hooks are told of the call's start, with the
        metadata it is to carry, and of its outcome, whatever it is (cancellation too)."""
        hooks: Hooks = self._hooks  # type: ignore[assignment]
        sent, states = hooks.started(method, None if meta is None else checked_meta(meta))
        try:
            result = await self._call(method, params, timeout, idempotent, sent)
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
        that cannot be reached is set aside and the next is tried. ConnectionClosed if none can be
        (``Endpoints.unreachable``: ShuttingDown while a server it is connected to drains)."""
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
                raise endpoints.unreachable(failure)
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
    core = ClientConnection(_deliver, resolve=_Call.set_result, ids=ids, max_frame_size=max_frame_size, on_item=on_item)
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
