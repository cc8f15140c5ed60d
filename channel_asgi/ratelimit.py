"""Limits per client: token-bucket rate limits on publishes, and open connections per address.

Buckets live in this process: with several workers, each enforces the limit on the publishes it
serves. The number of buckets is bounded; the least recently used are forgotten first (a forgotten
bucket starts full again). Open connections are counted in this process too; an address is
forgotten as soon as its last connection ends, so the count is bounded by the connections open.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Final

from . import clock
from .errors import TooManyConnections

__all__ = ["ConnectionLimit", "RateLimiter"]

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
        tokens = self._level(key, clock.monotonic())
        if tokens >= 1:
            return 0
        return max(1, math.ceil((1 - tokens) / self.rate))

    def take(self, key: str) -> None:
        """Spend one token of ``key`` (after :meth:`wait` said 0)."""
        now = clock.monotonic()
        self._buckets[key] = (self._level(key, now) - 1, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)


class ConnectionLimit:
    """At most ``limit`` open subscriber connections (SSE and WebSocket) per client address.

    Args:
        limit: the most connections one address may hold open, or None for no limit.
        retry_after: the ``Retry-After`` of a refusal, in seconds.
    """

    def __init__(self, limit: int | None, *, retry_after: int = 1) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self._open: dict[str, int] = {}

    def open_from(self, address: str) -> int:
        """Return how many connections ``address`` holds open."""
        return self._open.get(address, 0)

    def take(self, address: str | None) -> str | None:
        """Count a connection from ``address`` (None: unknown, never limited).

        Returns what to hand to :meth:`release` when the connection ends (None: nothing was
        counted). A pair of calls rather than a context manager: it is held by every open
        connection, whose frames should stay small.

        Raises:
            TooManyConnections: ``address`` already holds ``limit`` connections.
        """
        if self.limit is None or address is None:
            return None
        count = self._open.get(address, 0)
        if count >= self.limit:
            raise TooManyConnections(self.limit, self.retry_after)
        self._open[address] = count + 1
        return address

    def release(self, address: str | None) -> None:
        """Stop counting a connection that :meth:`take` counted."""
        if address is None:
            return
        left = self._open[address] - 1
        if left:
            self._open[address] = left
        else:
            del self._open[address]
