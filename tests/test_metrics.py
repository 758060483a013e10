"""Server and client metrics (fastrpc.metrics, fastrpc.prometheus): /metrics parsed with
prometheus_client's parser and checked, number by number, against the calls made."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import struct
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import fastrpc
from fastrpc.errors import ErrorCode
from fastrpc.metrics import UNKNOWN_METHOD, ClientMetrics, ServerMetrics, server_snapshot, traffic
import fastrpc.prometheus
from fastrpc.prometheus import MAX_SCRAPES, registry_of
from fastrpc.protocol import Method, ServerConnection
from fastrpc.server import SNAPSHOT_INTERVAL
from fastrpc.stats import MAX_APPLICATION_CODES

from .conftest import SERVER_CONNECTIONS, TEST_TIMEOUT, free_port, serve, server_connection, serving_in_thread

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (sample name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(reply.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def handled(samples: Samples, method: str) -> Dict[str, float]:
    """Method's handled_total by code (zeros left out)."""
    return {dict(key[1])["code"]: v for key, v in samples.items()
            if key[0] == "fastrpc_server_handled_total" and dict(key[1])["method"] == method and v}


class Raw:
    """A plain blocking socket speaking the wire format; counts what it sends and reads."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sent = self.received = self.frames_read = 0

    def send(self, body: bytes) -> None:
        data = struct.pack(">I", len(body)) + body
        self.sock.sendall(data)
        self.sent += len(data)

    def read(self) -> Dict[str, Any]:
        head = self._exactly(4)
        reply = json.loads(self._exactly(struct.unpack(">I", head)[0]))
        self.frames_read += 1
        return dict(reply)

    def call(self, body: bytes) -> Dict[str, Any]:
        self.send(body)
        return self.read()

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "the server closed the connection"
            data += chunk
        self.received += len(data)
        return data

    def closed(self) -> bool:
        """Read to the server's close (for connections it hangs up on)."""
        self.sock.settimeout(10)
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return True
            self.received += len(chunk)
            self.frames_read += 1  # one error frame, in these tests

    def close(self) -> None:
        self.sock.close()


def app(max_frame_size: int = 4096) -> fastrpc.Server:
    server = fastrpc.Server(max_frame_size=max_frame_size, shutdown_grace=0.5)

    @server.method
    def add(a: int, b: int) -> int:
        return a + b

    @server.method
    def refuse() -> None:
        raise fastrpc.RemoteError("not today", code=-32010)

    @server.method
    def fail() -> None:
        raise RuntimeError("boom")

    @server.method
    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    return server


