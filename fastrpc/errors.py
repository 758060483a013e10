"""The one exception tree of fastrpc.

``FastRPCError`` is the root. Errors detected locally (a broken frame, a lost
connection, a call that ran out of time) have their own classes; errors the
peer reported in an error frame are ``RemoteError`` subclasses, one per code,
so callers can ``except fastrpc.MethodNotFound`` without reading numbers.
"""

from __future__ import annotations

import enum
from typing import Any, Dict, Type

__all__ = [
    "ErrorCode",
    "code_name",
    "FastRPCError",
    "ProtocolError",
    "FrameTooLarge",
    "ConnectionClosed",
    "CallTimeout",
    "RemoteError",
    "ParseError",
    "InvalidRequest",
    "MethodNotFound",
    "InvalidParams",
    "InternalError",
    "RequestTooLarge",
    "ServerBusy",
    "ShuttingDown",
    "DeadlineExceeded",
    "remote_error",
]


class ErrorCode(enum.IntEnum):
    """Error codes carried in error frames (docs/protocol.md, section 6)."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    FRAME_TOO_LARGE = -32000
    SERVER_BUSY = -32001
    SHUTTING_DOWN = -32002
    TIMEOUT = -32003
    UNAUTHENTICATED = -32004


_CODE_NAMES = {int(code): code.name for code in ErrorCode}


def code_name(code: int) -> str:
    """How metrics, traces and logs name an error code: its ErrorCode name (INVALID_PARAMS, ...), else
    the number (an application's own code)."""
    return _CODE_NAMES.get(int(code)) or str(int(code))


class FastRPCError(Exception):
    """Base class of every exception fastrpc raises on purpose."""


class ProtocolError(FastRPCError):
    """The peer sent something the protocol does not allow."""


class FrameTooLarge(ProtocolError):
    """A frame header announced a body larger than the configured maximum."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the maximum frame size of {limit} bytes")
        self.size = size
        self.limit = limit

    def __reduce__(self) -> Any:
        return (type(self), (self.size, self.limit))


class ConnectionClosed(FastRPCError, ConnectionError):
    """The connection is closed (or was lost) before the call completed."""


class CallTimeout(FastRPCError, TimeoutError):
    """The call did not complete within its timeout (``DeadlineExceeded``: the server said so first)."""


class RemoteError(FastRPCError):
    """The peer answered with an error frame.

    ``code``, ``message`` and ``data`` are the fields of that frame. A handler
    may raise a subclass (or ``RemoteError`` with any code) to send that error
    to its caller instead of an internal error.
    """

    code: int = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, data: Any = None, *, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def __reduce__(self) -> Any:
        return (remote_error, (self.code, self.message, self.data))


class ParseError(RemoteError):
    """The frame body is not valid UTF-8 JSON."""

    code = ErrorCode.PARSE_ERROR


class InvalidRequest(RemoteError):
    """The frame is JSON but not a valid request."""

    code = ErrorCode.INVALID_REQUEST


class MethodNotFound(RemoteError):
    """No method of that name is registered."""

    code = ErrorCode.METHOD_NOT_FOUND


class InvalidParams(RemoteError):
    """The params do not bind to the handler's signature."""

    code = ErrorCode.INVALID_PARAMS


class InternalError(RemoteError):
    """The handler raised, or its result could not be encoded."""

    code = ErrorCode.INTERNAL_ERROR


class RequestTooLarge(RemoteError):
    """A frame (request or response) exceeded the maximum frame size."""

    code = ErrorCode.FRAME_TOO_LARGE


class ServerBusy(RemoteError):
    """The server refused the work because it is at a limit."""

    code = ErrorCode.SERVER_BUSY


class ShuttingDown(RemoteError):
    """The server is shutting down and takes no new requests.

    ``never_ran`` is true when the server refused the call before starting it
    (``data`` ``{"started": false}``): it may be sent again, to this server's
    successor or another, even when it is not idempotent. A call that started
    and was cancelled when the grace ran out has ``{"started": true}``.
    """

    code = ErrorCode.SHUTTING_DOWN

    @property
    def never_ran(self) -> bool:
        return isinstance(self.data, dict) and self.data.get("started") is False


class DeadlineExceeded(RemoteError, CallTimeout):
    """The server gave up on the call because its deadline passed.

    A CallTimeout too: a client's timeout travels as the call's deadline, and
    whichever side notices first, ``except CallTimeout`` catches it.
    """

    code = ErrorCode.TIMEOUT


class Unauthenticated(RemoteError):
    """The server takes calls only after a valid ``auth`` token, and none was given (or it was wrong)."""

    code = ErrorCode.UNAUTHENTICATED


_BY_CODE: Dict[int, Type[RemoteError]] = {
    cls.code: cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        RequestTooLarge,
        ServerBusy,
        ShuttingDown,
        DeadlineExceeded,
        Unauthenticated,
    )
}


def remote_error(code: int, message: str, data: Any = None) -> RemoteError:
    """Build the ``RemoteError`` subclass that stands for ``code``."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return RemoteError(message, data, code=code)
    return cls(message, data)
