# The frame splitter's C-level interface, for fastrpc._server_core (cimport).
from libc.stdint cimport uint32_t


cdef class FrameReader:
    cdef bytearray _buf
    cdef object _view
    cdef Py_ssize_t _start
    cdef Py_ssize_t _end
    cdef Py_ssize_t _initial
    cdef int _small_reads
    cdef readonly Py_ssize_t max_frame_size
    cdef readonly unsigned long long frames

    cdef int advance(self, Py_ssize_t nbytes) except -1
    cdef Py_ssize_t _complete(self) except -2
    cdef object next_body(self)
    # The next frame's body where it lies in the buffer, taken, when it is all here and
    # under COPY_BELOW bytes (what next_body would copy): valid until the buffer next
    # changes (feed, get_buffer). Else NULL, and ``size`` is the next complete frame's
    # size (next_body hands that one out) or -1 (none is complete yet).
    cdef const unsigned char* next_small(self, Py_ssize_t* size) except? NULL
    cdef Py_ssize_t _wanted(self)
    cdef _set_buffer(self, bytearray buf)
    cdef _reserve(self, Py_ssize_t room)