def wait_for(check: Any, what: str, seconds: float = 15.0) -> Any:
    """Poll ``check()`` until it returns something true; bounded."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not after {seconds:g} s"
        time.sleep(0.05)


# -- one process ----------------------------------------------------------------------------

def test_every_outcome_is_counted_exactly() -> None:
    server = app()
    server.enable_metrics(port=0)
    with serving_in_thread(server) as port:
        metrics_port = server.metrics_address[1]  # type: ignore[index]
        raw = Raw(port)
        for i in range(5):
            assert raw.call(b'{"in": "add", "params": [%d, 1], "id": %d}' % (i, i))["result"] == i + 1
        for _ in range(2):
            assert raw.call(b'{"in": "refuse", "id": 1}')["error"]["code"] == -32010
        assert raw.call(b'{"in": "add", "params": [1], "id": 1}')["error"]["code"] == ErrorCode.INVALID_PARAMS
        assert raw.call(b'{"in": "fail", "id": 1}')["error"]["code"] == ErrorCode.INTERNAL_ERROR
        for name in (b"x1", b"x2", b"x3"):  # three names, one label
            assert raw.call(b'{"in": "%s", "id": 1}' % name)["error"]["code"] == ErrorCode.METHOD_NOT_FOUND
        assert raw.call(b'{"in": "nap", "params": [5], "id": 7, "deadline": 20}')["error"]["code"] == ErrorCode.TIMEOUT
        raw.send(b'{"in": "nap", "params": [5], "id": 8}')
        raw.send(b'{"cancel": 8}')  # no reply, ever
        assert raw.call(b'{"in": "nap", "params": [0], "id": 9}')["result"] == 0  # the cancel was read before it
        assert raw.call(b'not json')["error"]["code"] == ErrorCode.PARSE_ERROR

        big = Raw(port)
        big.sock.sendall(struct.pack(">I", 100_000))  # over max_frame_size: one error frame, then the close
        assert big.closed()

        samples = scrape(metrics_port)
        assert handled(samples, "add") == {"OK": 5, "INVALID_PARAMS": 1}
        assert handled(samples, "refuse") == {"-32010": 2}
        assert handled(samples, "fail") == {"INTERNAL_ERROR": 1}
        assert handled(samples, "nap") == {"TIMEOUT": 1, "CANCELLED": 1, "OK": 1}
        assert handled(samples, UNKNOWN_METHOD) == {"METHOD_NOT_FOUND": 3}
        assert not any(dict(key[1]).get("method") in ("x1", "x2", "x3") for key in samples)
        for method, count in (("add", 6), ("refuse", 2), ("fail", 1), ("nap", 3)):
            assert value(samples, "fastrpc_server_started_total", method=method) == count
            # Every one of these calls ran its handler: the histogram holds them all.
            assert value(samples, "fastrpc_server_handling_seconds_count", method=method) == count
            assert value(samples, "fastrpc_server_handling_seconds_bucket", method=method, le="+Inf") == count
        assert value(samples, "fastrpc_server_started_total", method=UNKNOWN_METHOD) == 3
        assert value(samples, "fastrpc_server_handling_seconds_sum", method="nap") >= 0.02  # the one cut off at 20 ms
        assert value(samples, "fastrpc_server_handling_seconds_bucket", method="nap", le="0.01") <= 2  # not it
        assert value(samples, "fastrpc_server_protocol_errors_total", kind="parse") == 1
        assert value(samples, "fastrpc_server_protocol_errors_total", kind="too_large") == 1
        assert value(samples, "fastrpc_server_connections") == 1
        assert value(samples, "fastrpc_server_connections_opened_total") == 2
        # Frames and bytes, both ways, as the two sockets counted them.
        assert value(samples, "fastrpc_server_received_frames_total") == 17  # the 100 KB one never completed
        assert value(samples, "fastrpc_server_sent_frames_total") == raw.frames_read + big.frames_read == 16
        assert value(samples, "fastrpc_server_received_bytes_total") == raw.sent + 4
        assert value(samples, "fastrpc_server_sent_bytes_total") == raw.received + big.received
        raw.close()
        big.close()


def test_a_running_call_is_in_flight_and_started() -> None:
    server = fastrpc.Server()
    release = asyncio.Event()

    @server.method
    async def block() -> str:
        await release.wait()
        return "done"

    server.enable_metrics(port=0)
    with serving_in_thread(server) as port:
        metrics_port = server.metrics_address[1]  # type: ignore[index]
        raw = Raw(port)
        raw.send(b'{"in": "block", "id": 1}')
        samples = wait_for(lambda: (s := scrape(metrics_port))[("fastrpc_server_calls_in_flight", ())] == 1 and s,
                           "the call in flight")
        assert value(samples, "fastrpc_server_started_total", method="block") == 1
        assert handled(samples, "block") == {}
        loop = server._server.get_loop()  # type: ignore[union-attr]
        loop.call_soon_threadsafe(release.set)
        assert raw.read()["result"] == "done"
        samples = scrape(metrics_port)
        assert value(samples, "fastrpc_server_calls_in_flight") == 0
        assert value(samples, "fastrpc_server_started_total", method="block") == 1
        assert handled(samples, "block") == {"OK": 1}
        raw.close()
    with pytest.raises(ConnectionRefusedError):  # /metrics stopped with the server
        socket.create_connection(("127.0.0.1", metrics_port), timeout=10).close()


def test_refused_calls_of_a_stopping_server_count_against_their_method() -> None:
    server = app()
    server.enable_metrics()
    with serving_in_thread(server) as port:
        raw = Raw(port)
        raw.send(b'{"in": "nap", "params": [0.3], "id": 1}')  # keeps the connection draining for a while
        loop = server._server.get_loop()  # type: ignore[union-attr]
        wait_for(lambda: on_loop(loop, server.metrics_snapshot)["families"]["fastrpc_server_calls_in_flight"][0][1] == 1,
                 "running")
        on_loop(loop, server.close)
        replies = [raw.call(b'{"in": "add", "params": [1, 2], "id": 2}'), raw.call(b'{"in": "nope", "id": 3}')]
        assert [r["error"]["code"] for r in replies] == [ErrorCode.SHUTTING_DOWN] * 2
        assert raw.read()["result"] == 0.3
        snapshot = on_loop(server._server.get_loop(), server.metrics_snapshot)  # type: ignore[union-attr]
        samples = parse(generate_latest(registry_of(lambda: snapshot)).decode())
        assert handled(samples, "add") == {"SHUTTING_DOWN": 1}
        assert handled(samples, UNKNOWN_METHOD) == {"SHUTTING_DOWN": 1}
        assert handled(samples, "nap") == {"OK": 1}
        raw.close()


def on_loop(loop: asyncio.AbstractEventLoop, function: Any) -> Any:
    """``function()`` run on the server's loop (the thread that changes what it reads); its result."""
    async def run() -> Any:
        return function()

    return asyncio.run_coroutine_threadsafe(run(), loop).result(10)


