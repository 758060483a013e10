# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A client connection's per-call path, compiled.

The twin ``_client_core_py.py`` holds the contract and the same logic in Python. This one
writes a plain call's request (a method name, params or none, its id and deadline) framed,
straight into one output buffer: the bytes ``{"in":`` and the method's name are kept per
method, the id and the deadline's milliseconds are written as digits, and only the params go
through orjson (no request dict, no body object, no join). Replies are read with no Python
frame but the waiter's resolve, and a plain success without orjson's dict (``_scan``).
Anything rarer (metadata, odd deadlines, a method that is not a str) is encoded by
``protocol.encode_request``, as the twin encodes everything.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItemWithError, PyDict_SetItem, PyDict_DelItem
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from libc.math cimport ceil, isfinite
from libc.string cimport memcmp, memcpy

from collections import deque
from types import MemberDescriptorType

import orjson

from fastrpc._framing cimport FrameReader
from fastrpc._scan cimport V_INT, V_NONE, V_TEXT, Value, scan_object, value_of
from fastrpc.absent import ABSENT
from fastrpc.errors import FrameTooLarge

__all__ = ["ClientCore", "TIMER_SLACK", "join_group"]

cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef object _ABSENT = ABSENT
# A __slots__ member, and its setter (structmember.h): what `obj.name = value` ends in, for a slot.
cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        pass
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    int PyMember_SetOne(char* obj, PyMemberDef* member, object value) except -1

cdef enum:
    HEADER = 4
    DIGITS = 20  # room for a 64-bit integer's digits
    MAX_PREFIXES = 1024  # method names whose request prefix is kept (a bound for clients of many names)
# Request parts as orjson writes them (no spaces): the bytes are the twin's, byte for byte.
cdef bytes _IN = b'{"in":'
cdef bytes _PARAMS = b',"params":'
cdef bytes _ID = b',"id":'
cdef bytes _DEADLINE = b',"deadline":'
# Deadlines up to this many seconds are turned into milliseconds in C (exact as a double's and a
# long long's arithmetic); longer ones, and any that is neither int nor float, the usual way.
cdef double MAX_C_DEADLINE = 1e12
cdef double SLACK = 0.001  # keep equal to _client_core_py.TIMER_SLACK
TIMER_SLACK = SLACK


cdef inline char* put(char* p, const char* data, Py_ssize_t n) noexcept:
    memcpy(p, data, n)
    return p + n


cdef inline char* put_bytes(char* p, bytes data) noexcept:
    return put(p, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


cdef char* digits_before(char* end, long long value) noexcept:
    """``value``'s decimal digits (``value`` is 0 or more), written backwards so that they end just
    before ``end``: where they start."""
    while True:
        end -= 1
        end[0] = <char>(c'0' + value % 10)
        value //= 10
        if value == 0:
            return end


cdef long long deadline_ms(object deadline) except -2:
    """The milliseconds ``encode_request`` sends for ``deadline`` seconds, or -1 where it is not a
    plain int or float within MAX_C_DEADLINE (the caller then encodes the usual way)."""
    cdef int overflow = 0
    cdef long long seconds
    cdef double value, ms
    if type(deadline) is float:
        value = <double>deadline
        if not isfinite(value) or value > MAX_C_DEADLINE or value < -MAX_C_DEADLINE:
            return -1
        ms = ceil(value * 1000.0)  # Python's math.ceil(deadline * 1000), on the same double
        return <long long>ms if ms > 0 else 0
    if type(deadline) is int:
        seconds = PyLong_AsLongLongAndOverflow(deadline, &overflow)
        if overflow or seconds > <long long>MAX_C_DEADLINE or seconds < -<long long>MAX_C_DEADLINE:
            return -1
        return seconds * 1000 if seconds > 0 else 0
    return -1


cdef class ClientCore:
    """Calls out as request frames, reply frames in as outcomes; see ``_client_core_py.ClientCore``."""

    cdef readonly FrameReader _reader
    cdef readonly Py_ssize_t _max_frame_size
    cdef public bint ids
    cdef readonly dict waiters
    cdef readonly object _order
    cdef public object _deliver
    cdef public object _resolve
    cdef public object _on_item
    cdef long long _last_key
    cdef dict _prefixes  # method name -> b'{"in":"name"'
    cdef list _one  # [params] while they are encoded: orjson nests them one level deep, as in the request
    # The type of send's waiters and its slots _link, _key and _again, learnt at the first send: stored
    # by PyMember_SetOne, they cost no look-up of the name per call (three cost about 250 instructions).
    cdef type _waiter_type
    cdef PyMemberDef* _link_slot
    cdef PyMemberDef* _key_slot
    cdef PyMemberDef* _again_slot
    # The requests so far, framed: a buffer of this core's, copied out by data_to_send.
    cdef char* _out
    cdef Py_ssize_t _used
    cdef Py_ssize_t _capacity

    def __init__(self, max_frame_size, ids):
        self._reader = FrameReader(max_frame_size)
        self._max_frame_size = self._reader.max_frame_size
        self.ids = ids
        self.waiters = {}
        self._order = deque()
        self._prefixes = {}
        self._one = [None]

    def __dealloc__(self):
        PyMem_Free(self._out)
        self._out = NULL

    def _next_key(self):
        """The next call's key (and id)."""
        self._last_key += 1
        return self._last_key

    def request(self, method, params, waiter, deadline=None, meta=None):
        """Queue a call; returns its key. See ``_client_core_py.ClientCore.request``."""
        return self._request(method, params, waiter, deadline, meta)

    def send(self, link, waiter_type, method, params, timeout, stated, meta, deadline, list group,
             client=None, idempotent=None):
        """The async client's sending of a call in one C call; see ``_client_core_py.ClientCore.send``."""
        cdef bint idle = self._used == 0  # else a flush is scheduled already
        cdef object waiter = waiter_type()
        cdef char* slots = <char*><PyObject*>waiter
        cdef object key
        if type(waiter) is not self._waiter_type:
            self._learn_slots(type(waiter))
        key = self._request(method, params, waiter, timeout, meta)
        PyMember_SetOne(slots, self._link_slot, link)
        PyMember_SetOne(slots, self._key_slot, key)
        if client is not None:
            PyMember_SetOne(slots, self._again_slot, (client, method, params, meta, idempotent, stated, deadline))
        if deadline is not None and (group is None or not joins(group, key, method, stated, deadline)):
            link._start_group(key, method, stated, deadline)
        if idle:
            link.schedule_flush()
        return waiter

    cdef int _learn_slots(self, type waiter_type) except -1:
        self._link_slot = slot(waiter_type, "_link")
        self._key_slot = slot(waiter_type, "_key")
        self._again_slot = slot(waiter_type, "_again")
        self._waiter_type = waiter_type
        return 0

    cdef object _request(self, method, params, waiter, deadline, meta):
        cdef long long ms = -1
        cdef object key
        cdef bytes prefix = None
        cdef bytes encoded = None
        cdef char id_digits[DIGITS]
        cdef char ms_digits[DIGITS]
        cdef char* id_start = NULL
        cdef char* ms_start = NULL
        cdef Py_ssize_t size
        cdef char* p
        self._last_key += 1
        key = self._last_key
        if deadline is not None:
            ms = deadline_ms(deadline)
        if not meta and (deadline is None or ms >= 0):  # else encode_request's checks come first
            prefix = self._prefix(method)
        if prefix is None:
            self._queue_checked(self._encode(method, params, key if self.ids else None, deadline, meta))
        else:
            size = PyBytes_GET_SIZE(prefix) + 1
            if params is not _ABSENT:
                self._one[0] = params
                try:
                    encoded = _dumps(self._one)  # "[params]": failing exactly where encode_request's dict does
                finally:
                    self._one[0] = None
                size += PyBytes_GET_SIZE(_PARAMS) + PyBytes_GET_SIZE(encoded) - 2
            if self.ids:
                id_start = digits_before(id_digits + DIGITS, self._last_key)
                size += PyBytes_GET_SIZE(_ID) + (id_digits + DIGITS - id_start)
            if ms >= 0:
                ms_start = digits_before(ms_digits + DIGITS, ms)
                size += PyBytes_GET_SIZE(_DEADLINE) + (ms_digits + DIGITS - ms_start)
            if size > self._max_frame_size:
                raise FrameTooLarge(size, self._max_frame_size)
            p = put_bytes(self._reserve(size), prefix)
            if encoded is not None:
                p = put(put_bytes(p, _PARAMS), PyBytes_AS_STRING(encoded) + 1, PyBytes_GET_SIZE(encoded) - 2)
            if id_start is not NULL:
                p = put(put_bytes(p, _ID), id_start, id_digits + DIGITS - id_start)
            if ms_start is not NULL:
                p = put(put_bytes(p, _DEADLINE), ms_start, ms_digits + DIGITS - ms_start)
            p[0] = c'}'
            self._used += HEADER + size
        PyDict_SetItem(self.waiters, key, waiter)
        if not self.ids:
            self._order.append(key)
        return key

    cdef bytes _prefix(self, object method):
        """``{"in":`` and ``method`` as JSON, kept per name; None for a method that is not a str."""
        cdef PyObject* found
        cdef bytes prefix = None
        if type(method) is not str:
            return None
        found = PyDict_GetItemWithError(self._prefixes, method)
        if found is not NULL:
            return <bytes>found
        prefix = _IN + _dumps(method)
        if len(self._prefixes) < MAX_PREFIXES:
            self._prefixes[method] = prefix
        return prefix

    cdef int _queue_checked(self, bytes body) except -1:
        """Queue a request body written the usual way: FrameTooLarge, nothing queued, if it does not fit."""
        if PyBytes_GET_SIZE(body) > self._max_frame_size:
            raise FrameTooLarge(PyBytes_GET_SIZE(body), self._max_frame_size)
        self._queue(body)
        return 0

    def _queue(self, bytes body not None):
        """Queue a frame that is not a call (a cancel, the notices request)."""
        cdef Py_ssize_t size = PyBytes_GET_SIZE(body)
        put_bytes(self._reserve(size), body)
        self._used += HEADER + size

    cdef char* _reserve(self, Py_ssize_t size) except NULL:
        """Where a frame of ``size`` bytes goes, its length written: just after it, ``size`` bytes of
        room (``_used`` is not moved)."""
        cdef Py_ssize_t needed = self._used + HEADER + size
        cdef Py_ssize_t capacity
        cdef char* grown
        cdef char* p
        if needed > self._capacity:
            capacity = self._capacity * 2 if self._capacity * 2 >= needed else needed
            if capacity < 1024:
                capacity = 1024
            grown = <char*>PyMem_Realloc(self._out, capacity)
            if grown is NULL:
                raise MemoryError()
            self._out = grown
            self._capacity = capacity
        p = self._out + self._used
        p[0] = <char>((size >> 24) & 0xFF)
        p[1] = <char>((size >> 16) & 0xFF)
        p[2] = <char>((size >> 8) & 0xFF)
        p[3] = <char>(size & 0xFF)
        return p + HEADER

    def data_to_send(self):
        """Every queued request, framed, as one bytes."""
        cdef bytes data
        if not self._used:
            return b""
        data = PyBytes_FromStringAndSize(self._out, self._used)
        self._used = 0
        return data

    def receive_data(self, data):
        """Take bytes from the server and deliver every complete response."""
        self._reader.feed(data)
        self._read(0)

    def buffer_updated(self, Py_ssize_t nbytes):
        """``nbytes`` were read into the last ``get_buffer`` view: deliver every complete response."""
        self._read(nbytes)

    cdef int _read(self, Py_ssize_t nbytes) except -1:
        cdef FrameReader reader = self._reader
        cdef dict waiters = self.waiters
        cdef object body, reply, rid, waiter
        cdef PyObject* item
        cdef PyObject* out
        cdef const unsigned char* small
        cdef Py_ssize_t size
        reader.advance(nbytes)
        while True:
            small = reader.next_small(&size)
            if small is not NULL:
                if self._resolve_small(small, size):
                    continue
                body = PyBytes_FromStringAndSize(<const char*>small, size)
            elif size >= 0:
                body = reader.next_body()
            else:
                return 0
            try:
                reply = _loads(body)
            except _JSONDecodeError:
                reply = None
            if type(reply) is not dict:
                raise self._not_a_reply(body)
            item = PyDict_GetItemWithError(reply, "id")
            if item is NULL or <object>item is None:
                if not self._order:
                    self._unmatched(reply)
                    continue
                rid = self._order.popleft()
            else:
                rid = <object>item
            waiter = self._pop_waiter(rid)
            if waiter is None:
                continue
            item = PyDict_GetItemWithError(reply, "result")
            out = PyDict_GetItemWithError(reply, "out") if item is not NULL else NULL
            if item is not NULL and (out is NULL or <object>out != "error"):  # a success, by read_reply's rule
                self._resolve(waiter, <object>item)
                continue
            item = PyDict_GetItemWithError(reply, "item")
            if item is not NULL and self._on_item is not None and PyDict_GetItemWithError(reply, "out") is NULL:
                PyDict_SetItem(waiters, rid, waiter)  # a stream's item: the stream stays pending
                if self._on_item(waiter, <object>item):
                    continue
                PyDict_DelItem(waiters, rid)
            self._other(rid, waiter, reply)

    cdef bint _resolve_small(self, const unsigned char* s, Py_ssize_t n) except -1:
        """Whether a body read where it lies (``next_small``) was a plain success with an id
        (``_scan.scan_object``: "out" text other than "error", any "result", "id" an int or text),
        now delivered, as ``_read`` delivers one that orjson read; any other is left to orjson."""
        cdef Value scanned[5]  # "out", "result", "id"; no other key
        cdef object result, waiter
        if (not scan_object(s, n, '"out"', 5, '"result"', 8, '"id"', 4, "", 0, "", 0, scanned)
                or scanned[0].kind != V_TEXT or (scanned[0].size == 5 and memcmp(s + scanned[0].at, b"error", 5) == 0)
                or scanned[1].kind == V_NONE or (scanned[2].kind != V_INT and scanned[2].kind != V_TEXT)):
            return False
        try:
            result = value_of(s, &scanned[1], _loads)
        except _JSONDecodeError:  # not JSON after all: the usual way says so
            return False
        waiter = self._pop_waiter(value_of(s, &scanned[2], _loads))
        if waiter is not None:
            self._resolve(waiter, result)
        return True

    cdef object _pop_waiter(self, object rid):
        """The waiter of call ``rid``, taken out of ``waiters``; None if no call waits (or its
        reply is dropped: a waiter of None)."""
        cdef PyObject* item = PyDict_GetItemWithError(self.waiters, rid)  # TypeError for an unhashable id, as dict.pop raises
        cdef object waiter
        if item is NULL:
            return None
        waiter = <object>item  # a reference of its own before the dict lets go of its one
        PyDict_DelItem(self.waiters, rid)
        return waiter


cdef PyMemberDef* slot(type cls, str name) except NULL:
    """The member ``name`` of ``cls``'s ``__slots__`` (TypeError if it is not one)."""
    descr = getattr(cls, name, None)
    if type(descr) is not MemberDescriptorType:
        raise TypeError(f"{cls.__name__}.{name} is not a slot")
    return (<PyMemberDescrObject*>descr).d_member


def join_group(list group, key, method, stated, double deadline):
    """Whether call ``key`` joins ``group``; see ``_client_core_py.join_group``."""
    return group is not None and joins(group, key, method, stated, deadline)


@cython.boundscheck(True)  # IndexError for a short list, as the twin raises
cdef bint joins(list group, object key, object method, object stated, double deadline) except -1:
    """``join_group`` for a group that is not None."""
    cdef double when = group[0]
    if <long long>group[2] != <long long>key - 1 or not (when <= deadline <= when + SLACK):
        return False
    if group[3] != method or group[4] != stated:
        return False
    group[2] = key
    return True
