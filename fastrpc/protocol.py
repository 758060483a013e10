"""The sans-I/O core of fastrpc: bytes in, bytes out, no sockets, no event loop.

``ServerConnection`` turns received bytes into calls on registered methods
and their outcomes into response bytes, keeping the ordering rules of
docs/protocol.md section 5. ``ClientConnection`` turns calls into request
bytes and received bytes into outcomes handed to whatever waits for them.
The asyncio server, the async client and the blocking client are thin I/O
shells around these two classes.
"""

from __future__ import annotations

import contextvars
import inspect
import math
import reprlib
import traceback
from typing import Any, Callable, Container, Dict, List, Mapping, Optional, Tuple, Union

import orjson

from .errors import (
    ConnectionClosed,
    ErrorCode,
    FrameTooLarge,
    InvalidRequest,
    ProtocolError,
    RemoteError,
    ShuttingDown,
    remote_error,
)
from .absent import ABSENT
from .contracts import Contract, encode_default
from .framing import ClientCore, MethodCore, ServerCore
from .limits import DEFAULT_MAX_FRAME_SIZE, META_MAX_BYTES, META_MAX_ENTRIES, PROBE_LENGTH, PROBE_REPLY
from .refusal import error_head
from .stats import ServerStats

__all__ = [
    "ABSENT", "NOTICES_METHOD", "NOTICES", "Method", "Call", "Stream", "StreamEnd", "ServerConnection", "ClientConnection",
    "encode_error", "encode_request", "read_reply", "failure", "metadata", "metadata_problem", "MAX_CREDIT",
]

_loads = orjson.loads
_dumps = orjson.dumps
_JSONDecodeError = orjson.JSONDecodeError

Id = Union[int, str]


# Responses are written with the separators of Python's json.dumps, so that
# {"in": "ping", "params": "sha params"} gets the same bytes the seed's
# server sends: {"out": "pong", "result": "sha params"}.
_ID_PART = b', "id": '
_ID_TYPES = (int, str, type(None))  # exact types: a bool is not an id
_ITEM_PREFIX = b'{"item": '
#: The most credit (items a stream may send ahead of its client) a stream holds at once (section 12).
MAX_CREDIT = 65536

#: The built-in a client calls (with an id) to be sent notices on its connection (docs/protocol.md section 11).
NOTICES_METHOD = "rpc.notices"
#: The kinds of notice this server sends: its answer to ``rpc.notices``.
NOTICES = ("drain",)


class Method(MethodCore):
    """A registered handler and how to call it.

    A ``context`` method runs with its call's metadata (``metadata()``);
    the others never look at it, so that a call costs them nothing more.
    """

    # The core reads MethodCore's fields; ``contract`` is read only on the rarer paths: what the handler's
    # signature was found to be (fastrpc.contracts), made at registration or at the first bad-params call.
    __slots__ = ("contract",)

    def __init__(self, name: str, func: Callable[..., Any], out: Optional[str] = None, raw_params: bool = False,
                 context: bool = False, contract: Optional[Contract] = None) -> None:
        self.name = name
        self.func = func
        self.out = name if out is None else out
        self.raw_params = raw_params
        self.context = context
        self.unbound = raw_params or context  # the fast path's one test for "not the plain bound call"
        # A typed handler's checker is a plain function that returns the handler's coroutine.
        self.is_async = contract.is_async if contract is not None else inspect.iscoroutinefunction(func)
        self.contract = contract
        # The core calls the contract's own ``call`` and checks its ``refusals`` only when it calls the
        # handler the contract describes, bound: a wrapper (metrics, middleware) sees every call.
        if contract is not None and func is contract.func and not self.unbound:
            self.call, self.refusals = contract.call, contract.refusals
        else:
            self.call, self.refusals = func, ()
        self.prefix = b'{"out": ' + _dumps(self.out) + b', "result": '

    @property
    def stream(self) -> bool:
        """Whether its handler is a generator: each call is a stream (docs/protocol.md section 12)."""
        return self.contract is not None and self.contract.stream

    def __repr__(self) -> str:
        return f"<Method {self.name!r} -> {self.func!r}>"


def metadata_problem(meta: Any) -> Optional[str]:
    """Why ``meta`` is not valid call metadata (docs/protocol.md section 3), or None if it is."""
    if type(meta) is not dict:
        return "'meta' must be an object of string values"
    if len(meta) > META_MAX_ENTRIES:
        return f"'meta' has {len(meta)} entries; the most allowed is {META_MAX_ENTRIES}"
    size = 0
    for key, value in meta.items():
        if type(key) is not str:
            return f"'meta' keys must be strings, got {type(key).__name__}"
        if type(value) is not str:
            return f"'meta' must be an object of string values; {reprlib.repr(key)} is {type(value).__name__}"
        size += len(key.encode()) + len(value.encode())
    if size > META_MAX_BYTES:
        return f"'meta' is {size} bytes of keys and values; the most allowed is {META_MAX_BYTES}"
    return None


