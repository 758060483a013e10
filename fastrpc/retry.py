"""The retry rules both clients follow when a connection is lost (``retries=``, ``idempotent=``)."""

from __future__ import annotations

from typing import FrozenSet, Optional

from .errors import ConnectionClosed

__all__ = ["NotSent", "check_retries", "resendable", "retry_delay"]


class NotSent(ConnectionClosed):
    """The connection was lost or drained before the call went out: it may be sent anywhere, even twice-unsafe ones."""


def check_retries(retries: int) -> int:
    """``retries`` if it is a usable count, else ValueError."""
    if retries < 0:
        raise ValueError(f"retries must not be negative, got {retries!r}")
    return retries


def resendable(method: str, idempotent: Optional[bool], idempotent_methods: FrozenSet[str]) -> bool:
    """Whether a call lost with its connection may be sent again: ``idempotent`` given for the call, else its method's."""
    return idempotent if idempotent is not None else method in idempotent_methods


def retry_delay(attempt: int) -> float:
    """Seconds to wait before resending a call whose connection was lost ``attempt + 1`` times.

    The first resend goes at once (another server or worker is likely up); later ones back off, up to 1 s."""
    return min(0.05 * (2 ** attempt - 1), 1.0)
