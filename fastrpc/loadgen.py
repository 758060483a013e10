"""The load generator behind ``fastrpc bench``: throughput and latency of one method, wrk-style.

It has to outrun the server it measures, so the per-request work is cut to
what cannot be avoided:

- Requests carry no id (the ordered mode, docs/protocol.md section 5): every
  request of a run is the same precomputed frame, sending k of them is one
  ``transport.write(frame * k)``, and replies are matched to requests by
  order, first in first out, per connection.
- Send times are kept per write, not per request: a connection holds a queue
  of ``[send time, requests still unanswered]`` batches, and a read that
  completes k replies retires k requests from the oldest batches, recording
  each batch's latency once, weighted by how many of its requests it held.
- Every reply is checked, but cheaply: a body byte-identical to the last one
  verified as a success is a success without parsing; any other body is
  parsed and classified by the rule the clients use (``protocol.read_reply``),
  and becomes the new reference if it succeeded.
- Latencies go into a fixed array of log-spaced buckets, so memory does not
  grow with the length of the run.

A request belongs to the measured window if it was sent in it. At the end of
the window sending stops and the replies still owed are waited for (at most
``DRAIN_TIMEOUT``), so every request of the window ends up exactly once as a
success or an error: ``requests == successes + errors`` always holds.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional

from .errors import FrameTooLarge, ProtocolError, RemoteError
from .framing import FrameReader, pack_frames
from .net import connect_failed, set_nodelay
from .protocol import ABSENT, encode_request, read_reply

__all__ = ["LatencyHistogram", "Progress", "Report", "format_progress", "format_report", "run_load"]

#: Seconds to wait, once sending has stopped, for the replies still owed.
DRAIN_TIMEOUT = 5.0
#: Distinct error messages kept for the report.
MAX_ERROR_SAMPLES = 5
_SAMPLE_LENGTH = 200  # characters kept of one error message
_PROGRESS_INTERVAL = 1.0
_CLOSE_TIMEOUT = 2.0  # seconds the connections get to report themselves closed

_clock = time.perf_counter  # loop.time() is only millisecond-precise under uvloop
_frexp = math.frexp


class LatencyHistogram:
    """Counts of values (seconds) in log-spaced buckets, plus the exact maximum.

    ``math.frexp`` writes a value as ``m * 2**e`` with ``0.5 <= m < 1``; each
    power of two is cut into ``SUB`` equal slices of ``m``. A bucket is then
    at most 1/SUB (0.8 %) of its lower bound wide and a percentile, read at
    its bucket's midpoint, is within 0.4 % of the truth, for a fixed 42 KiB
    however many values are recorded.
    """

    SUB = 128
    MIN_EXP = -30  # 2**-31 s, about 0.5 ns: anything shorter lands in the first bucket
    MAX_EXP = 10  # 2**10 s, about 17 minutes: anything longer lands in the last

    __slots__ = ("counts", "total", "max")

    def __init__(self) -> None:
        self.counts = [0] * ((self.MAX_EXP - self.MIN_EXP + 1) * self.SUB)
        self.total = 0
        self.max = 0.0

    def record(self, seconds: float, count: int = 1) -> None:
        """Add ``count`` occurrences of ``seconds`` (a batch of requests shares one latency)."""
        mantissa, exponent = _frexp(seconds)
        if seconds <= 0 or exponent < self.MIN_EXP:
            index = 0
        elif exponent > self.MAX_EXP:
            index = len(self.counts) - 1
        else:
            index = (exponent - self.MIN_EXP) * self.SUB + int((mantissa - 0.5) * 2 * self.SUB)
        self.counts[index] += count
        self.total += count
        if seconds > self.max:
            self.max = seconds

    def percentile(self, fraction: float) -> float:
        """The value at or below which ``fraction`` (0 to 1) of the recorded values lie; 0 when empty."""
        if not self.total:
            return 0.0
        # Nearest rank: a value that was recorded. Rounding first keeps float noise
        # (0.07 * 100 == 7.000000000000001) from moving it up by one.
        rank = max(1, math.ceil(round(fraction * self.total, 9)))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                exponent, slot = divmod(index, self.SUB)
                midpoint = math.ldexp(0.5 + (slot + 0.5) / (2 * self.SUB), exponent + self.MIN_EXP)
                # The midpoint of the top bucket may lie above the true maximum.
                return min(midpoint, self.max)
        return self.max  # not reached: the counts add up to total


@dataclass
class Progress:
    """What ``run_load`` tells its ``progress`` callback about once a second."""

    elapsed: float  # seconds since the measured window started (since the start while warming up)
    requests_per_s: float  # replies per second over the last interval, warmup ones included
    requests: int  # requests of the window completed so far
    errors: int  # of which errors
    warming_up: bool


@dataclass
class Report:
    """The outcome of one run. Latencies are in milliseconds, over the requests of the window."""

    connections: int
    depth: int
    method: str
    seconds: float  # the measured window: from its start to its last reply (to its last send if some never came)
    requests: int  # requests sent in the window; always successes + errors
    successes: int
    errors: int  # error replies, bad replies, and requests lost with their connection
    requests_per_s: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float
    bytes_sent: int  # written and read from the start of the window to the end of the drain
    bytes_received: int
    error_samples: List[str] = field(default_factory=list)  # a few distinct error messages

    def to_dict(self) -> Dict[str, Any]:
        """The report as plain JSON-encodable values, for ``--json`` style output."""
        return asdict(self)


class _LoadConnection(asyncio.BufferedProtocol):
    """One connection keeping ``depth`` identical id-less requests in flight.

    ``skip`` counts the requests in flight that were sent before the window
    opened: replies answer requests in order, so the next ``skip`` replies
    are theirs, and they are checked but not counted.
    """

    def __init__(self, load: "_Load") -> None:
        self._load = load
        self._reader = reader = FrameReader()
        # The transport looks get_buffer up once: binding the compiled
        # method here spares a Python call per read.
        self.get_buffer = reader.get_buffer  # type: ignore[method-assign]
        self._batches: Deque[List[Any]] = deque()  # [send time, requests unanswered], oldest first
        self._good = b""  # the last reply body verified as a success
        self.in_flight = 0
        self.skip = 0
        self.broken: Optional[str] = None  # set when the server broke the protocol
        self.transport: Optional[asyncio.Transport] = None
        self.gone = load.loop.create_future()  # resolved by connection_lost
        self._abandoned = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport.get_extra_info("socket"))

    def get_buffer(self, sizehint: int) -> memoryview:  # replaced per instance in __init__
        return self._reader.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        load = self._load
        reader = self._reader
        reader.buffer_updated(nbytes)
        load.bytes_received += nbytes
        skipped = self._skip_replies() if self.skip else 0
        successes = errors = 0
        if self.broken is None:
            # The hot loop: one compiled call and one bytes comparison per reply.
            good = self._good
            next_frame = reader.next_frame
            try:
                body = next_frame()
                while body is not None:
                    if body == good:
                        successes += 1
                    elif self._verify(body):
                        successes += 1
                        good = self._good
                    else:
                        errors += 1
                        if self.broken is not None:
                            break
                    body = next_frame()
            except FrameTooLarge as exc:
                self.broken = f"protocol error: {exc}"
        answered = skipped + successes + errors
        if answered > self.in_flight:
            self.abandon("protocol error: the server sent more replies than it was sent requests")
            return
        now = _clock()
        if answered:
            self.in_flight -= answered
            if skipped:
                self.skip -= skipped
                self._retire(skipped, now, None)
            if successes or errors:
                self._retire(successes + errors, now, load.histogram)
                load.successes += successes
                load.errors += errors
            load.replies += answered
        if self.broken is not None:
            self.abandon(self.broken)
        elif load.sending:
            if answered and load.budget is not None:
                answered = load.take(answered)
            if answered:
                self.send(answered, now)
        elif not self.in_flight:
            load.check_drained()

    def _skip_replies(self) -> int:
        """Check, without counting them, the replies owed to requests sent before the window."""
        next_frame = self._reader.next_frame
        skipped = 0
        try:
            while skipped < self.skip:
                body = next_frame()
                if body is None:
                    break
                skipped += 1
                if body != self._good and not self._verify(body) and self.broken is not None:
                    break
        except FrameTooLarge as exc:
            self.broken = f"protocol error: {exc}"
        return skipped

    def _verify(self, body: Any) -> bool:
        """Classify a reply unlike the last good one, as the clients do: True for a success.

        A reply that is not a JSON object cannot be trusted to answer a
        request at all: it is an error and sets ``broken``.
        """
        try:
            _, _, error = read_reply(body)
        except ProtocolError as exc:
            self.broken = f"protocol error: {exc}"
            return False
        if error is None:
            self._good = bytes(body)  # a frame may be a view into the reader's buffer
            return True
        self._load.sample(f"error {error.code}: {error.message}" if isinstance(error, RemoteError) else str(error))
        return False

    def _retire(self, count: int, now: float, histogram: Optional[LatencyHistogram]) -> None:
        """Take ``count`` answered requests off the oldest batches, recording their latency."""
        batches = self._batches
        while count:
            batch = batches[0]
            sent, size = batch
            if size <= count:
                batches.popleft()
                taken = size
            else:
                batch[1] = size - count
                taken = count
            if histogram is not None:
                histogram.record(now - sent, taken)
            count -= taken

    def send(self, count: int, now: float) -> None:
        """Write ``count`` requests at once."""
        load = self._load
        self.transport.write(load.frame * count)  # type: ignore[union-attr]
        self._batches.append([now, count])
        self.in_flight += count
        if not load.counting:
            self.skip += count
        load.bytes_sent += count * len(load.frame)

    def abandon(self, reason: str) -> None:
        """Give up on this connection: its requests of the window in flight are errors."""
        if self._abandoned:
            return
        self._abandoned = True
        load = self._load
        load.errors += self.in_flight - self.skip
        load.sample(reason)
        self.in_flight = self.skip = 0
        self._batches.clear()
        if self.transport is not None:
            self.transport.abort()
        load.connection_abandoned()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if not self._load.finished:
            self.abandon(f"connection lost: {exc}" if exc else "connection closed by the server")
        if not self.gone.done():
            self.gone.set_result(None)


class _Load:
    """State shared by the connections of one run, and the run's phases."""

    def __init__(self, frame: bytes, depth: int, budget: Optional[int], progress: Optional[Callable[[Progress], None]]) -> None:
        self.loop = asyncio.get_running_loop()
        self.frame = frame
        self.depth = depth
        self.budget = budget  # requests the window may still send; None: no limit
        self.progress = progress
        self.connections: List[_LoadConnection] = []
        self.histogram = LatencyHistogram()
        self.samples: List[str] = []
        self.sending = True
        self.counting = False  # the window is open
        self.finished = False  # the run is over: closing connections is no loss
        self.successes = self.errors = self.replies = 0
        self.bytes_sent = self.bytes_received = 0
        self._alive = 0
        self._stop = asyncio.Event()  # no more sending: the budget is spent, or every connection is gone
        self._drained = asyncio.Event()  # not sending and nothing in flight
        self._started = self._opened = self._last_tick = 0.0
        self._last_replies = 0

    async def connect(self, host: str, port: int, count: int, timeout: float) -> None:
        """Open ``count`` connections at once; ConnectionError if any fails."""

        async def one() -> _LoadConnection:
            _, connection = await asyncio.wait_for(
                self.loop.create_connection(lambda: _LoadConnection(self), host, port), timeout
            )
            return connection

        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        self.connections = [r for r in results if isinstance(r, _LoadConnection)]
        self._alive = len(self.connections)
        for result in results:
            if isinstance(result, BaseException):
                raise connect_failed(host, port, result, timeout) from result

    def start(self) -> None:
        """Fill every connection's pipeline."""
        self._started = self._last_tick = _clock()
        for connection in self.connections:
            count = self.take(self.depth)
            if count:
                connection.send(count, self._started)

    def open_window(self) -> None:
        """From now on, what is sent is measured."""
        self.counting = True
        self._opened = _clock()
        self.bytes_sent = self.bytes_received = 0

    async def pause(self, seconds: Optional[float]) -> None:
        """Wait ``seconds`` (None: no limit) or until sending must stop; report progress on the way."""
        progress = self.progress
        end = math.inf if seconds is None else _clock() + seconds
        while not self._stop.is_set():
            now = _clock()
            if now >= end:
                return
            wake = end if progress is None else min(end, self._last_tick + _PROGRESS_INTERVAL)
            try:
                await asyncio.wait_for(self._stop.wait(), None if wake == math.inf else wake - now)
            except asyncio.TimeoutError:
                pass
            now = _clock()
            if progress is not None and now >= self._last_tick + _PROGRESS_INTERVAL:
                rate = (self.replies - self._last_replies) / (now - self._last_tick)
                self._last_tick, self._last_replies = now, self.replies
                elapsed = now - (self._opened if self.counting else self._started)
                progress(Progress(elapsed, rate, self.successes + self.errors, self.errors, not self.counting))

    async def drain(self) -> float:
        """Stop sending, wait (bounded) for the replies still owed; returns the window's length."""
        self.sending = False
        stopped = _clock()
        self.check_drained()
        try:
            await asyncio.wait_for(self._drained.wait(), DRAIN_TIMEOUT)
        except asyncio.TimeoutError:
            for connection in self.connections:
                if connection.in_flight:
                    connection.abandon(f"no reply within {DRAIN_TIMEOUT:g} s after the window closed")
            # Waiting for replies that never came is no time the server spent answering.
            return stopped - self._opened
        return _clock() - self._opened

    def take(self, count: int) -> int:
        """How many of ``count`` requests may be sent, within the budget of the window."""
        if not self.counting or self.budget is None:
            return count
        granted = min(count, self.budget)
        self.budget -= granted
        if not self.budget:
            self.sending = False
            self._stop.set()
        return granted

    def check_drained(self) -> None:
        if not self.sending and not any(connection.in_flight for connection in self.connections):
            self._drained.set()

    def connection_abandoned(self) -> None:
        self._alive -= 1
        if not self._alive:
            self._stop.set()
        self.check_drained()

    def sample(self, message: str) -> None:
        """Keep ``message`` as an example of what went wrong, if it is new and there is room."""
        message = message[:_SAMPLE_LENGTH]
        if len(self.samples) < MAX_ERROR_SAMPLES and message not in self.samples:
            self.samples.append(message)

    async def close(self) -> None:
        self.finished = True
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.close()
        if self.connections:
            await asyncio.wait([c.gone for c in self.connections], timeout=_CLOSE_TIMEOUT)


