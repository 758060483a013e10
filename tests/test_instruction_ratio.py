"""The server's cost per request may not grow: user-space instructions per request of ``fastrpc serve``
as a ratio to the floor's (bench/minimal_server.py), both counted by callgrind in this run.

Instruction counts are deterministic where timings are not (bench/instructions.py measures; timing stays
out of tests), and a ratio to the floor counted alongside cancels most of what the interpreter, libc and
the CPU contribute. It fails when the ratio at 1 or at 64 pings per write rises more than MARGIN above
REACHED, what issue 16's hot-path work reached.

The servers always run the compiled framing: their environment drops FASTRPC_NO_EXTENSIONS (REACHED is
the compiled build's; the pure-Python twin's cost is another figure), and the test fails unless
fastrpc's "listening" line says it runs ``framing cython`` on uvloop. So FASTRPC_NO_EXTENSIONS=1 in the
test run changes nothing here, and an unbuilt extension fails this test, as it fails
tests/test_implementation.py. valgrind must be installed (.ci/run installs it): without it this fails
under CI=true and is skipped elsewhere. About 2 minutes on 2 cores (6 valgrind runs, 2 at a time).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, Tuple

import pytest

# fastrpc's instructions per request over the floor's, per pings per write. Measured with
#   .venv/bin/python -m pytest tests/test_instruction_ratio.py -rP
# (it prints the figures) at the commit that set these (issue 16's third pass: requests read in
# place by the compiled core, without orjson's dict, deadline and meta too; refusals counted in the
# core), CPython 3.11.7, AMD EPYC VM: 6,593 / 16,766 and 2,365 / 10,737. Another Python or CPU may shift them a little; update them when the hot path
# gets cheaper, so that the guard keeps what was won.
REACHED: Dict[int, float] = {1: 0.3932, 64: 0.2203}
MARGIN = 0.05  # the ratio may rise this much (5 %) above REACHED before the test fails

# Pings per server and batch size: BASE of warm-up at each size, then REQUESTS measured (whole writes).
# Runs repeat to within 0.1 %; with fewer warm-up pings at 64 per write (3 writes) the floor's figure
# there was 3 % higher, warm-up leaking into the measure.
BASE, REQUESTS = 1000, 4000
BATCHES = (1, 64)

BENCH = Path(__file__).resolve().parent.parent / "bench" / "instructions.py"


def _bench() -> ModuleType:
    if not BENCH.exists():  # a copy of tests/ alone
        pytest.skip(f"{BENCH} is not in this tree")
    spec = importlib.util.spec_from_file_location("fastrpc_bench_instructions", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _need_valgrind() -> None:
    if shutil.which("valgrind"):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("valgrind is not installed; CI must run the instruction-ratio guard "
                    "(.ci/run installs it with apt-get)")
    pytest.skip("valgrind is not installed (apt-get install valgrind); skipped only outside CI: "
                "with CI=true this fails")


@pytest.fixture(scope="module")
def measured() -> Dict[Tuple[str, int], float]:
    """Instructions per request of (server, pings per write), all counted in one go (the valgrind runs
    overlap, one per CPU; bench/instructions.py kills every server it started, whatever fails)."""
    _need_valgrind()
    bench = _bench()
    env = {k: v for k, v in os.environ.items() if k != "FASTRPC_NO_EXTENSIONS"}
    pairs = [(server, batch) for server in ("fastrpc", "floor") for batch in BATCHES]
    figures = bench.per_request(pairs, BASE, REQUESTS, env=env)
    for batch in BATCHES:
        listening = figures["fastrpc", batch].listening
        assert "framing cython" in listening and "loop uvloop" in listening, (
            f"the measured server must run the compiled framing on uvloop; it said: {listening!r}")
    return {pair: figure.instructions for pair, figure in figures.items()}


@pytest.mark.parametrize("batch", BATCHES)
def test_instructions_per_request_against_the_floor(measured: Dict[Tuple[str, int], float], batch: int,
                                                    record_property: Callable[[str, object], None]) -> None:
    fastrpc, floor = measured["fastrpc", batch], measured["floor", batch]
    ratio, limit = fastrpc / floor, REACHED[batch] * (1 + MARGIN)
    report = (f"{batch} ping(s) per write: fastrpc {fastrpc:,.0f}, floor {floor:,.0f} instructions/request; "
              f"ratio {ratio:.4f}, reached {REACHED[batch]:.4f}, margin {MARGIN:.0%}: limit {limit:.4f} "
              f"(CPython {platform.python_version()})")
    print(report)
    record_property(f"instructions_{batch}", report)
    assert ratio <= limit, f"fastrpc's instructions per request rose against the floor: {report}"
