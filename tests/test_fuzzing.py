"""The atheris fuzz targets (fuzzing/): a short run of each, their seeds, the crashes they found.

A short run of each target is in CI; long runs are in fuzzing/RESULTS.md. The targets' checks are
tested here too, against deliberately broken framings and cores, so a check that can no longer
fail does not go unnoticed.
"""

from __future__ import annotations

import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from fastrpc import RemoteError, _framing_py
from fastrpc.protocol import Method, ServerConnection, encode_error

if sys.platform == "linux" and platform.machine() == "x86_64":
    import atheris  # the test extra installs it here: missing, it is an error, not a skip
else:
    atheris = pytest.importorskip("atheris", reason="atheris has wheels for Linux x86_64 only (the fuzz extra skips it)")

from fuzzing import fuzz_framing, fuzz_server, seeds  # noqa: E402

from .conftest import frame  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REGRESSIONS = ROOT / "fuzzing" / "regressions"
SHORT_RUN_SECONDS = 10  # each target; the two run at once, one per core


# -- a short run of each target (both started at once) --------------------------------------------

@pytest.fixture(scope="module")
def short_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, "subprocess.Popen[str]"]]:
    procs = {}
    for target in ("framing", "server"):
        argv = [sys.executable, "-m", "fuzzing", target, "--seconds", str(SHORT_RUN_SECONDS), "--seed", "1",
                "--work", str(tmp_path_factory.mktemp(target))]
        procs[target] = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("target", ["framing", "server"])
def test_short_fuzz_run_finds_nothing(short_runs: Dict[str, "subprocess.Popen[str]"], target: str) -> None:
    output, _ = short_runs[target].communicate(timeout=SHORT_RUN_SECONDS + 120)
    seeds_found = len(list((ROOT / "fuzzing" / "corpus" / target).iterdir()))
    assert short_runs[target].returncode == 0, output[-4000:]
    assert f"{seeds_found} files found in {ROOT / 'fuzzing' / 'corpus' / target}" in output, output[-4000:]
    assert f"{target}: " in output and ", no crash" in output, output[-4000:]


# -- the seeds ------------------------------------------------------------------------------------

def test_script_is_read_back_by_fuzzed_data_provider() -> None:
    rng = random.Random(7)
    for _ in range(200):
        steps: List[Tuple[str, Any]] = []
        script = seeds.Script()
        for _ in range(rng.randrange(1, 12)):
            if rng.random() < 0.3:
                data = rng.randbytes(rng.randrange(0, 6))
                steps.append(("bytes", data))
                script.bytes(data)
            else:
                lo = rng.randrange(-1000, 1000)
                hi = lo + rng.choice([0, 1, 5, 255, 256, 70_000, 1 << 31, (1 << 64) - 1])
                value = rng.randint(lo, hi)
                steps.append(("int", (lo, hi, value)))
                script.int(lo, hi, value)
        fdp = atheris.FuzzedDataProvider(script.build())
        for kind, arg in steps:
            if kind == "bytes":
                assert fdp.ConsumeBytes(len(arg)) == arg
            else:
                assert fdp.ConsumeIntInRange(arg[0], arg[1]) == arg[2]
        assert fdp.remaining_bytes() == 0


def test_seed_files_are_the_ones_seeds_py_builds() -> None:
    for target, build in seeds.SEEDS.items():
        on_disk = {p.name: p.read_bytes() for p in (ROOT / "fuzzing" / "corpus" / target).iterdir()}
        assert on_disk == build(), f"run: python -m fuzzing.seeds ({target})"


def test_framing_seeds_do_what_their_names_say() -> None:
    built = seeds.framing_seeds()
    outcomes = {}
    for name, data in built.items():
        run = fuzz_framing.run_input(data)
        assert run is not None and run.fdp.remaining_bytes() == 0, name
        outcomes[name] = ([len(body) for body in run.taken], run.refused)
    assert outcomes == {
        "request": ([len(seeds.PING_REQUEST)], False),
        "pipelined": ([len(seeds.PING_REQUEST), 0, 41], False),
        "half-frame": ([len(seeds.PING_REQUEST)], False),
        "large-frame": ([100_000, 2], False),
        "oversized-header": ([], True),
        "ping-probe": ([], True),
        "bad-update": ([], False),
    }


