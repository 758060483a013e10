"""The compiled cores read plain requests (server) and plain successes (client) where they lie, without
orjson (``fastrpc/_scan.pxd``); the twins have orjson read every frame. Whatever a body is, both must
answer it alike: the scanner may only take what orjson reads the same way, and must hand everything
else (escapes, floats, a key twice, deep nesting, broken JSON) to orjson whole.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrpc import metadata
from fastrpc.protocol import Method

from .conftest import CLIENT_CONNECTIONS, SERVER_CONNECTIONS
from .test_client_core import receive
from .test_server_core import frame, methods

pytestmark = pytest.mark.skipif(len(SERVER_CONNECTIONS) < 2 or len(CLIENT_CONNECTIONS) < 2, reason="the compiled core is not in use (FASTRPC_NO_EXTENSIONS=1; or not built, which test_implementation fails)")


def registry() -> Dict[str, Method]:
    """test_server_core's methods, and two that read their call's metadata (a sync and an async one)."""
    async def later_seen(*args: Any) -> Any:
        return list(args)

    out = methods()
    out["seen"] = Method("seen", lambda params: metadata(), raw_params=True, context=True)
    out["later_seen"] = Method("later_seen", later_seen, context=True)
    return out


def answered(name: str, stream: bytes, methods: Optional[Dict[str, Any]] = None) -> List[Any]:
    """What one core writes for ``stream``, and what each async call it hands out carries."""
    calls: List[Any] = []
    core = SERVER_CONNECTIONS[name](registry() if methods is None else methods, calls.append, max_frame_size=4096)
    out = [core.receive_data(stream), core.data_to_send()]
    for call in calls:
        call.coro.close()
        out.append((call.method.name, call.id, call.params, call.deadline, call.meta))
    return out


def alike(*bodies: bytes) -> None:
    stream = b"".join(frame(body) for body in bodies)
    assert answered("cython", stream) == answered("python", stream)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


TRICKY = [
    # the plain shapes the scanner takes, with every kind of value
    b'{"in":"raw","params":null,"id":1}', b'{"in":"raw","params":true,"id":2}', b'{"in":"raw","params":false}',
    b'{"in":"raw","params":-0,"id":3}', b'{"in":"raw","params":123456789012345678,"id":4}',
    b'{"in":"raw","params":-123456789012345678,"id":-5}', b'{"in":"raw","params":"plain text ~","id":"x"}',
    b'{"in":"raw","params":"","id":""}', b'{"in":"raw","params":[],"id":null}', b'{"in":"raw","params":{}}',
    b'{"in":"raw","params":[1,[2,{"a":[3]}],"]}[{",{"q\\"":"\\\\"}],"id":6}',
    b' \t\n{ "id" : 7 ,\r\n "params" : [ 1 , 2 ] , "in" : "echo" } \n', b'{"params":{"a":1,"b":[2]},"in":"echo"}',
    b'{"in":"none"}', b'{"in":"echo","id":8}', b'{"in":"later","params":[1],"id":9}', b'{"in":"fail","params":[1],"id":10}',
    # values orjson must read: escapes, non-ASCII, DEL, floats, exponents, long or big numbers
    b'{"in":"raw","params":"tab\\tquote\\"","id":11}', b'{"in":"raw","params":"\xc3\xa9\xf0\x9f\x98\x80","id":12}',
    b'{"in":"raw","params":"del\x7f","id":13}', b'{"in":"raw","params":1.5,"id":14}', b'{"in":"raw","params":1e3,"id":15}',
    b'{"in":"raw","params":-2E-2}', b'{"in":"raw","params":1234567890123456789,"id":16}',
    b'{"in":"raw","params":18446744073709551615,"id":17}', b'{"in":"raw","params":18446744073709551616,"id":18}',
    b'{"in":"raw","params":-9223372036854775809,"id":19}', b'{"in":"raw","params":"x","id":1234567890123456789}',
    b'{"in":"raw","id":"\\u0041"}', b'{"in":"r\\u0061w","id":20}', b'{"in":"caf\xc3\xa9","id":21}',
    b'{"in":"raw","id":1.0}', b'{"in":"raw","id":true}', b'{"in":"raw","id":[1]}', b'{"in":"raw","id":{}}',
    b'{"in":"raw","params":' + nested(63) + b',"id":22}', b'{"in":"raw","params":' + nested(64) + b',"id":23}',
    b'{"in":"raw","params":' + nested(65) + b',"id":24}', b'{"in":"raw","params":' + nested(1100) + b',"id":25}',
    # other keys, repeats, missing or wrong "in"
    b'{"in":"raw","id":26,"meta":{"k":"v"}}', b'{"in":"later","params":[1],"deadline":5,"id":27}',
    b'{"in":"later","params":[1],"deadline":1.5,"id":38}', b'{"in":"later","deadline":"5","id":39}',
    b'{"in":"later","deadline":-1,"id":40}', b'{"in":"later","deadline":null,"meta":null,"id":41}',
    b'{"in":"later","meta":[1],"deadline":0,"id":42}', b'{"in":"later","deadline":1,"deadline":2,"id":43}',
    b'{"in":"raw","meta":{"a":"b"},"meta":{},"id":44}', b'{"in":"raw","deadline":5,"meta":{"a":"b"},"params":7,"id":45}',
    b'{"in":"later","deadline":1e3,"id":46}', b'{"in":"later","deadline":tru,"id":47}', b'{"in":"later","meta":{"a":},"id":48}',
    b'{"in":"seen","params":1,"meta":{"trace":"t1"},"id":49}', b'{"in":"seen","meta":{"trace":7},"id":50}', b'{"in":"seen","id":51}',
    b'{"in":"later_seen","params":[2],"meta":{"k":"v"},"deadline":250,"id":52}', b'{"in":"later_seen","meta":"x","id":53}',
    b'{"meta":{"k":"v"},"deadline":9,"in":"later_seen","id":54}',
    b'{"in":"raw","in":"echo","id":28}', b'{"in":"raw","id":1,"id":29}', b'{"in":"raw","params":1,"params":2,"id":30}',
    b'{"id":31}', b'{}', b'{"in":7,"id":32}', b'{"in":null,"id":33}', b'{"in":"","id":34}', b'{"in":"rpc.nope","id":35}',
    b'{"in":"nope","id":36}', b'{"in":"nope","id":37}', b'{"in":"nope"}', b'{"cancel":5}', b'{"credit":3,"id":1}',
    # not JSON, or not a request: broken anywhere the scanner looks
    b'', b' ', b'[]', b'"in"', b'{"in":"raw"', b'{"in":"raw",}', b'{"in":"raw" "id":1}', b'{"in" "raw"}', b'{"in":"raw"}}',
    b'{"in":"raw"} x', b'{"in":"raw","params":nul}', b'{"in":"raw","params":nulls}', b'{"in":"raw","params":tru}',
    b'{"in":"raw","params":falsey}', b'{"in":"raw","params":01}', b'{"in":"raw","params":-}', b'{"in":"raw","params":-01}',
    b'{"in":"raw","params":1.}', b'{"in":"raw","params":.5}', b'{"in":"raw","params":+1}', b'{"in":"raw","params":0x1}',
    b'{"in":"raw","params":[1,2}', b'{"in":"raw","params":[1,2]]}', b'{"in":"raw","params":{"a":1]}', b'{"in":"raw","params":[1,]}',
    b'{"in":"raw","params":"open}', b'{"in":"raw","params":"esc\\', b'{"in":"raw","params":"ctl\x01"}', b'{"in":"raw","params":"\xff"}',
    b'{"in":"ra\x00w"}', b'{"in":"raw","params":[1 2]}', b'{"in":"raw","params":NaN}', b'{"in":"raw","params":Infinity}',
    b'\xef\xbb\xbf{"in":"raw"}', b'{"in":"raw","params":1,}', b"{'in':'raw'}", b'{"in":"raw","id":01}', b'{"in":"raw","id":-}',
]


@pytest.mark.parametrize("body", TRICKY, ids=lambda body: body[:60].decode("utf-8", "replace"))
def test_each_tricky_body_is_answered_alike(body: bytes) -> None:
    alike(body)


def test_all_tricky_bodies_in_one_stream_are_answered_alike() -> None:
    """One stream: the scanner's results and orjson's interleave, and a name it makes (or a refusal kept) is reused."""
    alike(*TRICKY, *TRICKY)


def test_a_registry_filled_by_hand_is_read_as_orjson_s_path_reads_it() -> None:
    """``Server.methods`` is a plain dict: a name put there as None is not found, and a value that is not
    a Method fails as it does on orjson's path, never read as one (that crashed the process)."""
    holes: Dict[str, Any] = {"gone": None}
    for body in (b'{"in":"gone","id":1}', b'{"in":"gone","id":2,"x":0}'):
        assert answered("cython", frame(body), holes) == answered("python", frame(body), holes)
    for body in (b'{"in":"bare","id":1}', b'{"in":"bare","id":2,"x":0}'):
        with pytest.raises(TypeError, match="MethodCore"):
            answered("cython", frame(body), {"bare": lambda params: params})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
