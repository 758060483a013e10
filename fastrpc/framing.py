"""The frame splitter and packer, compiled where possible.

``IMPLEMENTATION`` says which one was loaded: ``"cython"`` (the extension
``fastrpc._framing``) or ``"python"`` (its twin ``fastrpc._framing_py``), the
latter when ``FASTRPC_NO_EXTENSIONS`` is set or the extension is not built.
``FALLBACK_REASON`` says why the extension could not be loaded when it was
not asked to be left out (None otherwise): the server warns of it.
"""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["IMPLEMENTATION", "FALLBACK_REASON", "FrameReader", "pack_frames"]

IMPLEMENTATION: str
FALLBACK_REASON: Optional[str] = None

if os.environ.get("FASTRPC_NO_EXTENSIONS", "").lower() in ("", "0", "false", "no"):
    try:
        from ._framing import FrameReader, pack_frames
    except ImportError as exc:
        from ._framing_py import FrameReader, pack_frames

        IMPLEMENTATION = "python"
        FALLBACK_REASON = str(exc)
    else:
        IMPLEMENTATION = "cython"
else:
    from ._framing_py import FrameReader, pack_frames

    IMPLEMENTATION = "python"
