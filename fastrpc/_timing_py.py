"""The pure-Python twin of ``_timing.pyx``: the same counts, for builds without the extension."""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any, Callable, List, Sequence

__all__ = ["MethodMetrics", "Timed"]

_clock = time.perf_counter


class MethodMetrics:
    """One method's handler times: a count per bucket (one per bound, then +Inf), their sum, and
    how many calls raised (the rest returned)."""

    __slots__ = ("bounds", "_buckets", "sum", "raised")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._buckets = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.raised = 0

    def observe(self, seconds: float) -> None:
        """A call that took ``seconds`` returned."""
        self._buckets[bisect_left(self.bounds, seconds)] += 1  # the first bound it is at most ("le")
        self.sum += seconds

    def failed(self, seconds: float) -> None:
        """A call that took ``seconds`` raised."""
        self.raised += 1
        self.observe(seconds)

    @property
    def buckets(self) -> List[int]:
        """The count of each bucket (not cumulative), +Inf's last."""
        return list(self._buckets)

    @property
    def count(self) -> int:
        return sum(self._buckets)


class Timed:
    """A sync handler, timed into ``counts`` on every call, returning or raising as it does."""

    __slots__ = ("func", "counts")

    def __init__(self, func: Callable[..., Any], counts: MethodMetrics) -> None:
        self.func = func
        self.counts = counts

    @property
    def __wrapped__(self) -> Callable[..., Any]:
        # inspect.signature follows it: the core still tells bad params (-32602) from a handler's TypeError.
        return self.func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = _clock()
        try:
            result = self.func(*args, **kwargs)
        except BaseException:
            self.counts.failed(_clock() - started)
            raise
        self.counts.observe(_clock() - started)
        return result
