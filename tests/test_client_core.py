"""The compiled client core against its pure-Python twin: the same request bytes for the same calls,
the same outcomes for the same reply bytes.

The compiled core writes a plain call's request itself (the method's prefix, params through orjson,
the id and the deadline's milliseconds in its own digits) and hands the rest to
``protocol.encode_request``, which the twin uses for every call: each method, params, deadline and
metadata below must come out byte for byte the same, and fail the same way.
"""

from __future__ import annotations

import math
import struct
from typing import Any, List, Optional, Tuple

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrpc import _client_core_py
from fastrpc.protocol import ABSENT

from .conftest import CLIENT_CONNECTIONS

if len(CLIENT_CONNECTIONS) > 1:
    from fastrpc import _client_core

pytestmark = pytest.mark.skipif(len(CLIENT_CONNECTIONS) < 2, reason="the compiled core is not in use (FASTRPC_NO_EXTENSIONS=1; or not built, which test_implementation fails)")

MAX_FRAME = 300


def outcome(action: Any) -> Any:
    """What ``action()`` returned, or the type and text of what it raised."""
    try:
        return ("ok", action())
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))


def send(name: str, calls: List[Tuple[Any, Any, Any, Any]], ids: bool) -> List[Any]:
    """What one core answers to ``calls`` (method, params, deadline, meta), and what it then sends."""
    core = CLIENT_CONNECTIONS[name](lambda *a: None, ids=ids, max_frame_size=MAX_FRAME)
    seen = [outcome(lambda: core.request(method, params, index, deadline, meta))
            for index, (method, params, deadline, meta) in enumerate(calls)]
    core.forget(2)
    core.ask_for_notices()
    return [seen, core.data_to_send(), core.waiters, list(core._order), core.data_to_send()]


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


METHODS = ["ping", "échö", "", 'q"uote\\', "\ud800", 7, None, ["list"], "x" * 400]
PARAMS = [ABSENT, None, [], [1, "two"], {"a": 1}, "text", 1.5, 2**64, {1, 2}, {1: "int key"}, nested(253), nested(254),
          float("nan"), "y" * 400]
DEADLINES = [None, 0, 1, -1, 30, 2**62, 2**70, 0.0, -0.0, 0.0005, 1e-9, 1.0001, 2.5e11, 1e12, 1.5e12, -1e13,
             float("inf"), float("-inf"), float("nan"), True, "5"]
METAS = [None, {}, {"k": "v"}, {"k": 1}, {"k": "v" * 400}]


@pytest.mark.parametrize("ids", [True, False])
@pytest.mark.parametrize("method", METHODS)
def test_every_kind_of_method_is_written_alike(method: Any, ids: bool) -> None:
    calls = [(method, ABSENT, None, None), (method, [1], 5, None), (method, ABSENT, None, {"k": "v"})]
    assert send("cython", calls, ids) == send("python", calls, ids)


@pytest.mark.parametrize("params", PARAMS, ids=range(len(PARAMS)))
def test_every_kind_of_params_is_written_alike(params: Any) -> None:
    calls = [("echo", params, None, None), ("echo", params, 0.25, None)]
    assert send("cython", calls, True) == send("python", calls, True)


@pytest.mark.parametrize("deadline", DEADLINES, ids=repr)
def test_every_kind_of_deadline_is_written_alike(deadline: Any) -> None:
    calls = [("ping", ABSENT, deadline, None), ("ping", [1], deadline, {"k": "v"})]
    assert send("cython", calls, True) == send("python", calls, True)


def test_a_request_of_any_size_around_the_limit_is_written_alike() -> None:
    for n in range(MAX_FRAME - 60, MAX_FRAME + 2):
        calls = [("echo", "z" * n, None, None), ("echo", ["z" * n], 1.5, None), ("echo", "z" * n, 3, {"m": "v"})]
        for ids in (True, False):
            assert send("cython", calls, ids) == send("python", calls, ids), (n, ids)


def test_many_requests_grow_the_buffer_and_keep_what_was_before() -> None:
    calls = [("echo", "w" * (i * 37 % 250), i % 3 or None, None) for i in range(500)]
    assert send("cython", calls, True) == send("python", calls, True)


def test_ids_past_a_digit_count_are_written_alike() -> None:
    cores = [CLIENT_CONNECTIONS[name](lambda *a: None) for name in ("cython", "python")]
    for _ in range(1005):
        sent = [core.request("ping", ABSENT, None) for core in cores]
        assert sent[0] == sent[1]
    assert cores[0].data_to_send() == cores[1].data_to_send()


