"""The frame splitter and packer, run against both implementations (docs/protocol.md section 1)."""

from __future__ import annotations

from typing import Any, List, Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrpc import FrameTooLarge, framing
from fastrpc import _framing_py

from .conftest import IMPLEMENTATIONS, frame


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def impl(request: pytest.FixtureRequest) -> Any:
    return IMPLEMENTATIONS[request.param]


def drain(reader: Any) -> List[bytes]:
    frames = []
    while True:
        body = reader.next_frame()
        if body is None:
            return frames
        frames.append(bytes(body))


def feed_via_buffer(reader: Any, data: bytes) -> None:
    """Write ``data`` the way an asyncio BufferedProtocol transport does."""
    while data:
        buf = reader.get_buffer(-1)
        n = min(len(buf), len(data))
        buf[:n] = data[:n]
        reader.buffer_updated(n)
        data = data[n:]


def test_implementation_names_match_env() -> None:
    assert framing.IMPLEMENTATION in ("cython", "python")


def test_splits_frames_fed_at_once(impl: Any) -> None:
    reader = impl.FrameReader()
    bodies = [b"{}", b'{"in":"ping"}', b"", b"x" * 5000]
    assert reader.frames == 0
    reader.feed(b"".join(frame(b) for b in bodies))
    assert drain(reader) == bodies
    assert reader.buffered == 0 and reader.frames == 4  # the count a watchdog reads progress from


def test_frames_split_one_byte_at_a_time(impl: Any) -> None:
    reader = impl.FrameReader()
    stream = frame(b'{"a": 1}') + frame(b"[2]")
    seen = []
    for i in range(len(stream)):
        reader.feed(stream[i:i + 1])
        seen += drain(reader)
    assert seen == [b'{"a": 1}', b"[2]"]


def test_get_buffer_and_buffer_updated(impl: Any) -> None:
    reader = impl.FrameReader()
    bodies = [bytes([i % 256]) * (i * 37) for i in range(200)]
    feed_via_buffer(reader, b"".join(frame(b) for b in bodies))
    assert drain(reader) == bodies


def test_small_frames_are_bytes_large_are_views(impl: Any) -> None:
    reader = impl.FrameReader()
    reader.feed(frame(b"s" * 10) + frame(b"L" * 4096))
    assert type(reader.next_frame()) is bytes
    large = reader.next_frame()
    assert type(large) is memoryview and bytes(large) == b"L" * 4096


def test_oversized_header_refused_before_body(impl: Any) -> None:
    reader = impl.FrameReader(max_frame_size=100)
    reader.feed(frame(b"x" * 100) + (101).to_bytes(4, "big"))
    assert reader.next_frame() == b"x" * 100
    with pytest.raises(FrameTooLarge) as info:
        reader.next_frame()
    assert (info.value.size, info.value.limit) == (101, 100)
    # Nothing of the body was needed to decide, and the buffer did not grow for it.
    assert reader.capacity == 64 * 1024


def test_header_announcing_4_gib(impl: Any) -> None:
    reader = impl.FrameReader()
    reader.feed(b"\xff\xff\xff\xff")
    with pytest.raises(FrameTooLarge) as info:
        reader.next_frame()
    assert info.value.size == 0xFFFFFFFF


def test_text_probe_reads_as_oversized_header(impl: Any) -> None:
    reader = impl.FrameReader(max_frame_size=1 << 30)
    reader.feed(b"ping")
    with pytest.raises(FrameTooLarge) as info:
        reader.next_frame()
    assert info.value.size == 0x70696E67


@pytest.mark.parametrize("bad", [0, -1, (1 << 30) + 1, 1.5, "16"])
def test_bad_max_frame_size(impl: Any, bad: Any) -> None:
    with pytest.raises(ValueError):
        impl.FrameReader(max_frame_size=bad)


def test_grows_for_a_large_frame_and_shrinks_after(impl: Any) -> None:
    reader = impl.FrameReader()
    body = b"z" * (3 * 1024 * 1024)
    feed_via_buffer(reader, frame(body))
    assert reader.capacity >= len(body) + 4
    assert bytes(reader.next_frame()) == body
    for _ in range(7):  # kept for the next large frame a while...
        reader.get_buffer(-1)
        assert reader.capacity >= len(body) + 4
    reader.get_buffer(-1)  # ...then given back
    assert reader.capacity == 64 * 1024


def test_large_frames_one_after_another_reuse_one_buffer(impl: Any) -> None:
    reader = impl.FrameReader()
    body = b"z" * (1024 * 1024)
    buffers: List[Any] = []  # held, so that no id is reused
    for _ in range(5):
        data = frame(body)
        while data:
            view = reader.get_buffer(65536)
            if not any(view.obj is buffer for buffer in buffers):
                buffers.append(view.obj)
            n = min(len(view), len(data), 50000)
            view[:n] = data[:n]
            reader.buffer_updated(n)
            data = data[n:]
        assert bytes(reader.next_frame()) == body
    assert len(buffers) == 2  # the first 64 KiB, then one of the frame's size for all five


def test_a_large_frame_gets_one_buffer_of_its_size(impl: Any) -> None:
    """Sized from the header once, not doubled past it: a 3 MiB frame does not take 4 MiB."""
    reader = impl.FrameReader()
    body = b"z" * (3 * 1024 * 1024)
    views = set()
    data = frame(body)
    while data:
        view = reader.get_buffer(65536)
        views.add(id(view.obj))
        n = min(len(view), len(data), 60000)
        view[:n] = data[:n]
        reader.buffer_updated(n)
        data = data[n:]
    assert reader.capacity == len(body) + 4
    assert len(views) == 2  # the first buffer, then the frame's own
    assert bytes(reader.next_frame()) == body


