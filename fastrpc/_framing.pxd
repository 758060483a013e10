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
    cdef object next_body(self)
    cdef Py_ssize_t _wanted(self)
    cdef _set_buffer(self, bytearray buf)
    cdef _reserve(self, Py_ssize_t room)
