"""The benchmark scripts still run and check every reply (figures are not asserted: timing is not a test)."""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_server_bench_runs_and_counts_no_errors(tmp_path: Path) -> None:
    server_cpu, client_cpu = sorted(os.sched_getaffinity(0))[:2]
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "server_bench.py"), "--duration", "0.3", "--warmup", "0.1", "--repeat", "1",
         "--scenarios", "2x4", "--server-cpu", str(server_cpu), "--client-cpu", str(client_cpu), "--json", str(report)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(report.read_text())["rows"]
    assert {row["server"] for row in rows} == {"floor (minimal orjson, uvloop)", "fastrpc uvloop"}
    for row in rows:
        assert row["scenario"] == "2x4" and row["errors"] == 0 and row["server_cpu_us_per_req"] > 0
    assert "| fastrpc uvloop | 2x4 |" in done.stdout
