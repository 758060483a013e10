"""Run one fuzz target for a while: ``python -m fuzzing {framing,server} --seconds N [-- libFuzzer flags]``.

The target starts from its seed corpus (fuzzing/corpus/<target>/, only read) and a working corpus
(fuzzing/work/<target>/corpus/ by default) that libFuzzer adds new inputs to, so later runs go on
where earlier ones stopped. A crash is written to fuzzing/work/<target>/ as crash-<sha1> and the
exit status is libFuzzer's (0: no crash). The last lines printed are libFuzzer's final figures
and a one-line summary.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from fuzzing import TARGETS

HERE = Path(__file__).resolve().parent


def command(target: str, seconds: Optional[int], runs: Optional[int], seed: Optional[int], work: Path,
            extra: List[str]) -> List[str]:
    """The libFuzzer command line for one run (input files in ``extra``: replay them, no fuzzing)."""
    argv = [sys.executable, str(HERE / f"fuzz_{target}.py")]
    if all(arg.startswith("-") for arg in extra):
        argv += [str(work / "corpus"), str(HERE / "corpus" / target)]
    argv += [f"-artifact_prefix={work}/", "-print_final_stats=1", "-timeout=30"]
    if seconds is not None:
        argv.append(f"-max_total_time={seconds}")
    if runs is not None:
        argv.append(f"-runs={runs}")
    if seed is not None:
        argv.append(f"-seed={seed}")
    return argv + extra


def summary(target: str, log: str) -> str:
    """One line from libFuzzer's output: executions, seconds, rate, coverage, crash."""
    stats: Dict[str, str] = dict(re.findall(r"^stat::(\w+):\s+(\d+)", log, re.MULTILINE))
    done = re.findall(r"^Done (\d+) runs in (\d+) second", log, re.MULTILINE)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", log)
    crash = re.findall(r"Test unit written to (\S+)", log)
    runs, seconds = done[-1] if done else (stats.get("number_of_executed_units", "?"), "?")
    return (f"{target}: {runs} executions in {seconds} s, {stats.get('average_exec_per_sec', '?')} exec/s, "
            f"cov {cov[-1][0] if cov else '?'} ft {cov[-1][1] if cov else '?'}, "
            + (f"crash: {crash[-1]}" if crash else "no crash"))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzzing", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--seconds", type=int, help="stop after this long (libFuzzer's -max_total_time)")
    parser.add_argument("--runs", type=int, help="stop after this many inputs (libFuzzer's -runs)")
    parser.add_argument("--seed", type=int, help="libFuzzer's random seed (default: from the clock)")
    parser.add_argument("--work", type=Path, help="working corpus and crash directory (default: fuzzing/work/<target>)")
    parser.add_argument("libfuzzer", nargs="*", help="after --: more libFuzzer flags, or input files to replay")
    args = parser.parse_args(argv)
    work = (args.work or HERE / "work" / args.target).resolve()
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    argv_ = command(args.target, args.seconds, args.runs, args.seed, work, args.libfuzzer)
    print(" ".join(argv_), file=sys.stderr, flush=True)
    lines = []
    with subprocess.Popen(argv_, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not line.startswith("INFO: Instrumenting"):  # one line per module atheris instruments
                sys.stderr.write(line)
    print(summary(args.target, "".join(lines)), flush=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
