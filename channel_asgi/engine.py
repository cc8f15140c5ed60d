"""The engine: what publishing and subscribing *do*, whatever the route or transport.

The routes (subscribe, publish, WebSocket) and the server-side API all come here. A publish is
encoded once and handed to the storage, which delivers it to every process's hub; a connection
is joined (mailbox attached, channel listened, viewer counted), replayed, made live, and
removed again.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import msgspec

from .announce import Announcer
from .archive import ArchiveReader
from .config import Settings
from .connection import Connection, Framing, new_connection_id
from .errors import ChannelClosed, ChannelError, Gone
from .history import HistoryReader, Replay
from .http import Send
from .hub import Hub
from .mailbox import Close, Mailbox
from .metrics import Tally
from .moderation import Moderator
from .protocol import Envelope, InitMessage, encode, encode_event
from .ranges import MediaRange, decode_range, encode_range
from .storage.base import Delivery, Storage, StorageError, StoredEvent
from .tokens import TokenSigner

__all__ = ["Engine", "Hooks", "Opening"]

logger = logging.getLogger("channel_asgi")

_END_MESSAGE: Final = encode({"status": "closed"})
_TRANSPORTS: Final = {
    Framing.SSE: "sse",
    Framing.MULTI: "sse",
    Framing.TEXT: "websocket",
    Framing.TEXT_MULTI: "websocket",
}

ConnectionHook = Callable[[Connection], Awaitable[None]]
PublishHook = Callable[[Envelope, Connection], Awaitable[None]]
BroadcastListener = Callable[[str, str, bytes], None]


@dataclass(slots=True)
class Hooks:
    """The host's callbacks (Azure Web PubSub's event handlers)."""

    on_connect: list[ConnectionHook] = field(default_factory=list)
    on_disconnect: list[ConnectionHook] = field(default_factory=list)
    on_publish: list[PublishHook] = field(default_factory=list)


class Opening:
    """What a new connection sends before its live events, and what its hooks see.

    Attributes:
        connection: the connection, as the hooks see it.
        anonymous: whether its user is anonymous.
        viewer_count: the channel's viewer count right after it joined.
        replay: a resume's replay (empty without ``Last-Event-ID``).
    """

    __slots__ = ("_init", "anonymous", "connection", "replay", "viewer_count")

    def __init__(
        self,
        connection: Connection,
        anonymous: bool,
        init: bytes,
        viewer_count: int,
        replay: Replay,
    ) -> None:
        self.connection: Final = connection
        self.anonymous: Final = anonymous
        self.viewer_count: Final = viewer_count
        self.replay: Final = replay
        self._init = init

    def take_init(self) -> bytes:
        """Return the encoded ``init`` event (sent first), and let it be freed."""
        init, self._init = self._init, b""
        return init


class Engine:
    """Publishing, connections and presence on top of a storage and this process's hub.

    Args:
        settings: the app's settings.
        storage: history, presence and delivery to every process.
        hub: this process's connections.
        signer: issues the publish tokens ``init`` carries.
        hooks: the host's callbacks.
        history_size: how many broadcasts a channel retains (channel patterns may differ).
        archive_size: how many broadcasts a channel archives by media time (0: none).
        on_broadcast: called with (channel, event id, payload) after each broadcast this
            process made (the bridges), or None.
        tally: where connections, resumes and failures are counted (the metrics read it).
    """

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        hub: Hub,
        signer: TokenSigner,
        hooks: Hooks,
        *,
        history_size: Callable[[str], int],
        archive_size: Callable[[str], int] | None = None,
        on_broadcast: BroadcastListener | None = None,
        tally: Tally | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.signer = signer
        self._hub = hub
        self._hooks = hooks
        self._history_size = history_size
        self._archive_size = archive_size
        self._on_broadcast = on_broadcast
        self.tally = Tally() if tally is None else tally
        self.history = HistoryReader(storage, history_size, settings.history_ttl)
        self.archive = ArchiveReader(storage)
        self.announcer = Announcer(settings, storage)
        self.moderator = Moderator(storage)

    # -- publishing ----------------------------------------------------------------------------

    async def broadcast(
        self,
        channel: str,
        message: msgspec.Raw,
        *,
        author_id: str = "0",
        timestamp: float = 0.0,
        by_user: bool = False,
    ) -> str:
        """Retain a broadcast and deliver it to every subscriber; return its event id.

        With an archive (``archive_size``), a broadcast with a media time (``timestamp`` > 0;
        0 is what a publish without one gets) is archived by it too, in the same storage call.
        A user's broadcast (``by_user``: a client publish) is refused in that call while
        ``author_id`` is banned there (``StorageUserBanned``, a 403; see ``moderation``).
        """
        payload = encode_event(
            "broadcast", channel, message, author_id=author_id, timestamp=timestamp
        )
        keep, ttl = self._history_size(channel), self.settings.history_ttl
        archive = 0 if self._archive_size is None or timestamp <= 0 else self._archive_size(channel)
        author = author_id if by_user else None
        if archive:
            event_id = await self.storage.append(
                channel,
                payload,
                keep=keep,
                ttl=ttl,
                archive=archive,
                timestamp=timestamp,
                author=author,
            )
        else:
            event_id = await self.storage.append(
                channel, payload, keep=keep, ttl=ttl, author=author
            )
        if self._on_broadcast is not None:
            self._on_broadcast(channel, event_id, payload)
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

    async def request_history(
        self, channel: str, connection_id: str, wanted: MediaRange | None = None
    ) -> None:
        """Ask the process holding ``connection_id`` to send it the channel's history.

        Args:
            wanted: a range of the archive to send instead, or None.

        Raises:
            Gone: the connection has closed.
            BadRequest: ``wanted.after`` is not in the archive.
        """
        if not await self.storage.is_connected(connection_id):
            raise Gone("The connection this token was issued on has closed; subscribe again")
        query = b""
        if wanted is not None:
            await self.archive.check(channel, wanted)
            query = encode_range(wanted)
        await self.storage.send(Delivery(channel, "request", query, to_connection=connection_id))

    async def request_here(
        self, mailbox: Mailbox, channel: str, wanted: MediaRange | None = None
    ) -> None:
        """Queue a ``request`` reply on a connection of this process (a WebSocket's own).

        Args:
            channel: the channel asked about (one of a stream's, or the mailbox's own).

        Raises:
            BadRequest: ``wanted.after`` is not in the archive.
        """
        query = b""
        if wanted is not None:
            await self.archive.check(channel, wanted)
            query = encode_range(wanted)
        mailbox.request_history(query, channel)

    def request_reply(
        self, channel: str, user_id: str, query: bytes
    ) -> AsyncGenerator[bytes, None]:
        """Return the ``request`` reply a connection's writer sends for a queued request.

        Args:
            query: what the request asked for: empty for the live history, else an encoded
                range of the archive.
        """
        if not query:
            return self.history.request_reply(channel, user_id)
        return self.archive.request_reply(channel, user_id, decode_range(query))

    async def close_channel(self, channel: str) -> None:
        """End the channel: subscribers get ``end`` and are disconnected; it answers 404 after."""
        await self.storage.close_channel(channel, encode_event("end", channel, _END_MESSAGE))

    async def ensure_open(self, channel: str) -> None:
        """Raise :class:`ChannelClosed` (404) if ``channel`` is closed."""
        if await self.storage.is_closed(channel):
            raise ChannelClosed(channel)

    # -- connections ---------------------------------------------------------------------------

    async def connect(
        self,
        channel: str,
        user_id: str,
        *,
        anonymous: bool,
        framing: Framing,
        last_event_id: str | None = None,
        may_replay: bool = True,
        stream: Mailbox | None = None,
    ) -> tuple[Mailbox, Opening]:
        """Join a connection to ``channel``; return its mailbox and what it sends first.

        The mailbox collects live events before the history is read, so the replay and the
        live stream meet without a gap; call :meth:`go_live` once the replay is written. A
        resume (``last_event_id``) by a user who may not read the history (``may_replay``
        False) replays nothing and says ``recovered: false``.

        Args:
            stream: the mailbox of a stream of several channels to join ``channel`` to (it is
                then the mailbox returned); the channel gets a connection id of its own.
        """
        connection_id = new_connection_id()
        hub = self._hub
        if stream is None:
            mailbox = hub.mailbox(
                channel, connection_id, user_id, framing, self.settings.max_buffer_bytes
            )
        else:
            mailbox = stream
        connection = Connection(user_id, channel, connection_id)
        member = None if stream is None else connection
        hub.attach(mailbox, member)
        listening = joined = False
        pages = None
        events: list[StoredEvent] = []
        try:
            await hub.listen(channel)
            listening = True
            viewer_count = await self.storage.join(channel, connection_id, user_id)
            joined = True
            if not anonymous:  # listening: a ban made from here on reaches it (moderation)
                await self.moderator.refuse_banned(channel, user_id)
            recovered = None
            if last_event_id is not None and not may_replay:
                recovered = False
            elif last_event_id is not None:
                pages = self.history.pages(channel, last_event_id)
                first = await anext(pages)
                events, recovered = first.events, first.recovered
        except BaseException:
            with anyio.CancelScope(shield=True):
                hub.detach(mailbox, member)
                if pages is not None:
                    await pages.aclose()
                if joined:
                    await _quietly(self.storage.leave(channel, connection_id))
                if listening:
                    await _quietly(hub.unlisten(channel))
            raise
        tally = self.tally
        tally.add("subscribes", _TRANSPORTS.get(framing, "server"), 200)
        if recovered is not None:
            tally.add("resumes", recovered)
        token = self.signer.issue(channel, user_id, connection_id, anonymous=anonymous)
        init = encode_event(
            "init",
            channel,
            encode(InitMessage(user_id, token, viewer_count, recovered)),
            to_user_id=user_id,
        )
        opening = Opening(connection, anonymous, init, viewer_count, Replay(events, pages))
        return mailbox, opening

    def stream_mailbox(
        self, channel: str, connection_id: str, user_id: str, framing: Framing
    ) -> Mailbox:
        """Return the one mailbox of a stream of several channels (``channel``: its first).

        Join each channel to it with :meth:`connect` (``stream=``); :meth:`forget_stream` when
        the stream has ended.
        """
        return self._hub.mailbox(
            channel, connection_id, user_id, framing, self.settings.max_buffer_bytes, multi=True
        )

    def forget_stream(self, mailbox: Mailbox) -> None:
        """Forget a stream's mailbox once each of its channels has left."""
        self._hub.forget_stream(mailbox)

    async def abandon(self, mailbox: Mailbox, opening: Opening) -> None:
        """Undo :meth:`connect` for a channel that never went live (no leave event, no hooks).

        A stream of several channels refused at a later channel undoes the earlier ones so.
        Never raises.
        """
        connection = opening.connection
        with anyio.CancelScope(shield=True):
            self._hub.detach(mailbox, connection if mailbox.multi else None)
            await opening.replay.aclose()
            await _quietly(self.storage.leave(connection.channel, connection.connection_id))
            await _quietly(self._hub.unlisten(connection.channel), self.tally)

    def replay(self, mailbox: Mailbox, opening: Opening) -> AsyncGenerator[list[StoredEvent], None]:
        """Yield a resume's replay a page at a time, reading each page once the last is written.

        It stops where the live events collected since the connection attached begin (they are
        delivered at :meth:`go_live`), so the two meet without a gap or a repeat.
        """
        hub = self._hub

        member = opening.connection if mailbox.multi else None

        def stop() -> frozenset[str] | None:
            return None if mailbox.closed is not None else hub.backlog_ids(mailbox, member)

        return self.history.replay(opening.replay, stop)

    def write_directly(self, mailbox: Mailbox, send: Send) -> None:
        """Let an SSE mailbox's batches be written without waking its writer (``fastpath``)."""
        self._hub.write_directly(mailbox, send)

    async def go_live(self, mailbox: Mailbox, opening: Opening) -> None:
        """Deliver what arrived during the replay, announce the join and run ``on_connect``."""
        member = opening.connection if mailbox.multi else None
        self._hub.activate(mailbox, opening.replay.take_written(), member)
        await self.announcer.announce(opening.connection, "join", opening.viewer_count)
        for hook in self._hooks.on_connect:
            await self.run_hook(hook, opening.connection, name="on_connect")

    async def disconnect(self, mailbox: Mailbox, opening: Opening) -> None:
        """Remove a connection: leave, announce it, run ``on_disconnect``. Never raises."""
        connection = opening.connection
        self._hub.detach(mailbox, connection if mailbox.multi else None)
        if mailbox.closed is Close.SLOW and not mailbox.multi:  # a stream counts itself once
            self.tally.add("slow_consumer_disconnects")
        try:
            count = await self.storage.leave(connection.channel, connection.connection_id)
        except (ChannelError, StorageError) as exc:
            self.tally.storage_error(exc)
            logger.warning("Could not record the leave of %s: %s", connection.connection_id, exc)
        else:
            await _quietly(self.announcer.announce(connection, "leave", count), self.tally)
        finally:  # whatever the storage did: this process's count of the channel drops
            await _quietly(self._hub.unlisten(connection.channel), self.tally)
        for hook in self._hooks.on_disconnect:
            await self.run_hook(hook, connection, name="on_disconnect")

    # -- server-side subscribers ---------------------------------------------------------------

    async def attach_listener(
        self, channel: str, after: str | None, *, replay: bool
    ) -> tuple[Mailbox, list[StoredEvent], str | None]:
        """Attach a server-side subscriber (not a viewer) to ``channel``.

        Args:
            channel: the channel.
            after: the event id to replay from (all retained broadcasts when None).
            replay: whether to replay at all.

        Returns:
            Its mailbox, the broadcasts to replay, and the id of the newest broadcast retained
            when it attached (the point to recover from when nothing was yielded yet).
        """
        hub = self._hub
        mailbox = hub.mailbox(
            channel, new_connection_id(), None, Framing.JSON, self.settings.max_buffer_bytes
        )
        hub.attach(mailbox)
        try:
            await hub.listen(channel)
            try:
                history = await self.storage.history(
                    channel, after=after, ttl=self.settings.history_ttl
                )
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await _quietly(hub.unlisten(channel))
                raise
        except BaseException:
            hub.detach(mailbox)
            raise
        events = history.events if replay else []
        newest = history.events[-1].id if history.events else after
        hub.activate(mailbox, [event.id for event in events])
        return mailbox, events, newest

    async def detach_listener(self, mailbox: Mailbox) -> None:
        """Detach a server-side subscriber."""
        self._hub.detach(mailbox)
        await _quietly(self._hub.unlisten(mailbox.channel))

    # -- hooks ---------------------------------------------------------------------------------

    async def run_hook(self, hook: Callable[..., Any], *args: Any, name: str = "hook") -> None:
        """Run a connect/disconnect hook, bounded in time; log (never raise) its failure.

        Args:
            name: which hooks it is one of (``on_connect``, ``on_disconnect``), for the log
                and the metrics.
        """
        try:
            with anyio.fail_after(self.settings.hook_timeout):
                result = hook(*args)
                if inspect.isawaitable(result):
                    await result
        except TimeoutError:
            self.tally.add("hook_failures", name, "timeout")
            logger.error("%s hook %r took longer than %s s", name, hook, self.settings.hook_timeout)
        except Exception:
            self.tally.add("hook_failures", name, "error")
            logger.exception("%s hook %r failed", name, hook)


async def _quietly(awaitable: Awaitable[Any], tally: Tally | None = None) -> None:
    try:
        await awaitable
    except (ChannelError, StorageError) as exc:
        if tally is not None:
            tally.storage_error(exc)
        logger.warning("Cleanup step failed: %s", exc)
