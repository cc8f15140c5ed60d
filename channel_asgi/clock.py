"""The time source of the edge: rate limits, body deadlines, publish and identity tokens, bans.

``monotonic()`` measures intervals (a rate limit's refill, a body's deadline). ``time()`` is
Unix seconds, the time written into tokens and checked against their expiry.

Callers look the functions up on this module each time (``from . import clock``, then
``clock.monotonic()``; never ``from .clock import monotonic``). That lookup is the seam: a test
replaces both attributes with a fake clock that it advances by hand, instead of sleeping until a
bucket refills or a token expires (``tests/conftest.py``'s ``clock`` fixture). They are the
standard functions themselves, not wrappers, so a publish, which reads the time for its rate
limit and its token, pays what ``time.monotonic()`` and ``time.time()`` cost: one attribute
lookup and a call each.

``sleep(seconds)`` is what the app's periodic work waits on between two ticks (heartbeats, the
presence interval, the sweep of body deadlines, the exit watch; ``lifecycle.run_every``): anyio's
own sleep, which a fake clock replaces with one that returns when the test advances past it.

The storage backends read it for bans (``time()`` judges when a ban ends, in every backend) and
for ``MemoryStorage``'s token buckets (``monotonic()``); ``RedisStorage``'s buckets use Redis's
clock. Not read here: the event loop's clock (anyio's timeouts: hooks, webhooks, health checks)
and the storages' history ttl and presence, judged by a ``clock=`` of their own
(``MemoryStorage``) or by Redis.
"""

from __future__ import annotations

from time import monotonic, time

from anyio import sleep

__all__ = ["monotonic", "sleep", "time"]
