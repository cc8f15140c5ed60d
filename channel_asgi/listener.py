"""Server-side subscribers: ``async with channels.subscribe(channel) as events``.

A server-side subscriber is not a viewer (it is not counted and sends no join or leave). It gets
every event the channel's subscribers get except private ones and ``init``; after the ``end`` of a
closed channel, iteration stops. If it falls more than ``max_buffer_bytes`` behind, it re-attaches
and replays the broadcasts it missed from history, as a reconnecting browser would.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import cast

import anyio
import msgspec

from .engine import Engine
from .errors import maps_storage_errors
from .mailbox import Close, Mailbox
from .protocol import Envelope, decode_envelope, skip_undecodable, with_id

__all__ = ["Listener"]

logger = logging.getLogger("channel_asgi.subscription")  # documented (docs/client.md)


class Listener:
    """An async iterator of the events of one channel, as decoded envelopes.

    Args:
        engine: the app's engine.
        start: awaited before attaching (starts the app's background work).
        channel: the channel, already validated.
        last_event_id: replay the retained broadcasts after this id first, when given.
    """

    def __init__(
        self,
        engine: Engine,
        start: Callable[[], Awaitable[None]],
        channel: str,
        last_event_id: str | None = None,
    ) -> None:
        self._engine = engine
        self._start = start
        self.channel = channel
        self._after = last_event_id
        self._mailbox: Mailbox | None = None
        self._pending: deque[bytes] = deque()
        self._ended = False

    @property
    def last_event_id(self) -> str | None:
        """The id of the newest broadcast yielded (or replayed from), if any."""
        return self._after

    async def _attach(self, *, replay: bool) -> None:
        mailbox, replay_events, newest = await self._engine.attach_listener(
            self.channel, self._after, replay=replay
        )
        self._mailbox = mailbox
        self._pending.extend(with_id(event.payload, event.id) for event in replay_events)
        if self._after is None:
            self._after = newest

    @maps_storage_errors
    async def __aenter__(self) -> Listener:
        await self._start()
        await self._engine.ensure_open(self.channel)
        await self._attach(replay=self._after is not None)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        mailbox, self._mailbox = self._mailbox, None
        if mailbox is not None:
            with anyio.CancelScope(shield=True):
                await self._engine.detach_listener(mailbox)

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> Envelope:
        while True:
            await self._fill()
            data = self._pending.popleft()
            try:
                envelope = decode_envelope(data)
            except msgspec.DecodeError as exc:  # breaks the number rule (an older writer's)
                self._skip(data, exc)
                continue
            if envelope.id is not None:
                self._after = envelope.id
            if envelope.type == "end":
                self._ended = True
            return envelope

    @maps_storage_errors
    async def _fill(self) -> None:
        """Wait until an event is pending; raise StopAsyncIteration when the channel ended."""
        while not self._pending:
            mailbox = self._mailbox
            if self._ended or mailbox is None:
                raise StopAsyncIteration
            items = await mailbox.take()
            if items:
                self._pending.extend(cast("list[bytes]", items))
            elif mailbox.closed is Close.SLOW:
                await self._engine.detach_listener(mailbox)
                self._mailbox = None
                await self._attach(replay=True)
            else:
                raise StopAsyncIteration

    def _skip(self, data: bytes, exc: Exception) -> None:
        """Log an event that cannot be decoded and count its id as seen (it is not replayed)."""
        event_id = skip_undecodable(logger, self.channel, data, exc)
        if event_id is not None:
            self._after = event_id
