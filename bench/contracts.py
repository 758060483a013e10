"""What typed params cost the server per call, and what each candidate validator would cost (issue 17).

    .venv/bin/python bench/contracts.py [--quick]

In-process, with timeit (the best of several repeats, per call, in microseconds):

- core: one read of 64 request frames through ``ServerConnection.receive_data`` to the framed replies
  (decode, dispatch, check, call, encode), per request, for the untyped and the typed handler, over the
  compiled core and its pure-Python twin. This is server CPU per call, without the socket.
- engines: only the check and conversion of the params, by each candidate: the checker fastrpc generates
  per signature (``fastrpc.contracts``), ``msgspec.convert`` and a pydantic v2 ``TypeAdapter``.
- bad params: a call missing a param, through the core: the untyped handler (the signature read once, at
  registration) and the typed one (the generated checker's precise path); and what the old path cost,
  ``inspect.signature`` read again for every failure.
- unknown method: a call of a name no method has (-32601).
bench/results/2026-11-30-contracts.md records a run.

    .venv/bin/python bench/contracts.py --instructions

counts instead user-space instructions per request through the chosen core, with callgrind (valgrind):
the same cases, deterministic where timings on a shared machine move by tens of percent.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import time
import timeit
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

import fastrpc  # noqa: E402
from fastrpc import _server_core_py, contracts, framing, protocol  # noqa: E402
from fastrpc.framing import pack_frames  # noqa: E402
from fastrpc.stats import ServerStats  # noqa: E402

FIELDS = [f"f{i:02d}" for i in range(20)]
# A 20-field record, one of each kind in turn: int, float, str, bool, list[int].
KINDS: List[Tuple[Any, Any]] = [(int, 7), (float, 2.5), (str, "text"), (bool, True), (List[int], [1, 2, 3])]
Rec20 = dataclasses.make_dataclass("Rec20", [(name, KINDS[i % 5][0]) for i, name in enumerate(FIELDS)])
RECORD: Dict[str, Any] = {name: KINDS[i % 5][1] for i, name in enumerate(FIELDS)}


def untyped_add(a, b):  # type: ignore[no-untyped-def]
    return a + b


def typed_add(a: int, b: int) -> int:
    return a + b


def untyped_put(rec):  # type: ignore[no-untyped-def]
    return 1


def typed_put(rec: Rec20) -> int:  # type: ignore[valid-type]
    return 1


def server() -> fastrpc.Server:
    s = fastrpc.Server()
    for name, func in [("uadd", untyped_add), ("tadd", typed_add), ("uput", untyped_put), ("tput", typed_put)]:
        s.method(name)(func)
    return s


def per_call(func: Callable[[], Any], n: int, repeat: int) -> float:
    """Microseconds of CPU per call of ``func``: the best of ``repeat`` runs of ``n`` (process time: other
    processes on the machine do not count, as wall time would)."""
    return min(timeit.repeat(func, number=n, repeat=repeat, timer=time.process_time)) / n * 1e6


def core_figures(n: int, repeat: int) -> Dict[str, float]:
    methods = server().methods
    cores = {"twin": type("ServerConnection", (protocol._RarerPaths, _server_core_py.ServerCore), {})}
    if framing.IMPLEMENTATION == "cython":
        from fastrpc import _server_core

        cores["compiled"] = type("ServerConnection", (protocol._RarerPaths, _server_core.ServerCore), {})
    requests = {
        "add": ("uadd", "tadd", [1, 2]),
        "add (named)": ("uadd", "tadd", {"a": 1, "b": 2}),
        "20-field record": ("uput", "tput", [RECORD]),
        "add, bad params": ("uadd", "tadd", [1]),
        "add, mistyped": (None, "tadd", [1, "2"]),
        "unknown method": ("nadd", None, [1, 2]),
    }
    out: Dict[str, float] = {}
    for core_name, core_class in cores.items():
        for label, (untyped, typed, params) in requests.items():
            for kind, name in (("untyped", untyped), ("typed", typed)):
                if name is None:
                    continue
                core = core_class(methods, lambda call: None)
                batch = pack_frames([orjson.dumps({"in": name, "params": params, "id": i}) for i in range(64)])
                replies = core.receive_data(batch)
                code = b'"code":-32601' if "unknown" in label else b'"code":-32602'
                assert replies.count(code) == (64 if "bad" in label or "mis" in label or "unknown" in label else 0), replies[:200]
                out[f"{core_name}: {label}, {kind}"] = per_call(lambda: core.receive_data(batch), n, repeat) / 64
    return out


def engine_figures(n: int, repeat: int) -> Dict[str, float]:
    out: Dict[str, float] = {}
    add = contracts.contract(lambda a, b: None)  # untyped: the floor, a plain call
    typed = contracts.contract(_discard_add)
    put = contracts.contract(_discard_put)
    pair, record = [1, 2], RECORD
    out["generated: add(a: int, b: int)"] = per_call(lambda: typed.func(*pair), n, repeat)
    out["floor: untyped add"] = per_call(lambda: add.func(*pair), n, repeat)
    out["generated: put(rec: Rec20)"] = per_call(lambda: put.func(record), n, repeat)
    try:
        import msgspec
    except ImportError:
        pass
    else:
        pair_type = Tuple[int, int]
        out["msgspec.convert: (int, int)"] = per_call(lambda: msgspec.convert(pair, pair_type), n, repeat)
        out["msgspec.convert: Rec20"] = per_call(lambda: msgspec.convert(record, Rec20), n, repeat)
    try:
        import pydantic
    except ImportError:
        pass
    else:
        pair_adapter = pydantic.TypeAdapter(Tuple[int, int])
        record_adapter = pydantic.TypeAdapter(Rec20)
        out["pydantic TypeAdapter: (int, int)"] = per_call(lambda: pair_adapter.validate_python(pair), n, repeat)
        out["pydantic TypeAdapter: Rec20"] = per_call(lambda: record_adapter.validate_python(record), n, repeat)
    return out


def _discard_add(a: int, b: int) -> None:
    return None


def _discard_put(rec: Rec20) -> None:  # type: ignore[valid-type]
    return None


def old_bad_params(n: int, repeat: int) -> Dict[str, float]:
    """The bad-params path before: the signature read again at every failure."""
    def old() -> Any:
        try:
            untyped_add(1)  # type: ignore[call-arg]
        except TypeError:
            try:
                inspect.signature(untyped_add).bind(1)
            except TypeError as exc:
                return str(exc)
    return {"before: untyped add, bad params (signature read per failure), the check alone": per_call(old, n, repeat)}


CASES = {  # label: (method, params)
    "add, untyped": ("uadd", [1, 2]), "add, typed": ("tadd", [1, 2]),
    "add (named), untyped": ("uadd", {"a": 1, "b": 2}), "add (named), typed": ("tadd", {"a": 1, "b": 2}),
    "20-field record, untyped": ("uput", [RECORD]), "20-field record, typed": ("tput", [RECORD]),
    "add, bad params, untyped": ("uadd", [1]), "add, bad params, typed": ("tadd", [1]),
    "add, mistyped, typed": ("tadd", [1, "2"]),
    "unknown method": ("nadd", [1, 2]),
}


def run_case(label: str, reads: int) -> None:
    """``reads`` reads of 64 requests of case ``label`` through the chosen core (what callgrind counts)."""
    name, params = CASES[label]
    # Errors counted as a server counts them (in a ServerStats), so that a refusal costs what it does there.
    core = protocol.ServerConnection(server().methods, lambda call: None, stats=ServerStats())
    batch = pack_frames([orjson.dumps({"in": name, "params": params, "id": i}) for i in range(64)])
    for _ in range(reads):
        core.receive_data(batch)


def instructions(jobs: int = 2) -> Dict[str, float]:
    """User-space instructions per request of each case, counted by callgrind: a run of 30 reads less one
    of 10, over the 20 x 64 requests between (start-up cancels out). Deterministic where timings are not."""
    import concurrent.futures
    import re
    import subprocess

    def count(label: str, reads: int) -> int:
        out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                              __file__, "--run", label, str(reads)], capture_output=True, text=True,
                             env={**__import__("os").environ, "PYTHONHASHSEED": "0"}, check=True)
        return int(re.search(r"Collected : (\d+)", out.stderr).group(1))  # type: ignore[union-attr]

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        runs = {(label, reads): pool.submit(count, label, reads) for label in CASES for reads in (10, 30)}
        return {label: (runs[label, 30].result() - runs[label, 10].result()) / (20 * 64) for label in CASES}


def main() -> None:
    if sys.argv[1:2] == ["--run"]:
        return run_case(sys.argv[2], int(sys.argv[3]))
    if "--instructions" in sys.argv:
        print(f"Python {sys.version.split()[0]}, framing {framing.IMPLEMENTATION}; user-space instructions per request")
        for label, value in instructions().items():
            print(f"  {label:<40} {value:10.0f}")
        return None
    quick = "--quick" in sys.argv
    n, repeat = (200, 3) if quick else (2000, 15)
    print(f"Python {sys.version.split()[0]}, framing {framing.IMPLEMENTATION}; us per call, best of {repeat}")
    for title, figures in (("core, 64 requests per read, per request", core_figures(n // 10 or 1, repeat)),
                           ("engines: the params check alone", engine_figures(n * 10, repeat)),
                           ("old bad-params path", old_bad_params(n, repeat))):
        print(f"\n{title}")
        for label, value in figures.items():
            print(f"  {label:<70} {value:8.3f}")


if __name__ == "__main__":
    main()