# What the server core refuses itself, with no exception and no Python call to count it: an unknown method, an
# untyped handler's wrong count of params, a typed handler's wrong count or kinds (the same kinds again: the
# refusal its checker kept); and, between them, one good call, counted nowhere.
CORE_REFUSALS = [(b'{"in": "x1", "id": 1}', ErrorCode.METHOD_NOT_FOUND), (b'{"in": "x2", "id": 2}', ErrorCode.METHOD_NOT_FOUND),
                 (b'{"in": "x1", "params": [1], "id": 3}', ErrorCode.METHOD_NOT_FOUND),
                 (b'{"in": "untyped", "params": [1], "id": 4}', ErrorCode.INVALID_PARAMS),
                 (b'{"in": "untyped", "params": [1, 2, 3], "id": 5}', ErrorCode.INVALID_PARAMS),
                 (b'{"in": "add", "params": [1], "id": 6}', ErrorCode.INVALID_PARAMS),
                 (b'{"in": "add", "params": [1, "2"], "id": 7}', ErrorCode.INVALID_PARAMS),
                 (b'{"in": "add", "params": [1, 2], "id": 8}', None),
                 (b'{"in": "add", "params": [3, "4"], "id": 9}', ErrorCode.INVALID_PARAMS),
                 (b'{"in": "add", "params": ["1", 2.5], "id": 10}', ErrorCode.INVALID_PARAMS)]


@pytest.mark.parametrize("metered", [False, True], ids=["metrics off", "metrics on"])
def test_refusals_made_in_the_core_are_counted_by_the_server(framing_impl: Any, metered: bool) -> None:
    """Each refusal is in the server's ``stats.errors``, whichever core runs, and so in its metrics. With metrics
    off the core refuses all of them itself; on, only the unknown methods (metered methods see their bad params)."""
    server = app()

    @server.method
    def untyped(a, b):  # type: ignore[no-untyped-def]
        return a + b

    if metered:
        server.enable_metrics()
    with serving_in_thread(server) as port:
        raw = Raw(port)
        for body, code in CORE_REFUSALS:
            reply = raw.call(body)
            assert (reply["result"] == 3) if code is None else (reply["error"]["code"] == code), body
        loop = server._server.get_loop()  # type: ignore[union-attr]
        cores = on_loop(loop, lambda: [type(connection._core) for connection in server._connections])
        assert cores == [server_connection(fastrpc.framing.IMPLEMENTATION)]  # the core chosen runs
        snapshot = on_loop(loop, server.metrics_snapshot) if metered else server_snapshot(
            server.stats, ServerMetrics(), server.methods, {}, 0, [0, 0, 0, 0])  # what metrics on would read of them
        raw.close()
    assert server.stats.errors == Counter({(None, ErrorCode.METHOD_NOT_FOUND): 3, ("untyped", ErrorCode.INVALID_PARAMS): 2,
                                           ("add", ErrorCode.INVALID_PARAMS): 4})
    assert server.stats.failed_after_return == Counter()
    samples = parse(generate_latest(registry_of(lambda: snapshot)).decode())
    assert handled(samples, UNKNOWN_METHOD) == {"METHOD_NOT_FOUND": 3}
    assert handled(samples, "untyped") == {"INVALID_PARAMS": 2}
    assert handled(samples, "add") == ({"OK": 1, "INVALID_PARAMS": 4} if metered else {"INVALID_PARAMS": 4})


