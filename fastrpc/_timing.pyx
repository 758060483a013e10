# cython: language_level=3, boundscheck=False, wraparound=False
"""Handler timing for server metrics, compiled: a sync handler's call through a Python wrapper,
with its two clock reads and its histogram update, cost more than a pipelined request is allowed
to grow by (bench/results/2026-11-30-metrics.md); in C they cost a fraction of it.

The pure-Python twin ``_timing_py.py`` keeps the same counts; the test suite compares them.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject, PyTypeObject, ternaryfunc

cdef extern from "Python.h":
    PyObject *PyObject_Call(PyObject *callable, PyObject *args, PyObject *kwargs)  # the raw one: NULL on error

__all__ = ["MethodMetrics", "Timed"]

cdef extern from *:
    """
    #ifdef _WIN32
    #include <windows.h>
    static double fastrpc_now(void) {
        LARGE_INTEGER count, frequency;
        QueryPerformanceCounter(&count);
        QueryPerformanceFrequency(&frequency);
        return (double)count.QuadPart / (double)frequency.QuadPart;
    }
    #else
    #include <time.h>
    static double fastrpc_now(void) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
    }
    #endif
    """
    double fastrpc_now() nogil


cdef class MethodMetrics:
    """One method's handler times: a count per bucket (one per bound, then +Inf), their sum, and
    how many calls raised (the rest returned)."""

    cdef readonly tuple bounds
    cdef double *_bounds
    cdef long long *_buckets
    cdef Py_ssize_t _size  # len(bounds)
    cdef public double sum
    cdef public long long raised

    def __cinit__(self, bounds):
        self.bounds = tuple(bounds)
        self._size = len(self.bounds)
        self._bounds = <double *>PyMem_Malloc(max(1, self._size) * sizeof(double))
        self._buckets = <long long *>PyMem_Malloc((self._size + 1) * sizeof(long long))
        if self._bounds == NULL or self._buckets == NULL:
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(self._size):
            self._bounds[i] = self.bounds[i]
        for i in range(self._size + 1):
            self._buckets[i] = 0
        self.sum = 0.0
        self.raised = 0

    def __dealloc__(self):
        PyMem_Free(self._bounds)
        PyMem_Free(self._buckets)

    cdef inline void _observe(self, double seconds) noexcept:
        cdef Py_ssize_t i = 0
        while i < self._size and seconds > self._bounds[i]:  # the first bound it is at most ("le")
            i += 1
        self._buckets[i] += 1
        self.sum += seconds

    def observe(self, double seconds):
        """A call that took ``seconds`` returned."""
        self._observe(seconds)

    def failed(self, double seconds):
        """A call that took ``seconds`` raised."""
        self.raised += 1
        self._observe(seconds)

    @property
    def buckets(self):
        """The count of each bucket (not cumulative), +Inf's last."""
        return [self._buckets[i] for i in range(self._size + 1)]

    @property
    def count(self):
        cdef long long total = 0
        cdef Py_ssize_t i
        for i in range(self._size + 1):
            total += self._buckets[i]
        return total


cdef class Timed:
    """A sync handler, timed into ``counts`` on every call, returning or raising as it does."""

    cdef readonly object func
    cdef MethodMetrics counts

    def __cinit__(self, func, MethodMetrics counts):
        self.func = func
        self.counts = counts

    @property
    def __wrapped__(self):
        # inspect.signature follows it: the core still tells bad params (-32602) from a handler's TypeError.
        return self.func


cdef PyObject *_timed_call(PyObject *self, PyObject *args, PyObject *kwargs) noexcept:
    # Timed's tp_call, set by hand: a Cython __call__ builds a keywords dict on every call, even an
    # empty one, and that dict was a third of what timing a call cost. This passes the call's own
    # arguments through; an exception the handler raised stays set (NULL is returned).
    cdef Timed timed = <Timed>self
    cdef double started = fastrpc_now()
    cdef PyObject *result = PyObject_Call(<PyObject *>timed.func, args, kwargs)
    cdef double elapsed = fastrpc_now() - started
    if result == NULL:
        timed.counts.raised += 1
    timed.counts._observe(elapsed)
    return result


(<PyTypeObject *>Timed).tp_call = <ternaryfunc>_timed_call