def test_deadlines_in_milliseconds_are_exact() -> None:
    """The compiled core turns seconds into milliseconds in C: ``math.ceil(deadline * 1000)``, to the digit."""
    cores = [CLIENT_CONNECTIONS[name](lambda *a: None) for name in ("cython", "python")]
    for i in range(2000):
        deadline = i / 997 + math.ulp(i / 997) * (i % 3 - 1)
        for core in cores:
            core.request("ping", ABSENT, None, deadline)
    assert cores[0].data_to_send() == cores[1].data_to_send()


methods = st.sampled_from(METHODS[:6])
params = st.one_of(st.just(ABSENT), st.none(), st.integers(), st.floats(), st.text(max_size=10),
                   st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
deadlines = st.one_of(st.none(), st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans())
metas = st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(methods, params, deadlines, metas), max_size=10), st.booleans())
def test_both_cores_write_any_calls_alike(calls: List[Tuple[Any, Any, Any, Any]], ids: bool) -> None:
    assert send("cython", calls, ids) == send("python", calls, ids)


# -- replies ------------------------------------------------------------------------------

def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def receive(name: str, stream: bytes, cuts: List[int], ids: bool, through_buffer: bool) -> List[Any]:
    """The outcomes one core hands out for ``stream`` cut at ``cuts``, after four calls (waiters 0-3),
    and what it then holds."""
    handed: List[Any] = []
    core = CLIENT_CONNECTIONS[name](lambda waiter, result, error: handed.append(
        (waiter, result, None if error is None else (type(error).__name__, str(error)))), ids=ids)
    drains: List[str] = []
    core.on_drain = drains.append
    for waiter in range(4):
        core.request("ping", ABSENT, waiter)
    core.request("ping", ABSENT, None)  # a waiter of None: its reply is dropped
    start = 0
    raised: Optional[Any] = None
    for cut in [*sorted(cuts), len(stream)]:
        chunk = stream[start:cut]
        start = cut
        if through_buffer:
            buffer = core.get_buffer(-1)
            buffer[:len(chunk)] = chunk
            raised = outcome(lambda: core.buffer_updated(len(chunk)))
        else:
            raised = outcome(lambda: core.receive_data(chunk))
        if raised[0] == "raised":
            break
    return [handed, raised, core.waiters, list(core._order), drains, core.draining,
            None if core.connection_error is None else str(core.connection_error)]


ids_in_replies = st.one_of(st.none(), st.integers(0, 6), st.just(1.0), st.just(True), st.text(max_size=2),
                           st.just([1]), st.just({"a": 1}))
replies = st.fixed_dictionaries(
    {},
    optional={
        "out": st.sampled_from(["pong", "error", 3, None]),
        "result": st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.text(max_size=5)),
        "error": st.one_of(st.fixed_dictionaries({"code": st.integers(-32700, -32000), "message": st.text(max_size=5)}),
                           st.text(max_size=3)),
        "id": ids_in_replies,
        "notice": st.sampled_from(["drain", "other"]),
        "reason": st.sampled_from(["restart", 5]),
    },
)
reply_bodies = st.one_of(replies.map(orjson.dumps), st.binary(max_size=12), st.just(b"[1]"), st.just(b'"text"'))


@settings(max_examples=300, deadline=None)
@given(st.lists(reply_bodies, max_size=10), st.lists(st.integers(0, 400), max_size=3), st.booleans(), st.booleans())
def test_both_cores_deliver_any_replies_alike(sent: List[bytes], cuts: List[int], ids: bool, through_buffer: bool) -> None:
    stream = b"".join(frame(body) for body in sent)
    cuts = [c % (len(stream) + 1) for c in cuts]
    assert (receive("cython", stream, cuts, ids, through_buffer)
            == receive("python", stream, cuts, ids, through_buffer))


def test_a_frame_over_the_limit_is_refused_alike() -> None:
    stream = frame(b'{"out":"pong","result":1,"id":1}') + struct.pack(">I", 1 << 30)
    assert receive("cython", stream, [], True, True) == receive("python", stream, [], True, True)


# -- timeout groups -------------------------------------------------------------------------

def test_both_cores_keep_one_timer_slack() -> None:
    assert _client_core.TIMER_SLACK == _client_core_py.TIMER_SLACK


