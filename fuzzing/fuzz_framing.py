"""Fuzz target: the frame splitter, compiled and pure-Python, in lock step with a reference model.

One input is a script read with ``atheris.FuzzedDataProvider``: a maximum frame size and a
buffer size, then operations (append raw bytes, a run of one byte, a whole frame; take frames;
report an impossible byte count). Every operation is applied to each ``FrameReader`` and to a
model that splits plain bytes the obvious way, and after each one they must agree: the same
frames, of the same kind (``bytes`` below 1 KiB, else ``memoryview``), in the same order, the
same ``FrameTooLarge`` (message, size, limit) at the same point, the same buffer figures. At
the end ``pack_frames`` of every frame taken must give back the bytes they were cut from.

Run it: ``python -m fuzzing framing --seconds 60`` or ``python fuzzing/fuzz_framing.py
[libFuzzer flags] [corpus dirs]``. The extension is not instrumented (atheris sees Python
code only); coverage comes from its twin, which follows the same algorithm line for line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, List, Optional, Tuple, Union

import atheris

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzzing.harness import fuzz  # noqa: E402

with atheris.instrument_imports(include=["fastrpc"]):
    from fastrpc import _framing_py
    from fastrpc.errors import FrameTooLarge

try:
    from fastrpc import _framing as _framing_c
except ImportError:  # not built: the twin is still checked against the model
    _framing_c = None

IMPLEMENTATIONS: List[ModuleType] = [_framing_py] + ([_framing_c] if _framing_c is not None else [])

HEADER = 4
MIN_READ = 16 * 1024  # room a read is always offered (docs/design.md, "The frame splitter")
COPY_BELOW = 1024  # bodies shorter than this are handed out as bytes, longer ones as views
# Maximum frame sizes picked by index; the last index lets the input name any value, valid or not.
MAX_SIZES = (1, 3, 4, 5, 16, 1023, 1024, 1025, 16 * 1024, 64 * 1024, 100_000, 1 << 20, 16 << 20, 1 << 30)
MAX_OPS = 256
# Bounds on one input, to keep a run fast and its memory small: bytes appended in all, frames taken.
MAX_STREAM = 4 << 20
MAX_FRAMES = 1024
MAX_WRITES = 64  # get_buffer/buffer_updated rounds per chunk before the rest goes through feed()
# A header announcing a body this much larger than what has arrived stops the input: the readers
# would then reserve room for all of it (by design), and max_frame_size goes up to 1 GiB.
MAX_RESERVE = 1 << 20
HELD_VIEWS = 8  # large frames kept alive after they are taken: the buffer must then not be resized in place

# Operations: the first value of each step.
OP_BYTES, OP_FILL, OP_FRAME, OP_TAKE, OP_BAD_UPDATE = range(5)
# How a chunk is delivered.
BY_FEED_BYTES, BY_FEED_BYTEARRAY, BY_FEED_VIEW, BY_BUFFER = range(4)

Frame = Union[bytes, memoryview]


class Model:
    """The frame splitter's contract over a plain bytearray, with none of its buffer management."""

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self.stream = bytearray()  # everything appended
        self.start = 0  # first byte not yet handed out
        self.frames = 0

    @property
    def buffered(self) -> int:
        return len(self.stream) - self.start

    def pending_frame_rest(self) -> int:
        """Bytes still missing from a frame whose header has arrived (0 if none, or it is refused)."""
        if self.buffered < HEADER:
            return 0
        size = int.from_bytes(self.stream[self.start:self.start + HEADER], "big")
        if size > self.max_frame_size:
            return 0
        return max(0, HEADER + size - self.buffered)

    def next_frame(self) -> Optional[Frame]:
        if self.buffered < HEADER:
            return None
        size = int.from_bytes(self.stream[self.start:self.start + HEADER], "big")
        if size > self.max_frame_size:
            raise FrameTooLarge(size, self.max_frame_size)
        if self.buffered - HEADER < size:
            return None
        body = bytes(self.stream[self.start + HEADER:self.start + HEADER + size])
        self.start += HEADER + size
        self.frames += 1
        return body if size < COPY_BELOW else memoryview(body)


def attempt(action: Callable[[], Any]) -> Tuple[Tuple[Any, ...], Any]:
    """What ``action`` did, in a form two implementations can be compared on, and what it returned."""
    try:
        value = action()
    except FrameTooLarge as exc:
        return ("FrameTooLarge", str(exc), exc.size, exc.limit), None
    except (ValueError, TypeError) as exc:
        return (type(exc).__name__, str(exc)), None
    if value is None:
        return ("none",), None
    if isinstance(value, (bytes, memoryview)):
        return (type(value).__name__, bytes(value)), value
    return ("value",), value


