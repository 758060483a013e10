"""Client hooks: code told of every call a client makes, for metrics and tracing.

    class Count(fastrpc.ClientHook):
        def call_started(self, method, meta):
            return time.perf_counter()

        def call_ended(self, method, state, error):
            print(method, time.perf_counter() - state, error)

    client = await fastrpc.connect("127.0.0.1", 8080, hooks=[Count()])

A client with no hooks makes its calls exactly as it does without this module: it chooses its
instrumented path once, when it is made. With hooks, each runs in the caller's context (its task
or thread, so a tracing hook sees the caller's current span), in the order given; an exception
from a hook is logged on the ``fastrpc.client`` logger and the call goes on.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .protocol import metadata_problem

__all__ = ["ClientHook"]

log = logging.getLogger("fastrpc.client")

#: Seconds between two logged failures of one hook: a hook that fails on every call cannot flood the
#: log; the failures in between are counted in the next line.
FAILURE_LOG_INTERVAL = 1.0


class ClientHook:
    """Subclass and override what you need. A hook should not raise: an exception is logged and the call goes on."""

    def call_started(self, method: str, meta: Dict[str, str]) -> Any:
        """A call of ``method`` begins. ``meta`` is the metadata it will carry: a copy of what its caller
        passed, which a hook may add to (a trace context; a key it sets wins over the caller's). Returns
        a state handed back to ``call_ended``."""

    def call_ended(self, method: str, state: Any, error: Optional[BaseException]) -> None:
        """The call ended: ``error`` is None for a result, else the exception its caller gets (for a call
        of a ``call_many`` batch, that call's own). Told exactly once per ``call_started``."""

    def call_retried(self, method: str) -> None:
        """A call is sent again (to another connection or endpoint) after an attempt failed: its connection
        was lost (``retries``), drained or refused it unrun, or closed before the call could be written."""

    def connection_opened(self, address: str) -> None:
        """A connection to ``address`` ("host:port") opened (authenticated, if tokens are used). This and
        ``connection_closed`` may run while the client holds its own locks: they must not call the client."""

    def connection_closed(self, address: str) -> None:
        """A connection that ``connection_opened`` reported closed."""


def checked_meta(meta: Mapping[str, str]) -> Dict[str, str]:
    """A call's metadata as sent: a copy (the caller may change its mapping while the call waits),
    or ValueError if it is not valid (docs/protocol.md section 3). Both clients check it here, before
    a connection is chosen or opened, so that nothing is sent for an invalid call."""
    copy = dict(meta) if isinstance(meta, Mapping) else meta
    problem = metadata_problem(copy)
    if problem is not None:
        raise ValueError(f"invalid call metadata: {problem}")
    return copy


class Hooks:
    """A client's hooks, each call of one guarded so that a failing hook costs the call a log line, not its outcome."""

    __slots__ = ("hooks", "_quiet_until", "_held_back")

    def __init__(self, hooks: Sequence[ClientHook]) -> None:
        self.hooks = tuple(hooks)
        for hook in self.hooks:
            if not isinstance(hook, ClientHook):
                raise TypeError(f"hooks must be fastrpc.ClientHook instances, got {hook!r}")
        self._quiet_until = [0.0] * len(self.hooks)
        self._held_back = [0] * len(self.hooks)

    def started(self, method: str, meta: Optional[Dict[str, str]]) -> Tuple[Optional[Dict[str, str]], List[Any]]:
        """Run ``call_started``: returns the metadata to send (``meta``, a checked dict or None, with what
        the hooks added) and the hooks' states, for ``ended``."""
        carried: Dict[str, str] = {} if meta is None else dict(meta)
        states = []
        for index, hook in enumerate(self.hooks):
            try:
                states.append(hook.call_started(method, carried))
            except Exception:
                self._failed(index, "call_started")
                states.append(None)
        if not carried:
            return None, states
        problem = metadata_problem(carried)
        if problem is not None:
            log.error("fastrpc client: the metadata client hooks gave a call of %r is invalid (%s): it is sent "
                      "with its caller's only", method, problem)
            return meta, states
        return carried, states

    def ended(self, method: str, states: List[Any], error: Optional[BaseException]) -> None:
        for index, hook in enumerate(self.hooks):
            try:
                hook.call_ended(method, states[index], error)
            except Exception:
                self._failed(index, "call_ended")

    def retried(self, method: str) -> None:
        self._tell("call_retried", method)

    def opened(self, address: str) -> None:
        self._tell("connection_opened", address)

    def closed(self, address: str) -> None:
        self._tell("connection_closed", address)

    def _tell(self, event: str, *args: Any) -> None:
        """Call every hook's ``event`` with ``args``, each guarded."""
        for index, hook in enumerate(self.hooks):
            try:
                getattr(hook, event)(*args)
            except Exception:
                self._failed(index, event)

    def _failed(self, index: int, event: str) -> None:
        """Log the exception being handled, from hook ``index``'s ``event``: with its traceback, at most one
        line per hook every FAILURE_LOG_INTERVAL (the sync client's threads may race on the counts:
        they are an indication, not an account)."""
        now = time.monotonic()
        if now < self._quiet_until[index]:
            self._held_back[index] += 1
            return
        held_back, self._held_back[index] = self._held_back[index], 0
        self._quiet_until[index] = now + FAILURE_LOG_INTERVAL
        log.error("fastrpc client: hook %r raised in %s; the call goes on%s", self.hooks[index], event,
                  f" ({held_back} more failures of this hook were not logged)" if held_back else "", exc_info=True)