def test_middleware_and_tokens_stay_on_top() -> None:
    server = app()

    class Picky(fastrpc.Middleware):
        def after(self, call: fastrpc.CallInfo, result: Any, elapsed: float) -> None:
            if call.method == "add" and result == 3:
                raise RuntimeError("no threes")

    server.use(Picky())
    server.set_tokens(["sesame"])
    server.enable_metrics()
    with serving_in_thread(server) as port:
        raw = Raw(port)
        assert raw.call(b'{"in": "add", "params": [1, 1], "id": 1}')["error"]["code"] == ErrorCode.UNAUTHENTICATED
        assert raw.call(b'{"in": "auth", "params": "sesame", "id": 2}')["result"] is True
        assert raw.call(b'{"in": "add", "params": [1, 1], "id": 3}')["result"] == 2
        assert raw.call(b'{"in": "add", "params": [1, 2], "id": 4}')["error"]["code"] == ErrorCode.INTERNAL_ERROR
        snapshot = on_loop(server._server.get_loop(), server.metrics_snapshot)  # type: ignore[union-attr]
        samples = parse(generate_latest(registry_of(lambda: snapshot)).decode())
        # The call the middleware failed after the handler returned is an error, not also an OK.
        assert handled(samples, "add") == {"OK": 1, "INTERNAL_ERROR": 1}
        assert value(samples, "fastrpc_server_handling_seconds_count", method="add") == 2
        assert handled(samples, UNKNOWN_METHOD) == {"UNAUTHENTICATED": 1}
        raw.close()