keys = st.sampled_from(["in", "id", "params", "meta", "deadline"])
names = st.sampled_from(["raw", "echo", "none", "later", "seen", "later_seen", "nope", "rpc.x", "caf\u00e9", ""])
ids = st.none() | st.integers(-2**64, 2**64) | st.text(max_size=4) | st.booleans() | st.floats(allow_nan=False)
spaces = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])


@st.composite
def request_texts(draw: Any) -> bytes:
    """A request written by hand: keys in any order, repeated, with whitespace anywhere JSON allows."""
    members = []
    for key in draw(st.lists(keys, min_size=0, max_size=4)):
        value = draw(names) if key == "in" else draw(ids) if key == "id" else draw(json_values)
        members.append(draw(spaces) + json.dumps(key) + draw(spaces) + ":" + draw(spaces) + json.dumps(value, ensure_ascii=draw(st.booleans())))
    text = draw(spaces) + "{" + ",".join(members) + draw(spaces) + "}" + draw(spaces)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: Any) -> bytes:
    """A valid request with one byte put in, taken out or changed: the scanner must not take broken JSON."""
    body = bytearray(draw(request_texts()) or b"{}")
    at = draw(st.integers(0, len(body) - 1))
    change = draw(st.sampled_from(["insert", "delete", "replace"]))
    byte = draw(st.sampled_from(b'{}[]",:\\ 0-.e\x00\x7f\xc3n'))
    if change == "insert":
        body.insert(at, byte)
    elif change == "delete":
        del body[at]
    else:
        body[at] = byte
    return bytes(body)