async def run_load(
    host: str,
    port: int,
    *,
    method: str = "ping",
    params: Any = ABSENT,
    connections: int = 50,
    depth: int = 1,
    duration: Optional[float] = 10.0,
    requests: Optional[int] = None,
    warmup: float = 0.0,
    progress: Optional[Callable[[Progress], None]] = None,
    connect_timeout: float = 10.0,
) -> Report:
    """Call ``method`` over ``connections`` connections, each keeping ``depth`` requests in flight.

    Give exactly one of ``duration`` (seconds of measured window) and
    ``requests`` (how many requests the window sends; pass ``duration=None``).
    ``warmup`` seconds of load come first, unmeasured, so that the window
    sees a server in its steady state. ``progress`` is called about once a
    second. A connection lost mid-run counts its requests in flight as
    errors and the run goes on with the others; it ends early if none is
    left. Raises ConnectionError if a connection cannot be opened.
    """
    if (duration is None) == (requests is None):
        raise ValueError("give exactly one of duration and requests (pass duration=None with requests)")
    if duration is not None and not duration > 0:
        raise ValueError(f"duration must be positive, got {duration!r}")
    if requests is not None and requests < 1:
        raise ValueError(f"requests must be at least 1, got {requests!r}")
    if connections < 1 or depth < 1:
        raise ValueError(f"connections and depth must be at least 1, got {connections!r} and {depth!r}")
    if warmup < 0 or not connect_timeout > 0:
        raise ValueError("warmup must not be negative and connect_timeout must be positive")

    load = _Load(pack_frames([encode_request(method, params)]), depth, requests, progress)
    try:
        await load.connect(host, port, connections, connect_timeout)
        if warmup:
            load.start()
            await load.pause(warmup)
            load.open_window()
        else:
            load.open_window()
            load.start()
        await load.pause(duration)
        seconds = await load.drain()
    finally:
        await load.close()

    histogram = load.histogram
    done = load.successes + load.errors
    return Report(
        connections=connections,
        depth=depth,
        method=method,
        seconds=seconds,
        requests=done,
        successes=load.successes,
        errors=load.errors,
        requests_per_s=done / seconds if seconds > 0 else 0.0,
        p50=histogram.percentile(0.50) * 1e3,
        p90=histogram.percentile(0.90) * 1e3,
        p99=histogram.percentile(0.99) * 1e3,
        p999=histogram.percentile(0.999) * 1e3,
        max=histogram.max * 1e3,
        bytes_sent=load.bytes_sent,
        bytes_received=load.bytes_received,
        error_samples=list(load.samples),
    )


