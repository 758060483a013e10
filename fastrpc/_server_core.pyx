# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A server connection's per-request path, compiled.

The twin ``_server_core_py.py`` holds the contract and the same logic in Python; this one
reads a plain request where it lies, without orjson's dict (``_scan.pxd``; the twin has
orjson read every request), runs a valid call of a sync handler with no Python frame but the
handler's, and writes its reply, framed, straight into the bytes object that ``data_to_send``
hands out (no body object, no join); so does a call of an unknown method, or one whose params
its method refuses without an exception (a ``Refusal``). Everything rarer is left to
``protocol.ServerConnection``'s Python methods, called as the twin calls them.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItemWithError, PyDict_Next, PyDict_SetItem
from cpython.list cimport PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_DATA, PyUnicode_GET_LENGTH
from libc.string cimport memcmp, memcpy
from libc.stdint cimport uint32_t

from collections import deque
from types import MappingProxyType

import orjson

from fastrpc._framing cimport FrameReader
from fastrpc._scan cimport V_FALSE, V_JSON, V_NONE, V_TEXT, V_TRUE, Value, ascii_text, is_text, scan_object, value_of
from fastrpc.absent import ABSENT
from fastrpc.errors import FrameTooLarge
from fastrpc.refusal import NOT_FOUND, Refusal, method_not_found

__all__ = ["MethodCore", "ServerCore", "ping"]

cdef extern from "Python.h":
    int _PyBytes_Resize(PyObject** bytes, Py_ssize_t newsize)  # on failure: frees it, NULL, MemoryError
    bint PyUnicode_IS_COMPACT_ASCII(object text)

cdef extern from *:
    """
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    #define FASTRPC_ESCAPED(c) (((c) < 0x20) | ((c) == 0x22) | ((c) == 0x5C))

    /* Whether n bytes of ASCII go into a JSON string as they are: no control character, no
       quote (0x22), no backslash (0x5C). 64 bytes at a time with SSE2 where there is SSE2 (every
       x86-64), else 32 at a time without an early exit, which compilers turn into vector code. */
    static int fastrpc_plain_ascii(const unsigned char *s, Py_ssize_t n) {
        Py_ssize_t i = 0;
    #if defined(__SSE2__)
        const __m128i quote = _mm_set1_epi8(0x22), backslash = _mm_set1_epi8(0x5C), space = _mm_set1_epi8(0x20);
        for (; i + 64 <= n; i += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)(s + i)), b = _mm_loadu_si128((const __m128i *)(s + i + 16)),
                    c = _mm_loadu_si128((const __m128i *)(s + i + 32)), d = _mm_loadu_si128((const __m128i *)(s + i + 48));
            /* Every byte is below 0x80 (ASCII): a signed compare finds the control characters. */
            #define FASTRPC_HITS(v) _mm_or_si128(_mm_cmpgt_epi8(space, v), \\
                                                 _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)))
            if (_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(FASTRPC_HITS(a), FASTRPC_HITS(b)),
                                               _mm_or_si128(FASTRPC_HITS(c), FASTRPC_HITS(d)))))
                return 0;
        }
    #else
        for (; i + 32 <= n; i += 32) {
            unsigned char escaped = 0;
            for (int j = 0; j < 32; j++)
                escaped |= (unsigned char)FASTRPC_ESCAPED(s[i + j]);
            if (escaped)
                return 0;
        }
    #endif
        for (; i < n; i++)
            if (FASTRPC_ESCAPED(s[i]))
                return 0;
        return 1;
    }
    """
    bint fastrpc_plain_ascii(const unsigned char* s, Py_ssize_t n) noexcept

cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef object _ABSENT = ABSENT
cdef object _Refusal = Refusal
cdef dict _NOT_FOUND = NOT_FOUND
cdef object _NO_EXTRAS = MappingProxyType({})  # the other keys (deadline, meta) of a request that has none
cdef bytes _ID_PART = b', "id": '  # keep equal to _server_core_py._ID_PART
# The request keys as orjson last made them: it keeps one object per short key, so a key is
# usually told by its address (no hash, no compare); one equal by value replaces the old.
cdef PyObject* _KEY_IN = NULL
cdef PyObject* _KEY_ID = NULL
cdef PyObject* _KEY_PARAMS = NULL
cdef enum:
    HEADER = 4
    DECLINED = 2  # _receive_small's: not a request it takes
    FIRST_OUT = 256  # the first output buffer's size (later ones start at the last one's)
    KEEP_OUT = 64 * 1024  # the most a connection's next output buffer starts with