def replies(talk: fuzz_server.Conversation) -> List[Any]:
    output = bytes(talk.output)
    if output == fuzz_server.PROBE_REPLY:
        return ["probe"]
    return [fuzz_server.orjson.loads(body) for body in fuzz_server.split_frames(output, "test")]


def test_server_seeds_do_what_their_names_say() -> None:
    got = {name: replies(fuzz_server.run_input(data)) for name, data in seeds.server_seeds().items()}
    pong = {"out": "pong", "result": "sha params"}
    assert got["request"] == got["half-frame"] == [pong]
    assert got["ping-probe"] == ["probe"]
    assert got["pipelined"][0] == {"out": "echo", "result": [1], "id": 1}
    assert [r["out"] for r in got["pipelined"]] == ["echo", "raw", "error", "add"]
    assert got["async-in-order"] == [{"out": "aecho", "result": [1]}, {"out": "raw", "result": 2}]
    assert [r["id"] for r in got["async-by-id"]] == [2, 1]
    assert got["cancel"] == []
    assert [r["error"]["code"] for r in got["malformed"]] == [-32700, -32600, -32600, -32600]
    assert got["oversized-header"][0] == pong and got["oversized-header"][1]["error"]["data"] == {"size": 4096, "limit": 1024}


# -- crashes the fuzzer found -------------------------------------------------------------------

def regression_files() -> List[Path]:
    return sorted(REGRESSIONS.glob("*/*"))