def test_the_scrape_config_parses() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((Path(__file__).parent.parent / "deploy" / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == {"fastrpc", "fastrpc-kubernetes"}
    assert all(job["metrics_path"] == "/metrics" for job in config["scrape_configs"])


def test_metrics_off_leave_the_registry_a_plain_dict() -> None:
    server = app()
    with serving_in_thread(server) as port:
        raw = Raw(port)
        assert raw.call(b'{"in": "add", "params": [1, 1], "id": 1}')["result"] == 2
        (connection,) = server._connections
        assert type(connection._core) is ServerConnection
        assert type(connection._core._methods) is dict and connection._core._methods is server.methods
        # add is typed: the server calls its type checker (fastrpc.contracts), which calls the handler itself, unmetered
        func = server.methods["add"].func
        assert func is server.methods["add"].contract.func and func.__name__ == "add"
        assert func.__wrapped__.__name__ == "add" and not hasattr(func.__wrapped__, "__wrapped__")
        assert server.metrics is None
        with pytest.raises(RuntimeError, match="metrics are off"):
            server.metrics_snapshot()
        raw.close()


def test_methods_registered_later_are_metered_and_signatures_kept() -> None:
    server = fastrpc.Server()
    server.enable_metrics()
    registry = server._metered
    assert type(registry) is dict  # the core's lookup stays the fast one

    @server.method
    def late(a: int) -> int:
        return a

    method = registry["late"]
    assert method.func is not late and inspect.unwrap(method.func) is late  # metered, over late's type checker
    with pytest.raises(KeyError):
        registry["nope"]
    with pytest.raises(TypeError):
        registry[["unhashable"]]  # type: ignore[index]
    assert "nope" not in registry  # misses are not kept

    @server.method("late")
    def later(a: int) -> int:
        return -a

    assert inspect.unwrap(registry["late"].func) is later


def test_a_call_cancelled_before_it_started_is_counted() -> None:
    """A connection lost in the loop iteration that spawned a call: the task never runs, the call still ends
    as CANCELLED (started must never go down)."""
    server = app()
    server.enable_metrics()

    async def scenario() -> Dict[str, Any]:
        await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            await asyncio.sleep(0.05)
            (connection,) = server._connections
            body = b'{"in": "nap", "params": [5], "id": 1}'
            view = connection._core.get_buffer(-1)
            frame = struct.pack(">I", len(body)) + body
            view[:len(frame)] = frame
            connection.buffer_updated(len(frame))  # spawns the call's task
            assert len(connection._tasks) == 1
            connection.connection_lost(None)  # before the task's first step
            snapshot = server.metrics_snapshot()
            writer.close()
            return snapshot
        finally:
            server.close()
            await server.wait_closed()

    loop = asyncio.new_event_loop()
    try:
        snapshot = loop.run_until_complete(asyncio.wait_for(scenario(), TEST_TIMEOUT))
    finally:
        loop.close()
    samples = parse(generate_latest(registry_of(lambda: snapshot)).decode())
    assert handled(samples, "nap") == {"CANCELLED": 1}
    assert value(samples, "fastrpc_server_started_total", method="nap") == 1


@pytest.mark.parametrize("name", sorted(SERVER_CONNECTIONS))
def test_every_core_counts_its_traffic(name: str) -> None:
    """Each core counts what it reads and writes as it goes (metrics read the counts): every byte and
    frame it returned, the text probe's reply included, and the frames it took."""
    connection = SERVER_CONNECTIONS[name]
    methods = {"add": Method("add", lambda a, b: a + b)}
    frames = b"".join(struct.pack(">I", len(b)) + b for b in (b'{"in": "add", "params": [1, 2]}', b"nope",
                                                              b'{"in": "add", "params": [1], "id": 1}'))
    core = connection(methods, lambda call: False)
    written = b""
    for data in (frames, struct.pack(">I", 10**9)):  # three replies, then the frame-too-large error
        written += core.receive_data(data)
    assert traffic(core) == (len(frames) + 4, len(written), 3, 4)
    core._send(b"{}")  # queued, never handed out (the connection ended first): not sent
    assert traffic(core)[3] == 4
    probe = connection(methods, lambda call: False)
    reply = probe.receive_data(b"ping")  # the text probe: bytes, but no frame
    assert reply != b"" and traffic(probe) == (4, len(reply), 0, 0)


# -- clients --------------------------------------------------------------------------------

def test_client_metrics() -> None:
    server = app()
    metrics = ClientMetrics()
    with serving_in_thread(server) as port:
        with fastrpc.SyncClient("127.0.0.1", port, hooks=[metrics]) as client:
            for i in range(3):
                assert client.call("add", [i, 1]) == i + 1
            with pytest.raises(fastrpc.RemoteError):
                client.call("refuse")
            for name in ("x1", "x2"):
                with pytest.raises(fastrpc.MethodNotFound):
                    client.call(name)
            samples = parse(generate_latest(registry_of(metrics.snapshot)).decode())
            assert value(samples, "fastrpc_client_connections") == 1

        async def calls() -> None:
            client = await fastrpc.connect("127.0.0.1", port, hooks=[metrics])
            try:
                assert await client.call("add", [1, 1]) == 2
            finally:
                await client.close()

        asyncio.run(asyncio.wait_for(calls(), TEST_TIMEOUT))
    samples = parse(generate_latest(registry_of(metrics.snapshot)).decode())
    assert value(samples, "fastrpc_client_handled_total", method="add", code="OK") == 4
    assert value(samples, "fastrpc_client_handled_total", method="refuse", code="-32010") == 1
    assert value(samples, "fastrpc_client_handled_total", method=UNKNOWN_METHOD, code="METHOD_NOT_FOUND") == 2
    assert value(samples, "fastrpc_client_handling_seconds_count", method="add") == 4
    assert value(samples, "fastrpc_client_connections") == 0
    assert not any(dict(key[1]).get("method") in ("x1", "x2") for key in samples)


# -- fastrpc serve --metrics-port, with and without --workers ---------------------------------

PID_APP = "import os\nimport fastrpc\napp = fastrpc.Server()\n@app.method\ndef pid():\n    return os.getpid()\n"


def handled_ok(metrics_port: int) -> float:
    return value(scrape(metrics_port), "fastrpc_server_handled_total", method="pid", code="OK")


def test_serve_metrics_port(tmp_path: Path) -> None:
    (tmp_path / "pidapp.py").write_text(PID_APP)
    port, metrics_port = free_port(), free_port()
    for proc in serve(["pidapp:app", "--port", str(port), "--metrics-port", str(metrics_port)], tmp_path):
        raw = Raw(port)
        for _ in range(3):
            assert raw.call(b'{"in": "pid", "id": 1}')["result"] == proc.pid
        assert handled_ok(metrics_port) == 3
        raw.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in proc.stderr.read()  # type: ignore[union-attr]


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="--workers needs SO_REUSEPORT")
def test_serve_workers_metrics_add_up_and_survive_a_killed_worker(tmp_path: Path) -> None:
    (tmp_path / "pidapp.py").write_text(PID_APP)
    port, metrics_port = free_port(), free_port()
    for proc in serve(["pidapp:app", "--port", str(port), "--workers", "2", "--metrics-port", str(metrics_port)], tmp_path):
        calls: Dict[int, int] = {}

        def call_fresh() -> int:
            """A call over a fresh connection (the kernel picks a worker for each); its pid, 0 if it failed."""
            try:
                raw = Raw(port)
            except OSError:
                return 0
            try:
                pid = int(raw.call(b'{"in": "pid", "id": 1}')["result"])
            except (OSError, AssertionError):  # reset, or closed: a worker just killed, or its replacement starting
                return 0  # not counted by the server either: it never answered
            finally:
                raw.close()
            calls[pid] = calls.get(pid, 0) + 1
            return pid

        wait_for(lambda: call_fresh() and len(calls) == 2, "calls reaching both workers")
        total = sum(calls.values())
        # Each worker's snapshot is at most SNAPSHOT_INTERVAL old: the sum catches up, exactly.
        wait_for(lambda: handled_ok(metrics_port) == total, f"the sum of {total} calls")
        samples = scrape(metrics_port)
        assert value(samples, "fastrpc_server_connections_opened_total") >= total
        assert value(samples, "fastrpc_server_connections") <= 2

        victim = min(calls)
        metrics_dir = Path(open(f"/proc/{victim}/cmdline", "rb").read().split(b"\0")[-2].decode())
        assert metrics_dir.name.startswith("fastrpc-metrics-") and metrics_dir.is_dir()
        time.sleep(SNAPSHOT_INTERVAL * 2)  # its last snapshot holds all of its calls
        assert handled_ok(metrics_port) == total
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: call_fresh() not in (victim,) and len(calls) == 3, "the replacement worker answering")
        total = sum(calls.values())
        # The dead worker's calls still count: the sum is every call made, once the others' snapshots are in.
        wait_for(lambda: handled_ok(metrics_port) == total, f"the sum of {total} calls after the kill")
        assert value(scrape(metrics_port), "fastrpc_server_connections") <= 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not metrics_dir.exists()  # the supervisor removed it


