"""``python -m fastrpc serve`` as a subprocess: the demo service and an app from a module."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Set

import pytest

import fastrpc

from .conftest import frame, free_port, serve
from .test_notices import frames


def call(port: int, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(len(body).to_bytes(4, "big") + body)
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            chunk = sock.recv(65536)
            assert chunk, "server closed the connection"
            data += chunk
        return data[4:]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_serve_demo(tmp_path: Path, loop: str) -> None:
    port = free_port()
    for proc in serve(["--port", str(port), "--loop", loop], tmp_path):
        assert json.loads(call(port, b'{"in": "add", "params": [1, 2], "id": 1}')) == {"out": "add", "result": 3, "id": 1}
        assert call(port, b'{"in": "ping", "params": "sha params"}') == b'{"out": "pong", "result": "sha params"}'
        assert json.loads(call(port, b'{"in": "sleep", "params": 0.01, "id": 2}'))["result"] == 0.01
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert f"listening on 127.0.0.1:{port}" in proc.stderr.read()


def test_serve_app_from_module(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(
        "import fastrpc\n"
        "app = fastrpc.Server()\n"
        "@app.method\n"
        "def hello(name):\n"
        "    return 'hello ' + name\n"
    )
    port = free_port()
    for proc in serve(["myapp:app", "--port", str(port)], tmp_path):
        assert json.loads(call(port, b'{"in": "hello", "params": "you", "id": 1}'))["result"] == "hello you"
        assert json.loads(call(port, b'{"in": "add", "params": [1, 2], "id": 1}'))["error"]["code"] == -32601


def test_serve_limit_options(tmp_path: Path) -> None:
    port = free_port()
    for proc in serve(["--port", str(port), "--max-connections", "1", "--idle-timeout", "0.5"], tmp_path):
        time.sleep(0.3)  # the probe connection of serve() is gone
        with socket.create_connection(("127.0.0.1", port), timeout=10) as first:
            first.sendall(frame(b'{"in": "ping", "params": 1}'))
            assert first.recv(100) == frame(b'{"out": "pong", "result": 1}')  # served, so counted
            refused = json.loads(call(port, b'{"in": "ping", "id": 1}'))
            assert refused["error"]["code"] == -32001
            first.settimeout(5)
            started = time.monotonic()
            assert first.recv(1) == b""  # closed for idleness
            assert 0.3 < time.monotonic() - started < 4
        out = subprocess.run([sys.executable, "-m", "fastrpc", "serve", "--frame-timeout", "0"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and "must be a positive number" in out.stderr


@pytest.mark.parametrize("app, message", [("nomodule:app", "cannot import"), ("os:path", "is not a fastrpc.Server"),
                                          ("justmodule", "MODULE:ATTR")])
def test_serve_bad_app(tmp_path: Path, app: str, message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "fastrpc", "serve", app, "--port", str(free_port())],
                         cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and message in out.stderr


def serve_fails(args: List[str]) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "fastrpc", "serve", *args], capture_output=True, text=True, timeout=30)


def test_serve_on_a_port_in_use_says_so_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for args in (["--loop", "uvloop"], ["--loop", "asyncio"], ["--workers", "2"]):
            out = serve_fails(["--port", str(port), *args])
            assert (out.returncode, out.stderr) == (1, f"fastrpc: cannot listen on 127.0.0.1:{port}: address already in use\n")


def test_serve_on_a_metrics_port_in_use_says_so_in_one_line() -> None:
    """The error names the metrics address, not the server's, and is no traceback; with --workers too."""
    pytest.importorskip("prometheus_client")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        metrics_port = busy.getsockname()[1]
        for extra in ([], ["--workers", "2"]):
            out = serve_fails(["--port", "0", "--metrics-port", str(metrics_port), *extra])
            assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
            assert out.stderr.splitlines()[-1] == \
                f"fastrpc: cannot serve metrics on 127.0.0.1:{metrics_port}: address already in use", out.stderr