def compact(request: Any) -> bytes:
    """As clients write requests: no whitespace (json, not orjson: ints past 64 bits too)."""
    return json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None)
@given(st.lists(request_texts() | mutated() | st.builds(compact, st.fixed_dictionaries({"in": names}, optional={"id": ids, "params": json_values})),
                min_size=1, max_size=8))
def test_any_request_text_is_answered_alike(bodies: List[bytes]) -> None:
    alike(*bodies)


# -- the client: replies ------------------------------------------------------------------------------

def delivered_alike(*bodies: bytes) -> None:
    stream = b"".join(frame(body) for body in bodies)
    for ids in (True, False):
        assert receive("cython", stream, [], ids, True) == receive("python", stream, [], ids, True)


REPLIES = [
    b'{"out": "pong", "result": 1, "id": 1}', b'{"out":"pong","result":null,"id":2}', b'{"out":"x","result":"text","id":3}',
    b'{"out": "pong", "result": [1, {"a": "]"}], "id": 4}', b' {"id": 1, "result": true, "out": "pong"} ',
    b'{"out":"pong","result":-0,"id":1}', b'{"out":"pong","result":1.5e3,"id":1}', b'{"out":"pong","result":"\\u00e9","id":1}',
    b'{"out":"pong","result":123456789012345678901,"id":1}', b'{"out":"pong","result":' + nested(70) + b',"id":1}',
    b'{"out":"error","result":1,"id":1}', b'{"out":"err\\u006fr","result":1,"id":1}', b'{"out":"pong","id":1}',
    b'{"result":1,"id":1}', b'{"out":"pong","result":1}', b'{"out":"pong","result":1,"id":null}', b'{"out":"pong","result":1,"id":"1"}',
    b'{"out":"pong","result":1,"id":1.0}', b'{"out":"pong","result":1,"id":99}', b'{"out":"pong","result":1,"id":1,"id":2}',
    b'{"out":"pong","result":1,"result":2,"id":1}', b'{"out":"pong","result":1,"id":1,"x":0}', b'{"out":"pong","item":1,"id":1}',
    b'{"out":"error","error":{"code":-32601,"message":"no"},"id":2}', b'{"notice":"drain","reason":"restart"}',
    b'{"out":"pong","result":[1,2}', b'{"out":"pong","result":01,"id":1}', b'{"out":"pong","result":1,"id":1}x',
    b'{"out":"pong","result":1,"id":1', b'{"out":"pong","result":1,"id":01}', b'{"out":"pong","result":"\\x","id":1}',
    b'{"out":"pong","result":nul,"id":1}', b'{"out":"pong" "result":1,"id":1}', b'', b'[]',
]


@pytest.mark.parametrize("body", REPLIES, ids=lambda body: body[:60].decode("utf-8", "replace"))
def test_each_tricky_reply_is_delivered_alike(body: bytes) -> None:
    delivered_alike(body)


reply_keys = st.sampled_from(["out", "result", "id", "error", "item"])
reply_ids = st.integers(-1, 6) | st.sampled_from(["1", "", None, 1.0, True])


@st.composite
def reply_texts(draw: Any) -> bytes:
    """A reply written by hand: keys in any order, repeated, with whitespace anywhere JSON allows."""
    members = []
    for key in draw(st.lists(reply_keys, max_size=4)):
        value = (draw(st.sampled_from(["pong", "error", "", "x"])) if key == "out" else draw(reply_ids) if key == "id"
                 else draw(json_values))
        members.append(draw(spaces) + json.dumps(key) + draw(spaces) + ":" + draw(spaces) + json.dumps(value, ensure_ascii=draw(st.booleans())))
    return (draw(spaces) + "{" + ",".join(members) + draw(spaces) + "}" + draw(spaces)).encode("utf-8", "surrogatepass")


@st.composite
def mutated_replies(draw: Any) -> bytes:
    body = bytearray(draw(reply_texts()))
    at = draw(st.integers(0, len(body) - 1))
    body[at:at + draw(st.integers(0, 1))] = draw(st.sampled_from([b"", b"{", b"}", b'"', b",", b"0", b"\\", b"\x7f", b"e"]))
    return bytes(body)


@settings(max_examples=300, deadline=None)
@given(st.lists(reply_texts() | mutated_replies(), min_size=1, max_size=8))
def test_any_reply_text_is_delivered_alike(bodies: List[bytes]) -> None:
    delivered_alike(*bodies)