_METADATA: "contextvars.ContextVar[Optional[Dict[str, str]]]" = contextvars.ContextVar("fastrpc_metadata", default=None)


def metadata() -> Dict[str, str]:
    """Inside a handler registered with ``metadata=True`` (or run under middleware or
    tracing): the metadata its call carried, an empty dict if none. Elsewhere RuntimeError."""
    meta = _METADATA.get()
    if meta is None:
        raise RuntimeError("fastrpc.metadata() is available in handlers registered with metadata=True "
                           "(and in every handler of a server with middleware or tracing)")
    return meta


def _invoke(func: Callable[..., Any], params: Any, raw: bool) -> Any:
    """``func`` called with ``params`` bound as docs/protocol.md section 7 says (the server core's _receive_frame inlines it)."""
    if raw:
        return func(None if params is ABSENT else params)
    if type(params) is list:
        return func(*params)
    if type(params) is dict:
        return func(**params)
    if params is ABSENT:
        return func()
    return func(params)


def enter_metadata(meta: Dict[str, str]) -> None:
    """In the task that runs an async context method's call: make ``call.meta`` current there."""
    _METADATA.set(meta)


def failure(method: Method, params: Any, exc: BaseException, debug: bool = False) -> Tuple[int, str, Any]:
    """What a call of ``method`` whose handler raised ``exc`` is answered with: (code, message, data).
    A ``RemoteError`` chooses its own; a TypeError from params that do not bind is -32602; any
    other exception is -32603, with the traceback as data when ``debug``."""
    if isinstance(exc, RemoteError):
        return exc.code, exc.message, exc.data
    if isinstance(exc, TypeError) and not method.raw_params:
        contract = method.contract
        if contract is None:  # a Method made outside registration: its signature is read once, here
            contract = method.contract = Contract(method.func, method.name, check=False)
        refusal = contract.refusal(params)
        if refusal is not None:
            return refusal.code, refusal.message, refusal.data
    data = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if debug else None
    return ErrorCode.INTERNAL_ERROR, f"internal error in {method.name!r}: {type(exc).__name__}", data


def encode_error(code: int, message: str, data: Any = None, rid: Optional[Id] = None) -> bytes:
    """An error response body (docs/protocol.md section 4)."""
    return error_head(code, message, data) + _dumps(rid) + b"}"


class Call:
    """An async handler's coroutine, waiting to be run by the I/O layer.

    The I/O layer awaits ``coro`` and reports the outcome with
    ``ServerConnection.complete`` or ``ServerConnection.fail``.
    """

    __slots__ = ("method", "id", "slot", "coro", "params", "deadline", "meta", "stream")

    def __init__(self, method: Method, rid: Optional[Id], slot: Optional[List[Optional[bytes]]], coro: Any, params: Any,
                 deadline: Optional[float] = None, meta: Optional[Dict[str, str]] = None,
                 stream: Optional["Stream"] = None) -> None:
        self.method = method
        self.id = rid
        self.slot = slot
        self.deadline = deadline  # seconds the client gives it, or None
        self.coro = coro
        self.params = params
        self.meta = meta  # a context method's metadata, for the task that runs it (enter_metadata)
        self.stream = stream  # a streaming call's flow state, or None


class Stream:
    """A streaming call's flow state (docs/protocol.md section 12): the items it may still send
    (``credit``, granted by the client), those it sent, and what the I/O layer waits on while
    the credit is used up (``waiter``, an object with ``done`` and ``set_result``: a future)."""

    __slots__ = ("credit", "sent", "suffix", "waiter")

    def __init__(self, credit: int, rid: Id) -> None:
        self.credit = credit
        self.sent = 0
        self.suffix = _ID_PART + _dumps(rid) + b"}"  # every frame of the stream ends with its id
        self.waiter: Any = None

    def wake(self) -> None:
        """Let the stream's sender go on (more credit came, or the peer reads again)."""
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _refuse(params: Any) -> Any:
    raise ShuttingDown("the server is shutting down", {"started": False})