def outcome(action: Callable[[], Any]) -> Tuple[Any, ...]:
    return attempt(action)[0]


def agree(what: str, outcomes: List[Tuple[Any, ...]]) -> Tuple[Any, ...]:
    """All outcomes must be equal; the first is returned."""
    for impl, got in zip(IMPLEMENTATIONS[1:], outcomes[1:]):
        if got != outcomes[0]:
            raise AssertionError(f"{what}: {impl.__name__} gave {got!r:.300}, "
                                 f"{IMPLEMENTATIONS[0].__name__} gave {outcomes[0]!r:.300}")
    return outcomes[0]


class Run:
    """One input's readers, model and bookkeeping."""

    def __init__(self, fdp: Any, readers: List[Any], model: Model) -> None:
        self.fdp = fdp
        self.readers = readers
        self.model = model
        self.taken: List[bytes] = []
        self.held: List[memoryview] = []
        self.refused = False  # a FrameTooLarge was raised: the stream is no longer aligned

    @property
    def stopped(self) -> bool:
        """No more data may be appended: a header was refused, enough frames were taken, or a
        frame so large was announced that room for it would take too long to allocate."""
        return self.refused or len(self.taken) >= MAX_FRAMES or self.model.pending_frame_rest() > MAX_RESERVE

    def check_state(self, what: str) -> None:
        states = [(r.buffered, r.capacity, r.frames) for r in self.readers]
        agree(f"{what}: (buffered, capacity, frames)", [("state", s) for s in states])
        buffered, capacity, frames = states[0]
        if (buffered, frames) != (self.model.buffered, self.model.frames):
            raise AssertionError(f"{what}: readers have (buffered, frames) = {(buffered, frames)}, "
                                 f"the model {(self.model.buffered, self.model.frames)}")
        if capacity < buffered:
            raise AssertionError(f"{what}: capacity {capacity} is less than the {buffered} bytes buffered")

    def append(self, chunk: bytes) -> None:
        """Deliver ``chunk`` to every reader, the way the input says."""
        how = self.fdp.ConsumeIntInRange(BY_FEED_BYTES, BY_BUFFER)
        if how == BY_BUFFER:
            chunk = self.write_into_buffers(chunk)
        if chunk and not self.stopped:
            data: Any = {BY_FEED_BYTEARRAY: bytearray, BY_FEED_VIEW: memoryview}.get(how, bytes)(chunk)
            agree("feed", [outcome(lambda r=r: r.feed(data)) for r in self.readers])
            self.model.stream += chunk
        self.check_state("after appending")

    def write_into_buffers(self, chunk: bytes) -> bytes:
        """Write ``chunk`` through get_buffer/buffer_updated, sometimes reporting fewer bytes
        than were written; returns what is left after MAX_WRITES rounds."""
        fdp = self.fdp
        for _ in range(MAX_WRITES):
            if not chunk or self.stopped:
                break
            sizehint = fdp.ConsumeIntInRange(-1, 1 << 18)
            wanted = max(MIN_READ, self.model.pending_frame_rest())  # the hint is only a hint
            views = [r.get_buffer(sizehint) for r in self.readers]
            room = agree("len(get_buffer())", [("room", len(v)) for v in views])[1]
            if room < wanted:
                raise AssertionError(f"get_buffer({sizehint}) offered {room} bytes, at least {wanted} were due")
            written = min(room, len(chunk))
            for view in views:
                view[:written] = chunk[:written]
            reported = written
            if fdp.ConsumeIntInRange(0, 3) == 3:
                reported = fdp.ConsumeIntInRange(0, written)
            del views
            agree("buffer_updated", [outcome(lambda r=r: r.buffer_updated(reported)) for r in self.readers])
            self.model.stream += chunk[:reported]
            chunk = chunk[reported:]
        return chunk

    def take(self, limit: int) -> None:
        """Take up to ``limit`` frames from every reader (0: until none is complete)."""
        for _ in range(limit or MAX_FRAMES):
            if self.refused or len(self.taken) >= MAX_FRAMES:
                return
            results = [attempt(r.next_frame) for r in self.readers]
            got = agree("next_frame", [result[0] for result in results])
            want = outcome(self.model.next_frame)
            if got != want:
                raise AssertionError(f"next_frame after {len(self.taken)} frames: readers gave {got!r:.300}, "
                                     f"the model {want!r:.300}")
            if got[0] == "none":
                return
            if got[0] == "FrameTooLarge":
                again = agree("next_frame, again", [outcome(r.next_frame) for r in self.readers])
                if again != got:
                    raise AssertionError(f"a refused header was refused as {got!r}, then as {again!r}")
                self.check_state("after an oversized header")
                self.refused = True
                return
            self.taken.append(got[1])
            self.held += [value for _, value in results if isinstance(value, memoryview)]
            del self.held[:-HELD_VIEWS]

    def bad_update(self) -> None:
        """buffer_updated with a count outside the view given out: ValueError, nothing changed."""
        fdp = self.fdp
        rooms = [len(r.get_buffer(-1)) for r in self.readers]
        room = agree("len(get_buffer(-1))", [("room", n) for n in rooms])[1]
        nbytes = -fdp.ConsumeIntInRange(1, 1 << 31) if fdp.ConsumeIntInRange(0, 1) else room + fdp.ConsumeIntInRange(1, 1 << 31)
        got = agree("buffer_updated(out of range)", [outcome(lambda r=r: r.buffer_updated(nbytes)) for r in self.readers])
        if got[0] != "ValueError":
            raise AssertionError(f"buffer_updated({nbytes}) with {room} bytes of room gave {got!r}, not ValueError")
        self.check_state("after a refused buffer_updated")

    def round_trip(self) -> None:
        """pack_frames of the frames taken must rebuild the bytes they came from."""
        kinds = (bytes, bytearray, memoryview)
        bodies = [kinds[self.fdp.ConsumeIntInRange(0, 2)](body) for body in self.taken]
        as_generator = self.fdp.ConsumeIntInRange(0, 1) == 1
        packed = agree("pack_frames", [outcome(lambda impl=impl: impl.pack_frames(iter(bodies) if as_generator else bodies))
                                       for impl in IMPLEMENTATIONS])
        consumed = bytes(self.model.stream[:self.model.start])
        if packed != ("bytes", consumed):
            raise AssertionError(f"pack_frames of {len(bodies)} frames gave {packed!r:.200}, not the {len(consumed)} bytes they came from")


