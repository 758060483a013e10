"""The load generator against real servers on 127.0.0.1: counts, checks, losses; and its histogram.

Figures are never asserted (timing is not a test); counts are, exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, List

import pytest

from fastrpc import loadgen, net
from fastrpc.framing import FrameReader
from fastrpc.loadgen import LatencyHistogram, Progress, Report, format_report, run_load

from .conftest import demo_server, frame, serving

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent.parent / "bench"
PING_REQUEST = frame(b'{"in":"ping"}')
PING_REPLY = frame(b'{"out": "pong", "result": null}')


@pytest.fixture
def go(run: Callable[..., Any], framing_impl: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """``run`` (each loop, each framing), with the load generator on that framing too."""
    monkeypatch.setattr(loadgen, "FrameReader", framing_impl.FrameReader)
    return run


def assert_consistent(report: Report) -> None:
    assert report.requests == report.successes + report.errors
    assert 0 <= report.p50 <= report.p90 <= report.p99 <= report.p999 <= report.max
    assert len(report.error_samples) <= loadgen.MAX_ERROR_SAMPLES


# -- against fastrpc's own server -------------------------------------------------------

def test_requests_gives_exactly_that_many(go: Callable[..., Any]) -> None:
    async def main() -> Report:
        async with serving(demo_server()) as port:
            return await run_load(HOST, port, connections=4, depth=8, duration=None, requests=500)

    report = go(main())
    assert_consistent(report)
    assert report.requests == report.successes == 500 and report.errors == 0
    assert (report.connections, report.depth, report.method) == (4, 8, "ping")
    # No warmup: every byte of the run is in the window.
    assert report.bytes_sent == 500 * len(PING_REQUEST)
    assert report.bytes_received == 500 * len(PING_REPLY)
    assert report.p50 > 0 and report.requests_per_s > 0 and report.seconds > 0
    assert report.error_samples == []


def test_duration_with_warmup_and_progress(go: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadgen, "_PROGRESS_INTERVAL", 0.05)
    ticks: List[Progress] = []

    async def main() -> Report:
        async with serving(demo_server()) as port:
            return await run_load(HOST, port, method="echo", params={"x": [1, 2]}, connections=3, depth=4,
                                  duration=0.3, warmup=0.2, progress=ticks.append)

    report = go(main())
    assert_consistent(report)
    assert report.successes > 0 and report.errors == 0
    assert report.seconds >= 0.3
    assert any(tick.warming_up for tick in ticks) and not ticks[-1].warming_up
    assert all(tick.requests_per_s >= 0 and tick.requests <= report.requests for tick in ticks)


def test_warmup_replies_are_not_counted(go: Callable[..., Any]) -> None:
    async def main() -> Report:
        async with serving(demo_server()) as port:
            return await run_load(HOST, port, connections=2, depth=16, duration=None, requests=300, warmup=0.1)

    report = go(main())
    assert_consistent(report)
    assert report.requests == report.successes == 300
    assert report.bytes_sent == 300 * len(PING_REQUEST)


@pytest.mark.parametrize("method, code", [("no_such_method", -32601), ("fail", -32603)])
def test_error_replies_are_counted_and_sampled(go: Callable[..., Any], method: str, code: int) -> None:
    async def main() -> Report:
        async with serving(demo_server()) as port:
            return await run_load(HOST, port, method=method, connections=2, depth=4, duration=None, requests=100)

    report = go(main())
    assert_consistent(report)
    assert report.errors == report.requests == 100 and report.successes == 0
    assert len(report.error_samples) == 1 and report.error_samples[0].startswith(f"error {code}: ")


def test_replies_that_all_differ_are_successes(go: Callable[..., Any]) -> None:
    server = demo_server()
    counter = itertools.count()

    @server.method
    def tick() -> int:
        return next(counter)

    async def main() -> Report:
        async with serving(server) as port:
            return await run_load(HOST, port, method="tick", connections=3, depth=16, duration=None, requests=400)

    report = go(main())
    assert_consistent(report)
    assert report.successes == 400 and report.errors == 0
    assert next(counter) == 400  # every request reached the server once, none more


def test_unanswered_requests_are_errors_after_the_drain(go: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadgen, "DRAIN_TIMEOUT", 0.1)

    async def main() -> Report:
        async with serving(demo_server()) as port:
            return await run_load(HOST, port, method="sleep", params=[30], connections=2, depth=3, duration=None, requests=5)

    report = go(main(), timeout=10)
    assert_consistent(report)
    assert report.errors == report.requests == 5
    assert any("no reply within" in sample for sample in report.error_samples)


# -- against servers that misbehave --------------------------------------------------------

class _Scripted(asyncio.Protocol):
    """Answers the first ``answers`` frames of a connection with ``reply``, then closes it."""

    def __init__(self, reply: bytes, answers: int) -> None:
        self._reader = FrameReader()
        self._reply = reply
        self._left = answers

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._left <= 0:
            return
        self._reader.feed(data)
        count = 0
        while self._left and self._reader.next_frame() is not None:
            self._left -= 1
            count += 1
        self._transport.write(self._reply * count)
        if not self._left:
            self._transport.close()


async def _scripted(reply: bytes, answers: int, connections: int, depth: int) -> Report:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Scripted(reply, answers), HOST, 0)
    try:
        port = server.sockets[0].getsockname()[1]
        # The run must end well before this duration: every connection is lost.
        return await run_load(HOST, port, connections=connections, depth=depth, duration=60)
    finally:
        server.close()
        await server.wait_closed()


def test_server_closing_connections_mid_run(go: Callable[..., Any]) -> None:
    report = go(_scripted(frame(b'{"out": "pong", "result": 1}'), answers=5, connections=3, depth=4), timeout=10)
    assert_consistent(report)
    # Each connection keeps 4 requests in flight, so at least 4 are lost with it (more if
    # the close overtook replies); at most 5 were answered.
    assert report.successes <= 15 and report.errors >= 12
    assert report.seconds < 30
    assert any(sample.startswith("connection") for sample in report.error_samples)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
def test_reply_that_is_no_json_object_stops_the_connection(go: Callable[..., Any], body: bytes) -> None:
    report = go(_scripted(frame(body), answers=1000, connections=2, depth=3), timeout=10)
    assert_consistent(report)
    # The bad reply is an error and so is everything in flight with it.
    assert report.successes == 0 and report.errors == report.requests == 6
    assert any(sample.startswith("protocol error") for sample in report.error_samples)


def test_canned_server_answers_every_request() -> None:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(BENCH / "canned_server.py"), "--host", HOST, "--port", str(port)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:  # until it listens
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the canned server did not start"
                time.sleep(0.02)
        report = asyncio.run(asyncio.wait_for(
            run_load(HOST, port, connections=2, depth=32, duration=None, requests=1000), 10))
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=10)
    assert server.returncode == 0  # SIGTERM is a clean exit
    assert f"listening on {HOST}:{port}" in stderr.decode()
    assert_consistent(report)
    assert report.successes == 1000 and report.errors == 0


def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind((HOST, 0))  # bound, never listening: connecting is refused
        port = sock.getsockname()[1]
        with pytest.raises(ConnectionError, match=f"could not connect to {HOST}:{port}: "):
            asyncio.run(run_load(HOST, port, connections=3, duration=1))


@pytest.mark.parametrize("kwargs", [
    {"duration": 1, "requests": 10},
    {"duration": None},
    {"duration": 0},
    {"duration": None, "requests": 0},
    {"connections": 0},
    {"depth": 0},
    {"warmup": -1},
])
def test_bad_arguments(kwargs: Any) -> None:
    with pytest.raises(ValueError):
        asyncio.run(run_load(HOST, 1, **kwargs))


def test_format_report_and_to_dict() -> None:
    report = Report(connections=10, depth=64, method="ping", seconds=5.0, requests=1_000_000, successes=999_990,
                    errors=10, requests_per_s=200_000.0, p50=0.25, p90=0.5, p99=1.5, p999=12.0, max=1500.0,
                    bytes_sent=17_000_000, bytes_received=35_000_000, error_samples=["error -32603: boom"])
    text = format_report(report)
    assert "10 connections x 64 in flight" in text
    assert "250us" in text and "1.50ms" in text and "1.50s" in text
    assert "1,000,000 requests in 5.00s (999,990 ok, 10 errors)" in text
    assert "16.21MB sent" in text and "error -32603: boom" in text
    assert text.splitlines()[-1] == "Requests/sec: 200,000.00"
    data = report.to_dict()
    assert data["p999"] == 12.0 and data["error_samples"] == ["error -32603: boom"]


# -- the histogram ---------------------------------------------------------------------------

def _exact(values: List[float], fraction: float) -> float:
    """The nearest-rank percentile, by sorting and exact arithmetic."""
    ordered = sorted(values)
    rank = max(1, math.ceil(Fraction(str(fraction)) * len(ordered)))
    return ordered[rank - 1]


def test_histogram_on_known_data() -> None:
    histogram = LatencyHistogram()
    for ms in range(1, 1001):  # 1 ms to 1 s, once each
        histogram.record(ms / 1000)
    assert histogram.total == 1000 and histogram.max == 1.0
    assert histogram.percentile(0.5) == pytest.approx(0.500, rel=0.004)
    assert histogram.percentile(0.9) == pytest.approx(0.900, rel=0.004)
    assert histogram.percentile(0.99) == pytest.approx(0.990, rel=0.004)
    assert histogram.percentile(0.999) == pytest.approx(0.999, rel=0.004)
    assert histogram.percentile(1.0) == 1.0  # clamped to the exact maximum
    assert histogram.percentile(0.0) == pytest.approx(0.001, rel=0.004)


def test_histogram_rank_ignores_float_noise() -> None:
    histogram = LatencyHistogram()
    for ms in range(1, 101):
        histogram.record(ms / 1000)
    # 0.07 * 100 is 7.000000000000001 in floating point: the rank is still 7, not 8.
    assert histogram.percentile(0.07) == pytest.approx(0.007, rel=0.004)


def test_histogram_weights() -> None:
    histogram = LatencyHistogram()
    histogram.record(0.002, 999)  # one batch of 999 requests
    histogram.record(3.0)
    assert histogram.total == 1000
    assert histogram.percentile(0.5) == pytest.approx(0.002, rel=0.004)
    assert histogram.percentile(0.999) == pytest.approx(0.002, rel=0.004)  # rank 999 of 1000
    assert histogram.percentile(0.9995) == 3.0


def test_histogram_matches_sorting_within_its_resolution() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-7, 1.5) for _ in range(20_000)]
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    for fraction in (0.1, 0.5, 0.9, 0.99, 0.999):
        assert histogram.percentile(fraction) == pytest.approx(_exact(values, fraction), rel=0.004)
    assert histogram.max == max(values)


def test_histogram_edges() -> None:
    histogram = LatencyHistogram()
    assert histogram.percentile(0.5) == 0.0
    for value in (0.0, 1e-12, 1e6):  # out of range values land in the end buckets
        histogram.record(value)
    assert histogram.max == 1e6 and histogram.total == 3
    assert histogram.percentile(0.5) <= histogram.percentile(1.0) <= histogram.max
    assert len(histogram.counts) == (LatencyHistogram.MAX_EXP - LatencyHistogram.MIN_EXP + 1) * LatencyHistogram.SUB



# -- the live progress line ------------------------------------------------------------------

@pytest.mark.parametrize("warming_up", [False, True])
def test_progress_line_never_reaches_the_last_column(warming_up: bool) -> None:
    progress = Progress(elapsed=123.4, requests_per_s=1_234_567.0, requests=98_765_432, errors=12, warming_up=warming_up)
    phase = "warming up" if warming_up else "98,765,432 done, 12 errors"
    # Longest first: the padding goes, then the elapsed time, then the count done, then the errors.
    forms = ["   123.4s     1,234,567 req/s  " + phase, "123.4s 1,234,567 req/s " + phase, "1,234,567 req/s " + phase]
    if not warming_up:
        forms.append("1,234,567 req/s 12 errors")
    forms += ["1,234,567 req/s", "1,234,567", ""]  # never a number cut short
    for longer, shorter in zip(forms, forms[1:]):
        assert loadgen.format_progress(progress, len(longer) + 1) == longer
        assert loadgen.format_progress(progress, len(longer)) == shorter
    for width in range(0, 100):
        assert len(loadgen.format_progress(progress, width)) <= max(0, width - 1), width


def test_connections_turn_nagle_off(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: List[int] = []

    def set_nodelay(sock: Any) -> None:
        net.set_nodelay(sock)
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(loadgen, "set_nodelay", set_nodelay)

    async def main() -> Report:
        async with serving(demo_server()) as port:
            return await run_load(HOST, port, connections=3, duration=None, requests=30)

    assert asyncio.run(asyncio.wait_for(main(), 10)).successes == 30
    assert len(seen) == 3 and all(seen)
