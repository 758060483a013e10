"""The compiled parts of fastrpc, or their pure-Python twins, chosen together.

``FrameReader`` and ``pack_frames`` split and join frames; ``ServerCore`` is a
server connection's per-request path (``protocol.ServerConnection`` is built
on it), ``MethodCore`` the fields of a method it reads (``protocol.Method``),
``ping`` the built-in ``ping``'s handler; ``ClientCore`` is a client connection's per-call
path (``protocol.ClientConnection``), ``join_group`` the async client's test of a call's
timeout group. ``IMPLEMENTATION`` says which were loaded: ``"cython"`` (the extensions
``fastrpc._framing``, ``fastrpc._server_core`` and ``fastrpc._client_core``) or
``"python"`` (their twins ``_framing_py``, ``_server_core_py`` and ``_client_core_py``), the latter when
``FASTRPC_NO_EXTENSIONS`` is set or an extension is not built.
``FALLBACK_REASON`` says why the extensions could not be loaded when they
were not asked to be left out (None otherwise): the server warns of it.
"""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["IMPLEMENTATION", "FALLBACK_REASON", "ClientCore", "FrameReader", "MethodCore", "ServerCore", "TIMER_SLACK",
           "join_group", "pack_frames", "ping"]

IMPLEMENTATION: str
FALLBACK_REASON: Optional[str] = None

if os.environ.get("FASTRPC_NO_EXTENSIONS", "").lower() in ("", "0", "false", "no"):
    try:
        from ._client_core import ClientCore, TIMER_SLACK, join_group
        from ._framing import FrameReader, pack_frames
        from ._server_core import MethodCore, ServerCore, ping
    except ImportError as exc:
        from ._client_core_py import ClientCore, TIMER_SLACK, join_group
        from ._framing_py import FrameReader, pack_frames
        from ._server_core_py import MethodCore, ServerCore, ping

        IMPLEMENTATION = "python"
        FALLBACK_REASON = str(exc)
    else:
        IMPLEMENTATION = "cython"
else:
    from ._client_core_py import ClientCore, TIMER_SLACK, join_group
    from ._framing_py import FrameReader, pack_frames
    from ._server_core_py import MethodCore, ServerCore, ping

    IMPLEMENTATION = "python"
