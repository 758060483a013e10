"""Token authentication: a connection's first call must be ``auth`` with a token the server holds.

Until then every other call is refused with -32004 and counted; after
``MAX_FAILURES`` refusals (wrong tokens included) the server hangs up.
Tokens are compared in constant time (``hmac.compare_digest``, against every
token, so the time does not tell which one nearly matched) and are never logged.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable, Collection, Mapping

from .errors import Unauthenticated
from .protocol import Method

__all__ = ["AUTH_METHOD", "MAX_FAILURES", "TokenGate"]

AUTH_METHOD = "auth"
MAX_FAILURES = 3


class TokenGate:
    """Stands in for a connection's registry until it authenticates.

    ``admit(methods)`` is called with the registry to use once a token
    matched; ``hang_up()`` once a connection has failed too often.
    """

    __slots__ = ("_tokens", "_admit", "_hang_up", "_failures", "_auth", "_refused")

    def __init__(self, tokens: Collection[bytes], methods: Mapping[str, Method], admit: Callable[[Mapping[str, Method]], None],
                 hang_up: Callable[[], None]) -> None:
        self._tokens = tokens
        self._admit = lambda: admit(methods)
        self._hang_up = hang_up
        self._failures = 0
        self._auth = Method(AUTH_METHOD, self._check, raw_params=True)
        self._refused = Method("rpc.unauthenticated", self._refuse, raw_params=True)  # a name no application method has

    def __getitem__(self, name: Any) -> Method:
        if type(name) is not str:
            raise TypeError("a method name is a string")  # still an invalid request
        return self._auth if name == AUTH_METHOD else self._refused

    def _check(self, token: Any) -> bool:
        given = token.encode() if isinstance(token, str) else b""
        matched = False
        for known in self._tokens:
            matched |= hmac.compare_digest(given, known)
        if not matched:
            self._fail("authentication failed: the token is not valid")
        self._admit()
        return True

    def _refuse(self, params: Any) -> Any:
        self._fail(f"authentication required: call {AUTH_METHOD!r} with a token first")

    def _fail(self, message: str) -> None:
        self._failures += 1
        if self._failures >= MAX_FAILURES:
            self._hang_up()
            message += f"; closing after {MAX_FAILURES} failures"
        raise Unauthenticated(message)
