"""Fuzz target: the server core (``ServerConnection``), driven the way the asyncio server drives it.

One input is a script read with ``atheris.FuzzedDataProvider``: a maximum frame size and debug
flag, then operations: append raw bytes, append a request built from fuzzed parts (any method
of a small registry or none, any params, id and deadline), append a cancel frame, finish or fail
a waiting async call, refuse calls (shutdown), resume held frames. Bytes reach the core through
``receive_data`` or ``get_buffer``/``buffer_updated``, cut at fuzzed points; ``spawn`` sometimes
says the limit of calls in flight is reached. At the end every waiting call is finished.

Checked throughout (docs/protocol.md):
- the core raises nothing (a header over the maximum is answered and sets ``closing``);
- what it returns is whole frames, each a JSON object written as section 4 says (an ``out``;
  a ``result``, or an ``error`` with an integer code and a string message), never larger than
  the maximum frame size unless it is an error that cannot be made smaller; or, for a stream
  that starts with ``ping``, exactly the probe's reply;
- every reply with an id answers a request sent with that id, as many times as there were such
  requests (less the ones cancelled while running); id-less replies come in the order of the
  requests without a (valid) id, each with the method's ``out`` or an error of a code that
  request can get; results of the echoing methods are the params they were sent;
- a too-large header is answered last, with -32000, ``id: null`` and ``{"size", "limit"}``.

Run it: ``python -m fuzzing server --seconds 60`` or ``python fuzzing/fuzz_server.py [libFuzzer
flags] [corpus dirs]``.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import atheris
import orjson

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzzing.harness import fuzz, split_frames  # noqa: E402

with atheris.instrument_imports(include=["fastrpc"]):
    from fastrpc.errors import DeadlineExceeded, ErrorCode, RemoteError, ShuttingDown
    from fastrpc.limits import PROBE_HEADER, PROBE_REPLY
    from fastrpc import _server_core_py
    from fastrpc.protocol import ABSENT, Call, Method, ServerConnection, _RarerPaths

#: ServerConnection over each core there is: the chosen one (compiled where built) and, beside a
#: compiled one, the same paths over the pure-Python twin. Each input runs on all: they must agree.
CONNECTIONS = [ServerConnection]
if not issubclass(ServerConnection, _server_core_py.ServerCore):
    CONNECTIONS.append(type("ServerConnection", (_RarerPaths, _server_core_py.ServerCore), {}))

MAX_SIZES = (16, 100, 300, 1024, 4096, 1 << 16, 1 << 20, 16 << 20)
MAX_OPS = 128
MAX_STREAM = 1 << 20  # bytes one input may append in all
HEADER = 4
# No error reply is longer than this plus its id (the -32000 that replaces an oversized reply
# is about 150 bytes), whatever the maximum frame size.
ERROR_SLACK = 256

# Operations: the first value of each step.
OP_BYTES, OP_REQUEST, OP_CANCEL, OP_SETTLE, OP_REFUSE, OP_RESUME = range(6)


# -- the registry: sync and async handlers, ones that fail, ones whose results cannot be sent ---------

def echo(*args: Any, **kwargs: Any) -> Any:
    return kwargs or list(args)


def add(a: Any, b: Any = 0) -> Any:
    return a + b  # a TypeError here is an internal error; a call that does not bind is invalid params


def fail(*args: Any, **kwargs: Any) -> None:
    raise RemoteError(f"refused {len(args)} args", {"args": list(args), "kwargs": kwargs}, code=-32050)


def boom(*args: Any, **kwargs: Any) -> None:
    raise ValueError("boom")


def unencodable(*args: Any, **kwargs: Any) -> Any:
    return {"a set": {1, 2}}


def big(n: Any = 0) -> str:
    return "x" * max(0, min(int(n), 1 << 20))


async def aecho(*args: Any, **kwargs: Any) -> Any:
    return kwargs or list(args)


async def afail(*args: Any, **kwargs: Any) -> None:
    raise RemoteError("refused", list(args), code=-32051)


INTERNAL, INVALID, TOO_LARGE = ErrorCode.INTERNAL_ERROR, ErrorCode.INVALID_REQUEST, ErrorCode.FRAME_TOO_LARGE
# A call can always end with -32603: its result may nest deeper than orjson writes.
ANY_CALL = frozenset({INTERNAL})
# An async call can also be given a bad deadline, time out, or be stopped by a shutdown.
ASYNC = frozenset({INVALID, ErrorCode.TIMEOUT, ErrorCode.SHUTTING_DOWN})


def registry() -> Dict[str, Tuple[Method, FrozenSet[int]]]:
    """Each method and the error codes a call of it may be answered with."""
    return {
        "echo": (Method("echo", echo), ANY_CALL),
        "add": (Method("add", add), ANY_CALL | {ErrorCode.INVALID_PARAMS}),
        "fail": (Method("fail", fail), ANY_CALL | {-32050}),
        "boom": (Method("boom", boom), ANY_CALL),
        "unencodable": (Method("unencodable", unencodable), ANY_CALL),
        "big": (Method("big", big), ANY_CALL | {ErrorCode.INVALID_PARAMS}),
        "ping": (Method("ping", lambda params=None: params, out="pong", raw_params=True), ANY_CALL),
        "raw": (Method("raw", lambda params: params, raw_params=True), ANY_CALL),
        "aecho": (Method("aecho", aecho), ANY_CALL | ASYNC),
        "afail": (Method("afail", afail), ANY_CALL | ASYNC | {-32051}),
    }


REGISTRY = registry()
METHODS = {name: method for name, (method, _) in REGISTRY.items()}
NAMES = sorted(REGISTRY) + ["nope", ""]
ECHOING = {"echo", "aecho"}
RAW = {"ping", "raw"}


# -- building requests from fuzzed parts ------------------------------------------------------------

class Deep:
    """A list nested ``depth`` levels deep: past 254 orjson cannot write it, past 1024 not read it."""

    __slots__ = ("depth",)

    def __init__(self, depth: int) -> None:
        self.depth = depth


def json_value(fdp: Any, depth: int = 0) -> Any:
    """A JSON value of a fuzzed shape: scalars, short containers, and (at the top) long strings and deep nesting."""
    kind = fdp.ConsumeIntInRange(0, 9)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeIntInRange(0, 1) == 1
    if kind == 2:
        return fdp.ConsumeIntInRange(-(1 << 65), 1 << 65)
    if kind == 3:
        return fdp.ConsumeIntInRange(-10 ** 6, 10 ** 6) / 7
    if kind == 4:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40)).decode("utf-8", "replace")
    if kind == 5 and depth < 4:
        return [json_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if kind == 6 and depth < 4:
        keys = ["a", "b", "n", "", "0", "x y"]
        return {keys[fdp.ConsumeIntInRange(0, len(keys) - 1)]: json_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}
    if kind == 7 and depth < 2:
        return Deep(fdp.ConsumeIntInRange(0, 1100))
    if kind == 8 and depth < 1:
        return "x" * fdp.ConsumeIntInRange(0, 70_000)
    return fdp.ConsumeIntInRange(0, 5)


def encode(value: Any) -> bytes:
    """JSON text for ``value``, including what orjson will not write (Deep, integers past 64 bits)."""
    if type(value) is Deep:
        return b"[" * value.depth + b"0" + b"]" * value.depth
    if type(value) is int:
        return str(value).encode()
    if type(value) is list:
        return b"[" + b",".join(encode(item) for item in value) + b"]"
    if type(value) is dict:
        return b"{" + b",".join(orjson.dumps(key) + b":" + encode(item) for key, item in value.items()) + b"}"
    return orjson.dumps(value)


def framed(value: Any) -> bytes:
    body = encode(value)
    return len(body).to_bytes(HEADER, "big") + body


def request(fdp: Any, ids: List[Any]) -> Dict[str, Any]:
    """A request (mostly well-formed) from fuzzed parts; ``ids`` collects the ids used."""
    request: Dict[str, Any] = {}
    which = fdp.ConsumeIntInRange(0, len(NAMES) + 1)
    if which < len(NAMES):
        request["in"] = NAMES[which]
    elif which == len(NAMES):
        request["in"] = json_value(fdp)
    if fdp.ConsumeIntInRange(0, 2):
        request["params"] = json_value(fdp)
    id_kind = fdp.ConsumeIntInRange(0, 4)
    if id_kind == 1:
        request["id"] = fdp.ConsumeIntInRange(0, 7)
    elif id_kind == 2:
        request["id"] = str(fdp.ConsumeIntInRange(0, 7))
    elif id_kind == 3:
        request["id"] = json_value(fdp)
    if "id" in request:
        ids.append(request["id"])
    if fdp.ConsumeIntInRange(0, 3) == 3:
        request["deadline"] = json_value(fdp)
    return request


# -- what a frame must be answered with --------------------------------------------------------------

class Expect:
    """What the reply to one frame may be."""

    __slots__ = ("rid", "outs", "codes", "result")

    def __init__(self, rid: Any, outs: FrozenSet[str], codes: FrozenSet[int], result: Any = ABSENT) -> None:
        self.rid = rid
        self.outs = outs
        self.codes = codes | {TOO_LARGE}  # any reply over the maximum frame size is replaced by -32000
        self.result = result  # what a success must carry, where that can be known

    def __repr__(self) -> str:
        return f"Expect(id={self.rid!r:.40}, outs={sorted(self.outs)}, codes={sorted(self.codes)})"

    def check(self, reply: Dict[str, Any]) -> Optional[str]:
        """Why ``reply`` cannot answer this frame, or None."""
        out = reply["out"]
        if out not in self.outs:
            return f"out {out!r} is none of {sorted(self.outs)}"
        if out == "error":
            if reply["error"]["code"] not in self.codes:
                return f"error code {reply['error']['code']} is none of {sorted(self.codes)}"
        elif self.result is not ABSENT and reply["result"] != self.result:
            return f"result {reply['result']!r:.80} is not the {self.result!r:.80} the params say"
        return None


def id_key(rid: Any) -> Tuple[str, Any]:
    """Ids match by type and value: 1 and "1" are different ids."""
    return (type(rid).__name__, rid)


def expect(body: bytes, refused: bool) -> Optional[Expect]:
    """What the server may answer ``body`` with (section 6 and 7), None for a cancel frame."""
    shutdown = frozenset({ErrorCode.SHUTTING_DOWN}) if refused else frozenset()
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Expect(None, frozenset({"error"}), frozenset({ErrorCode.PARSE_ERROR}))
    if type(request) is not dict:
        return Expect(None, frozenset({"error"}), frozenset({INVALID}))
    if "cancel" in request and "in" not in request:
        return None
    rid = request.get("id")
    if type(rid) not in (int, str, type(None)):
        return Expect(None, frozenset({"error"}), frozenset({INVALID}))
    name = request.get("in")
    if type(name) is not str:
        return Expect(rid, frozenset({"error"}), frozenset({INVALID}))
    if name not in REGISTRY:
        return Expect(rid, frozenset({"error"}), frozenset({ErrorCode.METHOD_NOT_FOUND}) | shutdown)
    method, codes = REGISTRY[name]
    params = request.get("params", ABSENT)
    result = ABSENT
    if name in RAW:
        result = None if params is ABSENT else params
    elif name in ECHOING:
        result = [] if params is ABSENT or params == {} else params if type(params) in (list, dict) else [params]
    return Expect(rid, frozenset({method.out, "error"}), codes | shutdown, result)


def check_reply(body: bytes, max_frame_size: int) -> Dict[str, Any]:
    """``body`` must be one response as section 4 writes it; returns it decoded."""
    if not body.startswith(b'{"out": '):
        raise AssertionError(f"a reply does not start with the envelope's own bytes: {body[:60]!r}")
    try:
        reply = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise AssertionError(f"a reply is not strict UTF-8 JSON ({exc}): {body[:100]!r}") from None
    if type(reply) is not dict or type(reply.get("out")) is not str:
        raise AssertionError(f"a reply is not an object with a string 'out': {body[:100]!r}")
    if reply["out"] == "error":
        error = reply.get("error")
        if set(reply) != {"out", "error", "id"} or type(error) is not dict or not {"code", "message"} <= set(error) <= {"code", "message", "data"}:
            raise AssertionError(f"an error reply is not {{out, error: {{code, message[, data]}}, id}}: {body[:200]!r}")
        if type(error["code"]) is not int or type(error["message"]) is not str:
            raise AssertionError(f"an error's code is not an int or its message not a string: {body[:200]!r}")
        # Section 1: a response over the maximum is replaced by a -32000 error. Errors are small
        # but for the id they must carry, so only a maximum of a few hundred bytes is exceeded.
        if len(body) > max(max_frame_size, ERROR_SLACK + len(orjson.dumps(reply["id"]))):
            raise AssertionError(f"an error reply of {len(body)} bytes exceeds the maximum frame size of {max_frame_size}: {body[:200]!r}")
    else:
        if set(reply) not in ({"out", "result"}, {"out", "result", "id"}) or reply.get("id", 0) is None:
            raise AssertionError(f"a result reply is not {{out, result[, id]}} with a non-null id: {body[:200]!r}")
        if len(body) > max_frame_size:
            raise AssertionError(f"a result reply of {len(body)} bytes exceeds the maximum frame size of {max_frame_size}")
    return reply


# -- the I/O layer's part, played by the harness -------------------------------------------------------

class Conversation:
    """One connection: the core, the calls it handed out, everything sent and received."""

    def __init__(self, fdp: Any, max_frame_size: int, debug: bool, connection: type = ServerConnection) -> None:
        self.fdp = fdp
        self.max_frame_size = max_frame_size
        self.debug = debug
        self.core = connection(dict(METHODS), self.spawn, cancel=self.cancel, max_frame_size=max_frame_size, debug=debug)
        self.stream = bytearray()  # every byte the core was given
        self.output = bytearray()  # every byte it returned
        self.calls: List[Call] = []  # async calls handed out and not finished
        self.cancelled: Counter[Tuple[str, Any]] = Counter()  # ids of calls stopped by a cancel frame
        self.ids: List[Any] = []  # ids put in requests, for cancel frames to name
        self.refused = False

    def spawn(self, call: Call) -> bool:
        self.calls.append(call)
        return self.fdp.ConsumeIntInRange(0, 3) == 3  # sometimes: the limit of calls in flight is reached

    def cancel(self, rid: Any) -> None:
        """As the server does: stop the first running call with that id (same type too); it gets no reply."""
        for index, call in enumerate(self.calls):
            if call.id == rid and type(call.id) is type(rid):
                del self.calls[index]
                call.coro.close()
                self.cancelled[id_key(rid)] += 1
                return

    def took(self, data: bytes) -> None:
        """The core returned ``data``: it must be whole frames (or the probe's reply) as it is."""
        if data and data != PROBE_REPLY:
            split_frames(data, "one return of the core")
        self.output += data

    def append(self, chunk: bytes) -> None:
        """Give ``chunk`` to the core in pieces, through either of its two ways in."""
        fdp = self.fdp
        for _ in range(len(chunk)):  # each round gives at least one byte
            if not chunk or self.core.closing:
                return
            size = len(chunk) - fdp.ConsumeIntInRange(0, len(chunk) - 1)  # all of it, once the input is used up
            if fdp.ConsumeIntInRange(0, 1):
                piece = chunk[:size]
                self.stream += piece
                self.took(self.core.receive_data(piece))
            else:
                view = self.core.get_buffer(fdp.ConsumeIntInRange(-1, size))
                piece = chunk[:min(size, len(view))]
                view[:len(piece)] = piece
                del view
                self.stream += piece
                self.took(self.core.buffer_updated(len(piece)))
            chunk = chunk[len(piece):]

    def settle(self, index: int) -> None:
        """Finish the index-th waiting call: run its handler, or stop it on a deadline or a shutdown."""
        call = self.calls.pop(index)
        how = self.fdp.ConsumeIntInRange(0, 3)
        if how == 1:
            call.coro.close()
            self.core.fail(call, DeadlineExceeded("timed out"))
        elif how == 2:
            call.coro.close()
            self.core.fail(call, ShuttingDown("the server shut down before the call finished", {"started": True}))
        else:
            try:
                call.coro.send(None)
            except StopIteration as stop:
                self.core.complete(call, stop.value)
            except Exception as exc:
                self.core.fail(call, exc)
            else:
                raise AssertionError(f"{call.method.name} waited for something; no handler here does")
        self.took(self.core.data_to_send())

    def finish(self) -> None:
        """Finish every waiting call and let the core take up held frames, until nothing moves."""
        for _ in range(len(self.stream) + 2):  # each round takes at least one frame or ends
            while self.calls and not self.core.closing:
                self.settle(0)
            before = self.core.progress
            if self.core.closing:
                return
            self.took(self.core.buffer_updated(0))
            if self.core.progress == before and not self.calls:
                return
        raise AssertionError("held frames were never taken up")


# -- checking the whole conversation ---------------------------------------------------------------

def frames_sent(stream: bytes, max_frame_size: int) -> Tuple[List[bytes], Optional[int]]:
    """The frame bodies in ``stream``, up to a header over the maximum (whose size is returned too)."""
    bodies = []
    offset = 0
    while len(stream) - offset >= HEADER:
        size = int.from_bytes(stream[offset:offset + HEADER], "big")
        if size > max_frame_size:
            return bodies, size
        if len(stream) - offset - HEADER < size:
            break
        bodies.append(bytes(stream[offset + HEADER:offset + HEADER + size]))
        offset += HEADER + size
    return bodies, None


def check_conversation(talk: Conversation) -> None:
    stream, output, core = bytes(talk.stream), bytes(talk.output), talk.core
    if stream[:HEADER] == PROBE_HEADER:
        if output != PROBE_REPLY or not core.closing:
            raise AssertionError(f"a stream starting with 'ping' got {output[:60]!r} (closing: {core.closing})")
        return
    bodies, oversized = frames_sent(stream, talk.max_frame_size)
    replies = [check_reply(body, talk.max_frame_size) for body in split_frames(output, "the whole output")]
    if core.closing != (oversized is not None):
        raise AssertionError(f"closing is {core.closing}, but the stream has {'an' if oversized else 'no'} oversized header")
    if oversized is not None:
        last = replies.pop() if replies else None
        wanted = {"out": "error", "id": None}
        if (last is None or {k: last.get(k) for k in wanted} != wanted or last["error"]["code"] != TOO_LARGE
                or last["error"].get("data") != {"size": oversized, "limit": talk.max_frame_size}):
            raise AssertionError(f"a header of {oversized} bytes (limit {talk.max_frame_size}) was answered with {last!r:.200}")
    expected = [e for e in (expect(body, talk.refused) for body in bodies) if e is not None]
    complete = oversized is None  # else calls still running when the connection closed are not answered
    # Id-less replies: in the order of the id-less requests.
    unnamed = [e for e in expected if e.rid is None]
    unnamed_replies = [r for r in replies if r.get("id") is None]
    if len(unnamed_replies) > len(unnamed) or (complete and len(unnamed_replies) != len(unnamed)):
        raise AssertionError(f"{len(unnamed_replies)} replies without an id for {len(unnamed)} requests without one")
    for number, (want, reply) in enumerate(zip(unnamed, unnamed_replies)):
        why = want.check(reply)
        if why:
            raise AssertionError(f"id-less reply #{number} does not answer id-less request #{number} {want}: {why}")
    # Replies with an id: each answers a request with that id, once per such request not cancelled.
    named: Dict[Tuple[str, Any], List[Expect]] = {}
    for want in expected:
        if want.rid is not None:
            named.setdefault(id_key(want.rid), []).append(want)
    answered: Counter[Tuple[str, Any]] = Counter()
    for reply in replies:
        if reply.get("id") is None:
            continue
        key = id_key(reply["id"])
        answered[key] += 1
        candidates = named.get(key, [])
        if not candidates:
            raise AssertionError(f"a reply has id {reply['id']!r:.60}, which no request had")
        if all(want.check(reply) for want in candidates):
            raise AssertionError(f"the reply {reply!r:.200} answers none of the requests with its id: {candidates}")
    for key, wants in named.items():
        owed = len(wants) - talk.cancelled[key]
        if answered[key] > owed or (complete and answered[key] != owed):
            raise AssertionError(f"id {key[1]!r:.60}: {answered[key]} replies for {len(wants)} requests, {talk.cancelled[key]} cancelled")


# -- the target -----------------------------------------------------------------------------------------

def run_input(data: bytes) -> Conversation:
    """Run one script on every core and return the first's conversation; raises AssertionError
    (or whatever a core raised) on a broken rule, or when the cores answer differently."""
    talks = [converse(data, connection) for connection in CONNECTIONS]
    first = talks[0]
    for other in talks[1:]:  # in debug mode a traceback names the core's own source lines
        if not first.debug and bytes(other.output) != bytes(first.output):
            raise AssertionError(f"the cores disagree: {bytes(first.output)[:300]!r} vs {bytes(other.output)[:300]!r}")
    return first


def converse(data: bytes, connection: type) -> Conversation:
    """Run one script on one ``connection`` class, checking the conversation."""
    fdp = atheris.FuzzedDataProvider(data)
    max_frame_size = MAX_SIZES[fdp.ConsumeIntInRange(0, len(MAX_SIZES) - 1)]
    talk = Conversation(fdp, max_frame_size, debug=fdp.ConsumeIntInRange(0, 1) == 1, connection=connection)
    for _ in range(MAX_OPS):
        if not fdp.remaining_bytes() or talk.core.closing or len(talk.stream) > MAX_STREAM:
            break
        op = fdp.ConsumeIntInRange(OP_BYTES, OP_RESUME)
        if op == OP_BYTES:
            talk.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 255)))
        elif op == OP_REQUEST:
            talk.append(framed(request(fdp, talk.ids)))
        elif op == OP_CANCEL:
            talk.append(framed({"cancel": talk.ids[fdp.ConsumeIntInRange(0, len(talk.ids) - 1)] if talk.ids else json_value(fdp)}))
        elif op == OP_SETTLE:
            if talk.calls:
                talk.settle(fdp.ConsumeIntInRange(0, len(talk.calls) - 1))
        elif op == OP_REFUSE:
            talk.refused = True
            talk.core.refuse_calls()
        else:
            talk.took(talk.core.buffer_updated(0))
    talk.finish()
    for call in talk.calls:  # left running when the connection closed
        call.coro.close()
    check_conversation(talk)
    return talk


def test_one_input(data: bytes) -> None:
    run_input(data)


if __name__ == "__main__":
    fuzz(__name__, test_one_input, sys.argv)