def make_readers(fdp: Any) -> Optional[Tuple[List[Any], Model]]:
    """Readers and model for the sizes the input names; None when both implementations rightly refuse them."""
    index = fdp.ConsumeIntInRange(0, len(MAX_SIZES))
    max_frame_size = MAX_SIZES[index] if index < len(MAX_SIZES) else fdp.ConsumeIntInRange(-1, (1 << 30) + 1)
    buffer_size = fdp.ConsumeIntInRange(MIN_READ - 1, 4 * MIN_READ)
    made = [attempt(lambda impl=impl: impl.FrameReader(max_frame_size, buffer_size)) for impl in IMPLEMENTATIONS]
    kinds = agree(f"FrameReader({max_frame_size}, {buffer_size})", [result[0] for result in made])
    if kinds[0] != "value":
        valid = 0 < max_frame_size <= 1 << 30 and buffer_size >= MIN_READ
        if kinds[0] != "ValueError" or valid:
            raise AssertionError(f"FrameReader({max_frame_size}, {buffer_size}) gave {kinds!r}")
        return None
    return [value for _, value in made], Model(max_frame_size)


def run_input(data: bytes) -> Optional[Run]:
    """Run one script and return its state (None: the sizes were rightly refused); raises
    AssertionError on any disagreement."""
    fdp = atheris.FuzzedDataProvider(data)
    made = make_readers(fdp)
    if made is None:
        return None
    run = Run(fdp, *made)
    appended = 0
    for _ in range(MAX_OPS):
        if not fdp.remaining_bytes() or run.stopped:
            break
        op = fdp.ConsumeIntInRange(OP_BYTES, OP_BAD_UPDATE)
        chunk = b""
        if op == OP_BYTES:
            chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 255))
        elif op == OP_FILL:
            chunk = bytes([fdp.ConsumeIntInRange(0, 255)]) * fdp.ConsumeIntInRange(0, 1 << 18)
        elif op == OP_FRAME:
            size = fdp.ConsumeIntInRange(0, 1 << 17)
            chunk = size.to_bytes(HEADER, "big") + bytes([fdp.ConsumeIntInRange(0, 255)]) * size
        elif op == OP_TAKE:
            run.take(fdp.ConsumeIntInRange(0, 16))
        else:
            run.bad_update()
        if op in (OP_BYTES, OP_FILL, OP_FRAME) and appended + len(chunk) <= MAX_STREAM:
            appended += len(chunk)
            run.append(chunk)
    run.take(0)
    run.round_trip()
    return run


def test_one_input(data: bytes) -> None:
    run_input(data)


if __name__ == "__main__":
    names = ", ".join(impl.__name__ for impl in IMPLEMENTATIONS)
    print(f"fuzz_framing: checking {names} against the model" + ("" if _framing_c else " (the extension is not built)"),
          file=sys.stderr)
    fuzz(__name__, test_one_input, sys.argv)
