"""Pure-Python twin of ``fastrpc._server_core``: a server connection's per-request path.

Used where the extensions are not built or ``FASTRPC_NO_EXTENSIONS=1`` is set. The compiled
``ServerCore`` keeps to this one's behaviour frame for frame (the protocol tests and the fuzzers
run the server on both); it differs only in how it holds replies: framed in one growing bytes
rather than in a list joined by ``pack_frames``.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Counter, Deque, List, Optional, Tuple, Union

import orjson

from ._framing_py import FrameReader, pack_frames
from .absent import ABSENT
from .errors import FrameTooLarge
from .refusal import NOT_FOUND, Refusal, method_not_found

__all__ = ["MethodCore", "ServerCore", "ping"]

_loads = orjson.loads
_dumps = orjson.dumps
_JSONDecodeError = orjson.JSONDecodeError
_ID_TYPES = (int, str, type(None))  # exact types: a bool is not an id
# Responses are written with the separators of Python's json.dumps, so that
# {"in": "ping", "params": "sha params"} gets the same bytes the seed's
# server sends: {"out": "pong", "result": "sha params"}.
_ID_PART = b', "id": '


def ping(params: Any) -> Any:
    """Answers with the params it was sent.

    The built-in ``ping``'s handler."""
    return params


class MethodCore:
    """A registered method's fields, as the request path reads them (``protocol.Method`` sets
    them): compiled, they are read as C fields rather than looked up by name."""

    __slots__ = ("name", "func", "call", "refusals", "out", "raw_params", "context", "unbound", "is_async", "prefix")
    name: str
    func: Any
    call: Any  # what the request path calls: func, or a typed handler's checker that returns a Refusal
    # The refusal of a bound call of n positional params at min(n, len - 1), None where they bind;
    # (): none is checked (it depends on more than n, or the handler is not called bound).
    refusals: Tuple[Optional[Refusal], ...]
    out: str
    raw_params: bool
    context: bool
    unbound: bool  # raw_params or context: the request path's one test for "not the plain bound call"
    is_async: bool
    prefix: bytes  # the response body up to the result