def test_a_call_cleaning_up_after_its_connection_was_lost_stays_in_flight(tmp_path: Path) -> None:
    """A handler that awaits in its cleanup after the connection reset: it is still running, so it stays
    in flight and started, until it ends as CANCELLED; the final snapshot of a closed server counts it
    in flight, and is written again once it has ended (started must never go down)."""
    server = fastrpc.Server(shutdown_grace=0.5)
    server.enable_metrics(snapshot_dir=str(tmp_path))
    cleaned = asyncio.Event()

    @server.method
    async def work() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.3)
            cleaned.set()

    def counts(snapshot: Dict[str, Any]) -> Tuple[float, float, Dict[str, float]]:
        samples = parse(generate_latest(registry_of(lambda: snapshot)).decode())
        return (value(samples, "fastrpc_server_started_total", method="work"),
                value(samples, "fastrpc_server_calls_in_flight"), handled(samples, "work"))

    def final() -> Dict[str, Any]:
        return json.loads((tmp_path / f"{os.getpid()}.json").read_text())  # type: ignore[no-any-return]

    async def scenario() -> None:
        await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            body = b'{"in": "work", "id": 1}'
            writer.write(struct.pack(">I", len(body)) + body)
            await asyncio.sleep(0.1)
            assert counts(server.metrics_snapshot()) == (1, 1, {})
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # a reset: the server's connection is lost at once
            await asyncio.sleep(0.1)
            assert not server._connections and not cleaned.is_set()
            assert counts(server.metrics_snapshot()) == (1, 1, {})  # cleaning up: still running
        finally:
            server.close()
            await server.wait_closed()  # not held up by the lingering call
        assert not cleaned.is_set() and counts(final()) == (1, 1, {})
        await asyncio.wait_for(cleaned.wait(), TEST_TIMEOUT)
        await asyncio.sleep(0)
        assert counts(server.metrics_snapshot()) == (1, 0, {"CANCELLED": 1})
        assert counts(final()) == (1, 0, {"CANCELLED": 1})
        assert not server._lingering

    asyncio.run(asyncio.wait_for(scenario(), TEST_TIMEOUT))


