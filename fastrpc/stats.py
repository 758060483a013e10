"""What a server counts at all times: the events off its fast path.

Errors, cancellations and connections are rare next to calls, so counting
them costs nothing that matters; successful calls are counted only when
metrics are on (fastrpc.metrics), which reads these counts at scrape time.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional, Tuple, Union

__all__ = ["CANCELLED", "ServerStats"]

#: The code counted for a call that got no reply: its client cancelled it, or its connection closed.
CANCELLED = "CANCELLED"

Code = Union[int, str]


class ServerStats:
    """A server's counts of error frames, cancelled calls and connections."""

    def __init__(self) -> None:
        #: (method name, or None when the frame answered no known method; code) -> error frames sent,
        #: and calls left unanswered under CANCELLED.
        self.errors: "Counter[Tuple[Optional[str], Code]]" = Counter()
        #: method name -> calls whose handler returned but whose result could not be sent (counted in errors too).
        self.failed_after_return: "Counter[str]" = Counter()
        self.connections_opened = 0  # accepted and served (not those refused at max_connections)

    def count_error(self, name: Optional[str], code: Code, returned: bool = False) -> None:
        self.errors[name, code] += 1
        if returned and name is not None:
            self.failed_after_return[name] += 1
