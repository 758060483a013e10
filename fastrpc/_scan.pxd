# Reading a small JSON object of known keys where it lies, making no object: for the server core
# (requests) and the client core (replies), cimported by both. Inline functions only, so there is
# no module of its own to build.
#
# Most frames are one small object of three known keys with plain values: for those, orjson's dict,
# its keys and values made and freed cost more than everything else a pipelined call does.
# ``scan_object`` takes only such an object (each key at most once, text of printable ASCII without
# escapes, ints of up to 18 digits, null/true/false) and marks any other value by its extent for
# orjson to read that slice alone; it declines anything else (other keys, a key twice, broken JSON),
# which the cores then give to orjson whole. What it takes, orjson reads the same: the pure-Python
# twins read every frame with orjson, and tests/test_request_scan.py holds the cores to them.

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.long cimport PyLong_FromLongLong
from cpython.unicode cimport PyUnicode_DATA, PyUnicode_GET_LENGTH
from libc.string cimport memcmp, memcpy

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object text)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)

cdef enum:
    V_NONE = 0  # the key was not there
    V_NULL = 1
    V_TRUE = 2
    V_FALSE = 3
    V_INT = 4  # at most 18 digits: fits a long long
    V_TEXT = 5  # printable ASCII without a quote or backslash: the bytes are the str
    V_JSON = 6  # any other value, by its extent: orjson reads it
    MAX_DIGITS = 18
    MAX_DEPTH = 64  # deeper values go to orjson whole, which then applies its own limit


cdef struct Value:
    int kind
    long long number
    Py_ssize_t at  # where a V_TEXT's characters or a V_JSON's text start
    Py_ssize_t size


