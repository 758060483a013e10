"""Micro benchmarks of fastrpc's hot pieces (pytest-benchmark).

    python -m pytest bench/ --benchmark-only

Not collected by the normal test run (pyproject's testpaths is ``tests``);
``tests/test_micro_bench.py`` runs this file once with ``--benchmark-disable``
so that a broken benchmark fails the suite instead of rotting.

Every benchmark builds its inputs outside the timed function, and checks the
timed function's result (``benchmark(...)`` returns it), so a broken path
fails instead of timing an exception. Each timed function leaves its object
in the state it found it, so rounds are alike and need no per-round setup.

Groups:

- split: bytes go in through ``get_buffer``/``buffer_updated`` (the server's
  path; the copy into the view stands in for the kernel's ``recv``) and every
  frame comes out through ``next_frame``, for the compiled and the
  pure-Python FrameReader.
- pack: ``pack_frames`` of response bodies, both implementations.
- decode: ``orjson.loads`` of a request body (the floor), and
  ``ServerConnection`` end to end: one read of 1 or 64 request frames to the
  reply bytes (split + decode + dispatch + encode + pack), over the compiled
  core and over its pure-Python twin.
- encode: the core's response encoder (``ServerConnection._result_body``)
  for a small and a ~4 KiB result, without and with an id; the floor is one
  ``orjson.dumps`` of the whole response object.
- dispatch: one request frame through the core, ``receive_data`` to the
  framed reply (split, decode, registry look-up, call, encode), for the
  built-in ping, a registered ``add(a, b)`` with list and with dict params,
  and with params that do not bind (the error path), on both cores; and the
  bare registry call ``methods[name].func(*params)`` / ``(**params)`` as the
  floor.
- baseline: an empty Python function, the harness's cost of calling the
  closures the split, decode and dispatch benchmarks time.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import orjson
import pytest

from fastrpc import _framing_py, _server_core_py, framing, protocol
from fastrpc.protocol import ServerConnection
from fastrpc.server import Server

try:
    from fastrpc import _framing as _framing_c
    from fastrpc import _server_core as _server_core_c
except ImportError:  # the extensions are not built: the "cython" cases fail, loudly
    _framing_c = _server_core_c = None

IMPLEMENTATIONS = ["cython", "python"]


def framing_module(name: str) -> Any:
    if name == "python":
        return _framing_py
    if _framing_c is None:
        pytest.fail("fastrpc._framing (the compiled extension) is not built; pip install -e . builds it")
    return _framing_c


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> Any:
    """The framing module of each implementation: ids "cython" / "python"."""
    return framing_module(request.param)


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def sized_body(size: int) -> bytes:
    """A JSON request body of exactly ``size`` bytes."""
    head, tail = b'{"in":"echo","params":"', b'"}'
    body = head + b"x" * (size - len(head) - len(tail)) + tail
    assert len(body) == size
    return body


# What the server bench sends: ping with params "sha params" and an integer id.
REQUEST = b'{"in":"ping","params":"sha params","id":1}'
REPLY = b'{"out": "pong", "result": "sha params", "id": 1}'

# -- split ---------------------------------------------------------------------

SPLIT_CASES: Dict[str, List[bytes]] = {
    "64xping": [REQUEST] * 64,
    "1x4KiB": [sized_body(4096)],
    "1x256KiB": [sized_body(256 * 1024)],
}


@pytest.mark.benchmark(group="split")
@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_split(benchmark: Any, impl: Any, case: str) -> None:
    bodies = SPLIT_CASES[case]
    stream = b"".join(frame(body) for body in bodies)
    data = memoryview(stream)
    total = len(stream)
    reader = impl.FrameReader()
    get_buffer, buffer_updated, next_frame = reader.get_buffer, reader.buffer_updated, reader.next_frame

    def split() -> int:
        # As many reads as the buffer's free room makes it take (a 256 KiB
        # frame arrives in two: 64 KiB, then the rest after the buffer grows).
        frames = pos = 0
        while pos < total:
            view = get_buffer(-1)
            n = min(len(view), total - pos)
            view[:n] = data[pos:pos + n]
            buffer_updated(n)
            pos += n
            body = next_frame()
            while body is not None:
                frames += 1
                body = next_frame()
        return frames

    # Once, untimed: the frames come out whole and in order.
    pos = 0
    got = []
    while pos < total:
        view = get_buffer(-1)
        n = min(len(view), total - pos)
        view[:n] = data[pos:pos + n]
        buffer_updated(n)
        pos += n
        body = next_frame()
        while body is not None:
            got.append(bytes(body))
            body = next_frame()
    del view, body
    assert got == bodies
    assert reader.buffered == 0

    assert benchmark(split) == len(bodies)
    assert reader.buffered == 0


# -- pack ----------------------------------------------------------------------

SMALL_REPLY = REPLY
PACK_CASES: Dict[str, List[bytes]] = {
    "1xpong": [SMALL_REPLY],
    "64xpong": [SMALL_REPLY] * 64,
    "1x4KiB": [sized_body(4096)],
    "1x256KiB": [sized_body(256 * 1024)],
}


@pytest.mark.benchmark(group="pack")
@pytest.mark.parametrize("case", list(PACK_CASES))
def test_pack(benchmark: Any, impl: Any, case: str) -> None:
    bodies = PACK_CASES[case]
    expected = b"".join(frame(body) for body in bodies)
    pack_frames = impl.pack_frames
    assert benchmark(pack_frames, bodies) == expected


# -- decode ----------------------------------------------------------------------

DECODE_BODIES = {
    "ping": REQUEST,
    "add-list": b'{"in":"add","params":[1,2],"id":7}',
}


@pytest.mark.benchmark(group="decode")
@pytest.mark.parametrize("case", list(DECODE_BODIES))
def test_decode_orjson_loads(benchmark: Any, case: str) -> None:
    body = DECODE_BODIES[case]
    assert benchmark(orjson.loads, body) == orjson.loads(body)


def _no_spawn(call: protocol.Call) -> None:
    raise AssertionError(f"no async handler is benchmarked, got {call.method!r}")


def make_server() -> Server:
    server = Server()

    # Unannotated: the dispatch figures stay those of the bare call (a typed handler is called through its
    # checker; bench/contracts.py measures that).
    @server.method
    def add(a, b):  # type: ignore[no-untyped-def]
        return a + b

    return server


def connection_on(impl: Any) -> Any:
    """``ServerConnection`` over the core of the implementation whose framing ``impl`` is."""
    compiled = impl is not _framing_py and framing.IMPLEMENTATION == "cython"  # the compiled core reads compiled Methods
    core = _server_core_c.ServerCore if compiled else _server_core_py.ServerCore
    if issubclass(ServerConnection, core):
        return ServerConnection
    return type("ServerConnection", (protocol._RarerPaths, core), {})


@pytest.mark.benchmark(group="decode")
@pytest.mark.parametrize("batch", [1, 64], ids=["1xping", "64xping"])
def test_decode_server_connection(benchmark: Any, impl: Any, batch: int) -> None:
    server = make_server()
    core = connection_on(impl)(server.methods, _no_spawn, max_frame_size=server.max_frame_size)
    assert type(core._reader) is impl.FrameReader or framing.IMPLEMENTATION == "python"
    stream = frame(REQUEST) * batch
    size = len(stream)
    get_buffer, buffer_updated = core.get_buffer, core.buffer_updated

    def read() -> bytes:
        # One read as the server's _Connection sees it: the kernel fills the
        # view, buffer_updated returns every reply of that read as one bytes.
        get_buffer(-1)[:size] = stream
        return buffer_updated(size)

    assert benchmark(read) == frame(REPLY) * batch
    assert core._reader.buffered == 0 and not core.closing


# -- encode ----------------------------------------------------------------------

SMALL_RESULT: Any = "sha params"
# About 4 KiB of JSON: a list of small records, the shape a listing call returns.
LARGE_RESULT: Any = [{"id": i, "name": f"item-{i:04d}", "active": i % 3 == 0, "score": i * 0.5} for i in range(73)]
ENCODE_RESULTS = {"small": SMALL_RESULT, "4KiB": LARGE_RESULT}
ENCODE_IDS: Dict[str, Any] = {"no-id": None, "id": 12345}


@pytest.mark.benchmark(group="encode")
@pytest.mark.parametrize("rid", list(ENCODE_IDS))
@pytest.mark.parametrize("size", list(ENCODE_RESULTS))
def test_encode_result_body(benchmark: Any, size: str, rid: str) -> None:
    server = make_server()
    core = ServerConnection(server.methods, _no_spawn)
    method = server.methods["ping"]  # out "pong"
    result, request_id = ENCODE_RESULTS[size], ENCODE_IDS[rid]
    if size == "4KiB":
        assert 4000 <= len(orjson.dumps(result)) <= 4200  # keeps the label honest
    body = benchmark(core._result_body, method, result, request_id)
    expected: Dict[str, Any] = {"out": "pong", "result": result}
    if request_id is not None:
        expected["id"] = request_id
    assert orjson.loads(body) == expected
    assert body.startswith(b'{"out": "pong", "result": ') and body.endswith(b"}")


@pytest.mark.benchmark(group="encode")
@pytest.mark.parametrize("size", list(ENCODE_RESULTS))
def test_encode_orjson_dumps(benchmark: Any, size: str) -> None:
    # The floor: the whole response object in one orjson.dumps call.
    response = {"out": "pong", "result": ENCODE_RESULTS[size], "id": 12345}
    assert orjson.loads(benchmark(orjson.dumps, response)) == response


# -- dispatch ----------------------------------------------------------------------

DISPATCH_CASES: Dict[str, Tuple[bytes, bytes]] = {
    "ping": (REQUEST, REPLY),
    "add-list": (b'{"in":"add","params":[1,2],"id":7}', b'{"out": "add", "result": 3, "id": 7}'),
    "add-dict": (b'{"in":"add","params":{"a":1,"b":2},"id":7}', b'{"out": "add", "result": 3, "id": 7}'),
    # A TypeError from the call: the core binds the params to the signature
    # to tell invalid params from a handler's own TypeError.
    "add-bad-params": (b'{"in":"add","params":[1],"id":7}', b""),
}


@pytest.mark.benchmark(group="dispatch")
@pytest.mark.parametrize("case", list(DISPATCH_CASES))
def test_dispatch_one_frame(benchmark: Any, impl: Any, case: str) -> None:
    server = make_server()
    core = connection_on(impl)(server.methods, _no_spawn)
    body, reply = DISPATCH_CASES[case]
    got = benchmark(core.receive_data, frame(body))
    if reply:
        assert got == frame(reply)
    else:
        error = orjson.loads(got[4:])
        assert error["id"] == 7 and error["error"]["code"] == -32602
        assert "missing a required argument: 'b'" in error["error"]["message"]
    assert not core._slots and core._reader.buffered == 0


REGISTRY_CALLS: Dict[str, Tuple[str, Any]] = {
    "add-list": ("add", [1, 2]),
    "add-dict": ("add", {"a": 1, "b": 2}),
}


@pytest.mark.benchmark(group="dispatch")
@pytest.mark.parametrize("case", list(REGISTRY_CALLS))
def test_dispatch_registry_call(benchmark: Any, case: str) -> None:
    # The floor of dispatch: the registry look-up and the call, nothing else.
    methods = make_server().methods
    name, params = REGISTRY_CALLS[case]
    if type(params) is list:
        def call() -> Any:
            return methods[name].func(*params)
    else:
        def call() -> Any:
            return methods[name].func(**params)

    assert benchmark(call) == 3


# -- baseline ------------------------------------------------------------------------


@pytest.mark.benchmark(group="baseline")
def test_baseline_empty_call(benchmark: Any) -> None:
    # What calling a Python function costs in the harness's loop: the part
    # of the figures above that are closures (split, decode_server_connection,
    # dispatch) which is not the code under test.
    def empty() -> int:
        return 1

    assert benchmark(empty) == 1