def test_application_error_codes_are_bounded() -> None:
    """A gateway passing on whatever codes its backends send: past MAX_APPLICATION_CODES distinct codes of
    its own, the server counts new ones (and the client labels them) OTHER; fastrpc's own codes stay."""
    server = fastrpc.Server()
    server.enable_metrics()

    @server.method
    def proxy(code: int) -> None:
        raise fastrpc.RemoteError("downstream said no", code=code)

    client_metrics = ClientMetrics()
    codes = list(range(1, MAX_APPLICATION_CODES + 41))
    with serving_in_thread(server) as port:
        with fastrpc.SyncClient("127.0.0.1", port, hooks=[client_metrics]) as client:
            for code in codes + [1, ErrorCode.TIMEOUT]:
                with pytest.raises(fastrpc.RemoteError):
                    client.call("proxy", [code])
        snapshot = on_loop(server._server.get_loop(), server.metrics_snapshot)  # type: ignore[union-attr]
    expected = {str(code): 1.0 for code in codes[:MAX_APPLICATION_CODES]}
    expected.update({"1": 2.0, "OTHER": 40.0, "TIMEOUT": 1.0})
    assert handled(parse(generate_latest(registry_of(lambda: snapshot)).decode()), "proxy") == expected
    assert len(server.stats.errors) == MAX_APPLICATION_CODES + 2  # the memory is bounded, not only the labels
    samples = parse(generate_latest(registry_of(client_metrics.snapshot)).decode())
    assert {dict(key[1])["code"]: v for key, v in samples.items() if key[0] == "fastrpc_client_handled_total"} == expected


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="--workers needs SO_REUSEPORT")
def test_serve_workers_of_an_app_with_its_own_metrics_port(tmp_path: Path) -> None:
    """An app that calls enable_metrics(port=...) itself: its workers do not each bind that port (all but
    one would fail, and be restarted in a loop); they write snapshots, and the supervisor serves the sum."""
    port, metrics_port = free_port(), free_port()
    (tmp_path / "ownport.py").write_text(PID_APP + f"app.enable_metrics(port={metrics_port})\n")
    for proc in serve(["ownport:app", "--port", str(port), "--workers", "2"], tmp_path):
        pids: Dict[int, int] = {}

        def call_fresh() -> bool:
            raw = Raw(port)
            try:
                pid = int(raw.call(b'{"in": "pid", "id": 1}')["result"])
            finally:
                raw.close()
            pids[pid] = pids.get(pid, 0) + 1
            return len(pids) == 2

        wait_for(call_fresh, "calls reaching both workers")
        assert proc.pid not in pids
        wait_for(lambda: handled_ok(metrics_port) == sum(pids.values()), "the sum over both workers")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "exited with status" not in proc.stderr.read()  # type: ignore[union-attr]