class ServerCore:
    """Frames in, handlers called, replies out: what every request of a connection runs.

    ``protocol.ServerConnection`` is built on it and supplies everything rarer, which the
    core calls on itself: ``_reject(body)`` (a frame that is not a valid call of a known
    method, but for an unknown name, answered here), ``_frame_too_large(exc)``, ``_call_in_context(method, request, params)``,
    ``_error_body(method, params, exc, rid)``, ``_reply(rid, body)``, ``_begin(method,
    request, rid, params, coro)`` (an async handler's call; true to stop reading: the limit
    of calls in flight is reached), ``_unencodable(method, exc, rid)`` and ``_fit(body,
    rid, returned)``. It counts what it reads and writes, for metrics, and counts the error replies
    it writes itself in ``_errors`` (when set: a server's ``ServerStats.errors``), as ``_error_body``
    has the others counted there.
    """

    def __init__(self, methods: Any, max_frame_size: int) -> None:
        self._reader = FrameReader(max_frame_size)
        self._max_frame_size = self._reader.max_frame_size
        self._methods = methods
        self._out: List[bytes] = []
        # One slot per id-less request still owed an answer, oldest first;
        # a slot holds None until its response body is ready.
        self._slots: Deque[List[Optional[bytes]]] = deque()
        self._raw_reply = b""
        self._fresh = True  # nothing received yet: a text probe is possible
        self.closing = False
        self.bytes_received = 0
        self.bytes_sent = 0
        self.frames_sent = 0
        self.write: Any = None  # for read_and_reply
        self.after_read: Any = None
        self.watch_reads = False
        self._errors: Optional[Counter[Tuple[Optional[str], Any]]] = None

    def receive_data(self, data: bytes) -> bytes:
        """Take bytes from the peer and handle every complete frame; returns ``data_to_send()``."""
        self._reader.feed(data)
        self.bytes_received += len(data)
        return self.buffer_updated(0)

    def buffer_updated(self, nbytes: int) -> bytes:
        """``nbytes`` were read into the last ``get_buffer`` view: handle every
        complete frame; returns ``data_to_send()``, so that a read costs one call."""
        reader = self._reader
        reader.buffer_updated(nbytes)
        self.bytes_received += nbytes
        if not self.closing:
            next_frame = reader.next_frame
            try:
                body = next_frame()
                if body is not None:
                    self._fresh = False
                    receive_frame = self._receive_frame
                    while body is not None and not receive_frame(body):
                        body = next_frame()
            except FrameTooLarge as exc:
                self._frame_too_large(exc)  # type: ignore[attr-defined]
        return self.data_to_send()

    def read_and_reply(self, nbytes: int) -> None:
        """``buffer_updated``, its output passed to ``write``; then ``after_read()`` if
        ``closing`` or ``watch_reads`` is set. The asyncio server's read path, in one call."""
        data = self.buffer_updated(nbytes)
        if data:
            self.write(data)
        if self.closing or self.watch_reads:
            self.after_read()

    def _receive_frame(self, body: Union[bytes, memoryview]) -> Optional[bool]:
        """One frame: a valid call runs here; anything unusual goes to ``_reject`` for its exact error.
        True when reading must stop (see ``_begin``)."""
        try:
            request = _loads(body)
            rid = request.get("id")  # AttributeError: not an object
            name = request["in"]
            methods = self._methods
            # KeyError, TypeError: no such method, or 'in' unhashable (a plain dict's miss is None)
            method = methods.get(name) if type(methods) is dict else methods[name]
        except (_JSONDecodeError, AttributeError, KeyError, TypeError):
            return self._reject(body)  # type: ignore[attr-defined,no-any-return]
        if type(rid) not in _ID_TYPES:
            return self._reject(body)  # type: ignore[attr-defined,no-any-return]
        if method is None:
            refusal = NOT_FOUND.get(name)
            if refusal is None:
                if type(name) is not str or name.startswith("rpc."):  # not a name, or a built-in's (rpc.notices)
                    return self._reject(body)  # type: ignore[attr-defined,no-any-return]
                refusal = method_not_found(name)
            self._refuse(refusal, rid)
            return None
        params = request.get("params", ABSENT)
        refusals = method.refusals
        if refusals and type(params) is not dict:  # positional params: whether they bind depends on their count
            refusal = refusals[min(len(params) if type(params) is list else int(params is not ABSENT), len(refusals) - 1)]
            if refusal is not None:
                self._refuse(refusal, rid)
                return None
        func = method.call
        try:
            if method.unbound:
                result = self._call_in_context(method, request, params) if method.context else func(  # type: ignore[attr-defined]
                    None if params is ABSENT else params)
            elif type(params) is list:
                result = func(*params)
            elif type(params) is dict:
                result = func(**params)
            elif params is ABSENT:
                result = func()
            else:
                result = func(params)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: a handler's fault, not the server's
            return self._reply(rid, self._error_body(method, params, exc, rid))  # type: ignore[attr-defined,no-any-return]
        if type(result) is Refusal:  # a typed handler's params did not match
            self._refuse(result, rid)
            return None
        if method.is_async:
            return self._begin(method, request, rid, params, result)  # type: ignore[attr-defined,no-any-return]
        body = self._result_body(method, result, rid)
        if rid is None and self._slots:
            self._slots.append([body])  # id-less replies keep arrival order behind any still owed
        else:
            self._out.append(body)
        return None

    def _refuse(self, refusal: Refusal, rid: Any) -> None:
        """Answer a call refused without an exception, counted in ``_errors`` under its key, as
        ``ServerStats.count_error`` counts the errors of handlers (its code, fastrpc's own, needs no bounding)."""
        if self._errors is not None:  # the compiled core adds a run of the same refusal at once, by data_to_send
            self._errors[refusal.key] += 1
        self._reply(rid, refusal.head + _dumps(rid) + b"}")  # type: ignore[attr-defined]

    def _result_body(self, method: Any, result: Any, rid: Any) -> bytes:
        """The response body of a call of ``method`` that returned ``result``."""
        try:
            encoded = _dumps(result)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            return self._unencodable(method, exc, rid)  # type: ignore[attr-defined,no-any-return]
        if rid is None:
            body = method.prefix + encoded + b"}"
        else:
            body = b"".join((method.prefix, encoded, _ID_PART, _dumps(rid), b"}"))
        if len(body) > self._max_frame_size:  # checked here, not by a call: this is the hot path
            return self._fit(body, rid, method)  # type: ignore[attr-defined,no-any-return]
        return body

    def _send(self, body: bytes) -> None:
        """Queue one response body to go out with the next ``data_to_send``."""
        self._out.append(body)

    def data_to_send(self) -> bytes:
        """Every response that may be sent now, framed, in order."""
        out = self._out
        if not out:
            data = b""
        else:
            self._out = []
            data = pack_frames(out)
            self.frames_sent += len(out)
        if self._raw_reply:
            data, self._raw_reply = data + self._raw_reply, b""
        self.bytes_sent += len(data)
        return data
