"""Presence events: a viewer's ``join`` and ``leave``, or one ``count`` event for large channels.

Up to ``system_events_max_viewers`` viewers, each join and leave is announced to the channel's
other subscribers. Above it, this process tallies them and, once per ``presence_interval``, the
storage lets one process announce the totals of every process in one ``count`` event.
"""

from __future__ import annotations

import logging

import anyio

from .config import Settings
from .connection import Connection
from .errors import ChannelError
from .protocol import CountMessage, PresenceMessage, encode, encode_event
from .storage.base import Delivery, Storage, StorageError

__all__ = ["Announcer"]

logger = logging.getLogger("channel_asgi")


class Announcer:
    """Announce the joins and leaves of one app's connections."""

    def __init__(self, settings: Settings, storage: Storage) -> None:
        self._settings = settings
        self._storage = storage
        self._pending: dict[str, list[int]] = {}  # large channel -> [joined, left] to record
        self._watching: dict[str, float] = {}  # large channel -> until when to keep flushing

    async def announce(self, connection: Connection, status: str, count: int) -> None:
        """Announce ``connection``'s ``join`` or ``leave``; ``count``: the viewers after it."""
        channel = connection.channel
        viewers_during = count if status == "join" else count + 1
        if viewers_during > self._settings.system_events_max_viewers:
            # Large channel: one coalesced "count" event per presence_interval instead.
            pending = self._pending.setdefault(channel, [0, 0])
            pending[0 if status == "join" else 1] += 1
            return
        message = encode(PresenceMessage(status, connection.user_id, count))
        await self._storage.send(
            Delivery(
                channel,
                "event",
                encode_event("system", channel, message),
                exclude_connection=connection.connection_id,
            )
        )

    async def flush(self) -> None:
        """Record this process's joins and leaves of large channels and send due ``count`` events.

        The storage lets one process per interval announce the totals of every process; a
        channel is flushed for a few intervals after its last local change, so what this process
        recorded is announced even when another process held the interval.
        """
        pending, self._pending = self._pending, {}
        now = anyio.current_time()
        interval = self._settings.presence_interval
        for channel in pending:
            self._watching[channel] = now + 3 * interval
        for channel, until in list(self._watching.items()):
            if until < now:
                del self._watching[channel]
                continue
            joined, left = pending.get(channel, (0, 0))
            await self._send_count(channel, joined, left)

    async def _send_count(self, channel: str, joined: int, left: int) -> None:
        interval = self._settings.presence_interval
        try:
            totals = await self._storage.coalesce_presence(channel, joined, left, interval=interval)
        except (ChannelError, StorageError) as exc:  # keep the tallies for the next flush
            logger.warning("Could not record the presence of %r: %s", channel, exc)
            pending = self._pending.setdefault(channel, [0, 0])
            pending[0] += joined
            pending[1] += left
            return
        if totals is None:
            return
        message = encode(CountMessage("count", totals.viewer_count, totals.joined, totals.left))
        await self._storage.send(
            Delivery(channel, "event", encode_event("system", channel, message))
        )
