"""What a server counts at all times: the events off its fast path.

Errors, cancellations and connections are rare next to calls, so counting
them costs nothing that matters; successful calls are counted only when
metrics are on (fastrpc.metrics), which reads these counts at scrape time.

The codes counted are bounded: a handler may raise RemoteError with any code (a gateway
passing on its backends' errors), so past MAX_APPLICATION_CODES distinct codes of its own
a server counts new ones under OTHER, and its counts and series cannot grow without end.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional, Set, Tuple, Union

from .errors import ErrorCode

__all__ = ["CANCELLED", "MAX_APPLICATION_CODES", "OTHER", "ServerStats", "bounded_code"]

#: The code counted for a call that got no reply: its client cancelled it, or its connection closed.
CANCELLED = "CANCELLED"

#: Distinct codes other than fastrpc's own (ErrorCode, CANCELLED) counted each under its own
#: code; those seen after them are counted under OTHER.
MAX_APPLICATION_CODES = 32
OTHER = "OTHER"

Code = Union[int, str]

_OWN_CODES = frozenset([*(int(code) for code in ErrorCode), CANCELLED])


def bounded_code(code: Code, seen: Set[Code]) -> Code:
    """``code`` as counted: fastrpc's own codes, and the first MAX_APPLICATION_CODES others
    (``seen``, added to), as they are; any other OTHER."""
    if code in _OWN_CODES or code in seen:
        return code
    if len(seen) < MAX_APPLICATION_CODES:
        seen.add(code)
        return code
    return OTHER


class ServerStats:
    """A server's counts of error frames, cancelled calls and connections."""

    def __init__(self) -> None:
        #: (method name, or None when the frame answered no known method; code) -> error frames sent,
        #: and calls left unanswered under CANCELLED (codes bounded: see bounded_code). The server cores
        #: add their own refusals to it directly, by key and without count_error (in C where compiled,
        #: as a dict): it stays this Counter, never replaced.
        self.errors: "Counter[Tuple[Optional[str], Code]]" = Counter()
        #: method name -> calls whose handler returned but whose result could not be sent (counted in errors too).
        self.failed_after_return: "Counter[str]" = Counter()
        self.connections_opened = 0  # accepted and served (not those refused at max_connections)
        self.application_codes: Set[Code] = set()  # the codes counted as they are beyond fastrpc's own

    def count_error(self, name: Optional[str], code: Code, returned: bool = False) -> None:
        self.errors[name, bounded_code(code, self.application_codes)] += 1
        if returned and name is not None:
            self.failed_after_return[name] += 1