class _Refusing:
    """Stands in for the method registry of a stopping server: every name but
    those kept (the built-ins, such as ``rpc.health``) is a method that
    refuses, before anything runs. The fast path is unchanged; it looks a
    method up as always and gets this one. A name in ``known`` (the server's
    registry) gets a refusing method of its own name, so that its refusals are
    counted against it; any other name shares one, under a reserved name no
    application method can have. All refuse with the one function."""

    __slots__ = ("_kept", "_known", "_named")
    _method = Method("rpc.refused", _refuse, raw_params=True)

    def __init__(self, kept: Mapping[str, Method], known: Container[str] = ()) -> None:
        self._kept = kept
        self._known = known
        self._named: Dict[str, Method] = {}

    def __getitem__(self, name: Any) -> Method:
        if type(name) is not str:
            raise TypeError("a method name is a string")  # still an invalid request
        method = self._kept.get(name)
        if method is not None:
            return method
        if name not in self._known:
            return self._method
        method = self._named.get(name)
        if method is None:
            method = self._named[name] = Method(name, self._method.func, raw_params=True)
        return method


_NOTICES_REPLY = Method(NOTICES_METHOD, lambda params: None)  # only its reply prefix is used


class _RarerPaths:
    """What ``ServerConnection`` adds to its ``ServerCore``: set-up and everything rarer than a
    valid call, which the core calls on itself. A class of its own so that the same paths go
    on top of either core (the tests build the one not chosen, to run both)."""

    def __init__(
        self,
        methods: Dict[str, Method],
        spawn: Callable[[Call], Optional[bool]],
        *,
        cancel: Optional[Callable[[Id], None]] = None,
        report: Optional[Callable[[Method, BaseException], None]] = None,
        stats: Optional[ServerStats] = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        debug: bool = False,
        max_streams: int = 1024,
    ) -> None:
        super().__init__(methods, max_frame_size)  # type: ignore[call-arg]
        self._spawn = spawn
        self._max_streams = max_streams
        self.streams: Dict[Id, Stream] = {}  # the open streams, by id
        self._cancel = cancel
        self._report = report
        self._stats = stats
        # The core counts its refusals straight into the Counter, without a call.
        self._errors = None if stats is None else stats.errors
        self._debug = debug
        self.get_buffer = self._reader.get_buffer
        self.notices = False  # the peer asked for notices (rpc.notices)

    @property
    def progress(self) -> Tuple[int, int]:
        """(frames received, bytes buffered): the same on two looks means nothing arrived in between."""
        reader = self._reader
        return reader.frames, reader.buffered

    def use_methods(self, methods: Any) -> None:
        """Look methods up in ``methods`` (a mapping of names to Method) from now on."""
        self._methods = methods

    def refuse_calls(self, kept: Optional[Mapping[str, Method]] = None, known: Container[str] = ()) -> None:
        """Answer every call from now on, but those of the ``kept`` methods, with
        the shutting-down error (the server is stopping); calls already running
        are not affected. Refusals of ``known`` names are counted (``stats``)
        against them, others against no known method."""
        self._methods = _Refusing({} if kept is None else kept, known)

    # -- what the core leaves to this class ------------------------------------

    def _frame_too_large(self, exc: FrameTooLarge) -> None:
        self.closing = True
        if self._fresh and exc.size == PROBE_LENGTH:
            self._raw_reply = PROBE_REPLY
        else:
            self._send(self._error(None, ErrorCode.FRAME_TOO_LARGE, str(exc), {"size": exc.size, "limit": exc.limit}))

    def _begin(self, method: Method, request: Mapping[str, Any], rid: Optional[Id], params: Any, coro: Any) -> bool:
        """Hand an async handler's coroutine to ``spawn``; true when the limit of calls in flight
        is reached (the frames after it stay buffered)."""
        deadline = request.get("deadline")  # only a call that waits can be given up on
        if deadline is not None:
            if type(deadline) not in (int, float) or deadline < 0:
                coro.close()  # never run
                self._reply(rid, self._error(
                    method, ErrorCode.INVALID_REQUEST, "invalid request: 'deadline' must be milliseconds, 0 or more", None, rid))
                return False
            deadline /= 1000
        stream = None
        if method.stream:
            problem = self._stream_problem(method, rid, request.get("credit"))
            if problem is not None:
                coro.close()  # never run
                self._reply(rid, self._error(method, problem[0], problem[1], None, rid))
                return False
            stream = self.streams[rid] = Stream(request["credit"], rid)  # type: ignore[index,arg-type]  # rid is not None
        slot: Optional[List[Optional[bytes]]] = None
        if rid is None:
            slot = [None]
            self._slots.append(slot)
        # A context method's metadata, checked by _call_in_context, goes with its call to the task.
        meta = (request.get("meta") or {}) if method.context else None
        return bool(self._spawn(Call(method, rid, slot, coro, params, deadline, meta, stream)))

    def _stream_problem(self, method: Method, rid: Optional[Id], credit: Any) -> Optional[Tuple[int, str]]:
        """Why a call of streaming ``method`` cannot start (code, message), or None (section 12)."""
        name = method.name
        if credit is None:
            return ErrorCode.INVALID_REQUEST, (f"invalid request: {name!r} streams its result: call it as a stream "
                                               "(with an id and 'credit'), e.g. fastrpc's client.stream()")
        if type(credit) is not int or not 1 <= credit <= MAX_CREDIT:
            return ErrorCode.INVALID_REQUEST, f"invalid request: 'credit' must be an integer from 1 to {MAX_CREDIT}"
        if rid is None:
            return ErrorCode.INVALID_REQUEST, f"invalid request: a stream needs an id ({name!r} streams its result)"
        if rid in self.streams:
            return ErrorCode.INVALID_REQUEST, f"invalid request: id {rid!r} names a stream still open"
        if len(self.streams) >= self._max_streams:
            return ErrorCode.SERVER_BUSY, f"server busy: {len(self.streams)} streams are open on this connection"
        return None

    def stream_item(self, call: Call, item: Any) -> int:
        """Queue one item of a streaming call (its credit is the caller's to check); returns its frame's
        size. RemoteError (the stream ends with it) for an item that cannot be encoded or would exceed
        the frame size."""
        stream: Stream = call.stream  # type: ignore[assignment]
        try:
            encoded = _dumps(item)
        except TypeError:
            try:
                encoded = _dumps(item, default=encode_default)
            except TypeError as exc:
                if self._report is not None:
                    self._report(call.method, exc)
                raise RemoteError(f"item {stream.sent} of {call.method.name!r} is not JSON serializable: {exc}",
                                  code=ErrorCode.INTERNAL_ERROR) from None
        body = b"".join((_ITEM_PREFIX, encoded, stream.suffix))
        if len(body) > self._max_frame_size:  # type: ignore[attr-defined]
            raise RemoteError(f"item {stream.sent} of {call.method.name!r} is {len(body)} bytes, over the maximum "
                              f"frame size of {self._max_frame_size} bytes",  # type: ignore[attr-defined]
                              code=ErrorCode.FRAME_TOO_LARGE)
        self._send(body)  # type: ignore[attr-defined]
        stream.sent += 1
        stream.credit -= 1
        return len(body)

    def close_stream(self, call: Call) -> None:
        """A streaming call ended (answered, cancelled, or its connection gone): forget it."""
        if self.streams.get(call.id) is call.stream:  # type: ignore[arg-type]
            del self.streams[call.id]  # type: ignore[arg-type]

    def _grant(self, rid: Any, credit: Any) -> None:
        """A credit frame: stream ``rid`` may send ``credit`` more items. Like cancel frames, never
        answered: one for a stream that ended (it crossed the end) or that is malformed is ignored."""
        stream = self.streams.get(rid) if type(rid) in (int, str) else None
        if stream is not None and type(credit) is int and credit > 0:
            stream.credit = min(stream.credit + credit, MAX_CREDIT)
            stream.wake()

    def _call_in_context(self, method: Method, request: Mapping[str, Any], params: Any) -> Any:
        """Call a ``context`` method with its call's metadata current (the slower path)."""
        meta = request.get("meta")
        if meta is None:
            meta = {}
        else:
            problem = metadata_problem(meta)
            if problem is not None:
                raise InvalidRequest(f"invalid request: {problem}")
        if method.is_async:  # its coroutine runs later, in a task: Call.meta takes the metadata there
            return _invoke(method.func, params, method.raw_params)
        token = _METADATA.set(meta)
        try:
            return _invoke(method.func, params, method.raw_params)
        finally:
            _METADATA.reset(token)

    def _reject(self, body: Union[bytes, memoryview]) -> None:
        """Answer a frame that is not a valid call of a known method (docs/protocol.md section 6)."""
        try:
            request = _loads(body)
        except _JSONDecodeError as exc:
            return self._reply(None, self._error(None, ErrorCode.PARSE_ERROR, f"parse error: {exc}"))
        if type(request) is not dict:
            return self._reply(None, self._error(None, ErrorCode.INVALID_REQUEST, "invalid request: a request must be a JSON object"))
        if "cancel" in request and "in" not in request:
            if type(request["cancel"]) in (int, str) and self._cancel is not None:
                self._cancel(request["cancel"])
            return None  # a cancel frame is never answered
        if "credit" in request and "in" not in request:
            return self._grant(request.get("id"), request["credit"])
        rid = request.get("id")
        if type(rid) not in _ID_TYPES:
            return self._reply(None, self._error(None, ErrorCode.INVALID_REQUEST, "invalid request: 'id' must be an integer or a string"))
        name = request.get("in")
        if type(name) is not str:
            return self._reply(rid, self._error(None, ErrorCode.INVALID_REQUEST, "invalid request: 'in' must be a string naming a method",
                                                None, rid))
        if name == NOTICES_METHOD:  # reached only when the registry knows no such method: not before auth, not while refusing
            return self._opt_in(rid)
        return self._reply(rid, self._error(None, ErrorCode.METHOD_NOT_FOUND, f"method not found: {name!r}", None, rid))

    def _opt_in(self, rid: Optional[Id]) -> None:
        # A notice has no id: only a peer that matches replies by id can tell it from one.
        if rid is None:
            return self._reply(None, self._error(
                None, ErrorCode.INVALID_REQUEST, f"invalid request: {NOTICES_METHOD!r} needs an id (a notice has none)"))
        self.notices = True
        self._send(self._result_body(_NOTICES_REPLY, list(NOTICES), rid))

    def drain_notice(self, reason: str) -> bool:
        """Queue the drain notice (``reason``: "shutdown", "max_age") if the peer asked
        for notices; whether it did. Replies owed are still sent after it."""
        if self.notices:
            self._send(_dumps({"notice": "drain", "reason": reason}))
        return self.notices

    # -- outcomes --------------------------------------------------------------

    def complete(self, call: Call, result: Any) -> None:
        """An async handler returned ``result`` (a stream: the count of items it sent, in its end frame)."""
        if call.stream is not None:
            self._send(b'{"end": %d%s' % (call.stream.sent, call.stream.suffix))  # type: ignore[attr-defined]
            return
        self._settle(call, self._result_body(call.method, result, call.id))

    def fail(self, call: Call, exc: BaseException) -> None:
        """An async handler raised ``exc``."""
        self._settle(call, self._fit(self._error_body(call.method, call.params, exc, call.id), call.id))

    def _settle(self, call: Call, body: bytes) -> None:
        slot = call.slot
        if slot is None:
            self._send(body)
            return
        slot[0] = body
        slots = self._slots
        while slots and slots[0][0] is not None:
            self._send(slots.popleft()[0])

    def _reply(self, rid: Optional[Id], body: bytes) -> None:
        body = self._fit(body, rid)
        # Id-less replies keep arrival order behind any still owed.
        if rid is None and self._slots:
            self._slots.append([body])
        else:
            self._send(body)

    def _result_body(self, method: Method, result: Any, rid: Optional[Id]) -> bytes:
        """The response body of a call of ``method`` that returned ``result``: the core's own, step for step
        (the pure-Python core calls this one per request, at the same cost), but for a result orjson does not
        write itself, which is tried again with ``encode_default`` (pydantic models, msgspec Structs)."""
        try:
            encoded = _dumps(result)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            try:
                encoded = _dumps(result, default=encode_default)
            except TypeError as exc:
                return self._unencodable(method, exc, rid)
        if rid is None:
            body = method.prefix + encoded + b"}"
        else:
            body = b"".join((method.prefix, encoded, _ID_PART, _dumps(rid), b"}"))
        if len(body) > self._max_frame_size:  # type: ignore[attr-defined]
            return self._fit(body, rid, method)
        return body

    def _unencodable(self, method: Method, exc: TypeError, rid: Optional[Id]) -> bytes:
        """The error body that replaces a result orjson cannot write."""
        if self._report is not None:
            self._report(method, exc)
        return self._error(method, ErrorCode.INTERNAL_ERROR, f"result of {method.name!r} is not JSON serializable: {exc}", None, rid,
                           True)

    def _fit(self, body: bytes, rid: Optional[Id], returned: Optional[Method] = None) -> bytes:
        """``body``, or the -32000 error that replaces a response over the maximum frame size (section 1);
        ``returned``: the method whose result it is (an error body's code was counted already)."""
        if len(body) <= self._max_frame_size:
            return body
        message = f"response of {len(body)} bytes exceeds the maximum frame size of {self._max_frame_size} bytes"
        if returned is not None:
            return self._error(returned, ErrorCode.FRAME_TOO_LARGE, message, None, rid, True)
        return encode_error(ErrorCode.FRAME_TOO_LARGE, message, None, rid)

    def _error(self, method: Optional[Method], code: int, message: str, data: Any = None, rid: Optional[Id] = None,
               returned: bool = False) -> bytes:
        """An error body, counted (``stats``) against ``method`` (None: no known method)."""
        if self._stats is not None:
            self._stats.count_error(None if method is None else method.name, code, returned)
        return encode_error(code, message, data, rid)

    def _error_body(self, method: Method, params: Any, exc: BaseException, rid: Optional[Id]) -> bytes:
        code, message, data = failure(method, params, exc, self._debug)
        if code == ErrorCode.INTERNAL_ERROR and not isinstance(exc, RemoteError) and self._report is not None:
            self._report(method, exc)
        try:
            body = encode_error(code, message, data, rid)
        except TypeError as error:  # data orjson cannot write (orjson.JSONEncodeError is a TypeError)
            return self._error(method, ErrorCode.INTERNAL_ERROR, f"error raised by {method.name!r} cannot be encoded: {error}", None, rid)
        if self._stats is not None:
            self._stats.count_error(method.name, code)
        return body


