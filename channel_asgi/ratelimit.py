"""Token-bucket rate limits on publishes, per user and per client address.

Buckets live in this process: with several workers, each enforces the limit on the publishes it
serves. The number of buckets is bounded; the least recently used are forgotten first (a forgotten
bucket starts full again).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Final

__all__ = ["RateLimiter"]

_MAX_BUCKETS: Final = 100_000


class RateLimiter:
    """``per_second`` tokens refill each bucket, up to ``burst``; a publish takes one.

    Args:
        per_second: the sustained rate.
        burst: how many may be sent at once after a quiet period.
        max_buckets: how many keys are remembered.
    """

    def __init__(self, per_second: float, burst: float, *, max_buckets: int = _MAX_BUCKETS) -> None:
        if not per_second > 0 or not burst >= 1:
            raise ValueError(f"need per_second > 0 and burst >= 1, got {per_second!r}, {burst!r}")
        self.rate = float(per_second)
        self.burst = float(burst)
        self._max = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def wait(self, key: str) -> int:
        """Return 0 if ``key`` may publish now, else the whole seconds until it may."""
        tokens = self._level(key, time.monotonic())
        if tokens >= 1:
            return 0
        return max(1, math.ceil((1 - tokens) / self.rate))

    def take(self, key: str) -> None:
        """Spend one token of ``key`` (after :meth:`wait` said 0)."""
        now = time.monotonic()
        self._buckets[key] = (self._level(key, now) - 1, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
