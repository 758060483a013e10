"""bench/balancing.py: a quick run measures every setup of both clients and writes its report.

Figures are not asserted (timing is not a test): only that each setup has a
figure, that the three-endpoint client ended with three connections, and that
the instruction count, where valgrind is installed, comes out positive.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCH / "balancing.py"), "--quick", *args],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def tables(report: str) -> Dict[str, Dict[str, List[str]]]:
    """{section title: {setup: cells after the name}} of the report's tables."""
    found: Dict[str, Dict[str, List[str]]] = {}
    title = ""
    for line in report.splitlines():
        if line.startswith("## "):
            title = line[3:]
        elif line.startswith("| ") and not line.startswith("| setup"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            found.setdefault(title, {})[cells[0]] = cells[1:]
    return found


def test_quick_run_measures_every_setup(tmp_path: Path) -> None:
    output = tmp_path / "report.md"
    report = run("--kinds", "async,sync-many", "--duration", "0.1", "--warmup", "0", "--output", str(output))
    assert output.read_text() == report
    found = tables(report)
    assert set(found) == {"async client, 64 calls gathered", "SyncClient.call_many, batches of 64"}
    for rows in found.values():
        assert set(rows) == {"plain", "pool-of-one", "three", "pre-change"}
        for setup, cells in rows.items():
            if setup == "pre-change" and cells[0].startswith("not measured"):
                continue  # a copy of the tree without its git history
            assert float(cells[0]) > 0, (setup, cells)
    for kind in ("async", "sync-many"):
        assert f"- {kind} / three: " in report and f"- {kind} / three: " in report
        line = next(line for line in report.splitlines() if line.startswith(f"- {kind} / three: "))
        assert line.endswith("connections open at the end: 3"), line
    assert "pool of one / plain: CPU " in report


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instructions_are_counted(tmp_path: Path) -> None:
    report = run("--callgrind", "--kinds", "sync-many", "--setups", "plain", "--calls", "64",
                 "--duration", "0.1", "--warmup", "0", "--output", str(tmp_path / "report.md"))
    [cells] = tables(report)["SyncClient.call_many, batches of 64"].values()
    assert float(cells[4].replace(",", "")) > 0, cells
