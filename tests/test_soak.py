"""bench/soak.py in miniature: the short soaks pass, and a server that leaks is caught.

The long runs (20 million requests, a million connection cycles) are run by
hand; here the same command runs small counts. No rates are asserted: only
that every request and cycle completed without error, the server's
descriptors came back to their count before the load, and its RSS stayed
within the soak's bound.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
RUN_TIMEOUT = 120  # seconds a short soak may take on a slow machine before it counts as hung

LEAKY_APP = '''
import fastrpc

server = fastrpc.Server()
kept = []


@server.method(raw_params=True)
def echo(params):
    kept.append(bytearray(2048))  # 2 KiB kept per call (a fresh object: "x" * 2048 would be one folded constant)
    return params
'''


@pytest.fixture
def soak(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    import soak

    return soak


def run_soak(args: List[str], env: Dict[str, str] = {}) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, str(BENCH / "soak.py"), *args, "--json"], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, env={**os.environ, **env})


def soaks(done: "subprocess.CompletedProcess[str]") -> Dict[str, Dict[str, Any]]:
    return {outcome["soak"]: outcome for outcome in json.loads(done.stdout)["soaks"]}


def test_short_soaks_pass() -> None:
    done = run_soak(["all", "--requests", "200000", "--cycles", "5000", "--interval", "0.05"])
    assert done.returncode == 0, done.stdout + done.stderr
    by_soak = soaks(done)
    for name, count in (("requests", 200_000), ("connections", 5_000)):
        outcome = by_soak[name]
        assert outcome["passed"] and not outcome["failures"], outcome["failures"]
        assert outcome["errors"] == 0 and not outcome["error_samples"]
        assert outcome["done"] == count
        assert outcome["fds_end"] == outcome["fds_start"]
        assert outcome["growth_kib"] <= outcome["bound_kib"]
        # The samples cover the load: the first is taken before it, the last after it.
        assert outcome["samples"][0][1] == 0 and outcome["samples"][-1][1] == count
    assert by_soak["requests"]["details"]["warmup_errors"] == 0
    assert by_soak["connections"]["details"]["kinds"] == {"ping-rst": 1250, "ping-fin": 1250, "ping-eof": 1250,
                                                          "bare-fin": 1250}


def test_a_leaking_server_fails(tmp_path: Path) -> None:
    (tmp_path / "leaky.py").write_text(LEAKY_APP)
    done = run_soak(["requests", "--count", "40000", "--app", "leaky:server"], env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 1, done.stdout + done.stderr
    outcome = soaks(done)["requests"]
    assert outcome["errors"] == 0 and outcome["done"] == 40_000  # it answered everything, and leaked
    assert not outcome["passed"]
    assert outcome["growth_kib"] > outcome["bound_kib"]
    assert any("RSS grew" in failure for failure in outcome["failures"])


def test_judge_names_every_failure(soak: ModuleType) -> None:
    figures = dict(soak="connections", count=100, done=100, errors=0, seconds=1.0, rate=100.0, warmup=10, held=4,
                   rss_start_kib=1000, rss_warm_kib=1000, rss_min_kib=1000, rss_late_min_kib=1000,
                   rss_peak_kib=1000, rss_end_kib=1000, growth_kib=0, bound_kib=100, fds_start=5, fds_peak=9,
                   fds_end=5)
    assert soak.judge(soak.Outcome(**figures)).passed
    broken = soak.judge(soak.Outcome(**{**figures, "done": 99, "errors": 1, "fds_end": 6, "growth_kib": 101}))
    assert not broken.passed
    assert len(broken.failures) == 4, broken.failures


def test_proc_readings(soak: ModuleType) -> None:
    pid = os.getpid()
    assert soak.rss_kib(pid) > 1000  # a Python process is megabytes
    before = soak.fd_count(pid)
    with socket.socket():
        assert soak.fd_count(pid) == before + 1
    assert soak.fd_count(pid) == before
