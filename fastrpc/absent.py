"""``ABSENT``: marks params left out of a request (``None`` is a valid JSON null).

A module of its own so that the compiled server core and its twin share the one marker
without importing the protocol module built on them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ABSENT"]


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()
