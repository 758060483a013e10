"""Properties of the sans-I/O cores, for any input (hypothesis), under both framing implementations.

- The server core never raises, whatever bytes arrive and however they are split, and what it sends
  is always a sequence of whole frames of JSON objects.
- Client core -> server core -> client core: any sequence of calls, split anywhere on the way in and
  on the way out, delivers every call's own outcome.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Tuple

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastrpc import RemoteError, framing
from fastrpc.limits import PROBE_REPLY
from fastrpc.protocol import ABSENT, ClientConnection, Method, ServerConnection


#: FASTRPC_PROPERTY_EXAMPLES=N makes a longer run than the 150 examples per test of CI.
SETTINGS = settings(max_examples=int(os.environ.get("FASTRPC_PROPERTY_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def methods() -> Dict[str, Method]:
    def echo(*args: Any, **kwargs: Any) -> Any:
        return kwargs or list(args)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RemoteError("refused", {"args": list(args)}, code=-32050)

    return {"echo": Method("echo", echo), "fail": Method("fail", fail), "raw": Method("raw", lambda p: p, raw_params=True)}


def split(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def frames_of(data: bytes) -> List[Any]:
    """Decode a server's output: whole frames only, each a JSON object (or the text probe's raw reply)."""
    if data == PROBE_REPLY:
        return []
    out = []
    while data:
        assert len(data) >= 4
        size = int.from_bytes(data[:4], "big")
        assert len(data) >= 4 + size, "a frame was cut"
        body = data[4:4 + size]
        data = data[4 + size:]
        reply = json.loads(body)
        assert type(reply) is dict and ("result" in reply or reply.get("out") == "error")
        out.append(reply)
    return out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


requests = st.one_of(
    st.binary(max_size=60),  # anything at all
    st.builds(lambda v: orjson.dumps(v), json_values),  # any JSON, mostly not a request
    st.builds(lambda m, p, i: orjson.dumps({"in": m, "params": p, "id": i}),
              st.sampled_from(["echo", "fail", "raw", "nope", 5]), json_values, st.none() | st.integers(min_value=-2**63, max_value=2**63 - 1) | st.text(max_size=5)),
)


@SETTINGS
@given(chunks=st.lists(st.one_of(st.binary(max_size=40), st.builds(framed, requests)), max_size=12),
       cuts=st.lists(st.integers(min_value=0), max_size=8), max_frame_size=st.sampled_from([16, 200, 1 << 20]))
@example(chunks=[b"ping"], cuts=[2], max_frame_size=1 << 20)  # the text probe
@example(chunks=[b"\xff\xff\xff\xff"], cuts=[], max_frame_size=16)  # a 4 GiB header
def test_server_core_never_raises(framing_impl: Any, chunks: List[bytes], cuts: List[int], max_frame_size: int) -> None:
    core = ServerConnection(methods(), lambda call: None, max_frame_size=max_frame_size)
    sent = b""
    for piece in split(b"".join(chunks), cuts):
        sent += core.receive_data(piece)
    frames_of(sent)  # whole frames of JSON objects, whatever came in


calls = st.lists(st.tuples(st.sampled_from(["echo", "fail", "raw"]), st.one_of(st.just(ABSENT), json_values)),
                 min_size=1, max_size=15)


@SETTINGS
@given(batch=calls, ids=st.booleans(), cuts_in=st.lists(st.integers(min_value=0), max_size=6),
       cuts_out=st.lists(st.integers(min_value=0), max_size=6))
def test_round_trip_delivers_every_call(framing_impl: Any, batch: List[Tuple[str, Any]], ids: bool,
                                        cuts_in: List[int], cuts_out: List[int]) -> None:
    outcomes: Dict[int, Any] = {}
    client = ClientConnection(lambda waiter, result, error: outcomes.__setitem__(waiter, error or result), ids=ids)
    server = ServerConnection(methods(), lambda call: None)
    for index, (method, params) in enumerate(batch):
        client.request(method, params, index)
    replies = b""
    for piece in split(client.data_to_send(), cuts_in):
        replies += server.receive_data(piece)
    for piece in split(replies, cuts_out):
        client.receive_data(piece)
    assert sorted(outcomes) == list(range(len(batch))) and client.pending == 0
    for index, (method, params) in enumerate(batch):
        got = outcomes[index]
        if method == "fail":
            assert isinstance(got, RemoteError) and got.code == -32050
        elif method == "raw":
            assert got == (None if params is ABSENT else params)
        elif isinstance(params, dict) and params:
            if isinstance(got, RemoteError):  # keys that are no Python identifiers, or clash
                assert got.code in (-32602, -32603)
            else:
                assert got == params
        elif isinstance(params, list):
            assert got == params
        else:
            assert got == ([] if params is ABSENT or params == {} else [params])
    assert framing.IMPLEMENTATION in ("cython", "python")
