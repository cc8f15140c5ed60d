"""The engine: what publishing and subscribing *do*, whatever the transport.

The HTTP routes, the WebSocket route and the server-side API all come here; the engine encodes each
event once, hands it to the storage (which delivers it to every process's hub) and keeps presence.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import msgspec

from .config import Settings
from .errors import ChannelClosed, ChannelError, Gone
from .hub import Hub
from .mailbox import Subscriber, Transport
from .protocol import (
    CountMessage,
    Envelope,
    InitMessage,
    PresenceMessage,
    encode,
    encode_event,
    with_id,
)
from .storage.base import Delivery, History, Storage, StoredEvent
from .tokens import TokenSigner

__all__ = ["Connection", "Engine", "Hooks", "Session"]

logger = logging.getLogger("channel_asgi")

#: A ``request`` reply is split into events whose ``message`` array stays under this size.
REQUEST_CHUNK_BYTES: Final = 256 * 1024
#: How many of a replay's newest ids a connection keeps until live deliveries pass them.
REPLAY_WINDOW: Final = 64
#: A ``request`` reply reads the history in pages of about this many bytes.
REQUEST_PAGE_BYTES: Final = 256 * 1024
_FIRST_PAGE: Final = 16  # events, before their size is known
_MAX_PAGE: Final = 1024

_END_MESSAGE: Final = encode({"status": "closed"})


def _before_backlog(
    events: list[StoredEvent], backlog: list[Delivery] | None
) -> tuple[list[StoredEvent], bool]:
    """The replayed ``events`` before the first one the backlog holds, and whether it held one."""
    if not backlog:
        return events, False
    live = {delivery.id for delivery in backlog if delivery.id is not None}
    for index, event in enumerate(events):
        if event.id in live:
            return events[:index], True
    return events, False


def _request_event(channel: str, user_id: str, items: list[bytes]) -> bytes:
    return encode_event("request", channel, b"[" + b",".join(items) + b"]", to_user_id=user_id)


class Connection(msgspec.Struct, frozen=True, gc=False):
    """A subscriber connection, as the hooks see it.

    Attributes:
        user_id: the user it runs as.
        channel: the channel it subscribed to.
        connection_id: unique across processes; the publish token is bound to it.
    """

    user_id: str
    channel: str
    connection_id: str


ConnectionHook = Callable[[Connection], Awaitable[None]]
PublishHook = Callable[[Envelope, Connection], Awaitable[None]]


@dataclass(slots=True)
class Hooks:
    """The host's callbacks (Azure Web PubSub's event handlers)."""

    on_connect: list[ConnectionHook] = field(default_factory=list)
    on_disconnect: list[ConnectionHook] = field(default_factory=list)
    on_publish: list[PublishHook] = field(default_factory=list)


@dataclass(slots=True)
class Session:
    """An open subscriber connection, between subscribe and disconnect.

    Attributes:
        subscriber: its place in the hub.
        connection: what the hooks see of it.
        anonymous: whether its user is anonymous.
        init: the encoded ``init`` event, sent first.
        replay: the first page of the retained broadcasts to send after ``init`` (a resume),
            oldest first; :meth:`Engine.replay` reads the rest as it is written.
        viewer_count: the channel's viewer count right after this connection joined.
        pages: the rest of the replay's pages, not read yet.
        replayed: the ids of the newest ``REPLAY_WINDOW`` broadcasts of the replay written (kept
            until :meth:`Engine.go_live`).
    """

    subscriber: Subscriber
    connection: Connection
    anonymous: bool
    init: bytes
    replay: list[StoredEvent]
    viewer_count: int
    pages: AsyncGenerator[History, None] | None = None
    replayed: list[str] = field(default_factory=list)


def new_connection_id() -> str:
    """Return a connection id that is unique across processes and hosts."""
    return uuid.uuid4().hex


class Engine:
    """Publishing, sessions and presence on top of a storage and this process's hub."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        hub: Hub,
        signer: TokenSigner,
        hooks: Hooks,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.hub = hub
        self.signer = signer
        self.hooks = hooks
        self._presence: dict[str, list[int]] = {}  # large channel -> [joined, left] to record
        self._watching: dict[str, float] = {}  # large channel -> until when to keep flushing
        #: How many broadcasts a channel retains, when channel patterns may override
        #: ``history_size``; None while every channel retains ``history_size``.
        self.history_for: Callable[[str], int] | None = None
        #: Called with (channel, event id, payload) after each broadcast this process made.
        self.after_broadcast: list[Callable[[str, str, bytes], None]] = []

    # -- publishing ----------------------------------------------------------------------------

    async def broadcast(
        self,
        channel: str,
        message: msgspec.Raw,
        *,
        author_id: str = "0",
        timestamp: float = 0.0,
    ) -> str:
        """Retain a broadcast and deliver it to every subscriber; return its event id."""
        payload = encode_event(
            "broadcast", channel, message, author_id=author_id, timestamp=timestamp
        )
        settings = self.settings
        keep = settings.history_size if self.history_for is None else self.history_for(channel)
        event_id = await self.storage.append(channel, payload, keep=keep, ttl=settings.history_ttl)
        for listener in self.after_broadcast:
            listener(channel, event_id, payload)
        return event_id

    async def private(
        self,
        channel: str,
        message: msgspec.Raw,
        *,
        to_user_id: str,
        author_id: str = "0",
        timestamp: float = 0.0,
        from_connection: str | None = None,
    ) -> None:
        """Deliver a message to one user's connections (and echo it to the sending one)."""
        payload = encode_event(
            "private",
            channel,
            message,
            author_id=author_id,
            to_user_id=to_user_id,
            timestamp=timestamp,
        )
        await self.storage.send(
            Delivery(channel, "event", payload, to_user=to_user_id, to_connection=from_connection)
        )

    async def request(self, channel: str, connection_id: str) -> None:
        """Ask the process holding ``connection_id`` to send it the channel's history.

        Raises:
            Gone: the connection has closed.
        """
        if not await self.storage.is_connected(connection_id):
            raise Gone("The connection this token was issued on has closed; subscribe again")
        await self.storage.send(Delivery(channel, "request", to_connection=connection_id))

    def _history_size(self, channel: str) -> int:
        settings = self.settings
        return settings.history_size if self.history_for is None else self.history_for(channel)

    async def history_pages(
        self, channel: str, after: str | None = None
    ) -> AsyncGenerator[History, None]:
        """Read the retained broadcasts after ``after`` a page at a time, oldest first.

        The first page holds :data:`_FIRST_PAGE` broadcasts (their size is not known yet), the
        next about :data:`REQUEST_PAGE_BYTES` each; at most the channel's ``history_size`` in
        all, so a busy channel cannot keep a slow reader's pages coming for ever. The first
        page's ``recovered`` is the resume's. A page's last id evicted meanwhile (the ring only
        drops its oldest) leaves only newer broadcasts: the next page starts at the oldest
        retained, without repeats.
        """
        budget = self._history_size(channel)
        page = _FIRST_PAGE
        sent = 0
        while True:  # at least one read: a resume needs its ``recovered`` even with no history
            want = min(page, budget - sent)
            history = await self.storage.history(
                channel, after=after, ttl=self.settings.history_ttl, limit=want
            )
            yield history
            events = history.events
            sent += len(events)
            if len(events) < want or sent >= budget:
                return
            after = events[-1].id
            average = max(1, sum(len(event.payload) for event in events) // len(events))
            page = max(1, min(_MAX_PAGE, REQUEST_PAGE_BYTES // average))

    async def request_reply(self, channel: str, user_id: str) -> AsyncGenerator[bytes, None]:
        """Yield the ``request`` reply for ``channel``: encoded events, each array <= 256 KiB.

        The history is read page by page (:data:`REQUEST_PAGE_BYTES` at a time) and each event
        is yielded as soon as it is built, so a reply holds about one page in memory however long
        the history is, and a writer that awaits its client between events (flow control) never
        buffers more. At most the channel's ``history_size`` broadcasts are sent, so a busy
        channel cannot keep a slow reader's reply going for ever. An empty history is one event
        with an empty array.
        """
        chunk: list[bytes] = []
        size = 2
        async with contextlib.aclosing(self.history_pages(channel)) as pages:
            async for history in pages:
                for event in history.events:
                    item = with_id(event.payload, event.id)
                    grow = len(item) + (1 if chunk else 0)
                    if chunk and size + grow > REQUEST_CHUNK_BYTES:
                        yield _request_event(channel, user_id, chunk)
                        chunk, size, grow = [], 2, len(item)
                    chunk.append(item)
                    size += grow
        yield _request_event(channel, user_id, chunk)

    async def close_channel(self, channel: str) -> None:
        """End the channel: subscribers get ``end`` and are disconnected; it answers 404 after."""
        await self.storage.close_channel(channel, encode_event("end", channel, _END_MESSAGE))

    async def ensure_open(self, channel: str) -> None:
        """Raise :class:`ChannelClosed` (404) if ``channel`` is closed."""
        if await self.storage.is_closed(channel):
            raise ChannelClosed(channel)

    # -- sessions ------------------------------------------------------------------------------

    async def open_session(
        self,
        channel: str,
        user_id: str,
        *,
        anonymous: bool,
        transport: Transport,
        last_event_id: str | None = None,
        may_replay: bool = True,
    ) -> Session:
        """Join a connection to ``channel``; return its ``init`` event and replay.

        The subscriber starts collecting live events before the history is read, so the replay
        and the live stream meet without a gap; call :meth:`go_live` once the replay is written.
        A resume (``last_event_id``) by a user who may not read the history (``may_replay``
        False) replays nothing and says ``recovered: false``.
        """
        connection_id = new_connection_id()
        subscriber = Subscriber(
            channel, connection_id, user_id, transport, self.settings.max_buffer_bytes
        )
        self.hub.attach(subscriber)
        listening = joined = False
        try:
            await self.storage.listen(channel)
            listening = True
            viewer_count = await self.storage.join(channel, connection_id)
            joined = True
            recovered = None
            replay: list[StoredEvent] = []
            pages = None
            if last_event_id is not None and not may_replay:
                recovered = False
            elif last_event_id is not None:
                pages = self.history_pages(channel, last_event_id)
                first = await anext(pages)
                replay, recovered = first.events, first.recovered
        except BaseException:
            with anyio.CancelScope(shield=True):
                self.hub.detach(subscriber)
                if joined:
                    await _quietly(self.storage.leave(channel, connection_id))
                if listening:
                    await _quietly(self.storage.unlisten(channel))
            raise
        token = self.signer.issue(channel, user_id, connection_id, anonymous=anonymous)
        init = encode_event(
            "init",
            channel,
            encode(InitMessage(user_id, token, viewer_count, recovered)),
            to_user_id=user_id,
        )
        connection = Connection(user_id, channel, connection_id)
        return Session(subscriber, connection, anonymous, init, replay, viewer_count, pages)

    async def replay(self, session: Session) -> AsyncGenerator[list[StoredEvent], None]:
        """Yield a resume's replay a page at a time, reading each page once the last is written.

        It stops where the live events collected since the connection attached begin (they are
        delivered at :meth:`go_live`), so the two meet without a gap or a repeat, and a replay of
        a long history to a slow reader holds one page, not the whole history.
        """
        subscriber = session.subscriber
        events, session.replay = session.replay, []
        pages, session.pages = session.pages, None
        try:
            while subscriber.closed is None:
                events, reached = _before_backlog(events, subscriber.backlog)
                if events:
                    # Keep the newest ids: a live delivery of a replayed broadcast is one
                    # published just before its page was read, so a short window covers it.
                    session.replayed = [*session.replayed, *(e.id for e in events)][-REPLAY_WINDOW:]
                    yield events
                if reached or pages is None:
                    return
                history = await anext(pages, None)
                if history is None:
                    return
                events = history.events
        finally:
            if pages is not None:
                await pages.aclose()

    async def open_listener(
        self, channel: str, after: str | None, *, replay: bool
    ) -> tuple[Subscriber, list[StoredEvent], str | None]:
        """Attach a server-side subscriber (not a viewer) to ``channel``.

        Args:
            channel: the channel.
            after: the event id to replay from (all retained broadcasts when None).
            replay: whether to replay at all.

        Returns:
            The subscriber, the broadcasts to replay, and the id of the newest broadcast retained
            when it attached (the point to recover from when nothing was yielded yet).
        """
        subscriber = Subscriber(
            channel, new_connection_id(), None, Transport.JSON, self.settings.max_buffer_bytes
        )
        self.hub.attach(subscriber)
        try:
            await self.storage.listen(channel)
            try:
                history = await self.storage.history(
                    channel, after=after, ttl=self.settings.history_ttl
                )
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await _quietly(self.storage.unlisten(channel))
                raise
        except BaseException:
            self.hub.detach(subscriber)
            raise
        events = history.events if replay else []
        newest = history.events[-1].id if history.events else after
        self.hub.activate(subscriber, [event.id for event in events])
        return subscriber, events, newest

    async def close_listener(self, subscriber: Subscriber) -> None:
        """Detach a server-side subscriber."""
        self.hub.detach(subscriber)
        await _quietly(self.storage.unlisten(subscriber.channel))

    async def go_live(self, session: Session) -> None:
        """Deliver what arrived during the replay, announce the join and run ``on_connect``."""
        replayed, session.replayed = session.replayed, []
        self.hub.activate(session.subscriber, replayed)
        await self._announce(session.connection, "join", session.viewer_count)
        for hook in self.hooks.on_connect:
            await self.run_hook(hook, session.connection)

    async def end_session(self, session: Session) -> None:
        """Remove a connection: leave, announce it, run ``on_disconnect``. Never raises."""
        connection = session.connection
        self.hub.detach(session.subscriber)
        try:
            count = await self.storage.leave(connection.channel, connection.connection_id)
            await self.storage.unlisten(connection.channel)
            await self._announce(connection, "leave", count)
        except ChannelError as exc:
            logger.warning("Could not record the leave of %s: %s", connection.connection_id, exc)
        for hook in self.hooks.on_disconnect:
            await self.run_hook(hook, connection)

    # -- presence ------------------------------------------------------------------------------

    async def _announce(self, connection: Connection, status: str, count: int) -> None:
        channel = connection.channel
        viewers_during = count if status == "join" else count + 1
        if viewers_during > self.settings.system_events_max_viewers:
            # Large channel: one coalesced "count" event per presence_interval instead.
            pending = self._presence.setdefault(channel, [0, 0])
            pending[0 if status == "join" else 1] += 1
            return
        message = encode(PresenceMessage(status, connection.user_id, count))
        await self.storage.send(
            Delivery(
                channel,
                "event",
                encode_event("system", channel, message),
                exclude_connection=connection.connection_id,
            )
        )

    async def flush_presence(self) -> None:
        """Record this process's joins and leaves of large channels and send due ``count`` events.

        The storage lets one process per interval announce the totals of every process; a
        channel is flushed for a few intervals after its last local change, so what this process
        recorded is announced even when another process held the interval.
        """
        pending, self._presence = self._presence, {}
        now = anyio.current_time()
        interval = self.settings.presence_interval
        for channel in pending:
            self._watching[channel] = now + 3 * interval
        for channel, until in list(self._watching.items()):
            if until < now:
                del self._watching[channel]
                continue
            joined, left = pending.get(channel, (0, 0))
            await self._send_count(channel, joined, left)

    async def _send_count(self, channel: str, joined: int, left: int) -> None:
        interval = self.settings.presence_interval
        try:
            totals = await self.storage.coalesce_presence(channel, joined, left, interval=interval)
        except ChannelError as exc:  # keep the tallies for the next flush
            logger.warning("Could not record the presence of %r: %s", channel, exc)
            pending = self._presence.setdefault(channel, [0, 0])
            pending[0] += joined
            pending[1] += left
            return
        if totals is None:
            return
        message = encode(CountMessage("count", totals.viewer_count, totals.joined, totals.left))
        await self.storage.send(
            Delivery(channel, "event", encode_event("system", channel, message))
        )

    # -- hooks ---------------------------------------------------------------------------------

    async def run_hook(self, hook: Callable[..., Any], *args: Any) -> None:
        """Run a connect/disconnect hook, bounded in time; log (never raise) its failure."""
        try:
            with anyio.fail_after(self.settings.hook_timeout):
                result = hook(*args)
                if inspect.isawaitable(result):
                    await result
        except TimeoutError:
            logger.error("Hook %r took longer than %s s", hook, self.settings.hook_timeout)
        except Exception:
            logger.exception("Hook %r failed", hook)


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except ChannelError as exc:
        logger.warning("Cleanup step failed: %s", exc)
