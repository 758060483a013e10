"""The compiled server core against its pure-Python twin: the same bytes out for the same bytes in.

The compiled core writes replies into its output buffer itself (an int id in its own digits, the
length prefix, the method's prefix), where the twin builds bodies and joins them: every id, result,
size and failure below must come out byte for byte the same.
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any, Dict, List, Optional

import _testcapi  # CPython's own test module: it can make the next allocation fail
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrpc import RemoteError
from fastrpc.protocol import Method
from fastrpc.stats import ServerStats

from .conftest import SERVER_CONNECTIONS

pytestmark = pytest.mark.skipif(len(SERVER_CONNECTIONS) < 2, reason="the compiled core is not in use (FASTRPC_NO_EXTENSIONS=1; or not built, which test_implementation fails)")

MAX_FRAME = 4096


def methods() -> Dict[str, Method]:
    def echo(*args: Any, **kwargs: Any) -> Any:
        return kwargs or list(args)

    def fail(*args: Any) -> None:
        raise RemoteError("refused", {"args": list(args)}, code=-32050)

    def boom(*args: Any) -> None:
        raise ValueError("boom")

    async def later(*args: Any) -> Any:
        return list(args)

    return {
        "echo": Method("echo", echo),
        "raw": Method("raw", lambda params: params, out="pong", raw_params=True),
        "none": Method("none", lambda: None),
        "fail": Method("fail", fail),
        "boom": Method("boom", boom),
        "unencodable": Method("unencodable", lambda: {1, 2}),
        "grow": Method("grow", lambda n: "x" * n),
        "later": Method("later", later),
    }


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def run(name: str, stream: bytes, cuts: List[int], registry: Optional[Dict[str, Method]] = None) -> List[bytes]:
    """What one core returns for ``stream`` cut at ``cuts``; async calls are left waiting."""
    calls: List[Any] = []
    core = SERVER_CONNECTIONS[name](registry or methods(), lambda call: calls.append(call), max_frame_size=MAX_FRAME)
    out = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        out.append(core.receive_data(stream[start:cut]))
        start = cut
    for call in calls:
        call.coro.close()
    out.append(core.data_to_send())
    out.append(bytes(str((core.bytes_received, core.bytes_sent, core.frames_sent, core.closing)), "ascii"))
    return out


IDS = [None, 0, 1, -1, 9, 10, 99, 1000000001, -9223372036854775808, 9223372036854775807, 9223372036854775808,
       18446744073709551615, -9223372036854775809, "", "a", 'q"uote\\\n\u00e9\U0001f600', True, 1.5, [1]]


@pytest.mark.parametrize("rid", IDS)
def test_every_kind_of_id_is_written_alike(rid: Any) -> None:
    encoded = b"%d" % rid if type(rid) is int else orjson.dumps(rid)  # ints past 64 bits too
    stream = frame(b'{"in": "echo", "params": [1], "id": ' + encoded + b"}") * 2
    assert run("cython", stream, []) == run("python", stream, [])


requests = st.fixed_dictionaries(
    {"in": st.sampled_from(["echo", "raw", "none", "fail", "boom", "unencodable", "grow", "later", "nope", 7])},
    optional={
        "params": st.one_of(st.lists(st.integers(-5, 5), max_size=3), st.dictionaries(st.sampled_from("abn"), st.integers(0, 5000)),
                            st.integers(0, 5000), st.text(max_size=20), st.none()),
        "id": st.one_of(st.none(), st.integers(-2**63, 2**64 - 1), st.text(max_size=8), st.booleans()),
        "deadline": st.one_of(st.integers(-1, 10), st.text(max_size=2)),
    },
)
bodies = st.one_of(requests.map(orjson.dumps), st.binary(max_size=30), st.just(b"[1]"), st.just(b'{"cancel": 3}'))


@settings(max_examples=300, deadline=None)
@given(st.lists(bodies, max_size=12), st.lists(st.integers(0, 10_000), max_size=4))
def test_both_cores_answer_any_stream_alike(sent: List[bytes], cuts: List[int]) -> None:
    stream = b"".join(frame(body) for body in sent)
    cuts = [c % (len(stream) + 1) for c in cuts]
    assert run("cython", stream, cuts) == run("python", stream, cuts)


def test_a_result_of_any_size_around_the_limit_is_written_alike() -> None:
    for n in range(MAX_FRAME - 80, MAX_FRAME + 2):
        stream = frame(b'{"in": "grow", "params": [%d], "id": 12345}' % n) + frame(b'{"in": "grow", "params": [%d]}' % n)
        assert run("cython", stream, []) == run("python", stream, []), n


def test_a_large_reply_grows_the_output_and_keeps_what_was_before() -> None:
    stream = b"".join(frame(b'{"in": "raw", "params": "%s", "id": %d}' % (b"y" * (i * 97 % 3000), i)) for i in range(200))
    big = SERVER_CONNECTIONS["cython"](methods(), lambda call: None, max_frame_size=1 << 20)
    twin = SERVER_CONNECTIONS["python"](methods(), lambda call: None, max_frame_size=1 << 20)
    assert big.receive_data(stream) == twin.receive_data(stream)


def test_an_output_buffer_that_cannot_grow_loses_its_replies_not_the_process() -> None:
    """A failed resize frees the output buffer (MemoryError): the core starts again from empty. It
    went on from the old length into a new, smaller buffer: a write out of bounds (a crash), then
    uninitialised memory sent to the peer."""
    core = SERVER_CONNECTIONS["cython"](methods(), lambda call: None)
    core._send(b"x" * 100)  # a buffer of 256 bytes
    big = b"y" * 100_000
    with pytest.raises(MemoryError):
        _testcapi.set_nomemory(0, 1)  # the next allocation fails: the resize for ``big``
        try:
            core._send(big)
        finally:
            _testcapi.remove_mem_hooks()
    core._send(b"z")
    assert core.data_to_send() == frame(b"z") and core.frames_sent == 1


def returning(result: Any) -> Dict[str, Method]:
    return {"give": Method("give", lambda: result)}


GIVE = frame(b'{"in": "give", "id": 7}') + frame(b'{"in": "give"}')
# The compiled core writes None, bools, 64-bit ints and ASCII text with nothing to escape itself.
SCALARS = [None, True, False, 0, -1, 7, 2**63 - 1, -2**63, 2**63, 2**64 - 1, 2**64, -2**63 - 1, "", "pong",
           "a" * 31 + '"', "a" * 32 + "\\", "a" * 64 + "\x1f", "\x7f", "caf\u00e9", "\U0001f600", 1.5, -0.0, [1], {"a": None}]


class Text(str):
    pass


@pytest.mark.parametrize("result", SCALARS + [Text("sub"), 3 == 3.0], ids=repr)
def test_a_scalar_result_is_written_as_orjson_writes_it(result: Any) -> None:
    assert run("cython", GIVE, [], returning(result)) == run("python", GIVE, [], returning(result))


def test_an_escape_anywhere_in_ascii_text_is_seen() -> None:
    """Text is tested for characters to escape 32 bytes at a time, then byte by byte: an escape at
    any place of any block, or of the rest, must send it to orjson."""
    for size in range(0, 100):
        for at in range(size):
            for escape in ('"', "\\", "\n", "\x00", "\x1f"):
                text = "a" * at + escape + "a" * (size - at - 1)
                assert run("cython", GIVE, [], returning(text)) == run("python", GIVE, [], returning(text)), (size, at, escape)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(st.characters(max_codepoint=127)), st.integers(), st.booleans(), st.none()))
def test_any_scalar_result_is_written_alike(result: Any) -> None:
    assert run("cython", GIVE, [], returning(result)) == run("python", GIVE, [], returning(result))


KEYS = st.sampled_from([b'"in": "echo"', b'"in": "raw"', b'"id": 5', b'"id": "x"', b'"params": [1, 2]', b'"params": {"a": 1}',
                        b'"meta": {}', b'"i": 1', b'"inn": 2', b'"param": 3', b'"ID": 4', b'"paramsx": 5', b'"in": 9'])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(KEYS, max_size=6), max_size=6))
def test_request_keys_in_any_order_with_others_and_repeats_are_read_alike(requests: List[List[bytes]]) -> None:
    """The compiled core reads a request's keys in one walk over it; the twin looks each one up."""
    stream = b"".join(frame(b"{" + b", ".join(keys) + b"}") for keys in requests)
    assert run("cython", stream, []) == run("python", stream, [])


