"""The micro benchmarks in bench/test_micro.py still run and check their results.

They are not collected by the normal test run (testpaths is ``tests``); this
runs each of them once, untimed (``--benchmark-disable``), so that a broken
or vanished benchmark fails the suite. Timing is not a test: no figure is
asserted.
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# 6 split + 8 pack + 6 decode + 6 encode + 10 dispatch (8 on the two cores + 2 registry floors) + 1 baseline; update when adding one.
EXPECTED_BENCHMARKS = 37


def test_micro_benchmarks_run_and_pass() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_micro.py", "--benchmark-disable", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    summary = re.search(r"^=*\s*(\d+) passed\b(.*?)\s*=*$", done.stdout, re.MULTILINE)
    assert summary is not None, output
    assert int(summary.group(1)) == EXPECTED_BENCHMARKS, output
    # Nothing skipped, failed or errored beside them.
    assert re.search(r"\b(skipped|failed|error|errors|xfailed|xpassed)\b", summary.group(2)) is None, output
