"""The comparison peers in bench/ serve, drive load and measure a client, or say plainly why they cannot.

A peer whose library is not installed (CI installs only the ``test`` extra)
is not skipped: its ``serve`` must then exit 3 with a one-line reason, and
that is what is checked. The reporting path is also checked where the
library is installed, by shadowing it with a module that fails to import.
Figures are not asserted: timing is not a test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from .conftest import free_port, wait_listening

BENCH = Path(__file__).resolve().parent.parent / "bench"

# script, the module it needs, what serve says without it
PEERS = [
    ("peer_grpc.py", "grpc", "grpcio is not installed"),
    ("peer_msgpack.py", "aio_msgpack_rpc", "aio-msgpack-rpc is not installed"),
]


def run_json(argv: List[str]) -> dict:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def check_missing(script: str, message: str, **popen: object) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), "serve", "--port", str(free_port())],
                          capture_output=True, text=True, timeout=30, **popen)
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip() == message


@pytest.mark.parametrize("script, module, missing", PEERS)
def test_peer_serves_drives_and_measures_a_client(script: str, module: str, missing: str) -> None:
    if importlib.util.find_spec(module) is None:
        check_missing(script, missing)
        return
    port = free_port()
    peer = [sys.executable, str(BENCH / script)]
    where = ["--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen([*peer, "serve", *where], stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(server, port)

        report = run_json([*peer, "drive", *where, "--connections", "2", "--depth", "4", "--duration", "0.5",
                           "--warmup", "0.2", "--method", "echo", "--params", '{"a":[1,2]}',
                           "--server-pid", str(server.pid)])
        assert report["requests"] == report["successes"] + report["errors"]
        assert report["errors"] == 0 and report["error_samples"] == [], report["error_samples"]
        assert report["requests"] > 0 and report["seconds"] >= 0.5
        assert 0 < report["p50"] <= report["p90"] <= report["p99"] <= report["p999"] <= report["max"]
        assert report["server_cpu_s"] >= 0

        cost = run_json([*peer, "client", *where, "--batch", "8", "--duration", "0.3"])
        assert cost["calls"] > 0 and cost["calls"] % 8 == 0
        assert cost["seconds"] >= 0.3 and cost["client_cpu_s"] > 0

        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0
        assert f"listening on 127.0.0.1:{port}" in server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        server.stderr.close()


@pytest.mark.parametrize("script, module, missing", PEERS)
def test_peer_without_its_library_exits_3_saying_so(script: str, module: str, missing: str, tmp_path: Path) -> None:
    (tmp_path / f"{module}.py").write_text('raise ImportError("hidden by the test")\n')
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    check_missing(script, missing, env={**os.environ, "PYTHONPATH": path})