class ServerConnection(_RarerPaths, ServerCore):
    """One server-side connection's protocol state.

    Feed it bytes (``receive_data``, or ``get_buffer``/``buffer_updated``);
    sync handlers run at once, async ones are handed to ``spawn`` as a
    ``Call``. When ``spawn`` returns true (too many calls in flight), the
    frames after that call stay buffered until the next ``buffer_updated``;
    ``buffer_updated(0)`` handles them without new data. ``data_to_send``
    returns every response that may go out now, framed, as one bytes. Once
    ``closing`` is true the connection must be closed after that data is
    sent. ``report(method, exc)`` is told of every handler failure answered
    with the internal error (not the ``RemoteError``s handlers raise on
    purpose), for the server to log. ``stats``, a ``ServerStats``, counts
    every error frame by the method's name (None when the frame answers no
    known method: not JSON, not a request, no such method, too large) and the
    code, and in ``failed_after_return`` the handlers that had returned (their
    result could not be sent). The core counts its own refusals (unknown
    methods, params refused without an exception) in ``stats.errors`` itself,
    in C where compiled: a refused call costs no Python call to count. Only
    errors are counted: successes stay on the fast path.
    ``bytes_received``, ``bytes_sent`` and ``frames_sent`` count the traffic.

    The per-request path is ``ServerCore`` (compiled, ``fastrpc._server_core``,
    or its twin); this class adds what is rarer.
    """


