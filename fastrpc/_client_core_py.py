"""Pure-Python twin of ``fastrpc._client_core``: a client connection's per-call path.

Used where the extensions are not built or ``FASTRPC_NO_EXTENSIONS=1`` is set. The compiled
``ClientCore`` keeps to this one's behaviour: the same request bytes, call for call, and the
same outcomes, reply for reply (tests/test_client_core.py compares them). It differs only in
how it writes requests: straight into one framed buffer rather than as bodies joined by
``pack_frames``.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any, Deque, Dict, List, Mapping, Optional

import orjson

from ._framing_py import FrameReader, pack_frames
from .errors import FrameTooLarge

__all__ = ["ClientCore", "TIMER_SLACK", "join_group"]

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError

#: Seconds within which the async client's calls made together (one after another, with one method and
#: timeout) share a timer: it fires at the first one's time, the others' at most this early (a timer per
#: call cost more than the rest of the call). Timers of loops are that coarse anyway (uvloop's: a millisecond).
TIMER_SLACK = 0.001  # keep equal to _client_core's


class ClientCore:
    """Calls out as request frames, reply frames in as outcomes: what every call of a connection runs.

    ``protocol.ClientConnection`` is built on it and supplies the rest, which the core calls on
    itself: ``_encode(method, params, rid, deadline, meta)`` (``protocol.encode_request``),
    ``_unmatched(reply)`` (a reply no pending call waits for by id: a notice, a connection
    error), ``_other(rid, waiter, reply)`` (a reply that is not a success: a failure, or a
    stream's item or end) and ``_not_a_reply(body)`` (the error for a frame that is not a JSON
    object). It sets ``_deliver(waiter, result, error)`` and ``_resolve(waiter, result)``, which
    outcomes are handed to: a success to ``_resolve``, a failure to ``_deliver``; and
    ``_on_item(waiter, item)``, which a stream's items go to (it says whether ``waiter`` is a
    stream's, which then stays pending).
    """

    def __init__(self, max_frame_size: int, ids: bool) -> None:
        self._reader = FrameReader(max_frame_size)
        self._max_frame_size = self._reader.max_frame_size
        self.ids = ids
        self._next_key = itertools.count(1).__next__
        #: The waiters of the calls pending, by key: the I/O layer reads it (its length is the count
        #: of calls pending, without a property's call), never changes it.
        self.waiters: Dict[int, Any] = {}
        self._order: Deque[int] = deque()  # keys of id-less requests, oldest first
        self._out: List[bytes] = []
        self._deliver: Any = None
        self._resolve: Any = None
        self._on_item: Any = None

    def request(self, method: str, params: Any, waiter: Any, deadline: Optional[float] = None,
                meta: Optional[Mapping[str, str]] = None) -> int:
        """Queue a call; returns its key for ``forget``. ``deadline`` (seconds) tells the server when
        to give up on it; ``meta`` is its metadata.

        Raises FrameTooLarge (nothing queued) if the request does not fit the maximum frame size;
        ValueError if ``meta`` is not valid metadata. The key is used up either way.
        """
        key = self._next_key()
        body = self._encode(method, params, key if self.ids else None, deadline, meta)  # type: ignore[attr-defined]
        if len(body) > self._max_frame_size:
            raise FrameTooLarge(len(body), self._max_frame_size)
        self._out.append(body)
        self.waiters[key] = waiter
        if not self.ids:
            self._order.append(key)
        return key

    def send(self, link: Any, waiter_type: Any, method: str, params: Any, timeout: Optional[float],
             stated: Optional[float], meta: Optional[Mapping[str, str]], deadline: Optional[float],
             group: Optional[List[Any]], client: Any = None, idempotent: Optional[bool] = None) -> Any:
        """The async client's sending of a call on ``link`` (a ``client._ClientProtocol``): queue it
        with a new ``waiter_type()`` future as its waiter and return that, its ``_link`` and ``_key``
        set. With ``client``, the future resends itself if refused unrun: its ``_again`` is
        ``client._call_anywhere``'s arguments. It times out (CallTimeout naming ``stated`` s) at
        ``deadline`` (loop time; None: never), in ``group`` (the link's ``_group``) if it joins it
        (``join_group``), else in a new one. A flush is scheduled if nothing was queued before:
        whatever queues a frame schedules one. Compiled: one C call per call, no Python frame (a
        frame and the slot stores of the Python send cost about 1,000 instructions per call).
        """
        idle = not self._out
        waiter = waiter_type()
        key = self.request(method, params, waiter, timeout, meta)
        waiter._link = link
        waiter._key = key
        if client is not None:
            waiter._again = (client, method, params, meta, idempotent, stated, deadline)
        if deadline is not None and not join_group(group, key, method, stated, deadline):
            link._start_group(key, method, stated, deadline)
        if idle:
            link.schedule_flush()
        return waiter

    def _queue(self, body: bytes) -> None:
        """Queue a frame that is not a call (a cancel, the notices request)."""
        self._out.append(body)

    def data_to_send(self) -> bytes:
        """Every queued request, framed, as one bytes."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return pack_frames(out)

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the server and deliver every complete response."""
        self._reader.feed(data)
        self.buffer_updated(0)

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were read into the last ``get_buffer`` view: deliver every complete response."""
        reader = self._reader
        reader.buffer_updated(nbytes)
        next_frame = reader.next_frame
        resolve = self._resolve
        # One pass per reply: protocol.read_reply's steps inline (a call and a tuple per reply
        # cost 10 %), then a dict pop and the waiter's resolve.
        while True:
            body = next_frame()
            if body is None:
                return
            try:
                reply = _loads(body)
            except _JSONDecodeError:
                reply = None
            if type(reply) is not dict:
                raise self._not_a_reply(body)  # type: ignore[attr-defined]
            rid = reply.get("id")
            if rid is None:
                if not self._order:
                    self._unmatched(reply)  # type: ignore[attr-defined]
                    continue
                rid = self._order.popleft()
            waiter = self.waiters.pop(rid, None)
            if waiter is None:
                continue
            if "result" in reply and reply.get("out") != "error":  # a success, by read_reply's rule
                resolve(waiter, reply["result"])
                continue
            if "item" in reply and self._on_item is not None and "out" not in reply:
                self.waiters[rid] = waiter  # a stream's item: the stream stays pending
                if self._on_item(waiter, reply["item"]):
                    continue
                del self.waiters[rid]
            self._other(rid, waiter, reply)  # type: ignore[attr-defined]



def join_group(group: Optional[List[Any]], key: int, method: str, stated: Optional[float], deadline: float) -> bool:
    """Whether call ``key``, due at ``deadline``, joins ``group`` (the async client's timeout group of the
    calls just before it, [when, first key, last key, method, stated timeout], or None): it does if it
    is the next key, with the same method and stated timeout, due within TIMER_SLACK after the group;
    the group then ends with it. Compiled, a call's test costs no Python frame."""
    if (group is not None and group[2] == key - 1 and group[0] <= deadline <= group[0] + TIMER_SLACK
            and group[3] == method and group[4] == stated):
        group[2] = key
        return True
    return False
