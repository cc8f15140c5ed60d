"""``MemoryStorage``: the embedded default, for one process.

Several apps in one process may share one instance; each gets every delivery, which is how the
tests model several workers without Redis.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from ..errors import ChannelClosed
from .base import Deliver, Delivery, History, PresenceTotals, StoredEvent

__all__ = ["MemoryStorage"]


@dataclass(slots=True)
class _Channel:
    events: deque[tuple[StoredEvent, float]] = field(default_factory=deque)
    last_id: str | None = None
    viewers: set[str] = field(default_factory=set)


class MemoryStorage:
    """History, presence and delivery held in this process's memory.

    Nothing survives a restart and nothing crosses process boundaries: run one worker, or use
    :class:`~channel_asgi.storage.RedisStorage`.
    """

    shared = False

    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}
        self._closed: set[str] = set()
        self._connections: set[str] = set()
        self._consumers: list[Deliver] = []
        self._presence: dict[str, list[float]] = {}  # channel -> [joined, left, announced at]
        # Event ids are "<when this storage started, in ms>-<sequence>" (the shape of Redis
        # stream ids): ordered by publication, and never equal to an id a browser kept from an
        # earlier process, which then resumes as unknown (``recovered`` false).
        self._id_prefix = f"{time.time_ns() // 1_000_000}-"
        self._sequence = itertools.count()

    def _channel(self, channel: str) -> _Channel:
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
        return state

    def _deliver(self, delivery: Delivery) -> None:
        for deliver in self._consumers:
            deliver(delivery)

    async def run(
        self, deliver: Deliver, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Call ``deliver`` for every delivery until cancelled."""
        self._consumers.append(deliver)
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self._consumers.remove(deliver)

    async def listen(self, channel: str) -> None:
        """Nothing to do: every delivery reaches every consumer of this process."""

    async def unlisten(self, channel: str) -> None:
        """Nothing to do (see :meth:`listen`)."""

    async def append(
        self, channel: str, payload: bytes, *, keep: int, ttl: float | None = None
    ) -> str:
        """Retain a broadcast, deliver it, and return its id."""
        if channel in self._closed:
            raise ChannelClosed(channel)
        state = self._channels.get(channel) or self._channel(channel)
        event_id = state.last_id = f"{self._id_prefix}{next(self._sequence)}"
        events = state.events
        if events.maxlen != keep:  # the channel's first broadcast, or its history size changed
            events = state.events = deque(events, maxlen=keep)
        events.append((StoredEvent(event_id, payload), 0.0 if ttl is None else time.monotonic()))
        if ttl is not None:
            self._expire(state, ttl)
        delivery = Delivery(channel, "event", payload, event_id)
        for deliver in self._consumers:
            deliver(delivery)
        return event_id

    async def send(self, delivery: Delivery) -> None:
        """Deliver an event that is not retained."""
        self._deliver(delivery)

    @staticmethod
    def _expire(state: _Channel, ttl: float | None) -> None:
        if ttl is None:
            return
        horizon = time.monotonic() - ttl
        while state.events and state.events[0][1] < horizon:
            state.events.popleft()

    async def history(
        self,
        channel: str,
        *,
        after: str | None = None,
        ttl: float | None = None,
        limit: int | None = None,
    ) -> History:
        """Return retained broadcasts, after ``after`` when given, at most ``limit`` of them."""
        state = self._channels.get(channel)
        if state is None:
            return History([], None if after is None else False)
        self._expire(state, ttl)
        events = [event for event, _ in state.events]
        end = None if limit is None else max(limit, 0)
        if after is None:
            return History(events[:end])
        if after == state.last_id:
            return History([], True)
        for index, event in enumerate(events):
            if event.id == after:
                start = index + 1
                return History(events[start : None if end is None else start + end], True)
        return History(events[:end], False)

    async def join(self, channel: str, connection_id: str) -> int:
        """Count a live connection."""
        viewers = self._channel(channel).viewers
        viewers.add(connection_id)
        self._connections.add(connection_id)
        return len(viewers)

    async def leave(self, channel: str, connection_id: str) -> int:
        """Stop counting a connection."""
        self._connections.discard(connection_id)
        state = self._channels.get(channel)
        if state is None:
            return 0
        state.viewers.discard(connection_id)
        count = len(state.viewers)
        if not count and not state.events and state.last_id is None:
            del self._channels[channel]
        return count

    async def viewer_count(self, channel: str) -> int:
        """Return the number of live connections."""
        state = self._channels.get(channel)
        return 0 if state is None else len(state.viewers)

    async def is_connected(self, connection_id: str) -> bool:
        """Return whether the connection is live."""
        return connection_id in self._connections

    async def coalesce_presence(
        self, channel: str, joined: int, left: int, *, interval: float
    ) -> PresenceTotals | None:
        """Accumulate joins and leaves; release them at most once per ``interval``."""
        state = self._presence.setdefault(channel, [0, 0, -interval])
        state[0] += joined
        state[1] += left
        now = time.monotonic()
        if now - state[2] < interval or not (state[0] or state[1]):
            return None
        totals = PresenceTotals(await self.viewer_count(channel), int(state[0]), int(state[1]))
        state[0] = state[1] = 0
        state[2] = now
        return totals

    async def close_channel(self, channel: str, end_payload: bytes) -> None:
        """Mark closed and deliver the ``end`` event."""
        self._closed.add(channel)
        self._deliver(Delivery(channel, "end", end_payload))

    async def open_channel(self, channel: str) -> None:
        """Mark open again."""
        self._closed.discard(channel)

    async def is_closed(self, channel: str) -> bool:
        """Return whether the channel is closed."""
        return channel in self._closed