_ceil = math.ceil


def _decode_error(error: Dict[str, Any]) -> RemoteError:
    code = error.get("code")
    message = error.get("message")
    return remote_error(
        code if type(code) is int else ErrorCode.INTERNAL_ERROR,
        message if type(message) is str else repr(message),
        error.get("data"),
    )


# -- shared by the clients and the load generator ------------------------------------

def encode_request(method: str, params: Any = ABSENT, rid: Optional[Id] = None, deadline: Optional[float] = None,
                   meta: Optional[Mapping[str, str]] = None, credit: Optional[int] = None) -> bytes:
    """A request body (docs/protocol.md section 3): ``params`` left out when ABSENT, ``id`` when
    None; ``deadline`` (seconds) is sent as whole milliseconds, rounded up; ``meta`` when given
    (ValueError if it is not an object of at most META_MAX_ENTRIES strings and META_MAX_BYTES);
    ``credit``, a stream's first credit (section 12), when given."""
    request: Dict[str, Any] = {"in": method}
    if params is not ABSENT:
        request["params"] = params
    if rid is not None:
        request["id"] = rid
    if deadline is not None:
        ms = _ceil(deadline * 1000)
        request["deadline"] = ms if ms > 0 else 0
    if meta:
        if type(meta) is not dict and isinstance(meta, Mapping):
            meta = dict(meta)
        problem = metadata_problem(meta)
        if problem is not None:
            raise ValueError(f"invalid call metadata: {problem}")
        request["meta"] = meta
    if credit is not None:
        request["credit"] = credit
    return _dumps(request)