def test_metrics_connections_are_capped_and_time_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_SCRAPES open scrape connections, new ones are closed at once; idle ones are cut off after
    HTTP_TIMEOUT. A peer holding idle connections cannot take the process's file descriptors."""
    monkeypatch.setattr(fastrpc.prometheus, "HTTP_TIMEOUT", 3.0)
    server = app()
    server.enable_metrics(port=0)
    with serving_in_thread(server):
        metrics_port = server.metrics_address[1]  # type: ignore[index]
        idle = [socket.create_connection(("127.0.0.1", metrics_port), timeout=10) for _ in range(MAX_SCRAPES)]
        try:
            wait_for(lambda: len(server._metrics_http.open) == MAX_SCRAPES, "the idle connections accepted")
            with socket.create_connection(("127.0.0.1", metrics_port), timeout=1) as extra:  # under HTTP_TIMEOUT
                try:
                    assert extra.recv(1) == b""
                except ConnectionResetError:
                    pass
            for sock in idle:  # cut off, HTTP_TIMEOUT after they opened
                sock.settimeout(5)
                try:
                    assert sock.recv(1) == b""
                except ConnectionResetError:
                    pass
            wait_for(lambda: not server._metrics_http.open, "the idle connections gone")
            assert value(scrape(metrics_port), "fastrpc_server_connections") == 0
        finally:
            for sock in idle:
                sock.close()


def test_the_supervisors_metrics_thread_is_capped_too() -> None:
    """MetricsThread (the supervisor's /metrics) serves the same endpoint, from a thread: capped as well."""
    client_metrics = ClientMetrics()
    thread = fastrpc.prometheus.MetricsThread(client_metrics.snapshot, "127.0.0.1", 0)
    metrics_port = thread.endpoint.sockets[0].getsockname()[1]
    idle = [socket.create_connection(("127.0.0.1", metrics_port), timeout=10) for _ in range(MAX_SCRAPES)]
    try:
        wait_for(lambda: len(thread.endpoint.open) == MAX_SCRAPES, "the idle connections accepted")
        with socket.create_connection(("127.0.0.1", metrics_port), timeout=1) as extra:
            try:
                assert extra.recv(1) == b""
            except ConnectionResetError:
                pass
        idle.pop().close()
        wait_for(lambda: len(thread.endpoint.open) < MAX_SCRAPES, "a connection closed")
        assert value(scrape(metrics_port), "fastrpc_client_connections") == 0
    finally:
        for sock in idle:
            sock.close()
        thread.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", metrics_port), timeout=10).close()


def test_a_failed_snapshot_does_not_stop_the_next(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The periodic snapshot is taken again SNAPSHOT_INTERVAL after one that failed, and the failure is logged."""
    server = app()
    server.enable_metrics(snapshot_dir=str(tmp_path))
    taken = server.metrics_snapshot
    failures = [RuntimeError("a bug in a snapshot")]

    def flaky() -> Dict[str, Any]:
        if failures:
            raise failures.pop()
        return taken()

    server.metrics_snapshot = flaky  # type: ignore[method-assign]

    async def scenario() -> None:
        await server.start("127.0.0.1", 0)  # writes the first one: it fails
        try:
            assert not failures and not (tmp_path / f"{os.getpid()}.json").exists()
            await asyncio.sleep(SNAPSHOT_INTERVAL * 1.5)
            assert (tmp_path / f"{os.getpid()}.json").exists()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), TEST_TIMEOUT))
    assert any("cannot take the metrics snapshot" in r.getMessage() and r.exc_info for r in caplog.records)