def join(module: Any, group: Optional[List[Any]], key: int, method: Any, stated: Any, deadline: float) -> Any:
    """Whether ``module``'s join_group joins call ``key`` to (a copy of) ``group``, and the group after."""
    copy = None if group is None else list(group)
    return module.join_group(copy, key, method, stated, deadline), copy


groups = st.one_of(st.none(), st.tuples(st.floats(0, 100), st.integers(1, 5), st.integers(1, 5), st.sampled_from(["ping", "add"]),
                                        st.sampled_from([None, 1, 0.5])).map(list))


@settings(max_examples=300, deadline=None)
@given(groups, st.integers(1, 7), st.sampled_from(["ping", "add"]), st.sampled_from([None, 1, 0.5, 1.0]),
       st.one_of(st.floats(0, 100), st.sampled_from([0.0, 0.0005, 0.001, 0.0010000001, 50.0])))
def test_both_cores_join_timeout_groups_alike(group: Optional[List[Any]], key: int, method: str, stated: Any,
                                              deadline: float) -> None:
    assert join(_client_core, group, key, method, stated, deadline) == join(_client_core_py, group, key, method, stated, deadline)


def test_a_call_joins_the_group_just_before_it_within_the_slack() -> None:
    for module in (_client_core, _client_core_py):
        group = [10.0, 3, 4, "ping", 1]
        assert module.join_group(group, 5, "ping", 1, 10.0 + module.TIMER_SLACK) and group[2] == 5
        assert not module.join_group(group, 7, "ping", 1, 10.0)  # not the next key
        assert not module.join_group(group, 6, "add", 1, 10.0)  # another method
        assert not module.join_group(group, 6, "ping", 2, 10.0)  # another timeout
        assert not module.join_group(group, 6, "ping", 1, 10.002)  # past the slack
        assert not module.join_group(None, 6, "ping", 1, 10.0)
        assert group == [10.0, 3, 5, "ping", 1]



class Link:
    """What ``ClientCore.send`` uses of the async client's connection."""

    def __init__(self) -> None:
        self.groups: List[List[Any]] = []
        self.flushes = 0

    def _start_group(self, key: int, method: str, stated: Any, deadline: float) -> None:
        self.groups.append([deadline, key, key, method, stated])

    def schedule_flush(self) -> None:
        self.flushes += 1


class Waiter:
    __slots__ = ("_link", "_key", "_again")


def sent(name: str) -> List[Any]:
    """What one core's ``send`` does with a few calls: the waiters' slots, the groups, the flushes, the bytes."""
    core = CLIENT_CONNECTIONS[name](lambda *a: None)
    link = Link()
    made = [core.send(link, Waiter, "ping", ABSENT, 1, 2, None, 10.0, None, "client", True)]
    group = link.groups[0]
    made.append(core.send(link, Waiter, "ping", [1], 1, 2, None, 10.0005, group))  # joins it
    made.append(core.send(link, Waiter, "add", [1, 2], 1, 2, {"k": "v"}, 10.0, group))  # another method: a group of its own
    made.append(core.send(link, Waiter, "ping", ABSENT, None, None, None, None, link.groups[-1], "client"))  # no timeout
    first = [link.flushes, core.data_to_send()]
    made.append(core.send(link, Waiter, "ping", ABSENT, None, None, None, None, None))  # after a flush: another
    slots = [(w._link is link, w._key, getattr(w, "_again", None)) for w in made]
    return [slots, link.groups, first, link.flushes, core.data_to_send(), list(core.waiters)]


def test_both_cores_send_alike() -> None:
    slots, groups, flushes_before, flushes, _, keys = outcome = sent("cython")
    assert outcome == sent("python")
    assert slots == [(True, 1, ("client", "ping", ABSENT, None, True, 2, 10.0)), (True, 2, None), (True, 3, None),
                     (True, 4, ("client", "ping", ABSENT, None, None, None, None)), (True, 5, None)]
    assert groups == [[10.0, 1, 2, "ping", 2], [10.0, 3, 3, "add", 2]]
    assert (flushes_before[0], flushes, keys) == (1, 2, [1, 2, 3, 4, 5])  # one flush per emptied buffer


def test_send_needs_its_waiters_slots() -> None:
    class NoSlots:
        pass

    core = CLIENT_CONNECTIONS["cython"](lambda *a: None)
    with pytest.raises(TypeError, match="NoSlots._link is not a slot"):
        core.send(Link(), NoSlots, "ping", ABSENT, None, None, None, None, None)
    assert not core.waiters and core.data_to_send() == b""  # nothing sent
