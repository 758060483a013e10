"""The frame splitter and packer, compiled where possible.

``IMPLEMENTATION`` says which one was loaded: ``"cython"`` (the extension
``fastrpc._framing``) or ``"python"`` (its twin ``fastrpc._framing_py``), the
latter when the extension is not built or ``FASTRPC_NO_EXTENSIONS`` is set.
"""

from __future__ import annotations

import os

__all__ = ["IMPLEMENTATION", "FrameReader", "pack_frames"]

IMPLEMENTATION: str

if os.environ.get("FASTRPC_NO_EXTENSIONS", "").lower() in ("", "0", "false", "no"):
    try:
        from ._framing import FrameReader, pack_frames
    except ImportError:
        from ._framing_py import FrameReader, pack_frames

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"
else:
    from ._framing_py import FrameReader, pack_frames

    IMPLEMENTATION = "python"