cdef inline Py_ssize_t skip_space(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    while i < n and (s[i] == c' ' or s[i] == c'\n' or s[i] == c'\r' or s[i] == c'\t'):
        i += 1
    return i


cdef inline bint is_literal(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, const char* word, Py_ssize_t size) noexcept:
    return n - i >= size and memcmp(s + i, word, size) == 0


cdef inline Py_ssize_t skip_string(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    """Past the string whose opening quote is at ``i``, escapes and all; -1 if it does not end."""
    i += 1
    while i < n:
        if s[i] == c'"':
            return i + 1
        i += 2 if s[i] == c'\\' else 1
    return -1


cdef inline Py_ssize_t skip_value(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    """Past the JSON value that starts at ``i``, judged by its brackets, strings and delimiters
    only (orjson judges the rest); -1 if it has no end or nests deeper than MAX_DEPTH."""
    cdef int depth = 0
    cdef unsigned char c
    while i < n:
        c = s[i]
        if c == c'"':
            i = skip_string(s, i, n)
            if i < 0:
                return -1
            if depth == 0:
                return i
            continue
        if c == c'[' or c == c'{':
            depth += 1
            if depth > MAX_DEPTH:
                return -1
        elif c == c']' or c == c'}':
            if depth == 0:
                return i
            depth -= 1
            if depth == 0:
                return i + 1
        elif depth == 0 and (c == c',' or c == c' ' or c == c'\n' or c == c'\r' or c == c'\t'):
            return i
        i += 1
    return i if depth == 0 else -1


cdef inline Py_ssize_t scan_value(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, Value* v) noexcept:
    """Read the value at ``i`` into ``v``: past it, or -1 where orjson must judge the whole body."""
    cdef Py_ssize_t start = i, first
    cdef unsigned char c
    cdef long long number = 0
    if i >= n:
        return -1
    c = s[i]
    if c == c'"':
        i += 1
        while i < n and 0x20 <= s[i] < 0x7F and s[i] != c'"' and s[i] != c'\\':
            i += 1
        if i < n and s[i] == c'"':
            v.kind, v.at, v.size = V_TEXT, start + 1, i - start - 1
            return i + 1
    elif c == c'n':
        if is_literal(s, i, n, "null", 4):
            v.kind = V_NULL
            return i + 4
        return -1
    elif c == c't':
        if is_literal(s, i, n, "true", 4):
            v.kind = V_TRUE
            return i + 4
        return -1
    elif c == c'f':
        if is_literal(s, i, n, "false", 5):
            v.kind = V_FALSE
            return i + 5
        return -1
    elif c == c'-' or c'0' <= c <= c'9':
        first = i + 1 if c == c'-' else i
        i = first
        while i < n and c'0' <= s[i] <= c'9':
            i += 1
        if i == first or (s[first] == c'0' and i - first > 1):
            return -1  # no digit, or a leading zero: not JSON
        if i - first <= MAX_DIGITS and not (i < n and (s[i] == c'.' or s[i] == c'e' or s[i] == c'E')):
            for first in range(first, i):
                number = number * 10 + (s[first] - c'0')
            v.kind, v.number = V_INT, -number if c == c'-' else number
            return i
        # a fraction, an exponent or more digits than fit: orjson's
    elif c != c'[' and c != c'{':
        return -1
    i = skip_value(s, start, n)
    if i <= start:
        return -1
    v.kind, v.at, v.size = V_JSON, start, i - start
    return i


cdef inline bint scan_object(const unsigned char* s, Py_ssize_t n, const char* key0, Py_ssize_t size0,
                             const char* key1, Py_ssize_t size1, const char* key2, Py_ssize_t size2,
                             const char* key3, Py_ssize_t size3, const char* key4, Py_ssize_t size4,
                             Value* values) noexcept:
    """Whether ``s`` is an object whose keys are among the five (each written with its quotes,
    '"id"', and its size with them: 4; a size of 0 for the fourth or fifth when not wanted), each at most once: then
    ``values[k]`` holds key k's value (V_NONE where it is absent). The keys and sizes are constants
    at each call, which the C compiler folds into the comparisons."""
    cdef Py_ssize_t i = skip_space(s, 0, n)
    cdef Value* v
    values[0].kind = values[1].kind = values[2].kind = values[3].kind = values[4].kind = V_NONE
    if i >= n or s[i] != c'{':
        return False
    i = skip_space(s, i + 1, n)
    while True:
        if is_literal(s, i, n, key0, size0):
            v, i = &values[0], i + size0
        elif is_literal(s, i, n, key1, size1):
            v, i = &values[1], i + size1
        elif is_literal(s, i, n, key2, size2):
            v, i = &values[2], i + size2
        elif size3 and is_literal(s, i, n, key3, size3):
            v, i = &values[3], i + size3
        elif size4 and is_literal(s, i, n, key4, size4):
            v, i = &values[4], i + size4
        else:
            return False
        if v.kind != V_NONE:  # a key twice: orjson keeps the last
            return False
        i = skip_space(s, i, n)
        if i >= n or s[i] != c':':
            return False
        i = scan_value(s, skip_space(s, i + 1, n), n, v)
        if i < 0:
            return False
        i = skip_space(s, i, n)
        if i >= n:
            return False
        if s[i] == c'}':
            return skip_space(s, i + 1, n) == n
        if s[i] != c',':
            return False
        i = skip_space(s, i + 1, n)


cdef inline bint is_text(object text, const unsigned char* s, Py_ssize_t size) noexcept:
    """Whether ``text`` is a str of exactly these ``size`` ASCII characters."""
    return (type(text) is str and PyUnicode_IS_COMPACT_ASCII(text) and PyUnicode_GET_LENGTH(text) == size
            and memcmp(PyUnicode_DATA(text), s, size) == 0)


cdef inline str ascii_text(const unsigned char* s, Py_ssize_t size):
    """A str of ``size`` ASCII characters."""
    cdef object text = PyUnicode_New(size, 127)
    memcpy(PyUnicode_DATA(text), s, size)
    return text


cdef inline object value_of(const unsigned char* s, Value* v, object loads):
    """The object a scanned value (not V_NONE) stands for; a V_JSON's through ``loads``
    (orjson.loads), whose errors go on: the whole frame is then not JSON."""
    if v.kind == V_INT:
        return PyLong_FromLongLong(v.number)
    if v.kind == V_TEXT:
        return ascii_text(s + v.at, v.size)
    if v.kind == V_NULL:
        return None
    if v.kind == V_TRUE:
        return True
    if v.kind == V_FALSE:
        return False
    return loads(PyBytes_FromStringAndSize(<const char*>s + v.at, v.size))