def _milliseconds(value: float) -> str:
    if value < 1:
        return f"{value * 1e3:.0f}us"
    if value < 1e3:
        return f"{value:.2f}ms"
    return f"{value / 1e3:.2f}s"


def _size(count: int) -> str:
    if count < 1024:
        return f"{count}B"
    value = count / 1024
    for unit in ("KB", "MB"):
        if value < 1024:
            return f"{value:.2f}{unit}"
        value /= 1024
    return f"{value:.2f}GB"


def format_progress(progress: Progress, width: int = 80) -> str:
    """The live line of ``fastrpc bench`` for a terminal ``width`` columns wide, in at most
    ``width - 1`` characters (a line reaching the last column wraps, and ``\\r`` no longer
    rewrites it). Where the padded form does not fit, the padding goes first, then the
    elapsed time, then the count done, then the errors, then the unit of the rate; where
    not even the rate fits, the line is empty (a number cut short would mislead)."""
    number = f"{progress.requests_per_s:,.0f}"
    rate = number + " req/s"
    if progress.warming_up:
        details = ["warming up"]
    else:
        details = [f"{progress.requests:,} done, {progress.errors:,} errors", f"{progress.errors:,} errors"]
    padded = f"  {progress.elapsed:6.1f}s  {progress.requests_per_s:12,.0f} req/s  {details[0]}"
    for line in (padded, f"{progress.elapsed:.1f}s {rate} {details[0]}", *(f"{rate} {d}" for d in details), rate, number):
        if len(line) < width:
            return line
    return ""


def format_report(report: Report) -> str:
    """A short human-readable report in the manner of wrk's."""
    latencies = (report.p50, report.p90, report.p99, report.p999, report.max)
    lines = [
        f"{report.method}: {report.connections} connections x {report.depth} in flight, {report.seconds:.2f}s",
        "  Latency      p50      p90      p99    p99.9      max",
        "           " + "".join(f"{_milliseconds(value):>9}" for value in latencies),
        f"  {report.requests:,} requests in {report.seconds:.2f}s ({report.successes:,} ok, {report.errors:,} errors), "
        f"{_size(report.bytes_sent)} sent, {_size(report.bytes_received)} read",
    ]
    if report.error_samples:
        lines.append("  Errors, for example:")
        lines.extend(f"    {message}" for message in report.error_samples)
    lines.append(f"Requests/sec: {report.requests_per_s:,.2f}")
    return "\n".join(lines)
