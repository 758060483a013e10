"""Client hooks: code told of every call a client makes, for metrics and tracing.

    class Count(fastrpc.ClientHook):
        def call_started(self, method, meta):
            return time.perf_counter()

        def call_ended(self, method, state, error):
            print(method, time.perf_counter() - state, error)

    client = await fastrpc.connect("127.0.0.1", 8080, hooks=[Count()])

A client with no hooks makes its calls exactly as it does without this module.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

__all__ = ["ClientHook"]


class ClientHook:
    """Subclass and override what you need. A hook must not raise: it runs inside every call."""

    def call_started(self, method: str, meta: Dict[str, str]) -> Any:
        """A call of ``method`` begins. ``meta`` is the metadata it will carry: a hook may add to it (a
        trace context). Returns a state handed back to ``call_ended``."""

    def call_ended(self, method: str, state: Any, error: Optional[BaseException]) -> None:
        """The call ended: ``error`` is None for a result, else the exception its caller gets."""

    def call_retried(self, method: str) -> None:
        """A call is sent again (to another connection or endpoint) after its first attempt failed."""

    def connection_opened(self, address: str) -> None:
        """A connection to ``address`` ("host:port") opened (authenticated, if tokens are used)."""

    def connection_closed(self, address: str) -> None:
        """A connection that ``connection_opened`` reported closed."""
