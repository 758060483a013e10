"""Sizes fixed by the protocol (docs/protocol.md, section 1)."""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE", "MAX_FRAME_SIZE_CEILING", "META_MAX_ENTRIES", "META_MAX_BYTES", "PROBE_HEADER", "PROBE_REPLY",
    "check_max_frame_size",
]

#: Default largest frame body accepted, in bytes (16 MiB).
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024

#: Largest value ``max_frame_size`` may be set to (1 GiB). Kept below the
#: length that the ASCII text probe ``ping`` reads as (0x70696E67, about
#: 1.76 GiB) so that the probe can never be taken for a frame header.
MAX_FRAME_SIZE_CEILING = 1 << 30

#: The most entries a call's metadata may have, and the most bytes its keys and values may
#: add up to in UTF-8 (docs/protocol.md, section 3): room for trace context, request ids and
#: caller identity, not for payload.
META_MAX_ENTRIES = 64
META_MAX_BYTES = 8192

#: The first four bytes of a text health probe, and what it is answered with.
PROBE_HEADER = b"ping"
PROBE_REPLY = b"ok.......pong!"
PROBE_LENGTH = int.from_bytes(PROBE_HEADER, "big")


def check_max_frame_size(value: int) -> int:
    """Return ``value`` if it is a usable maximum frame size, else raise ValueError."""
    if type(value) is not int or not 0 < value <= MAX_FRAME_SIZE_CEILING:
        raise ValueError(
            f"max_frame_size must be an int from 1 to {MAX_FRAME_SIZE_CEILING}, got {value!r}"
        )
    return value
