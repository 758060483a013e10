"""The compiled handler timer (fastrpc._timing) against its pure-Python twin (fastrpc._timing_py)."""

from __future__ import annotations

import inspect
from typing import Any, List

import pytest

from fastrpc import _timing, _timing_py, framing, metrics
from fastrpc.protocol import Method, ServerConnection

from .conftest import frame

IMPLEMENTATIONS = {"cython": _timing, "python": _timing_py}
BOUNDS = (0.001, 0.01, 0.1)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def timing(request: pytest.FixtureRequest) -> Any:
    return IMPLEMENTATIONS[request.param]


def test_metrics_use_the_timer_that_goes_with_the_framing() -> None:
    expected = _timing if framing.IMPLEMENTATION == "cython" else _timing_py
    assert metrics.MethodMetrics is expected.MethodMetrics and metrics.Timed is expected.Timed


@pytest.mark.parametrize("seconds, bucket", [(0.0, 0), (0.001, 0), (0.0010001, 1), (0.01, 1), (0.05, 2), (0.1, 2), (0.2, 3), (1e9, 3)])
def test_a_time_falls_in_the_first_bucket_it_is_at_most(timing: Any, seconds: float, bucket: int) -> None:
    counts = timing.MethodMetrics(BOUNDS)
    counts.observe(seconds)
    expected = [0] * 4
    expected[bucket] = 1
    assert counts.buckets == expected and counts.count == 1 and counts.sum == seconds and counts.raised == 0


def test_both_count_the_same(timing: Any) -> None:
    counts = timing.MethodMetrics(BOUNDS)
    for seconds in (0.0005, 0.002, 0.002, 0.5):
        counts.observe(seconds)
    counts.failed(0.05)
    assert counts.bounds == BOUNDS
    assert (counts.buckets, counts.count, counts.raised) == ([1, 2, 1, 1], 5, 1)
    assert counts.sum == pytest.approx(0.5545)


def test_timed_returns_raises_and_counts_each(timing: Any) -> None:
    counts = timing.MethodMetrics(BOUNDS)

    def handler(a: int, *, b: int = 0) -> int:
        if a < 0:
            raise ValueError("negative")
        return a + b

    timed = timing.Timed(handler, counts)
    assert timed(1, b=2) == 3 and timed(5) == 5
    with pytest.raises(ValueError, match="negative"):
        timed(-1)
    with pytest.raises(TypeError):
        timed()  # bad params raise inside, and are timed as a call that raised
    assert (counts.count, counts.raised) == (4, 2)
    assert 0 <= counts.sum < 1
    assert inspect.signature(timed) == inspect.signature(handler)  # through __wrapped__


def test_the_core_still_tells_bad_params_through_a_timed_handler(timing: Any, framing_impl: Any) -> None:
    counts = timing.MethodMetrics(BOUNDS)
    methods = {"add": Method("add", timing.Timed(lambda a, b: a + b, counts))}
    calls: List[Any] = []
    core = ServerConnection(methods, calls.append)
    data = core.receive_data(frame(b'{"in": "add", "params": [1], "id": 1}') + frame(b'{"in": "add", "params": [1, 2], "id": 2}'))
    assert b'"code":-32602' in data and b'"result": 3' in data
    assert (counts.count, counts.raised) == (2, 1)