@pytest.mark.parametrize("host, reason", [
    ("256.1.1.1", "not an IP address nor a known host name"),
    ("192.0.2.1", "cannot assign requested address (not an address of this machine)"),  # TEST-NET-1
])
def test_serve_on_an_address_it_cannot_bind_says_why_in_one_line(host: str, reason: str) -> None:
    out = serve_fails(["--host", host, "--port", "8080"])
    assert (out.returncode, out.stderr) == (1, f"fastrpc: cannot listen on {host}:8080: {reason}\n")


def test_serve_port_out_of_range_is_a_usage_error() -> None:
    out = serve_fails(["--port", "70000"])
    assert out.returncode == 2 and "must be a port number from 0 to 65535" in out.stderr


@pytest.mark.parametrize("command", [[sys.executable, "-m", "fastrpc"], [str(Path(sys.executable).parent / "fastrpc")]])
def test_version(command: List[str]) -> None:
    if not Path(command[0]).exists():
        pytest.skip("the fastrpc script is not installed beside this Python")
    out = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout, out.stderr) == (0, f"fastrpc {fastrpc.__version__}\n", "")


FAILING_APP = "import fastrpc\napp = fastrpc.Server()\n@app.method\ndef fail():\n    raise RuntimeError('boom')\n"


@pytest.mark.parametrize("extra", [[], ["--workers", "2"]])
def test_serve_debug_sends_tracebacks(tmp_path: Path, extra: List[str]) -> None:
    if extra and not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("--workers needs SO_REUSEPORT")
    (tmp_path / "failapp.py").write_text(FAILING_APP)
    for debug in ([], ["--debug"]):
        port = free_port()
        for _ in serve(["failapp:app", "--port", str(port), *extra, *debug], tmp_path):
            for rid in range(4):  # over fresh connections: with workers, more than one of them answers
                error = json.loads(call(port, b'{"in": "fail", "id": %d}' % rid))["error"]
                assert error["code"] == -32603 and error["message"] == "internal error in 'fail': RuntimeError"
                if debug:
                    assert error["data"].startswith("Traceback (most recent call last):")
                    assert "raise RuntimeError('boom')" in error["data"] and error["data"].endswith("RuntimeError: boom\n")
                else:
                    assert "data" not in error


def test_serve_help_explains_debug() -> None:
    out = subprocess.run([sys.executable, "-m", "fastrpc", "serve", "--help"], capture_output=True, text=True, timeout=30)
    assert "--debug" in out.stdout and "traceback" in out.stdout


@pytest.mark.parametrize("extra", [[], ["--workers", "2"]])
def test_serve_max_connection_age_options(tmp_path: Path, extra: List[str]) -> None:
    """The age retires the connection (with the notice it asked for); the age grace, not the 30 s shutdown
    grace, cuts off its 30 s call: both options reach the server, and through --workers its workers."""
    if extra and not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("--workers needs SO_REUSEPORT")
    port = free_port()
    for _ in serve(["--port", str(port), "--max-connection-age", "0.5", "--max-connection-age-grace", "0.3", *extra],
                   tmp_path):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(frame(b'{"in": "rpc.notices", "id": 1}') + frame(b'{"in": "sleep", "params": 30, "id": 2}'))
            with sock.makefile("rb") as stream:
                replies = frames(stream.read())  # until the server closes; a hang is cut off by the socket's timeout
        assert replies[:2] == [{"out": "rpc.notices", "result": ["drain"], "id": 1},
                               {"notice": "drain", "reason": "max_age"}]
        [cancelled] = replies[2:]
        assert cancelled["id"] == 2 and cancelled["error"]["code"] == -32002
        assert cancelled["error"]["data"] == {"started": True}


def test_serve_max_connection_age_usage() -> None:
    for option in ("--max-connection-age", "--max-connection-age-grace"):
        out = serve_fails([option, "0"])
        assert out.returncode == 2 and "must be a positive number" in out.stderr
    help_text = subprocess.run([sys.executable, "-m", "fastrpc", "serve", "--help"], capture_output=True, text=True,
                               timeout=30).stdout
    assert "--max-connection-age S" in help_text and "--max-connection-age-grace S" in help_text