def check_window(window: int) -> None:
    """ValueError unless ``window`` is a stream's credit a server takes (1 to MAX_CREDIT items)."""
    if not 1 <= window <= MAX_CREDIT:
        raise ValueError(f"a stream's window must be from 1 to {MAX_CREDIT} items, got {window!r}")


class StreamEnd:
    """What a stream's waiter is resolved with when its end frame comes: the count of items the
    server sent (section 12). A stream resolved with anything else was answered as a plain call."""

    __slots__ = ("sent",)

    def __init__(self, sent: Any) -> None:
        self.sent = sent


def read_reply(body: Union[bytes, memoryview]) -> Tuple[Dict[str, Any], Any, Optional[BaseException]]:
    """A reply body read: ``(reply, result, None)`` for a success, ``(reply, None, error)`` else.

    A success carries ``result`` (null included) and an ``out`` other than "error"; an error
    reply is ``out`` "error" with an ``error`` object, given as its RemoteError. Anything else
    (no ``result``, an ``error`` that is no object) answers its call with a ProtocolError, and
    the connection goes on. A body that is not JSON, or not an object, raises ProtocolError:
    it cannot be trusted to answer any request, so the connection is done.
    """
    try:
        reply = _loads(body)
    except _JSONDecodeError:
        reply = None
    if type(reply) is not dict:
        raise _not_a_reply(body)
    if "result" in reply and reply.get("out") != "error":  # ClientCore.buffer_updated tests this inline
        return reply, reply["result"], None
    return reply, None, _failure(reply)