# -- error replies the cores write themselves: unknown methods, params refused without an exception --------

def contracted() -> Dict[str, Method]:
    """Methods registered as a Server registers them: with their contract, so refused params never reach them."""
    from fastrpc.contracts import Contract

    def uadd(a, b):  # type: ignore[no-untyped-def]
        return a + b

    def kw(a, *, k):  # type: ignore[no-untyped-def]
        return a

    def rest(a, *more):  # type: ignore[no-untyped-def]
        return [a, *more]

    def tadd(a: int, b: int) -> int:
        return a + b

    def topt(a: int, b: str = "x") -> str:
        return b * a

    def tfloat(x: float, y: List[int]) -> float:  # not decided by kinds alone: the precise walk every time
        return x

    async def tlater(a: int) -> int:
        return a

    out: Dict[str, Method] = {}
    for func in (uadd, kw, rest, tadd, topt, tfloat, tlater):
        contract = Contract(func, func.__name__)
        out[func.__name__] = Method(func.__name__, contract.func, contract=contract)
    out["later"] = methods()["later"]
    return out


def answered(name: str, stream: bytes, max_frame_size: int = MAX_FRAME) -> List[Any]:
    """What one core returns for ``stream`` over ``contracted()``, and what it counted: its ServerStats'
    errors (by method and code, with their multiplicity) and failed_after_return (the calls that had returned)."""
    stats = ServerStats()
    calls: List[Any] = []
    core = SERVER_CONNECTIONS[name](contracted(), calls.append, max_frame_size=max_frame_size, stats=stats)
    out = [core.receive_data(stream), stats.errors, stats.failed_after_return]
    for call in calls:
        call.coro.close()
    return out


