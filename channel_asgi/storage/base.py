"""The ``Storage`` protocol: history, presence, closed channels and delivery to every process.

A storage is what processes share. ``MemoryStorage`` shares nothing beyond one process;
``RedisStorage`` shares everything through Redis. A third-party backend implements the methods below
and passes the conformance suite in ``tests/storage/test_conformance.py`` (``docs/storage.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal, Protocol, runtime_checkable

import msgspec
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

__all__ = [
    "Deliver",
    "Delivery",
    "DeliveryKind",
    "History",
    "Presence",
    "PresenceTotals",
    "Storage",
    "StoredEvent",
    "decode_delivery",
    "encode_delivery",
]

#: What a delivery asks of the processes that get it (see :class:`Delivery`).
DeliveryKind = Literal["event", "request", "end"]


class Delivery(msgspec.Struct, array_like=True, gc=False):
    """One event on its way to the subscribers of a channel, in every process.

    Attributes:
        channel: the channel it belongs to.
        kind: ``"event"`` (write ``payload`` to the matching connections), ``"request"`` (send
            the channel's history to ``to_connection``) or ``"end"`` (write ``payload``, then
            close every connection of the channel).
        payload: the encoded envelope, without ``id``.
        id: the event id of a retained broadcast, else None.
        to_user: only connections of this user get it (with ``to_connection``), when given.
        to_connection: only this connection gets it (with ``to_user``), when given.
        exclude_connection: this connection does not get it (a joiner's own ``join``).
    """

    channel: str
    kind: DeliveryKind
    payload: bytes = b""
    id: str | None = None
    to_user: str | None = None
    to_connection: str | None = None
    exclude_connection: str | None = None


#: The callback a storage calls, in the process's event loop, for each delivery.
Deliver = Callable[[Delivery], None]

#: Encode a delivery for a backend that carries it between processes (compact MessagePack);
#: :data:`decode_delivery` reads it back, checking every field (``msgspec.DecodeError``).
encode_delivery: Final[Callable[[Delivery], bytes]] = msgspec.msgpack.Encoder().encode
decode_delivery: Final[Callable[[bytes], Delivery]] = msgspec.msgpack.Decoder(Delivery).decode


class StoredEvent(msgspec.Struct, array_like=True, gc=False):
    """A retained broadcast: its id and its encoded envelope (without ``id``)."""

    id: str
    payload: bytes


class History(msgspec.Struct, gc=False):
    """Retained broadcasts, oldest first.

    Attributes:
        events: the broadcasts.
        recovered: None when no last id was asked for; True when that id is retained (or is the
            newest ever published) and ``events`` are exactly those after it; False when it is
            unknown or evicted and ``events`` are all retained broadcasts.
    """

    events: list[StoredEvent]
    recovered: bool | None = None


class PresenceTotals(msgspec.Struct, frozen=True, gc=False):
    """What the coalesced ``count`` event of a large channel announces.

    Attributes:
        viewer_count: live connections on the channel, in every process.
        joined: joins recorded, in every process, since the last announcement.
        left: leaves recorded, in every process, since the last announcement.
    """

    viewer_count: int
    joined: int
    left: int


@runtime_checkable
class Presence(Protocol):
    """**Protocol**: who is connected, in every process (a part of :class:`Storage`).

    Connections are counted by id: joining twice counts once, and leaving an id that is not
    counted changes nothing. A process that stops without leaving (a crash) has its
    connections dropped by the backend within its own lease (Redis: ``presence_ttl``).
    """

    async def join(self, channel: str, connection_id: str) -> int:
        """Count a live connection on ``channel``; return the channel's viewer count after it."""
        ...

    async def leave(self, channel: str, connection_id: str) -> int:
        """Stop counting a connection; return the channel's viewer count after it."""
        ...

    async def viewer_count(self, channel: str) -> int:
        """Return the number of live connections on ``channel`` across all processes."""
        ...

    async def is_connected(self, connection_id: str) -> bool:
        """Return whether the connection is live, in whichever process holds it."""
        ...

    async def coalesce_presence(
        self, channel: str, joined: int, left: int, *, interval: float
    ) -> PresenceTotals | None:
        """Record joins and leaves of a large channel; return what to announce now, if anything.

        Across all processes, at most one call per ``interval`` seconds returns totals (all the
        joins and leaves recorded since the previous announcement); other calls return None and
        keep what they recorded for the next one. A call with nothing recorded anywhere returns
        None.
        """
        ...


@runtime_checkable
class Storage(Presence, Protocol):
    """**Protocol**: channel history and presence, and delivery of events to every process.

    Event ids are short strings of printable ASCII (no quote, backslash or line break), unique per
    channel and ordered by publication. Every method may raise
    :class:`~channel_asgi.errors.StorageUnavailable` when the backend cannot be reached; then
    nothing was stored or delivered.
    """

    @property
    def shared(self) -> bool:
        """Whether other processes see the same channels (then they must share one secret)."""
        ...

    async def run(
        self, deliver: Deliver, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Call ``deliver`` for every delivery of a listened channel, until cancelled.

        ``task_status.started()`` is called once deliveries flow. Events of one channel are
        delivered in the order they were appended or sent, whichever method carried them
        (conformance: ``test_send_and_append_keep_their_order``). ``deliver`` runs in the
        event loop and must not be awaited; a backend calls it for listened channels only.
        """
        ...

    async def listen(self, channel: str) -> None:
        """Start delivering ``channel``'s events to this process; return once they flow.

        An app's hub calls this when the first of its connections of ``channel`` attaches, and
        never twice at once for one channel; it counts its own connections. A backend that
        several apps of one process share (``MemoryStorage``) counts the calls, one per app.
        Events appended or sent before it returned need not be delivered.
        """
        ...

    async def unlisten(self, channel: str) -> None:
        """Stop delivering ``channel``'s events to this process (the hub's last connection left).

        After it, ``deliver`` is not called for the channel's events (conformance:
        ``test_delivery_stops_after_unlisten``).
        """
        ...

    async def append(
        self, channel: str, payload: bytes, *, keep: int, ttl: float | None = None
    ) -> str:
        """Retain a broadcast and deliver it to every process; return its event id.

        Raises:
            NotFound: the channel is closed; nothing was stored or delivered.

        Args:
            channel: the channel.
            payload: the encoded envelope, without ``id``.
            keep: how many broadcasts the channel retains (older ones are evicted).
            ttl: seconds a broadcast is retained, or None for no limit.
        """
        ...

    async def send(self, delivery: Delivery) -> None:
        """Deliver an event that is not retained to every process listening on its channel."""
        ...

    async def history(
        self,
        channel: str,
        *,
        after: str | None = None,
        ttl: float | None = None,
        limit: int | None = None,
    ) -> History:
        """Return the retained broadcasts of ``channel``, oldest first (see :class:`History`).

        Args:
            channel: the channel.
            after: return only those after this event id (the resume point), when given.
            ttl: ignore broadcasts older than this many seconds, when given.
            limit: return at most this many (the oldest of those that qualify), when given. A
                reader pages through a long history by passing the last id of one page as the
                next page's ``after``; ``recovered`` is as it would be without ``limit``.
        """
        ...

    async def close_channel(self, channel: str, end_payload: bytes) -> None:
        """Mark ``channel`` closed and deliver ``end_payload`` as an ``end`` to every process."""
        ...

    async def open_channel(self, channel: str) -> None:
        """Mark ``channel`` open again (history is kept across close and open)."""
        ...

    async def is_closed(self, channel: str) -> bool:
        """Return whether ``channel`` was closed and not opened again."""
        ...