@pytest.mark.parametrize("path", regression_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_crash_inputs_pass_now(path: Path) -> None:
    module = {"framing": fuzz_framing, "server": fuzz_server}[path.parent.name]
    module.test_one_input(path.read_bytes())


def test_debug_traceback_over_max_crash_input_fails_without_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """fuzz_server found it: in debug mode an internal error's traceback went out even when the
    reply was over the maximum frame size (so were long method names and handlers' own errors)."""
    monkeypatch.setattr(ServerConnection, "_fit", lambda self, body, rid: body)
    with pytest.raises(AssertionError, match="exceeds the maximum frame size"):
        fuzz_server.test_one_input((REGRESSIONS / "server" / "debug-traceback-over-max").read_bytes())


def test_unencodable_error_data_crash_input_fails_without_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """fuzz_server found it: an async handler's RemoteError whose data orjson cannot write made
    ServerConnection.fail raise (a sync handler's made buffer_updated raise)."""
    guarded = ServerConnection._error_body

    def unguarded(self: ServerConnection, method: Method, params: Any, exc: BaseException, rid: Any) -> bytes:
        if isinstance(exc, RemoteError):  # as it was: encoded with no care for what orjson refuses
            return encode_error(exc.code, exc.message, exc.data, rid)
        return guarded(self, method, params, exc, rid)

    monkeypatch.setattr(ServerConnection, "_error_body", unguarded)
    with pytest.raises(TypeError, match="Recursion limit"):
        fuzz_server.test_one_input((REGRESSIONS / "server" / "unencodable-error-data").read_bytes())


def deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


def test_handler_error_data_that_cannot_be_encoded_is_an_internal_error() -> None:
    def refuse(data: Any) -> None:
        raise RemoteError("refused", data, code=-32050)

    async def arefuse() -> None:
        raise RemoteError("refused", {"a set": {1}}, code=-32050)

    calls: List[Any] = []
    core = ServerConnection({"refuse": Method("refuse", refuse, raw_params=True), "arefuse": Method("arefuse", arefuse)},
                            calls.append)
    out = core.receive_data(frame(b'{"in": "refuse", "params": ' + fuzz_server.encode(fuzz_server.Deep(300)) + b', "id": 1}')
                            + frame(b'{"in": "arefuse", "id": 2}'))
    [call] = calls
    with pytest.raises(RemoteError) as raised:
        call.coro.send(None)
    core.fail(call, raised.value)
    got = [fuzz_server.orjson.loads(b) for b in fuzz_server.split_frames(out + core.data_to_send(), "test")]
    assert [(r["id"], r["error"]["code"]) for r in got] == [(1, -32603), (2, -32603)]
    assert all("cannot be encoded" in r["error"]["message"] for r in got)


@pytest.mark.parametrize("debug", [False, True])
def test_error_replies_over_the_maximum_become_frame_too_large(debug: bool) -> None:
    def fail() -> None:
        raise RemoteError("x" * 2000)

    def boom() -> None:
        raise ValueError("y" * 2000)

    core = ServerConnection({"fail": Method("fail", fail), "boom": Method("boom", boom)}, lambda call: None,
                            max_frame_size=1000, debug=debug)
    out = core.receive_data(frame(b'{"in": "fail", "id": 1}') + frame(b'{"in": "%s", "id": 2}' % (b"n" * 950))
                            + frame(b'{"in": "boom", "id": 3}'))
    got = [fuzz_server.orjson.loads(b) for b in fuzz_server.split_frames(out, "test")]
    codes = [(r["id"], r["error"]["code"]) for r in got]
    assert codes == [(1, -32000), (2, -32000), (3, -32000 if debug else -32603)]


# -- the checks catch planted bugs ----------------------------------------------------------------

class DropsEmptyFrames(_framing_py.FrameReader):
    """A splitter that skips empty bodies."""

    def next_frame(self) -> Any:
        body = super().next_frame()
        return super().next_frame() if body == b"" else body


class RefusesTheMaximum(_framing_py.FrameReader):
    """A splitter whose size check is off by one."""

    def next_frame(self) -> Any:
        if self.buffered >= 4 and int.from_bytes(self._buf[self._start:self._start + 4], "big") == self.max_frame_size:
            raise fuzz_framing.FrameTooLarge(self.max_frame_size, self.max_frame_size)
        return super().next_frame()


class CopiesLargeFrames(_framing_py.FrameReader):
    """A splitter that hands out every body as bytes."""

    def next_frame(self) -> Any:
        body = super().next_frame()
        return None if body is None else bytes(body)


class BrokenTwin:
    def __init__(self, reader: type) -> None:
        self.FrameReader = reader
        self.pack_frames = _framing_py.pack_frames
        self.__name__ = f"broken twin ({reader.__name__})"


def frame_at_the_maximum() -> bytes:
    script = seeds.framing_script(1024).int(0, 4, fuzz_framing.OP_FRAME).int(0, 1 << 17, 1024).int(0, 255, 1).int(0, 3, 0)
    return seeds.framing_take(script).build()


@pytest.mark.parametrize("reader, data", [
    (DropsEmptyFrames, seeds.framing_seeds()["pipelined"]),
    (RefusesTheMaximum, frame_at_the_maximum()),
    (CopiesLargeFrames, seeds.framing_seeds()["large-frame"]),
])
def test_framing_target_catches_a_broken_splitter(monkeypatch: pytest.MonkeyPatch, reader: type, data: bytes) -> None:
    fuzz_framing.run_input(data)  # the real ones agree
    monkeypatch.setattr(fuzz_framing, "IMPLEMENTATIONS", [*fuzz_framing.IMPLEMENTATIONS, BrokenTwin(reader)])
    with pytest.raises(AssertionError):
        fuzz_framing.run_input(data)


def settles_out_of_order(self: ServerConnection, call: Any, body: bytes) -> None:
    self._send(body)  # ignores the slots of id-less requests


def forgets_the_id(self: ServerConnection, method: Method, result: Any, rid: Any) -> bytes:
    return method.prefix + fuzz_server.orjson.dumps(result) + b"}"


def closes_silently(self: ServerConnection, exc: Any) -> None:
    self.closing = True


def answers_cancels(self: ServerConnection, body: Any) -> None:
    self._reply(None, encode_error(-32600, "no"))


@pytest.mark.parametrize("attribute, broken, seed", [
    ("_settle", settles_out_of_order, "async-in-order"),
    ("_result_body", forgets_the_id, "pipelined"),
    ("_frame_too_large", closes_silently, "oversized-header"),
    ("_reject", answers_cancels, "cancel"),
])
def test_server_target_catches_a_broken_core(monkeypatch: pytest.MonkeyPatch, attribute: str, broken: Any, seed: str) -> None:
    data = seeds.server_seeds()[seed]
    fuzz_server.run_input(data)  # the real ones pass
    for connection in fuzz_server.CONNECTIONS:  # a compiled core's fast path is caught by its twin disagreeing
        monkeypatch.setattr(connection, attribute, broken)
    with pytest.raises(AssertionError):
        fuzz_server.run_input(data)