BAD_CALLS = [
    b'{"in": "uadd", "params": [1], "id": 1}', b'{"in": "uadd", "params": [1, 2, 3]}', b'{"in": "uadd", "id": "x"}',
    b'{"in": "uadd", "params": 5, "id": 9223372036854775808}', b'{"in": "uadd", "params": {"a": 1}, "id": 2}',
    b'{"in": "uadd", "params": {"a": 1, "b": 2, "c": 3}}', b'{"in": "kw", "params": [1], "id": 3}',
    b'{"in": "kw", "params": [1, 2]}', b'{"in": "rest", "id": 4}', b'{"in": "rest", "params": [1, 2, 3, 4], "id": 5}',
    b'{"in": "tadd", "params": [1, "2"], "id": 6}', b'{"in": "tadd", "params": [1]}', b'{"in": "tadd", "params": ["1", 2.5]}',
    b'{"in": "tadd", "params": [1, 2, 3], "id": 7}', b'{"in": "tadd", "params": {"a": 1, "c": 2}, "id": 8}',
    b'{"in": "tadd", "params": null, "id": 9}', b'{"in": "topt", "params": [true], "id": 10}', b'{"in": "topt", "params": [1, 2]}',
    b'{"in": "tfloat", "params": ["x", [1, "y"]], "id": 11}', b'{"in": "tlater", "params": ["x"], "id": 12}',
    b'{"in": "nope", "params": [1], "id": 13}', b'{"in": "nope"}', b'{"in": "n\\u00e9\'\\"", "id": "q"}',
    b'{"in": "rpc.nope", "id": 14}', b'{"in": "rpc.notices", "id": 15}', b'{"in": "rpc.notices"}', b'{"in": 7, "id": 16}',
    b'{"in": "nope", "id": true}', b'{"in": "uadd", "params": [1, 2], "id": 17}', b'{"in": "tadd", "params": [1, 2]}',
]


@pytest.mark.parametrize("body", BAD_CALLS, ids=lambda body: body.decode())
def test_each_refusal_is_written_and_counted_alike(body: bytes) -> None:
    stream = frame(body) * 3  # the first time made, then kept: the same bytes each time
    assert answered("cython", stream) == answered("python", stream)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(BAD_CALLS), max_size=12))
def test_refusals_in_any_order_are_written_alike(sent: List[bytes]) -> None:
    """Kept refusals (a typed method keeps its last) never answer a call with another's."""
    stream = b"".join(frame(body) for body in sent)
    assert answered("cython", stream) == answered("python", stream)


def test_refusals_are_the_words_of_the_protocol() -> None:
    calls = [b'{"in": "uadd", "params": [1], "id": 1}', b'{"in": "uadd", "params": [1, 2, 3]}',
             b'{"in": "tadd", "params": [1, "2"], "id": "a"}', b'{"in": "tadd", "params": [1, 2, 3], "id": 2}',
             b'{"in": "nope", "id": 3}']
    for name in SERVER_CONNECTIONS:
        out, counted, returned = answered(name, b"".join(frame(body) for body in calls))
        assert out == b"".join(frame(body) for body in [
            b'{"out": "error", "error": {"code":-32602,"message":"invalid params for \'uadd\': missing a required argument: \'b\'"}, "id": 1}',
            b'{"out": "error", "error": {"code":-32602,"message":"invalid params for \'uadd\': too many positional arguments"}, "id": null}',
            b'{"out": "error", "error": {"code":-32602,"message":"invalid params for \'tadd\': params.b: expected int, got str",'
            b'"data":["params.b: expected int, got str"]}, "id": "a"}',
            b'{"out": "error", "error": {"code":-32602,"message":"invalid params for \'tadd\': params[2]: unexpected",'
            b'"data":["params[2]: unexpected"]}, "id": 2}',
            b'{"out": "error", "error": {"code":-32601,"message":"method not found: \'nope\'"}, "id": 3}',
        ]), name
        assert counted == Counter({("uadd", -32602): 2, ("tadd", -32602): 2, (None, -32601): 1}), name
        assert returned == Counter(), name


def test_an_id_less_refusal_waits_behind_a_reply_owed() -> None:
    stream = frame(b'{"in": "later", "params": [1]}') + frame(b'{"in": "uadd", "params": [1]}') + frame(b'{"in": "nope"}')
    for name in SERVER_CONNECTIONS:
        assert answered(name, stream)[0] == b"", name  # both wait for the async call's reply
    assert answered("cython", stream) == answered("python", stream)


def test_a_refusal_over_the_frame_limit_is_replaced_alike() -> None:
    long_name = "n" * 80
    stream = frame(b'{"in": "%s", "id": 1}' % long_name.encode()) + frame(b'{"in": "uadd", "params": [1], "id": 2}')
    cython, python = answered("cython", stream, max_frame_size=120), answered("python", stream, max_frame_size=120)
    assert cython == python
    assert cython[0].count(b'"code":-32000') == 2
