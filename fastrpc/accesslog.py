"""An access log: one line per call, through ``logging``.

    server.use(AccessLog())                       # logger "fastrpc.access", level INFO

Each line is ``key=value`` pairs (logfmt), in this order::

    peer=127.0.0.1:50312 method=add code=OK ms=0.041
    peer=127.0.0.1:50312 method=add code=INVALID_PARAMS ms=0.102
    peer=[::1]:50314 method=transfer code=-32010 ms=3.870

``code`` is OK, or the error code the client was answered with: its ErrorCode name where it has one
(INVALID_PARAMS, INTERNAL_ERROR, TIMEOUT, ...), else the number. A call stopped before it finished is
TIMEOUT when its deadline passed, else CANCELLED (the client cancelled it or went away, or the server
shut down). ``ms`` is the handler's time in milliseconds. Calls that never reach a handler (unknown
methods, malformed requests, calls refused while the server stops) are not logged.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from .errors import code_name
from .middleware import CallInfo, Middleware
from .net import address_text
from .server import remaining

__all__ = ["AccessLog"]

_FORMAT = "peer=%s method=%s code=%s ms=%.3f"


class AccessLog(Middleware):
    """Logs every call at INFO on ``logger`` (default: the "fastrpc.access" logger)."""

    def __init__(self, logger: Optional[logging.Logger] = None) -> None:
        self._logger = logging.getLogger("fastrpc.access") if logger is None else logger

    def _log(self, call: CallInfo, code: str, elapsed: float) -> None:
        if self._logger.isEnabledFor(logging.INFO):  # the address is formatted only for a line that is written
            self._logger.info(_FORMAT, address_text(call.peer), call.method, code, elapsed * 1000)

    def after(self, call: CallInfo, result: Any, elapsed: float) -> None:
        self._log(call, "OK", elapsed)

    def on_error(self, call: CallInfo, exc: BaseException, elapsed: float) -> None:
        code = call.error_code(exc)
        self._log(call, code_name(code), elapsed)

    def on_cancel(self, call: CallInfo, elapsed: float) -> None:
        self._log(call, "TIMEOUT" if remaining() == 0 else "CANCELLED", elapsed)
