"""The seed corpora, built from readable steps: ``python -m fuzzing.seeds`` rewrites fuzzing/corpus/.

A target reads its input with ``atheris.FuzzedDataProvider``: ``ConsumeBytes`` takes bytes from the
front, ``ConsumeIntInRange(lo, hi)`` takes just enough bytes for ``hi - lo`` from the back, the last
byte most significant, and reduces them modulo ``hi - lo + 1``. ``Script`` writes values so that
they are read back in the order given; tests/test_fuzzing.py checks that each seed does what its
name says, so a change to a target's reading order cannot leave the seeds silently meaningless.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict

from fuzzing import fuzz_framing as framing
from fuzzing import fuzz_server as server

CORPUS = Path(__file__).resolve().parent / "corpus"


class Script:
    """An input for FuzzedDataProvider, written in the order the target reads it."""

    def __init__(self) -> None:
        self.front = bytearray()  # what ConsumeBytes reads, in order
        self.back = bytearray()  # what ConsumeIntInRange reads, in reading order

    def int(self, lo: int, hi: int, value: int) -> "Script":
        if not lo <= value <= hi or hi - lo >= 1 << 64:
            raise ValueError(f"{value} is not in [{lo}, {hi}] or the range is wider than 64 bits")
        span, size = hi - lo, 0
        while span >> (8 * size):
            size += 1
        self.back += (value - lo).to_bytes(size, "big")
        return self

    def bytes(self, data: bytes) -> "Script":
        self.front += data
        return self

    def build(self) -> bytes:
        return bytes(self.front) + bytes(reversed(self.back))


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


# -- fuzz_framing ---------------------------------------------------------------------------------

def framing_script(max_frame_size: int, buffer_size: int = 64 * 1024) -> Script:
    script = Script().int(0, len(framing.MAX_SIZES), framing.MAX_SIZES.index(max_frame_size))
    return script.int(framing.MIN_READ - 1, 4 * framing.MIN_READ, buffer_size)


def framing_bytes(script: Script, data: bytes, how: int = framing.BY_FEED_BYTES) -> Script:
    """Append up to 255 bytes; through get_buffer they fit one round (room is at least 16 KiB)."""
    script.int(0, 4, framing.OP_BYTES).int(0, 255, len(data)).bytes(data).int(0, 3, how)
    if how == framing.BY_BUFFER and data:
        script.int(-1, 1 << 18, -1).int(0, 3, 0)  # no size hint; report every byte written
    return script


def framing_take(script: Script) -> Script:
    return script.int(0, 4, framing.OP_TAKE).int(0, 16, 0)


PING_REQUEST = b'{"in": "ping", "params": "sha params"}'  # the earlier client's exact request (protocol.md section 3)


def framing_seeds() -> Dict[str, bytes]:
    pipelined = b"".join(frame(b) for b in (PING_REQUEST, b"", b'{"in": "echo", "params": [1, 2], "id": 7}'))
    half = frame(PING_REQUEST)
    large = framing_script(16 << 20).int(0, 4, framing.OP_FRAME).int(0, 1 << 17, 100_000).int(0, 255, ord("x"))
    large.int(0, 3, framing.BY_BUFFER).int(-1, 1 << 18, -1).int(0, 3, 0).int(-1, 1 << 18, -1).int(0, 3, 0)
    return {
        "request": framing_take(framing_bytes(framing_script(16 << 20), frame(PING_REQUEST))).build(),
        "pipelined": framing_take(framing_bytes(framing_script(16 << 20), pipelined, framing.BY_BUFFER)).build(),
        "half-frame": framing_take(framing_bytes(framing_take(framing_bytes(framing_script(1024), half[:20])), half[20:])).build(),
        "large-frame": framing_take(framing_bytes(framing_take(large), frame(b"{}"))).build(),
        "oversized-header": framing_take(framing_bytes(framing_script(1024), (1025).to_bytes(4, "big"))).build(),
        "ping-probe": framing_take(framing_bytes(framing_script(1 << 30), b"ping")).build(),
        "bad-update": framing_script(1024).int(0, 4, framing.OP_BAD_UPDATE).int(0, 1, 1).int(1, 1 << 31, 1).build(),
    }


# -- fuzz_server ----------------------------------------------------------------------------------

def server_script(max_frame_size: int = 16 << 20, debug: bool = False) -> Script:
    return Script().int(0, len(server.MAX_SIZES) - 1, server.MAX_SIZES.index(max_frame_size)).int(0, 1, int(debug))


def server_bytes(script: Script, data: bytes, spawns: int = 0) -> Script:
    """Append up to 255 bytes in one receive_data; ``spawns`` async calls it starts run without holding frames."""
    script.int(0, 5, server.OP_BYTES).int(0, 255, len(data)).bytes(data)
    if data:
        script.int(0, len(data) - 1, 0).int(0, 1, 1)  # all of it, through receive_data
    for _ in range(spawns):
        script.int(0, 3, 0)  # spawn: not at the limit of calls in flight
    return script


def server_settle(script: Script, waiting: int, index: int = 0) -> Script:
    """Run the index-th of ``waiting`` async calls."""
    return script.int(0, 5, server.OP_SETTLE).int(0, waiting - 1, index).int(0, 3, 0)


def server_seeds() -> Dict[str, bytes]:
    pipelined = b"".join(frame(b) for b in (b'{"in": "echo", "params": [1], "id": 1}', b'{"in": "raw", "params": {"a": 2}}',
                                            b'{"in": "nope", "id": "x"}', b'{"in": "add", "params": [1, 2]}'))
    ordered = frame(b'{"in": "aecho", "params": [1]}') + frame(b'{"in": "raw", "params": 2}')
    by_id = frame(b'{"in": "aecho", "params": [1], "id": 1}') + frame(b'{"in": "aecho", "params": [2], "id": 2}')
    half = frame(PING_REQUEST)
    return {
        "request": server_bytes(server_script(), frame(PING_REQUEST)).build(),
        "pipelined": server_bytes(server_script(), pipelined).build(),
        "ping-probe": server_bytes(server_script(), b"ping").build(),
        "half-frame": server_bytes(server_bytes(server_script(), half[:20]), half[20:]).build(),
        "async-in-order": server_settle(server_bytes(server_script(), ordered, spawns=1), 1).build(),
        "async-by-id": server_settle(server_bytes(server_script(), by_id, spawns=2), 2, 1).build(),
        "cancel": server_bytes(server_bytes(server_script(), frame(b'{"in": "aecho", "id": 3}'), spawns=1),
                               frame(b'{"cancel": 3}')).build(),
        "malformed": server_bytes(server_script(), b"".join(frame(b) for b in (b"{", b"[1]", b'{"in": 5}', b'{"in": "raw", "id": 1.5}'))).build(),
        "oversized-header": server_bytes(server_script(1024), frame(PING_REQUEST) + (4096).to_bytes(4, "big")).build(),
    }


SEEDS: Dict[str, Callable[[], Dict[str, bytes]]] = {"framing": framing_seeds, "server": server_seeds}


def write(corpus: Path = CORPUS) -> None:
    """Rewrite every seed corpus directory with exactly the seeds above."""
    for target, build in SEEDS.items():
        directory = corpus / target
        directory.mkdir(parents=True, exist_ok=True)
        seeds = build()
        for old in directory.iterdir():
            if old.name not in seeds:
                old.unlink()
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
        print(f"{directory}: {len(seeds)} seeds", file=sys.stderr)


if __name__ == "__main__":
    write()