cdef inline char* write_length(char* p, Py_ssize_t n) noexcept:
    p[0] = <char>((n >> 24) & 0xFF)
    p[1] = <char>((n >> 16) & 0xFF)
    p[2] = <char>((n >> 8) & 0xFF)
    p[3] = <char>(n & 0xFF)
    return p + HEADER


cdef inline char* write_bytes(char* p, bytes data) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    memcpy(p, PyBytes_AS_STRING(data), n)
    return p + n


cdef Py_ssize_t format_int(char* out, object number):
    """An int's decimal digits into ``out`` (20 bytes): their count, or -1 for anything but an
    int that fits 64 signed bits (orjson writes those)."""
    cdef int overflow = 0
    cdef long long value
    cdef unsigned long long magnitude
    cdef char digits[20]
    cdef Py_ssize_t n = 0, i = 0
    if type(number) is not int:
        return -1
    value = PyLong_AsLongLongAndOverflow(number, &overflow)
    if overflow:
        return -1
    if value < 0:
        out[0] = c'-'
        i = 1
        magnitude = <unsigned long long>(-(value + 1)) + 1
    else:
        magnitude = <unsigned long long>value
    while True:
        digits[n] = <char>(c'0' + magnitude % 10)
        n += 1
        magnitude //= 10
        if magnitude == 0:
            break
    while n:
        n -= 1
        out[i] = digits[n]
        i += 1
    return i


cdef inline void _keep(PyObject** known, PyObject* key) noexcept:
    Py_INCREF(<object>key)
    Py_XDECREF(known[0])
    known[0] = key


_keep(&_KEY_IN, <PyObject*>"in")
_keep(&_KEY_ID, <PyObject*>"id")
_keep(&_KEY_PARAMS, <PyObject*>"params")


cdef inline bint _is_key(PyObject* key, PyObject** known, str name) except -1:
    """Whether ``key`` (a str: the keys of a decoded JSON object are) is the request key ``name``,
    though not the object last seen for it (``known``, which it then replaces)."""
    if PyUnicode_GET_LENGTH(<object>key) != PyUnicode_GET_LENGTH(name) or <object>key != name:
        return False
    _keep(known, key)
    return True


def ping(params):
    """Answers with the params it was sent.

    The built-in ``ping``'s handler, compiled: load balancers and benchmarks call it more
    than anything."""
    return params


cdef inline bint _same_ascii(object text, object other):
    """Whether both are str of the same ASCII characters (false for anything else)."""
    return (type(text) is str and type(other) is str
            and PyUnicode_IS_COMPACT_ASCII(text) and PyUnicode_IS_COMPACT_ASCII(other)
            and PyUnicode_GET_LENGTH(text) == PyUnicode_GET_LENGTH(other)
            and memcmp(PyUnicode_DATA(text), PyUnicode_DATA(other), PyUnicode_GET_LENGTH(text)) == 0)


cdef class MethodCore:
    """A registered method's fields, as the request path reads them; see ``_server_core_py.MethodCore``."""

    cdef public object name
    cdef public object func
    cdef public object call
    cdef public tuple refusals
    cdef public object out
    cdef public bint raw_params
    cdef public bint context
    cdef public bint unbound
    cdef public bint is_async
    cdef public bytes prefix


