"""Limits per client: token buckets on publishes, and open connections per address.

``rate_limit`` (per user), ``ip_rate_limit`` (per client address) and ``slow_mode`` (per user and
channel, broadcasts only) are buckets of the storage (``Storage.take_token``): on a shared storage
every process takes from the same bucket, so N workers together allow what one would. A refusal
takes no token from the bucket that refused; with both ``rate_limit`` and ``ip_rate_limit`` on,
the user's bucket is asked first, and a refusal by the address's bucket has already spent the
user's token (the storage takes from one bucket at a time). Open connections are counted in this
process; an address is forgotten as soon as its last connection ends, so the count is bounded by
the connections open.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from .errors import TooManyConnections
from .storage.base import Storage

__all__ = ["ConnectionLimit", "PublishLimits"]

#: A wait this much over a whole number of seconds is that number (float rounding).
_ROUNDING: Final = 1e-9


def _retry_after(wait: float) -> int:
    """``Retry-After``: the wait in whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait - _ROUNDING))


class PublishLimits:
    """The publish rate limits and slow mode, as token buckets of the storage.

    Args:
        storage: holds the buckets (shared by every process when the storage is).
        user: ``(per_second, burst)`` publishes per user, or None.
        ip: ``(per_second, burst)`` publishes per client address, or None.
        slow_mode: returns a channel's ``slow_mode`` in seconds (None or 0: off).
    """

    def __init__(
        self,
        storage: Storage,
        user: tuple[float, float] | None,
        ip: tuple[float, float] | None,
        slow_mode: Callable[[str], float | None],
    ) -> None:
        self._storage = storage
        self._user = user
        self._ip = ip
        #: Returns a channel's ``slow_mode`` in seconds (None or 0: off).
        self.slow_mode = slow_mode
        #: Whether a rate limit is on (else :meth:`over_rate` need not be called).
        self.rated = user is not None or ip is not None

    async def over_rate(self, user_id: str, client: str | None) -> tuple[str, int] | None:
        """Take a token from the user's and the address's buckets.

        Returns:
            None when the publish may go; else the limit that refused it (``"user"`` or
            ``"ip"``) and the ``Retry-After`` in seconds.

        Raises:
            StorageError: the storage cannot be reached (503), or did not answer (504).
        """
        for name, limit, subject in (("user", self._user, user_id), ("ip", self._ip, client)):
            if limit is None or subject is None:
                continue
            rate, burst = limit
            wait = await self._storage.take_token(f"rate:{name}:{subject}", rate=rate, burst=burst)
            if wait:
                return name, _retry_after(wait)
        return None

    async def over_slow_mode(self, channel: str, user_id: str, seconds: float) -> int | None:
        """Take the user's slow-mode token of ``channel`` (``seconds``: its ``slow_mode``).

        Returns:
            None when the broadcast may go; else the ``Retry-After`` in seconds.

        Raises:
            StorageError: the storage cannot be reached (503), or did not answer (504).
        """
        # A space parts the two: channel names have none, so no two pairs share a bucket.
        key = f"slow:{channel} {user_id}"
        wait = await self._storage.take_token(key, rate=1.0 / seconds, burst=1.0)
        return _retry_after(wait) if wait else None


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