@pytest.mark.parametrize("hint", [-1, 65536, 1 << 20])
def test_pipelined_reads_cut_mid_frame_never_reallocate(impl: Any, hint: int) -> None:
    """uvloop asks for 64 KiB on every read. Taking that as a minimum grew the buffer to 128 KiB
    whenever a read ended mid-frame and shrank it at the next clean read: pipelined traffic
    reallocated over and over. The hint is only a hint: one buffer for the whole stream."""
    reader = impl.FrameReader()
    bodies = [b'{"in":"ping","params":"%d","id":%d}' % (i, i) for i in range(20000)]
    stream = b"".join(frame(body) for body in bodies)
    buffer = reader.get_buffer(hint).obj
    reallocations = 0
    got: List[bytes] = []
    pos = 0
    cuts = 0
    while pos < len(stream):
        view = reader.get_buffer(hint)
        if view.obj is not buffer:
            reallocations += 1
            buffer = view.obj
        n = min(len(view), len(stream) - pos, 40009)  # odd sizes: most reads end mid-frame
        view[:n] = stream[pos:pos + n]
        reader.buffer_updated(n)
        pos += n
        got += drain(reader)
        cuts += reader.buffered > 0
    assert got == bodies
    assert cuts > 10  # the case at hand: many reads ended mid-frame
    assert reallocations == 0
    assert reader.capacity == 64 * 1024


def test_partial_tail_survives_compaction(impl: Any) -> None:
    reader = impl.FrameReader()
    first = b"a" * 60000
    second = b"b" * 30000
    stream = frame(first) + frame(second)
    feed_via_buffer(reader, stream[:64000])
    assert bytes(reader.next_frame()) == first
    assert reader.next_frame() is None
    feed_via_buffer(reader, stream[64000:])
    assert bytes(reader.next_frame()) == second


def test_buffer_updated_out_of_range(impl: Any) -> None:
    reader = impl.FrameReader()
    room = len(reader.get_buffer(-1))
    with pytest.raises(ValueError):
        reader.buffer_updated(room + 1)
    with pytest.raises(ValueError):
        reader.buffer_updated(-1)


def test_pack_frames(impl: Any) -> None:
    assert impl.pack_frames([]) == b""
    assert impl.pack_frames([b"ab", b"", bytearray(b"c"), memoryview(b"de")]) == (
        b"\x00\x00\x00\x02ab\x00\x00\x00\x00\x00\x00\x00\x01c\x00\x00\x00\x02de"
    )
    assert impl.pack_frames(iter([b"x"])) == b"\x00\x00\x00\x01x"


def test_pack_then_split_round_trip(impl: Any) -> None:
    bodies = [b"%d" % i * (i % 50) for i in range(1000)]
    reader = impl.FrameReader()
    reader.feed(impl.pack_frames(bodies))
    assert drain(reader) == bodies


# -- the two implementations against each other -------------------------------------

Outcome = List[Union[bytes, str]]


def run_stream(module: Any, chunks: List[bytes], max_frame_size: int, use_buffer: bool) -> Outcome:
    """Frames (and the error that ended the stream, if any) from feeding ``chunks``."""
    reader = module.FrameReader(max_frame_size=max_frame_size)
    seen: Outcome = []
    for chunk in chunks:
        if use_buffer:
            feed_via_buffer(reader, chunk)
        else:
            reader.feed(chunk)
        try:
            seen += drain(reader)
        except FrameTooLarge as exc:
            seen.append(f"FrameTooLarge({exc.size}, {exc.limit})")
            return seen
    return seen


def split(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0] + points + [len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


streams = st.lists(
    st.one_of(
        st.binary(max_size=3000).map(frame),
        st.integers(min_value=0, max_value=0xFFFFFFFF).map(lambda n: n.to_bytes(4, "big")),
    ),
    max_size=12,
).map(b"".join)


@pytest.mark.skipif(len(IMPLEMENTATIONS) < 2, reason="the extension is not built (test_implementation.py fails)")
@settings(max_examples=300, deadline=None)
@given(
    data=streams,
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=20),
    max_frame_size=st.integers(min_value=1, max_value=4096),
    use_buffer=st.booleans(),
)
def test_both_implementations_agree(data: bytes, cuts: List[int], max_frame_size: int, use_buffer: bool) -> None:
    chunks = split(data, cuts)
    cython = run_stream(IMPLEMENTATIONS["cython"], chunks, max_frame_size, use_buffer)
    python = run_stream(_framing_py, chunks, max_frame_size, use_buffer)
    assert cython == python


@pytest.mark.skipif(len(IMPLEMENTATIONS) < 2, reason="the extension is not built (test_implementation.py fails)")
@settings(max_examples=100, deadline=None)
@given(data=streams, max_frame_size=st.integers(min_value=1, max_value=4096))
def test_both_agree_one_byte_at_a_time(data: bytes, max_frame_size: int) -> None:
    chunks = [data[i:i + 1] for i in range(len(data))]
    assert run_stream(IMPLEMENTATIONS["cython"], chunks, max_frame_size, False) == run_stream(
        _framing_py, chunks, max_frame_size, False
    )


@settings(max_examples=200, deadline=None)
@given(bodies=st.lists(st.binary(max_size=2000), max_size=30), cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_any_split_gives_the_same_frames(bodies: List[bytes], cuts: List[int]) -> None:
    stream = b"".join(frame(b) for b in bodies)
    for module in IMPLEMENTATIONS.values():
        assert run_stream(module, split(stream, cuts), 4096, True) == bodies
