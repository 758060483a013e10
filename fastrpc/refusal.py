"""``Refusal``: a call answered with an error before (or instead of) its handler running.

A module of its own so that the compiled server core and its twin recognise the one class, and
``protocol``, the cores and ``contracts`` write error bodies with the one encoder, without
importing the protocol module built on them.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple

import orjson

from .errors import ErrorCode

__all__ = ["KEPT_NAMES", "KEPT_NAME_LENGTH", "NOT_FOUND", "Refusal", "error_head", "method_not_found", "refusal"]

#: How many unknown method names keep their refusal (``NOT_FOUND``), and the longest name kept:
#: a bound on the memory, whatever names clients send.
KEPT_NAMES = 64
KEPT_NAME_LENGTH = 128

_dumps = orjson.dumps
_ERROR_PREFIX = b'{"out": "error", "error": '
_ID_PART = b', "id": '


def error_head(code: int, message: str, data: Any = None) -> bytes:
    """An error response body up to its id (docs/protocol.md section 4): the id's JSON and ``}`` complete it."""
    error = {"code": int(code), "message": message}
    if data is not None:
        error["data"] = data
    return _ERROR_PREFIX + _dumps(error) + _ID_PART


class Refusal(NamedTuple):
    """An error reply decided without an exception: the server core writes ``head``, the id and ``}``,
    and counts it against ``name`` (None: no known method) under ``code``, adding one to
    ``ServerStats.errors[key]``. Made once and kept where the same refusal recurs (a method's wrong
    count of params, a typed method's wrong kinds of values). A tuple, so that the compiled core
    reads its fields in C."""

    name: Optional[str]
    code: int
    head: bytes
    #: ``(name, code)``, the key of ``ServerStats.errors`` it is counted under, made once with it so
    #: that counting a refusal builds no tuple. The code is always one of fastrpc's own (ErrorCode),
    #: which ``ServerStats`` counts as it is: no ``bounded_code`` is needed.
    key: Tuple[Optional[str], int]


def refusal(name: Optional[str], code: int, message: str, data: Any = None) -> Refusal:
    """The Refusal of error ``code`` (one of fastrpc's own) with ``message`` and ``data``, counted against ``name``."""
    code = int(code)
    return Refusal(name, code, error_head(code, message, data), (name, code))


#: The refusals of unknown method names made so far (the first KEPT_NAMES), which the server cores
#: look up before ``method_not_found``: a name called again (a client retrying, a prober) is answered
#: without encoding anything.
NOT_FOUND: Dict[str, Refusal] = {}


def method_not_found(name: str) -> Refusal:
    """The -32601 refusal of a call of ``name``, which no method has; kept in NOT_FOUND if there is room."""
    refused = refusal(None, ErrorCode.METHOD_NOT_FOUND, f"method not found: {name!r}")
    if len(NOT_FOUND) < KEPT_NAMES and len(name) <= KEPT_NAME_LENGTH:
        NOT_FOUND[name] = refused
    return refused