cdef class ServerCore:
    """Frames in, handlers called, replies out; see ``_server_core_py.ServerCore``."""

    cdef readonly FrameReader _reader
    cdef public object _methods
    cdef public object _slots
    cdef public bytes _raw_reply
    cdef public bint _fresh
    cdef public bint closing
    cdef readonly Py_ssize_t _max_frame_size
    cdef readonly unsigned long long bytes_received
    cdef readonly unsigned long long bytes_sent
    cdef readonly unsigned long long frames_sent
    cdef public object write
    cdef public object after_read
    # The server's ServerStats.errors (a Counter, which _refuse adds to in C), or None: not counted.
    # Typed object: a dict-typed field would take only an exact dict.
    cdef public object _errors
    cdef object _refused  # the key of the last refusal, counted ``_refusals`` times not yet in _errors
    cdef Py_ssize_t _refusals
    # The last method called's name: a request naming it again is looked up with this object,
    # whose hash is cached (the request's own name is a new str, hashed at each lookup).
    cdef object _last_name
    cdef public bint watch_reads
    # The replies so far, framed: a bytes object only this core refers to, grown in place,
    # handed out (cut to length) by data_to_send.
    cdef PyObject* _out
    cdef Py_ssize_t _used
    cdef Py_ssize_t _queued  # frames in it: counted as sent when handed out, as the twin counts them
    cdef Py_ssize_t _next_size  # the next buffer's first size: the last one's, up to KEEP_OUT

    def __init__(self, methods, max_frame_size):
        self._reader = FrameReader(max_frame_size)
        self._max_frame_size = self._reader.max_frame_size
        self._methods = methods
        self._slots = deque()
        self._raw_reply = b""
        self._fresh = True
        self.closing = False
        self._next_size = FIRST_OUT

    def __dealloc__(self):
        Py_XDECREF(self._out)
        self._out = NULL

    def receive_data(self, data):
        """Take bytes from the peer and handle every complete frame; returns ``data_to_send()``."""
        self._reader.feed(data)
        self.bytes_received += len(data)
        return self.buffer_updated(0)

    def buffer_updated(self, Py_ssize_t nbytes):
        """``nbytes`` were read into the last ``get_buffer`` view: handle every
        complete frame; returns ``data_to_send()``."""
        return self._read(nbytes)

    def read_and_reply(self, Py_ssize_t nbytes):
        """``buffer_updated``, its output passed to ``write``; then ``after_read()`` if
        ``closing`` or ``watch_reads`` is set. The asyncio server's read path, in one call."""
        cdef bytes data = self._read(nbytes)
        if PyBytes_GET_SIZE(data):
            self.write(data)
        if self.closing or self.watch_reads:
            self.after_read()

    cdef bytes _read(self, Py_ssize_t nbytes):
        cdef FrameReader reader = self._reader
        cdef const unsigned char* small
        cdef Py_ssize_t size
        cdef int stop
        reader.advance(nbytes)
        self.bytes_received += nbytes
        if not self.closing:
            try:
                while True:
                    small = reader.next_small(&size)
                    if small is not NULL:
                        self._fresh = False
                        stop = self._receive_small(small, size)
                        if stop == DECLINED:
                            stop = self._receive_frame(PyBytes_FromStringAndSize(<const char*>small, size))
                        if stop:
                            break
                    elif size >= 0:
                        self._fresh = False
                        if self._receive_frame(reader.next_body()):
                            break
                    else:
                        break
            except FrameTooLarge as exc:
                self._frame_too_large(exc)
        return self._take()

    cdef int _receive_small(self, const unsigned char* s, Py_ssize_t n) except -1:
        """A body read where it lies (``next_small``): a plain request (``_scan.scan_object``: "in"
        text, "id" an int, text or null, any "params", "deadline" and "meta") of a known method, or
        of a name refused before, is answered without orjson's dict, and this returns what
        ``_receive_frame`` would (true: stop reading); any other is DECLINED, for ``_receive_frame``."""
        cdef Value scanned[5]  # "in", "id", "params", "deadline", "meta"
        cdef object rid, params, name, extras
        cdef object deadline = None, meta = None  # those that orjson must read (a V_JSON), read
        cdef MethodCore method
        cdef PyObject* entry
        if (type(self._methods) is not dict  # a draining server's (_Refusing)
                or not scan_object(s, n, '"in"', 4, '"id"', 4, '"params"', 8, '"deadline"', 10, '"meta"', 6, scanned)
                or scanned[0].kind != V_TEXT
                or scanned[1].kind == V_TRUE or scanned[1].kind == V_FALSE or scanned[1].kind == V_JSON):
            return DECLINED
        rid = None if scanned[1].kind == V_NONE else value_of(s, &scanned[1], _loads)
        try:  # everything orjson must read, read before anything is answered, as the twin reads it
            params = _ABSENT if scanned[2].kind == V_NONE else value_of(s, &scanned[2], _loads)
            if scanned[3].kind == V_JSON:
                deadline = value_of(s, &scanned[3], _loads)
            if scanned[4].kind == V_JSON:
                meta = value_of(s, &scanned[4], _loads)
        except _JSONDecodeError:  # not JSON after all: orjson says why, of the whole body
            return DECLINED
        name = self._last_name
        if not is_text(name, s + scanned[0].at, scanned[0].size):
            name = ascii_text(s + scanned[0].at, scanned[0].size)
        entry = PyDict_GetItemWithError(self._methods, name)
        if entry is NULL:
            entry = PyDict_GetItemWithError(_NOT_FOUND, name)
            if entry is NULL:  # a name not refused before, or a built-in's: the usual way
                return DECLINED
            self._refuse(<object>entry, rid)
            return False
        if not isinstance(<object>entry, MethodCore):  # None or not a Method (a registry filled by hand): the usual way says which
            return DECLINED
        method = <MethodCore>entry
        extras = _NO_EXTRAS
        # Only an async or a context method's call reads its deadline and metadata (the rarer paths).
        if (method.is_async or method.context) and (scanned[3].kind != V_NONE or scanned[4].kind != V_NONE):
            extras = {}
            if scanned[3].kind != V_NONE:
                extras["deadline"] = value_of(s, &scanned[3], _loads) if deadline is None else deadline
            if scanned[4].kind != V_NONE:
                extras["meta"] = value_of(s, &scanned[4], _loads) if meta is None else meta
        return self._call(method, rid, params, extras)

    cdef bint _receive_frame(self, object body) except -1:
        cdef object request, name, rid, found, refusal
        cdef Py_ssize_t pos = 0
        cdef PyObject* key
        cdef PyObject* value
        cdef PyObject* entry
        cdef PyObject* in_value = NULL
        cdef PyObject* id_value = NULL
        cdef PyObject* params_value = NULL
        try:
            request = _loads(body)
        except _JSONDecodeError:
            self._reject(body)
            return False
        if type(request) is not dict:
            self._reject(body)
            return False
        while PyDict_Next(request, &pos, &key, &value):
            if key == _KEY_IN:
                in_value = value
            elif key == _KEY_ID:
                id_value = value
            elif key == _KEY_PARAMS:
                params_value = value
            elif _is_key(key, &_KEY_IN, "in"):
                in_value = value
            elif _is_key(key, &_KEY_ID, "id"):
                id_value = value
            elif _is_key(key, &_KEY_PARAMS, "params"):
                params_value = value
        if in_value is NULL:
            self._reject(body)
            return False
        name = <object>in_value
        if _same_ascii(name, self._last_name):
            name = self._last_name  # its hash is known, and it is likely the registry's own key
        methods = self._methods
        try:
            if type(methods) is dict:
                entry = PyDict_GetItemWithError(methods, name)  # NULL and no error: no such method
                found = None if entry is NULL else <object>entry
            else:
                found = methods[name]
        except (KeyError, TypeError):
            self._reject(body)
            return False
        if id_value is NULL:
            rid = None
        else:
            rid = <object>id_value
            if type(rid) is not int and type(rid) is not str and rid is not None:
                self._reject(body)
                return False
        if found is None:
            entry = PyDict_GetItemWithError(_NOT_FOUND, name)  # hashable, and its hash known: the lookup made it
            if entry is not NULL:
                refusal = <object>entry
            elif type(name) is not str or (<str>name).startswith("rpc."):  # not a name, or a built-in's (rpc.notices)
                self._reject(body)
                return False
            else:
                refusal = method_not_found(name)
            self._refuse(refusal, rid)
            return False
        return self._call(found, rid, _ABSENT if params_value is NULL else <object>params_value, request)

    cdef bint _call(self, MethodCore method, object rid, object params, object request) except -1:
        """Call a method found by name (``request``: the request's other keys, read by the rarer paths)."""
        cdef object func, result, refusal
        cdef tuple refusals
        cdef Py_ssize_t count, last
        if method.name is not self._last_name:
            self._last_name = method.name
        refusals = method.refusals
        if refusals and type(params) is not dict:  # positional params: whether they bind depends on their count
            count = PyList_GET_SIZE(params) if type(params) is list else params is not _ABSENT
            last = PyTuple_GET_SIZE(refusals) - 1
            refusal = <object>PyTuple_GET_ITEM(refusals, count if count < last else last)
            if refusal is not None:
                self._refuse(refusal, rid)
                return False
        func = method.call
        try:
            if method.unbound:
                if method.context:
                    result = self._call_in_context(method, request, params)
                else:
                    result = func(None if params is _ABSENT else params)
            elif type(params) is list:
                result = func(*params)
            elif type(params) is dict:
                result = func(**params)
            elif params is _ABSENT:
                result = func()
            else:
                result = func(params)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: a handler's fault, not the server's
            self._reply(rid, self._error_body(method, params, exc, rid))
            return False
        if type(result) is _Refusal:  # a typed handler's params did not match
            self._refuse(result, rid)
            return False
        if method.is_async:
            return self._begin(method, request, rid, params, result)
        if rid is None and self._slots:
            self._slots.append([self._result_body(method, result, rid)])
        else:
            self._write_result(method, result, rid)
        return False

    cdef int _write_result(self, MethodCore method, object result, object rid) except -1:
        """``_send(_result_body(...))`` without the body object: the reply framed in place.
        Plain scalars (None, bools, 64-bit ints, ASCII text with nothing to escape) are written
        here as orjson writes them, without an encoded copy; orjson encodes everything else."""
        cdef bytes prefix = method.prefix
        cdef bytes encoded
        cdef bytes encoded_id = None
        cdef char digits[24]
        cdef char number[24]
        cdef const char* text = NULL
        cdef Py_ssize_t text_size = -1
        cdef Py_ssize_t quotes = 0
        cdef Py_ssize_t id_size = 0
        cdef Py_ssize_t size
        cdef char* p
        if type(result) is str:
            if PyUnicode_IS_COMPACT_ASCII(result):
                text = <const char*>PyUnicode_DATA(result)
                text_size = PyUnicode_GET_LENGTH(result)
                if fastrpc_plain_ascii(<const unsigned char*>text, text_size):
                    quotes = 2
                else:
                    text_size = -1
        elif result is None:
            text, text_size = b"null", 4
        elif result is True:
            text, text_size = b"true", 4
        elif result is False:
            text, text_size = b"false", 5
        else:
            text, text_size = number, format_int(number, result)
        if text_size < 0:
            try:
                encoded = _dumps(result)
            except TypeError:  # the usual way answers it (orjson.JSONEncodeError is a TypeError)
                self._send(self._result_body(method, result, rid))
                return 0
            text, text_size = PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded)
        size = PyBytes_GET_SIZE(prefix) + quotes + text_size + 1
        if rid is not None:
            id_size = format_int(digits, rid)
            if id_size < 0:
                encoded_id = _dumps(rid)
                id_size = PyBytes_GET_SIZE(encoded_id)
            size += PyBytes_GET_SIZE(_ID_PART) + id_size
        if size > self._max_frame_size:
            self._send(self._result_body(method, result, rid))  # the usual way replaces it with the error
            return 0
        p = write_bytes(write_length(self._reserve(HEADER + size), size), prefix)
        if quotes:
            p[0] = c'"'
            p += 1
        memcpy(p, text, text_size)
        p += text_size
        if quotes:
            p[0] = c'"'
            p += 1
        if rid is not None:
            p = write_bytes(p, _ID_PART)
            if encoded_id is None:
                memcpy(p, digits, id_size)
                p += id_size
            else:
                p = write_bytes(p, encoded_id)
        p[0] = c'}'
        self._used += HEADER + size
        self._queued += 1
        return 0

    cdef int _refuse(self, object refusal, object rid) except -1:
        """Answer a call refused without an exception (a ``Refusal``: name, code, head, key), counted
        in ``_errors`` under its key as ``ServerStats.count_error`` counts the errors of handlers
        (no Python call: the key is made, its code needs no bounding, and ``_count_refused`` adds
        a run of the same refusal at once); framed in place, as ``_write_result``."""
        cdef bytes head = <bytes>PyTuple_GET_ITEM(refusal, 2)
        cdef char digits[24]
        cdef Py_ssize_t id_size = format_int(digits, rid)
        cdef bytes encoded_id
        cdef Py_ssize_t size
        cdef char* p
        cdef object key
        if self._errors is not None:
            key = <object>PyTuple_GET_ITEM(refusal, 3)
            if key is not self._refused:
                self._count_refused()
                self._refused = key
            self._refusals += 1
        encoded_id = _dumps(rid) if id_size < 0 else None  # not an int of 64 bits (null, a string)
        if encoded_id is not None:
            id_size = PyBytes_GET_SIZE(encoded_id)
        size = PyBytes_GET_SIZE(head) + id_size + 1
        if (rid is None and self._slots) or size > self._max_frame_size:
            # Behind a reply still owed, or too large: the usual way.
            self._reply(rid, head + (encoded_id or digits[:id_size]) + b"}")
            return 0
        p = write_bytes(write_length(self._reserve(HEADER + size), size), head)
        if encoded_id is None:
            memcpy(p, digits, id_size)
        else:
            write_bytes(p, encoded_id)
        p[id_size] = c'}'
        self._used += HEADER + size
        self._queued += 1
        return 0

    def _result_body(self, method, result, rid):
        """The response body of a call of ``method`` that returned ``result``."""
        cdef bytes encoded
        cdef bytes body
        try:
            encoded = _dumps(result)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            return self._unencodable(method, exc, rid)
        if rid is None:
            body = method.prefix + encoded + b"}"
        else:
            body = b"".join((method.prefix, encoded, _ID_PART, _dumps(rid), b"}"))
        if len(body) > self._max_frame_size:
            return self._fit(body, rid, method)
        return body

    def _send(self, bytes body not None):
        """Queue one response body to go out with the next ``data_to_send``."""
        self._queue(body)

    cdef int _queue(self, bytes body) except -1:
        cdef Py_ssize_t size = PyBytes_GET_SIZE(body)
        write_bytes(write_length(self._reserve(HEADER + size), size), body)
        self._used += HEADER + size
        self._queued += 1
        return 0

    cdef char* _reserve(self, Py_ssize_t room) except NULL:
        """Where ``room`` more bytes of output go (``_used`` is not moved)."""
        cdef Py_ssize_t capacity
        cdef object fresh
        if self._out is NULL:
            capacity = room if room > self._next_size else self._next_size
            fresh = PyBytes_FromStringAndSize(NULL, capacity)
            Py_INCREF(fresh)
            self._out = <PyObject*>fresh
        else:
            capacity = PyBytes_GET_SIZE(<object>self._out)
            if self._used + room > capacity:
                capacity *= 2
                if capacity < self._used + room:
                    capacity = self._used + room
                self._resize(capacity)  # only this core refers to it: resized in place
        return PyBytes_AS_STRING(<object>self._out) + self._used

    cdef int _resize(self, Py_ssize_t size) except -1:
        if _PyBytes_Resize(&self._out, size) < 0:
            # The buffer is gone, and the replies in it: start again from empty, never from the
            # old length into a new, smaller buffer (the MemoryError goes on; the connection cannot).
            self._used = self._queued = 0
            return -1
        return 0

    def data_to_send(self):
        """Every response that may be sent now, framed, in order."""
        return self._take()

    cdef int _count_refused(self) except -1:
        """Add the refusals counted under ``_refused`` into ``_errors``: once per run of the same
        refusal, not per refusal (a Counter update costs several hundred instructions, a third of
        a refusal; a client repeating a mistake repeats the same one). ``_take`` calls this, so
        the counts are in ``ServerStats.errors`` before the replies they count go out."""
        cdef PyObject* count
        cdef object total
        if self._refusals:
            total = self._refusals
            count = PyDict_GetItemWithError(self._errors, self._refused)  # not the Counter's __missing__: NULL when absent
            if count is not NULL:
                total += <object>count
            self._refusals = 0
            PyDict_SetItem(self._errors, self._refused, total)
        return 0

    cdef bytes _take(self):
        cdef object data
        if self._refusals:
            self._count_refused()
        if self._out is NULL:
            data = b""
        else:
            if self._used != PyBytes_GET_SIZE(<object>self._out):
                self._resize(self._used)
            data = <object>self._out
            Py_DECREF(data)  # the core's own reference passes to the caller
            self._out = NULL
            self._next_size = self._used if self._used < KEEP_OUT else KEEP_OUT
            self._used = 0
            self.frames_sent += self._queued
            self._queued = 0
        if self._raw_reply:
            data, self._raw_reply = data + self._raw_reply, b""
        self.bytes_sent += len(data)
        return data