# -- fastrpc call -------------------------------------------------------------------------

def fastrpc_call(*args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "fastrpc", "call", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def demo_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    for _ in serve(["--port", str(port)], tmp_path_factory.mktemp("demo")):
        yield port


def test_call_prints_the_result(demo_port: int) -> None:
    out = fastrpc_call(f"127.0.0.1:{demo_port}", "add", "[1, 2]")
    assert (out.returncode, out.stdout, out.stderr) == (0, "3\n", "")
    out = fastrpc_call(f"127.0.0.1:{demo_port}", "echo", '{"a": [1, "x", null]}')
    assert out.returncode == 0 and json.loads(out.stdout) == {"a": [1, "x", None]}
    out = fastrpc_call(f"127.0.0.1:{demo_port}", "ping")
    assert (out.returncode, out.stdout) == (0, "null\n")


def test_call_prints_a_streams_items(demo_port: int) -> None:
    out = fastrpc_call(f"127.0.0.1:{demo_port}", "count", "[3, 5]", "--stream")
    assert (out.returncode, out.stdout, out.stderr) == (0, "5\n6\n7\n", "")
    out = fastrpc_call(f"127.0.0.1:{demo_port}", "count", "[3]")  # a stream called as a call: told why not
    assert out.returncode == 1 and "-32600" in out.stderr and "'count' streams its result" in out.stderr


def test_call_remote_error(demo_port: int) -> None:
    out = fastrpc_call(f"127.0.0.1:{demo_port}", "nope")
    assert out.returncode == 1 and out.stdout == ""
    assert "-32601" in out.stderr and "method not found" in out.stderr
    out = fastrpc_call(f"127.0.0.1:{demo_port}", "add", "[1]")
    assert out.returncode == 1 and "-32602" in out.stderr


def test_call_bad_params_json_is_a_usage_error(demo_port: int) -> None:
    out = fastrpc_call(f"127.0.0.1:{demo_port}", "add", "[1,")
    assert out.returncode == 2 and "not valid JSON" in out.stderr and out.stdout == ""


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"])
def test_call_bad_address_is_a_usage_error(address: str) -> None:
    out = fastrpc_call(address, "ping")
    assert out.returncode == 2 and "HOST:PORT" in out.stderr


def test_serve_and_call_with_a_token_file(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("first-token\n\nsecond-token\n")
    (tmp_path / "mine").write_text("second-token\n")
    (tmp_path / "bad").write_text("guess\n")
    port = free_port()
    for _ in serve(["--port", str(port), "--token-file", str(tmp_path / "tokens")], tmp_path):
        out = fastrpc_call(f"127.0.0.1:{port}", "add", "[1, 2]", "--token-file", str(tmp_path / "mine"))
        assert (out.returncode, out.stdout) == (0, "3\n")
        out = fastrpc_call(f"127.0.0.1:{port}", "add", "[1, 2]", "--token-file", str(tmp_path / "bad"))
        assert out.returncode == 1 and "-32004" in out.stderr and "guess" not in out.stderr
        out = fastrpc_call(f"127.0.0.1:{port}", "add", "[1, 2]")
        assert out.returncode == 1 and "authentication required" in out.stderr


def test_call_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        out = fastrpc_call(f"127.0.0.1:{sock.getsockname()[1]}", "ping")
    assert out.returncode == 3 and "could not connect" in out.stderr


def test_call_timeout(demo_port: int) -> None:
    out = fastrpc_call(f"127.0.0.1:{demo_port}", "sleep", "5", "--timeout", "0.2")
    assert out.returncode == 4 and "timed out" in out.stderr


# -- fastrpc bench ------------------------------------------------------------------------

def fastrpc_bench(*args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "fastrpc", "bench", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_bench_json_counts(demo_port: int, loop: str) -> None:
    out = fastrpc_bench(f"127.0.0.1:{demo_port}", "--connections", "3", "--depth", "4", "--requests", "600",
                        "--warmup", "0.1", "--loop", loop, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["requests"] == report["successes"] + report["errors"] == 600
    assert report["errors"] == 0 and report["error_samples"] == []
    assert (report["connections"], report["depth"], report["method"]) == (3, 4, "ping")
    assert report["bytes_sent"] == 600 * len(b'....{"in":"ping"}')
    assert 0 < report["p50"] <= report["p90"] <= report["p99"] <= report["p999"] <= report["max"]
    assert out.stderr == ""  # no progress line when the output is not a terminal


def test_bench_duration_text_report(demo_port: int) -> None:
    out = fastrpc_bench(f"127.0.0.1:{demo_port}", "--method", "echo", "--params", '{"x": 1}',
                        "--connections", "2", "--duration", "0.3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("echo: 2 connections x 1 in flight")
    assert "Latency" in out.stdout and "Requests/sec:" in out.stdout and " 0 errors" in out.stdout


def bench_on_a_terminal(port: int, *args: str, columns: int = 0) -> "tuple[subprocess.CompletedProcess[str], bytes]":
    """``fastrpc bench`` with its stderr on a pseudo-terminal ``columns`` wide (0: size unknown); what it wrote there."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24 if columns else 0, columns, 0, 0))
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    try:
        out = subprocess.run([sys.executable, "-m", "fastrpc", "bench", f"127.0.0.1:{port}", "--connections", "2", *args],
                             stdout=subprocess.PIPE, stderr=slave, text=True, timeout=60, env=env)
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed and everything was read
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return out, seen


def test_bench_progress_line_on_a_terminal(demo_port: int) -> None:
    out, seen = bench_on_a_terminal(demo_port, "--duration", "1.3")
    assert out.returncode == 0 and "Requests/sec:" in out.stdout
    assert b"req/s" in seen and b"done, 0 errors" in seen  # the live line went to the terminal...
    assert "req/s" not in out.stdout.split("Requests/sec:")[0]  # ...and not into the report


def test_bench_progress_line_fits_a_narrow_terminal(demo_port: int) -> None:
    out, seen = bench_on_a_terminal(demo_port, "--warmup", "1.1", "--duration", "1.1", columns=40)
    assert out.returncode == 0 and "Requests/sec:" in out.stdout
    assert b"req/s" in seen and b"warming up" in seen
    # Each write starts over at the left edge and clears the line: none may reach the last column (it would wrap).
    pieces = re.split(rb"\r|\n|\x1b\[K", seen)
    assert max(len(piece.decode()) for piece in pieces) <= 39, pieces


def test_bench_errors_are_counted_and_set_the_exit_status(demo_port: int) -> None:
    out = fastrpc_bench(f"127.0.0.1:{demo_port}", "--method", "nope", "--connections", "2", "--requests", "50", "--json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["requests"] == report["errors"] == 50 and report["successes"] == 0
    assert any("-32601" in sample for sample in report["error_samples"])


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_bench_connection_refused(loop: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        out = fastrpc_bench(f"127.0.0.1:{port}", "--requests", "10", "--loop", loop)
    assert out.returncode == 3 and out.stdout == ""
    [line] = out.stderr.splitlines()
    assert line.startswith(f"fastrpc: could not connect to 127.0.0.1:{port}: ") and "[Errno" not in line


@pytest.mark.parametrize("args, message", [
    (["--duration", "0"], "must be a positive number"),
    (["--duration", "1", "--requests", "5"], "not allowed with"),
    (["--connections", "0"], "must be at least 1"),
    (["--params", "{"], "not valid JSON"),
    (["--warmup", "-1"], "must be zero or more"),
])
def test_bench_usage_errors(args: List[str], message: str) -> None:
    out = fastrpc_bench("127.0.0.1:9", *args)
    assert out.returncode == 2 and message in out.stderr


# -- fastrpc serve --workers --------------------------------------------------------------

PID_APP = "import os\nimport fastrpc\napp = fastrpc.Server()\n@app.method\ndef pid():\n    return os.getpid()\n"


def worker_pids(port: int, wanted: int, exclude: Set[int] = frozenset()) -> Set[int]:
    """Pids answering on ``port`` over fresh connections, until ``wanted`` distinct new ones are seen."""
    seen: Set[int] = set()
    deadline = time.monotonic() + 20
    while len(seen - exclude) < wanted and time.monotonic() < deadline:
        try:
            seen.add(json.loads(call(port, b'{"in": "pid", "id": 1}'))["result"])
        except OSError:
            time.sleep(0.05)  # a worker between death and its replacement's start
    return seen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="--workers needs SO_REUSEPORT")
def test_serve_workers(tmp_path: Path) -> None:
    (tmp_path / "pidapp.py").write_text(PID_APP)
    port = free_port()
    for proc in serve(["pidapp:app", "--port", str(port), "--workers", "2"], tmp_path):
        first = worker_pids(port, 2)
        assert len(first) == 2 and proc.pid not in first

        victim, survivor = sorted(first)
        os.kill(victim, signal.SIGKILL)
        # The port stays served, and a replacement worker appears.
        replacement = worker_pids(port, 1, exclude=first) - first
        assert len(replacement) == 1
        assert worker_pids(port, 2) == {survivor} | replacement

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in first | replacement if pid != victim) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in (survivor, *replacement))
        assert "with 2 workers" in proc.stderr.read()


def test_serve_access_log(tmp_path: Path) -> None:
    port = free_port()
    for proc in serve(["--port", str(port), "--access-log"], tmp_path):
        assert json.loads(call(port, b'{"in": "add", "params": [1, 2], "id": 1}'))["result"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        lines = [line for line in proc.stderr.read().splitlines() if "fastrpc.access" in line]
        assert len(lines) == 1 and re.search(r"peer=127\.0\.0\.1:\d+ method=add code=OK ms=\d+\.\d{3}$", lines[0]), lines


def test_serve_metrics_options_reach_the_workers_and_need_prometheus_client(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "fastrpc", "serve", "--help"], capture_output=True, text=True, timeout=30)
    assert "--metrics-port" in out.stdout and "--metrics-host" in out.stdout and "--metrics-dir" not in out.stdout
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['prometheus_client'] = None\n")
    for extra in ([], ["--workers", "2"]):
        out = subprocess.run([sys.executable, "-m", "fastrpc", "serve", "--port", "0", "--metrics-port", "0", *extra],
                             capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(tmp_path)})
        assert out.returncode == 1 and "pip install 'fastrpc[metrics]'" in out.stderr, out.stderr


def test_call_sends_metadata(tmp_path: Path) -> None:
    (tmp_path / "metaapp.py").write_text(
        "import fastrpc\n"
        "app = fastrpc.Server()\n"
        "@app.method(metadata=True)\n"
        "def seen():\n"
        "    return fastrpc.metadata()\n"
    )
    port = free_port()
    for proc in serve(["metaapp:app", "--port", str(port)], tmp_path):
        out = fastrpc_call(f"127.0.0.1:{port}", "seen", "--meta", "caller=billing", "--meta", "trace=a=b")
        assert out.returncode == 0 and json.loads(out.stdout) == {"caller": "billing", "trace": "a=b"}, out.stderr
        out = fastrpc_call(f"127.0.0.1:{port}", "seen")
        assert (out.returncode, out.stdout) == (0, "{}\n")
        out = fastrpc_call(f"127.0.0.1:{port}", "seen", "--meta", "novalue")
        assert out.returncode == 2 and "KEY=VALUE" in out.stderr
        out = fastrpc_call(f"127.0.0.1:{port}", "seen", "--meta", "k=" + "v" * 9000)
        assert out.returncode == 2 and "invalid call metadata" in out.stderr and "Traceback" not in out.stderr
