"""Streams on the async client: ``async for item in client.stream(method, params)``.

The wire side (request with ``credit``, item, end and credit frames) is ``protocol``'s and
docs/protocol.md section 12's; this module waits for items on the event loop, grants credit as
the consumer takes them, and stops the stream on the server when the consumer stops.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Dict, Optional

from .errors import CallTimeout, ProtocolError, ShuttingDown
from .protocol import StreamEnd, check_window

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client, _ClientProtocol

__all__ = ["DEFAULT_WINDOW", "Stream"]

#: Items a stream's server may send ahead of its consumer: the most either side buffers.
DEFAULT_WINDOW = 256
#: Times a stream refused unrun by draining servers is sent again (a call's MAX_REFUSALS).
MAX_REFUSALS = 3


class StreamWaiter(asyncio.Future):  # type: ignore[type-arg]
    """A stream's pending entry in its connection's core: its items as they arrive, and a future done
    when it ends (the ``StreamEnd`` result), fails, or was answered as a plain call."""

    __slots__ = ("items", "wake")
    _again = None  # never resent by the client's ``_deliver`` (a stream is not a ``_Call``)

    def __init__(self) -> None:
        super().__init__()
        self.items: Deque[Any] = deque()
        self.wake: "Optional[asyncio.Future[None]]" = None  # what the consumer awaits, while it does
        self.add_done_callback(_wake)


def _wake(waiter: StreamWaiter) -> None:
    wake, waiter.wake = waiter.wake, None
    if wake is not None and not wake.done():
        wake.set_result(None)


def on_item(waiter: Any, item: Any) -> bool:
    """The core's ``on_item``: keep an item for the stream's consumer (False: not a stream's waiter)."""
    if type(waiter) is not StreamWaiter:
        return False
    waiter.items.append(item)
    if waiter.wake is not None:
        _wake(waiter)
    return True


class Stream:
    """One streaming call, as ``Client.stream`` returns it: an async iterator of the items.

    It is sent when first iterated. Leaving the loop early (``break``, an exception, a cancelled task)
    or ``aclose()`` stops the stream on the server (its generator's ``finally`` runs there); so does
    ``async with``'s end. ``sent`` is, once it ended, how many items the server sent.
    """

    def __init__(self, client: "Client", method: str, params: Any, window: int, timeout: Optional[float],
                 meta: Optional[Dict[str, str]]) -> None:
        self._client = client
        self.method = method
        self._params = params
        self._window = window
        self._timeout = timeout
        self._meta = meta
        self._waiter: Optional[StreamWaiter] = None
        self._link: "Optional[_ClientProtocol]" = None
        self._key = 0
        self._taken = 0  # items taken since credit was last granted
        self._timer: Optional[asyncio.TimerHandle] = None
        self._deadline: Optional[float] = None
        self._refusals = 0
        self._states: Any = None  # the client's hooks' states, once told of the start
        self._over = False  # ended, failed or stopped: the server owes it nothing more
        self.sent: Optional[int] = None
        check_window(window)  # here, so that a bad window fails at the call; last: __del__ reads the fields above

    def __aiter__(self) -> "Stream":
        return self

    async def __anext__(self) -> Any:
        if self._over:
            raise StopAsyncIteration
        waiter = self._waiter
        if waiter is None:
            waiter = await self._start()
        while True:
            items = waiter.items
            if items:
                self._taken += 1
                if self._taken * 2 >= self._window and not waiter.done():  # half the window taken: grant it again
                    self._link.core.grant(self._key, self._taken)  # type: ignore[union-attr]
                    self._link.schedule_flush()  # type: ignore[union-attr]
                    self._taken = 0
                return items.popleft()
            if waiter.done():
                if self._refused(waiter):  # by a draining server, unrun: sent again, elsewhere
                    waiter = await self._send()
                    continue
                self._finish(waiter)  # raises
            wake = waiter.wake = self._client._loop.create_future()
            try:
                await wake
            except BaseException as exc:  # cancelled: the stream is stopped on the server
                self._stop(exc)
                raise

    async def _start(self) -> StreamWaiter:
        client = self._client
        loop = client._loop
        if self._timeout is not None:
            self._deadline = loop.time() + self._timeout
            self._timer = loop.call_at(self._deadline, self._expire)
        if client._hooks is not None:
            self._meta, self._states = client._hooks.started(self.method, self._meta)
        return await self._send()

    async def _send(self) -> StreamWaiter:
        """Send the stream on a connection that takes calls, chosen as a call's would be."""
        client = self._client
        deadline = self._deadline
        try:
            link = client._link
            if link is None or not link.open:
                _, link = await client._choose(deadline, self.method, self._timeout)
            waiter = StreamWaiter()
            left = None if deadline is None else max(deadline - client._loop.time(), 0.0)
            self._key = link.core.request_stream(self.method, self._params, waiter, self._window, left, self._meta)
        except BaseException as exc:
            self._stop(exc)
            raise
        self._link = link
        self._waiter = waiter
        link.schedule_flush()
        return waiter

    def _refused(self, waiter: StreamWaiter) -> bool:
        """Whether the stream was refused unrun by a draining server and may be sent again: then its
        connection takes no more calls (the drain notice may still be on its way)."""
        if waiter.cancelled() or self._refusals >= MAX_REFUSALS:
            return False
        error = waiter.exception()
        if not isinstance(error, ShuttingDown) or not error.never_ran:
            return False
        self._refusals += 1
        self._link.drained("refused")  # type: ignore[union-attr]
        if self._client._hooks is not None:
            self._client._hooks.retried(self.method)
        return True

    def _expire(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(CallTimeout(f"stream of {self.method!r} timed out after {self._timeout} s"))
            self._link.forget(self._key)  # type: ignore[union-attr]  # the cancel frame

    def _finish(self, waiter: StreamWaiter) -> None:
        """The stream's waiter is done and its items taken: StopAsyncIteration, or its failure."""
        error: Optional[BaseException] = None
        if waiter.cancelled():
            error = asyncio.CancelledError()
        else:
            error = waiter.exception()
            if error is None:
                result = waiter.result()
                if type(result) is StreamEnd:
                    self.sent = result.sent
                else:
                    error = ProtocolError(f"{self.method!r} is not a streaming method: it answered with one result")
        self._stop(error)
        if error is not None:
            raise error
        raise StopAsyncIteration

    def _stop(self, error: Optional[BaseException]) -> None:
        """The stream is over for its consumer: stop it on the server if it still runs there, and tell the hooks."""
        if self._over:
            return
        self._over = True
        if self._timer is not None:
            self._timer.cancel()
        waiter, link = self._waiter, self._link
        if waiter is not None and not waiter.done():
            waiter.cancel()
            if not link.loop.is_closed():  # type: ignore[union-attr]
                link.forget(self._key)  # type: ignore[union-attr]  # the cancel frame
        if self._states is not None:
            self._client._hooks.ended(self.method, self._states, error)  # type: ignore[union-attr]

    async def aclose(self) -> None:
        """Stop the stream (on the server too); the loop over it then ends."""
        self._stop(None)

    async def __aenter__(self) -> "Stream":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self._stop(exc_info[1])

    def __del__(self) -> None:
        if not self._over and self._waiter is not None:
            self._stop(None)
