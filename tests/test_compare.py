"""bench/compare.py: the side-by-side suite runs, reports every server, and says which did not start.

Figures are not asserted (timing is not a test): only that each server that
started has its rows with figures and no errors, and that one that did not is
reported, not dropped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, List

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def compare(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    import compare

    return compare


def table_rows(report: str) -> Dict[tuple, List[str]]:
    """The server-side table as {(scenario, server): cells}."""
    section = report.split("## Server side", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] not in ("scenario", "---"):
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_a_server_that_does_not_start_is_reported(compare: ModuleType) -> None:
    broken = compare.ServerSpec("broken", [sys.executable, "-c", "import sys; sys.exit('no such library')"])
    missing = compare.ServerSpec("missing", ["surely-not-an-installed-program", "--port", "{port}"])
    scenarios = compare.SCENARIOS[:2]
    logged: List[str] = []
    outcomes = []
    for spec in (broken, missing):
        outcomes += compare.measure(spec, scenarios, 0.1, 0.0, logged.append)
    assert [o.failure for o in outcomes[:2]] == ["did not start: no such library"] * 2
    assert all("is not installed" in o.failure for o in outcomes[2:])
    report = compare.render(outcomes, [], [broken, missing], scenarios, compare.machine(), "cmd", "settings")
    assert "**broken**" in report and "did not start: no such library" in report.split("## Server side")[0]
    rows = table_rows(report)
    for scenario in scenarios:
        assert rows[(scenario.name, "broken")][0] == "did not start: no such library"
        assert "is not installed" in rows[(scenario.name, "missing")][0]
    assert any("no such library" in line for line in logged)


def test_quick_run_has_a_row_for_every_server(compare: ModuleType, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(BENCH / "compare.py"), "--quick", "--output", str(tmp_path)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    [report_path] = tmp_path.glob("*-quick.md")
    report = report_path.read_text()
    assert report == out.stdout
    rows = table_rows(report)
    servers = report.split("## Servers", 1)[1].split("## Server side", 1)[0]
    quick = [s for s in compare.SCENARIOS if s.name in compare.QUICK_SCENARIOS]
    started = set()
    for spec in compare.servers():
        status = re.search(rf"\*\*{re.escape(spec.name)}\*\*: .*\. (.*)", servers)
        assert status, f"{spec.name} is missing from the list of servers"
        if status.group(1) == "ran":
            started.add(spec.name)
        else:
            assert status.group(1).startswith("did not start: ")
        for scenario in quick:
            cells = rows[(scenario.name, spec.name)]  # a row, whether it started or not
            if spec.name not in started:
                assert cells[0] == status.group(1)
            elif not cells[0].startswith("not measured"):
                assert float(cells[0].replace(",", "")) > 0, (spec.name, scenario.name, cells)
                assert cells[6] in ("0", "n/a"), (spec.name, scenario.name, cells)  # no request failed
    # The servers this package brings always start; the others may lack their library or program.
    assert {"fastrpc", "fastrpc-asyncio", "fastrpc-pure-python", "floor", "streams+json", "seed-dispatcher"} <= started
    data = json.loads(report_path.with_suffix(".json").read_text())
    assert len(data["outcomes"]) == len(compare.servers()) * len(quick)
    assert "## Client side" in report and "## Targets" in report
    streaming = {row["server"]: row for row in data["streams"]}
    assert streaming["fastrpc"]["items"] == compare.STREAMS * 5_000 and streaming["fastrpc"]["server_us_per_item"] > 0
    assert re.search(r"\| fastrpc \| 20,000 \| [\d,]+ \| [\d.]+ \| 1\.00x \| [\d.]+ \|", report.split("## Server streaming", 1)[1])
    chart = report_path.with_suffix(".png")  # matplotlib comes with the test extra
    assert chart.read_bytes().startswith(b"\x89PNG") and f"]({chart.name})" in report


def test_quick_run_leaves_bench_results_alone(tmp_path: Path) -> None:
    """Without --output a quick run writes to a new temporary directory and says where: a checkout stays clean."""
    results = BENCH / "results"
    before = {path.name: path.stat().st_mtime_ns for path in results.iterdir()}
    out = subprocess.run([sys.executable, str(BENCH / "compare.py"), "--quick", "--servers", "floor", "--scenarios", "50x1",
                          "--duration", "0.1", "--warmup", "0"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert {path.name: path.stat().st_mtime_ns for path in results.iterdir()} == before
    [report_path] = tmp_path.glob("*/*-quick.md")
    assert report_path.read_text() == out.stdout
    assert f"report: {report_path}" in out.stderr.splitlines()
    assert "--output" in out.stderr  # how to keep it somewhere else