def _failure(reply: Dict[str, Any]) -> BaseException:
    """What a reply that is not a success answers its call with: its RemoteError, or a ProtocolError."""
    error = reply.get("error")
    if reply.get("out") == "error" and type(error) is dict:
        return _decode_error(error)
    text = _dumps(reply)[:100].decode("utf-8", "replace")
    return ProtocolError(f"server sent a reply that is neither a result nor an error: {text}")


def _not_a_reply(body: Union[bytes, memoryview]) -> ProtocolError:
    """The error for a frame that is not a JSON object: the connection cannot be trusted any more."""
    try:
        _loads(body)
    except _JSONDecodeError as exc:
        return ProtocolError(f"server sent a frame that is not JSON: {exc}")
    return ProtocolError("server sent a response that is not a JSON object")


class _ClientRarerPaths:
    """What ``ClientConnection`` adds to its ``ClientCore``: set-up and everything rarer than a call
    and its reply, some of which the core calls on itself. A class of its own so that the same
    paths go on top of either core (the tests build the one not chosen, to run both)."""

    def __init__(
        self,
        deliver: Callable[[Any, Any, Optional[BaseException]], None],
        *,
        resolve: Optional[Callable[[Any, Any], None]] = None,
        ids: bool = True,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        on_drain: Optional[Callable[[str], None]] = None,
        on_item: Optional[Callable[[Any, Any], bool]] = None,
    ) -> None:
        super().__init__(max_frame_size, ids)  # type: ignore[call-arg]
        self._deliver = deliver
        # A stream's item goes to on_item(waiter, item), which says whether the waiter is a stream's.
        self._on_item = on_item
        # A success goes to resolve(waiter, result) when given: the async client's is Future.set_result,
        # so that a reply costs no Python frame beyond the read loop's.
        self._resolve = resolve if resolve is not None else lambda waiter, result: deliver(waiter, result, None)
        self.on_drain = on_drain  # called with the reason of a drain notice
        self.get_buffer = self._reader.get_buffer  # type: ignore[attr-defined]
        #: An error frame the server sent with no request to match (for
        #: example just before it closed the connection).
        self.connection_error: Optional[RemoteError] = None
        #: Why the server asked for no new calls here (its drain notice's reason), or None.
        self.draining: Optional[str] = None

    @property
    def pending(self) -> int:
        """Calls sent and not yet answered (or forgotten)."""
        return len(self.waiters)  # type: ignore[attr-defined]

    def ask_for_notices(self) -> None:
        """Queue the ``rpc.notices`` request (with ids only: a notice has none). Its reply is dropped, as
        is the error of a server that sends no notices; a drain notice then sets ``draining`` and
        calls ``on_drain(reason)``."""
        if self.ids:
            self._queue(encode_request(NOTICES_METHOD, ABSENT, self._next_key()))  # type: ignore[attr-defined]

    def request_stream(self, method: str, params: Any, waiter: Any, credit: int, deadline: Optional[float] = None,
                       meta: Optional[Mapping[str, str]] = None) -> int:
        """Queue a streaming call (section 12) whose ``credit`` first items the server may send at once;
        returns its key. Its items go to ``on_item(waiter, item)``, its end resolves ``waiter`` with a
        ``StreamEnd``, a failure is delivered as a call's. ValueError in the ordered mode (ids=False)."""
        if not self.ids:  # type: ignore[attr-defined]
            raise ValueError("streams need ids: they cannot be called on a client with ids=False")
        check_window(credit)
        key: int = self._next_key()  # type: ignore[attr-defined]
        body = encode_request(method, params, key, deadline, meta, credit)
        if len(body) > self._max_frame_size:  # type: ignore[attr-defined]
            raise FrameTooLarge(len(body), self._max_frame_size)  # type: ignore[attr-defined]
        self._queue(body)  # type: ignore[attr-defined]
        self.waiters[key] = waiter  # type: ignore[attr-defined]
        return key

    def grant(self, key: int, credit: int) -> None:
        """Let stream ``key`` send ``credit`` more items (its consumer took that many)."""
        if key in self.waiters:  # type: ignore[attr-defined]
            self._queue(b'{"credit":%d,"id":%d}' % (credit, key))  # type: ignore[attr-defined]

    def forget(self, key: int, *, cancel: bool = True) -> None:
        """Stop waiting for ``key`` (timed out, cancelled): its late reply is
        dropped and, if it was still pending, a cancel frame is queued for the
        server (with ids; an id-less call cannot be named)."""
        if self.waiters.pop(key, None) is not None and cancel and self.ids:
            self._queue(b'{"cancel":%d}' % key)  # type: ignore[attr-defined]

    def forget_range(self, first: int, last: int) -> List[Any]:
        """``forget`` the calls keyed ``first`` to ``last`` (both included) that are still pending (their
        time ran out); returns their waiters."""
        if not self.any_pending(first, last):  # the common case, tested in C
            return []
        waiters = []
        for key in range(first, last + 1):
            waiter = self.waiters.get(key)
            if waiter is not None:
                self.forget(key)
                waiters.append(waiter)
        return waiters

    def any_pending(self, first: int, last: int) -> bool:
        """Whether a call keyed ``first`` to ``last`` is still pending."""
        return not self.waiters.keys().isdisjoint(range(first, last + 1))

    # -- what the core leaves to this class ------------------------------------

    _encode = staticmethod(encode_request)
    _not_a_reply = staticmethod(_not_a_reply)

    def _other(self, rid: Any, waiter: Any, reply: Dict[str, Any]) -> None:
        """A reply to ``waiter`` (taken from the pending calls) that is neither a success nor a stream's
        item (the core hands those to ``_on_item``): a stream's end, or a failure."""
        if "end" in reply and "out" not in reply and self._on_item is not None:
            return self._resolve(waiter, StreamEnd(reply["end"]))  # type: ignore[attr-defined,no-any-return]
        self._deliver(waiter, None, _failure(reply))  # type: ignore[attr-defined]

    def _unmatched(self, reply: Dict[str, Any]) -> None:
        """A reply no pending call waits for by id: a notice, or an error for the whole connection."""
        if "notice" in reply and "out" not in reply:  # a kind not known here is ignored (section 11)
            if reply["notice"] == "drain" and self.draining is None:
                reason = reply.get("reason")
                self.draining = reason if type(reason) is str else "unknown"
                if self.on_drain is not None:
                    self.on_drain(self.draining)
            return
        error = _failure(reply)
        if isinstance(error, RemoteError):
            self.connection_error = error
        elif self.ids:
            raise ProtocolError("server sent a response without an id; is it an id-less server? use ids=False")
        else:
            raise ProtocolError("server sent a response with no request waiting for it")

    def close(self, cause: Optional[BaseException] = None) -> None:
        """The connection is gone: fail every pending call at once."""
        pending = self.waiters.copy()  # the same dict stays: the I/O layer holds it
        self.waiters.clear()
        self._order.clear()
        known = self.connection_error
        reason = "connection closed" + (f": {cause}" if cause else "")
        for waiter in pending.values():
            # A fresh exception each: one instance raised in many tasks would
            # collect all their tracebacks.
            if known is not None:
                error: BaseException = remote_error(known.code, known.message, known.data)
            else:
                error = ConnectionClosed(reason)
            self._deliver(waiter, None, error)


class ClientConnection(_ClientRarerPaths, ClientCore):
    """One client-side connection's protocol state.

    ``request`` encodes a call and remembers its ``waiter`` (any object the
    I/O layer uses to hand the outcome back: a future, a slot). Received
    bytes are decoded and each outcome is passed to ``deliver(waiter,
    result, error)`` with exactly one of ``result``/``error`` meaningful,
    or a success to ``resolve(waiter, result)`` if that is given.

    With ``ids=False`` requests carry no id and responses are matched by
    order, for servers that ignore ids (the ordered mode).

    The per-call path is ``ClientCore`` (compiled, ``fastrpc._client_core``, or its twin):
    ``request``, ``data_to_send``, ``receive_data`` and ``buffer_updated``, which raises
    ProtocolError (FrameTooLarge among them) when the server breaks the protocol (the
    connection is then unusable); this class adds what is rarer.
    """
