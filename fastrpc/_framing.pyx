# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Frame splitter and packer: the only compiled part of fastrpc.

The pure-Python twin ``_framing_py.py`` follows the same algorithm line for
line; the test suite runs against both and compares them.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy, memmove
from libc.stdint cimport uint32_t

from fastrpc.errors import FrameTooLarge
from fastrpc.limits import DEFAULT_MAX_FRAME_SIZE, check_max_frame_size

__all__ = ["FrameReader", "pack_frames"]

cdef enum:
    HEADER = 4
    MIN_READ = 16 * 1024  # keep equal to _framing_py._MIN_READ
    COPY_BELOW = 1024  # keep equal to _framing_py._COPY_BELOW
    SHRINK_AFTER = 8  # keep equal to _framing_py._SHRINK_AFTER
cdef Py_ssize_t DEFAULT_BUFFER_SIZE = 64 * 1024
cdef unsigned long long MAX_BODY = 0xFFFFFFFF


cdef inline uint32_t read_length(const unsigned char* p) noexcept:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline void write_length(unsigned char* p, uint32_t n) noexcept:
    p[0] = (n >> 24) & 0xFF
    p[1] = (n >> 16) & 0xFF
    p[2] = (n >> 8) & 0xFF
    p[3] = n & 0xFF


cdef class FrameReader:
    """Splits a byte stream into frame bodies over one growable bytearray.

    See ``_framing_py.FrameReader`` for the contract; this is its compiled twin.
    Its attributes are declared in ``_framing.pxd``, for the server core.
    """

    def __init__(self, max_frame_size=DEFAULT_MAX_FRAME_SIZE, buffer_size=DEFAULT_BUFFER_SIZE):
        self.max_frame_size = check_max_frame_size(max_frame_size)
        if buffer_size < MIN_READ:
            raise ValueError(f"buffer_size must be at least {MIN_READ}, got {buffer_size!r}")
        self._initial = buffer_size
        self._set_buffer(PyByteArray_FromStringAndSize(NULL, buffer_size))
        self._start = 0
        self._end = 0
        self.frames = 0

    @property
    def buffered(self):
        """Bytes received but not yet handed out as frames."""
        return self._end - self._start

    @property
    def capacity(self):
        """Current size of the underlying buffer."""
        return len(self._buf)

    def get_buffer(self, Py_ssize_t sizehint=-1):
        """Writable room after the received data, for the kernel to read into (``sizehint`` is not used)."""
        self._reserve(self._wanted())
        if self._end == 0:  # all of it: the view there is, not a new one per read
            return self._view
        return self._view[self._end:]

    def buffer_updated(self, Py_ssize_t nbytes):
        """``nbytes`` were written at the start of the last ``get_buffer`` view."""
        self.advance(nbytes)

    cdef int advance(self, Py_ssize_t nbytes) except -1:
        if nbytes < 0 or nbytes > len(self._buf) - self._end:
            raise ValueError(f"buffer_updated({nbytes!r}) is outside the buffer given out")
        self._end += nbytes
        return 0

    def feed(self, data):
        """Append ``data`` to the stream."""
        cdef Py_buffer view
        cdef Py_ssize_t wanted
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            wanted = self._wanted()
            self._reserve(view.len if view.len > wanted else wanted)
            memcpy(PyByteArray_AS_STRING(self._buf) + self._end, view.buf, view.len)
            self._end += view.len
        finally:
            PyBuffer_Release(&view)

    def next_frame(self):
        """The next complete frame body, or None until more data arrives."""
        return self.next_body()

    cdef Py_ssize_t _complete(self) except -2:
        """The size of the next frame's body if it is all here, else -1; FrameTooLarge past the limit."""
        cdef Py_ssize_t avail = self._end - self._start
        cdef Py_ssize_t size
        if avail < HEADER:
            return -1
        size = read_length(<const unsigned char*>PyByteArray_AS_STRING(self._buf) + self._start)
        if size > self.max_frame_size:
            raise FrameTooLarge(size, self.max_frame_size)
        return size if avail - HEADER >= size else -1

    cdef object next_body(self):
        cdef Py_ssize_t start = self._start
        cdef Py_ssize_t size = self._complete()
        if size < 0:
            return None
        self._start = start + HEADER + size
        self.frames += 1
        if size < COPY_BELOW:
            return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self._buf) + start + HEADER, size)
        return self._view[start + HEADER:self._start]

    cdef const unsigned char* next_small(self, Py_ssize_t* size) except? NULL:
        cdef Py_ssize_t start = self._start
        size[0] = self._complete()
        if size[0] < 0 or size[0] >= COPY_BELOW:
            return NULL
        self._start = start + HEADER + size[0]
        self.frames += 1
        return <const unsigned char*>PyByteArray_AS_STRING(self._buf) + start + HEADER

    cdef Py_ssize_t _wanted(self):
        cdef Py_ssize_t avail = self._end - self._start
        cdef Py_ssize_t size
        if avail >= HEADER:
            size = read_length(<const unsigned char*>PyByteArray_AS_STRING(self._buf) + self._start)
            if size <= self.max_frame_size and HEADER + size - avail > MIN_READ:
                return HEADER + size - avail
        return MIN_READ

    cdef _set_buffer(self, bytearray buf):
        self._buf = buf
        self._view = memoryview(buf)

    cdef _reserve(self, Py_ssize_t room):
        cdef Py_ssize_t start = self._start
        cdef Py_ssize_t end = self._end
        cdef Py_ssize_t kept = end - start
        cdef Py_ssize_t capacity = len(self._buf)
        cdef Py_ssize_t new_capacity
        cdef bytearray buf
        if room > self._initial:
            self._small_reads = 0
        elif kept == 0 and capacity > self._initial:
            self._small_reads += 1
            if self._small_reads >= SHRINK_AFTER:  # the large frames are over: give the memory back
                self._set_buffer(PyByteArray_FromStringAndSize(NULL, self._initial))
                self._start = self._end = 0
                return
        if kept == 0:
            self._start = self._end = 0
            if room <= capacity:
                return
        elif capacity - end >= room:
            return
        if kept + room <= capacity:
            memmove(PyByteArray_AS_STRING(self._buf), PyByteArray_AS_STRING(self._buf) + start, kept)
        else:
            # Doubled, or exactly what one large frame needs: its size is known from its header.
            new_capacity = capacity * 2 if capacity * 2 >= kept + room else kept + room
            buf = PyByteArray_FromStringAndSize(NULL, new_capacity)
            memcpy(PyByteArray_AS_STRING(buf), PyByteArray_AS_STRING(self._buf) + start, kept)
            self._set_buffer(buf)
        self._start = 0
        self._end = kept


def pack_frames(bodies):
    """Join frame bodies, each behind its 4-byte length, into one bytes for one write."""
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t size
    cdef list items = bodies if type(bodies) is list else list(bodies)
    cdef object item
    cdef bytes body
    cdef bytes out
    cdef unsigned char* p
    for item in items:
        if type(item) is not bytes:
            items = [item if type(item) is bytes else bytes(item) for item in items]
            break
    for body in items:
        size = len(body)
        if <unsigned long long>size > MAX_BODY:
            raise ValueError(f"frame body of {size} bytes does not fit a 4-byte length")
        total += HEADER + size
    out = PyBytes_FromStringAndSize(NULL, total)
    p = <unsigned char*>PyBytes_AS_STRING(out)
    for body in items:
        size = len(body)
        write_length(p, <uint32_t>size)
        memcpy(p + HEADER, PyBytes_AS_STRING(body), size)
        p += HEADER + size
    return out
