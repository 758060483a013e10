"""Pure-Python twin of ``fastrpc._framing``: the same API, the same errors.

Used where the extension is not built or ``FASTRPC_NO_EXTENSIONS=1`` is set.
The algorithm (buffer sizes, when to compact, when to grow) is the same as
the extension's line for line, so the two can be tested against each other.
"""

from __future__ import annotations

from typing import Iterable, Optional, Union

from .errors import FrameTooLarge
from .limits import DEFAULT_MAX_FRAME_SIZE, check_max_frame_size

__all__ = ["FrameReader", "pack_frames"]

_HEADER = 4
_MAX_BODY = 0xFFFFFFFF
_DEFAULT_BUFFER_SIZE = 64 * 1024
# A read is offered at least this much room (more when the rest of a frame
# whose header is in needs more); less than that and the unconsumed tail is
# moved to the front (or the buffer grows). The event loop's size hint is not
# a minimum: uvloop always asks for 64 KiB, and honouring it grew the buffer
# whenever a read ended mid-frame, to shrink it again at the next clean read.
_MIN_READ = 16 * 1024
# Smaller bodies are handed out as bytes copies: copying them costs less than
# making a memoryview slice, and orjson decodes bytes faster than views.
_COPY_BELOW = 1024
# A buffer grown for a large frame is kept until this many reads in a row have needed no more than
# the initial size: large frames one after another reuse it rather than each allocating (and
# page-faulting in) its own.
_SHRINK_AFTER = 8


class FrameReader:
    """Splits a byte stream into frame bodies over one growable bytearray.

    Data comes in either through ``get_buffer`` / ``buffer_updated`` (the
    ``asyncio.BufferedProtocol`` pair: the kernel writes straight into the
    buffer) or through ``feed``. ``next_frame`` hands out the next complete
    body: under ``_COPY_BELOW`` (1024) bytes as a ``bytes`` copy, which may be
    kept; from 1024 bytes up as a memoryview into the buffer, valid only until
    the next ``get_buffer`` or ``feed`` call (copy it with ``bytes()`` to keep
    it). The compiled ``FrameReader`` does the same, at the same size.
    """

    __slots__ = ("_buf", "_view", "_start", "_end", "_initial", "_small_reads", "max_frame_size", "frames")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, buffer_size: int = _DEFAULT_BUFFER_SIZE) -> None:
        self.max_frame_size = check_max_frame_size(max_frame_size)
        if buffer_size < _MIN_READ:
            raise ValueError(f"buffer_size must be at least {_MIN_READ}, got {buffer_size!r}")
        self._initial = buffer_size
        self._small_reads = 0  # reads in a row that needed no more than _initial, the buffer larger
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._start = 0  # first byte not yet handed out
        self._end = 0  # end of the received data
        self.frames = 0  # frames handed out so far: lets a watchdog see progress without a clock per read

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out as frames."""
        return self._end - self._start

    @property
    def capacity(self) -> int:
        """Current size of the underlying buffer."""
        return len(self._buf)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Writable room after the received data, for the kernel to read into (``sizehint`` is not used)."""
        self._reserve(self._wanted())
        if self._end == 0:  # all of it: the view there is, not a new one per read
            return self._view
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last ``get_buffer`` view."""
        if not 0 <= nbytes <= len(self._buf) - self._end:
            raise ValueError(f"buffer_updated({nbytes!r}) is outside the buffer given out")
        self._end += nbytes

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Append ``data`` to the stream."""
        data = memoryview(data).cast("B")
        size = len(data)
        self._reserve(max(size, self._wanted()))
        end = self._end
        self._view[end:end + size] = data
        self._end = end + size

    def next_frame(self) -> Optional[Union[bytes, memoryview]]:
        """The next complete frame body, or None until more data arrives.

        The body is ``bytes`` when under 1024 bytes (the empty body
        included), else a memoryview into the buffer (see the class docstring
        for how long it stays valid). Raises FrameTooLarge as soon as a header
        announces more than ``max_frame_size`` bytes, before any of that body
        is buffered.
        """
        start = self._start
        avail = self._end - start
        if avail < _HEADER:
            return None
        size = int.from_bytes(self._buf[start:start + _HEADER], "big")
        if size > self.max_frame_size:
            raise FrameTooLarge(size, self.max_frame_size)
        if avail - _HEADER < size:
            return None
        self._start = stop = start + _HEADER + size
        self.frames += 1
        if size < _COPY_BELOW:
            return bytes(self._buf[start + _HEADER:stop])
        return self._view[start + _HEADER:stop]

    def _wanted(self) -> int:
        """Room the next read should have: the rest of a pending frame, at least _MIN_READ."""
        avail = self._end - self._start
        if avail >= _HEADER:
            size = int.from_bytes(self._buf[self._start:self._start + _HEADER], "big")
            if size <= self.max_frame_size and _HEADER + size - avail > _MIN_READ:
                return _HEADER + size - avail
        return _MIN_READ

    def _reserve(self, room: int) -> None:
        """Make at least ``room`` writable bytes follow the received data."""
        start, end = self._start, self._end
        kept = end - start
        capacity = len(self._buf)
        if room > self._initial:
            self._small_reads = 0
        elif kept == 0 and capacity > self._initial:
            self._small_reads += 1
            if self._small_reads >= _SHRINK_AFTER:  # the large frames are over: give the memory back
                self._buf = bytearray(self._initial)
                self._view = memoryview(self._buf)
                self._start = self._end = 0
                return
        if kept == 0:
            self._start = self._end = 0
            if room <= capacity:
                return
        elif capacity - end >= room:
            return
        if kept + room <= capacity:
            self._view[0:kept] = self._view[start:end]
        else:
            # Doubled, or exactly what one large frame needs: its size is known from its header.
            new_capacity = max(capacity * 2, kept + room)
            buf = bytearray(new_capacity)
            buf[0:kept] = self._view[start:end]
            self._buf = buf
            self._view = memoryview(buf)
        self._start, self._end = 0, kept


def pack_frames(bodies: Iterable[Union[bytes, bytearray, memoryview]]) -> bytes:
    """Join frame bodies, each behind its 4-byte length, into one bytes for one write."""
    parts = []
    for body in bodies:
        size = len(body)
        if size > _MAX_BODY:
            raise ValueError(f"frame body of {size} bytes does not fit a 4-byte length")
        parts.append(size.to_bytes(_HEADER, "big"))
        parts.append(body)
    return b"".join(parts)
