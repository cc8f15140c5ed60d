"""Per-process routing: channel -> the mailboxes of the connections this process holds.

A delivery from the storage is framed once per framing (the SSE bytes for every SSE connection,
the JSON text for every WebSocket, the JSON bytes for every server-side subscriber), and the same
object is appended to every matching mailbox. Appending never awaits: a mailbox that grows past
its byte limit marks its connection too slow and closes it (its writer is interrupted); the
client reconnects and recovers from history. When the writers run is the write scheduler's
business (``scheduler``), not the hub's.

The hub also counts the local listeners of each channel: the storage is asked to ``listen`` when
the first one attaches and to ``unlisten`` after the last one leaves, one call at a time per
channel.

A stream of several channels (``streams``) has one mailbox, a member of several rooms: in each it
is keyed by that channel's own connection id (the one its publish token and presence carry), and
it is framed ``Framing.MULTI`` or ``Framing.TEXT_MULTI`` (the frame keeps its channel and event
id, for an SSE stream's own ``id:`` line). The end of one of its channels (closed, a ban,
``channels.disconnect``) does not close the mailbox: the hub takes it out of that room and
queues a :class:`~mailbox.Control` that tells the stream's writer to leave the channel.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import anyio
import msgspec

from . import sse
from .connection import Connection, Framing
from .fastpath import DirectWriter, direct_send
from .http import Send
from .mailbox import ChannelFrame, Close, Control, Mailbox, put_many
from .protocol import WS_PING, for_channel, with_id
from .scheduler import WriteScheduler
from .storage.base import Delivery, Storage

__all__ = ["HEARTBEAT_TICKS", "Hub"]

logger = logging.getLogger("channel_asgi")

#: Heartbeat ticks per ``heartbeat`` interval.
HEARTBEAT_TICKS: Final = 3
#: What an idle connection gets, by framing (server-side subscribers get nothing).
_PINGS: Final = ((Framing.SSE, sse.PING), (Framing.TEXT, WS_PING))
_STREAM_PINGS: Final[dict[Framing, bytes | str]] = {
    Framing.MULTI: sse.PING,
    Framing.TEXT_MULTI: WS_PING,
}


@dataclass(slots=True)
class _Opening:
    """A mailbox attached but not live yet, and the deliveries that arrived meanwhile."""

    mailbox: Mailbox
    key: str
    backlog: list[Delivery] = field(default_factory=list)
    size: int = 0


@dataclass(slots=True)
class _Room:
    """The mailboxes of one channel in this process."""

    by_framing: dict[Framing, dict[str, Mailbox]] = field(
        default_factory=lambda: {framing: {} for framing in Framing}
    )
    by_user: dict[str, dict[str, Mailbox]] = field(default_factory=dict)
    by_connection: dict[str, Mailbox] = field(default_factory=dict)
    opening: dict[str, _Opening] = field(default_factory=dict)
    #: Live mailboxes whose replay may still arrive as live deliveries: connection id ->
    #: (the replayed ids, the last of them). See :meth:`Hub.activate`.
    catching_up: dict[str, tuple[frozenset[str], str]] = field(default_factory=dict)


class Hub:
    """The channels and connections of this process.

    Args:
        storage: asked to listen to a channel while this process holds connections of it.
        scheduler: wakes the writers of the mailboxes this hub fills.
        direct: writes the batches of parked SSE writers behind the fence (``fastpath``); the
            scheduler should wait for its :meth:`~fastpath.DirectWriter.busy`.
    """

    def __init__(
        self, storage: Storage, scheduler: WriteScheduler, direct: DirectWriter | None = None
    ) -> None:
        self._storage = storage
        self._scheduler = scheduler
        self._rooms: dict[str, _Room] = {}
        self._listening: dict[str, int] = {}  # channel -> local listeners
        self._changing: dict[str, anyio.Lock] = {}  # channel -> held while (un)listening
        self._direct = DirectWriter() if direct is None else direct
        #: Events queued to mailboxes so far: one integer add per dispatch, read by the metrics.
        self.delivered = 0
        #: The mailboxes of streams of several channels, by their stream's connection id.
        self.streams: dict[str, Mailbox] = {}

    def mailbox(
        self,
        channel: str,
        connection_id: str,
        user_id: str | None,
        framing: Framing,
        limit: int,
        *,
        multi: bool = False,
    ) -> Mailbox:
        """Return a new mailbox whose writer this hub's scheduler wakes.

        Args:
            multi: the mailbox of a stream of several channels (registered in :attr:`streams`
                until :meth:`forget_stream`).
        """
        mailbox = Mailbox(
            channel, connection_id, user_id, framing, limit, self._scheduler.wake_soon, multi=multi
        )
        if multi:
            self.streams[connection_id] = mailbox
        return mailbox

    def forget_stream(self, mailbox: Mailbox) -> None:
        """Drop a stream's mailbox from :attr:`streams` (its connection has ended)."""
        self.streams.pop(mailbox.connection_id, None)

    def write_directly(self, mailbox: Mailbox, send: Send) -> None:
        """Let the SSE ``mailbox`` have direct writes through ``send``, if it passes the fence.

        See ``fastpath``: while its writer is parked, its batches are written without waking it.
        """
        mailbox.write_directly_with(direct_send(send), self._direct)

    # -- listening -----------------------------------------------------------------------------

    async def listen(self, channel: str) -> None:
        """Count a local listener of ``channel``; the first asks the storage, and all wait for it.

        Raises:
            StorageError: the storage could not start delivering; nothing was counted.
        """
        count = self._listening.get(channel, 0)
        if count and channel not in self._changing:
            self._listening[channel] = count + 1
            return
        async with self._change(channel):
            count = self._listening.get(channel, 0)
            if not count:
                await self._storage.listen(channel)
            self._listening[channel] = count + 1

    async def unlisten(self, channel: str) -> None:
        """Drop a local listener of ``channel``; after the last, the storage stops delivering."""
        count = self._listening.get(channel, 0)
        if count > 1 and channel not in self._changing:
            self._listening[channel] = count - 1
            return
        async with self._change(channel):
            count = self._listening.pop(channel, 0) - 1
            if count > 0:
                self._listening[channel] = count
            elif count == 0:
                await self._storage.unlisten(channel)

    def listening(self, channel: str) -> int:
        """Return how many local listeners ``channel`` has."""
        return self._listening.get(channel, 0)

    def _change(self, channel: str) -> _Change:
        lock = self._changing.get(channel)
        if lock is None:
            lock = self._changing[channel] = anyio.Lock()
        return _Change(self._changing, channel, lock)

    # -- membership ----------------------------------------------------------------------------

    def attach(self, mailbox: Mailbox, member: Connection | None = None) -> None:
        """Start collecting the channel's deliveries for ``mailbox`` in a backlog.

        The connection then reads its replay from the storage, writes it, and calls
        :meth:`activate`; nothing published in between is lost or delivered twice.

        Args:
            member: for a stream of several channels, which channel and under which connection
                id (the mailbox's own by default).
        """
        channel, key = _place(mailbox, member)
        room = self._rooms.get(channel)
        if room is None:
            room = self._rooms[channel] = _Room()
        room.opening[key] = _Opening(mailbox, key)

    def backlog_ids(self, mailbox: Mailbox, member: Connection | None = None) -> frozenset[str]:
        """Return the ids of the broadcasts collected for an attached ``mailbox`` so far."""
        channel, key = _place(mailbox, member)
        room = self._rooms.get(channel)
        opening = None if room is None else room.opening.get(key)
        if opening is None:
            return frozenset()
        return frozenset(delivery.id for delivery in opening.backlog if delivery.id is not None)

    def activate(
        self, mailbox: Mailbox, replayed: Sequence[str] = (), member: Connection | None = None
    ) -> None:
        """Queue the backlog (minus what the replay already held) and go live.

        A broadcast read from the storage's history may reach this process as a live delivery
        only later (Redis answers the history read and the pub/sub message on two connections):
        until a broadcast the replay did not hold arrives, or the last one it did, the live
        deliveries of replayed broadcasts are dropped for this mailbox too.

        Args:
            mailbox: an attached mailbox.
            replayed: the ids of the newest broadcasts its replay held, in order (the only ones
                that can still arrive live).
            member: as for :meth:`attach`.
        """
        channel, key = _place(mailbox, member)
        room = self._rooms.get(channel)
        opening = None if room is None else room.opening.pop(key, None)
        if room is None or opening is None or mailbox.closed is not None:
            return
        backlog = opening.backlog
        if replayed:
            ids = frozenset(replayed)
            caught_up = False
            if backlog:
                caught_up = any(d.id == replayed[-1] or d.id not in ids for d in backlog if d.id)
                backlog = [delivery for delivery in backlog if delivery.id not in ids]
            if not caught_up:
                room.catching_up[key] = (ids, replayed[-1])
        room.by_connection[key] = mailbox
        room.by_framing[mailbox.framing][key] = mailbox
        if mailbox.user_id is not None:
            room.by_user.setdefault(mailbox.user_id, {})[key] = mailbox
        for delivery in backlog:
            self._deliver_one(mailbox, key, delivery)
        self.delivered += len(backlog)

    def detach(self, mailbox: Mailbox, member: Connection | None = None) -> None:
        """Stop delivering to ``mailbox`` (of ``member``'s channel only, when given)."""
        channel, key = _place(mailbox, member)
        room = self._rooms.get(channel)
        if room is None:
            return
        room.opening.pop(key, None)
        room.catching_up.pop(key, None)
        room.by_connection.pop(key, None)
        room.by_framing[mailbox.framing].pop(key, None)
        if mailbox.user_id is not None:
            same_user = room.by_user.get(mailbox.user_id)
            if same_user is not None:
                same_user.pop(key, None)
                if not same_user:
                    del room.by_user[mailbox.user_id]
        if not room.by_connection and not room.opening:
            del self._rooms[channel]

    def census(self) -> tuple[dict[Framing, int], int]:
        """Return this process's connections by framing, and how many channels have viewers.

        Connections still opening count; server-side subscribers count under ``Framing.JSON``
        and make no channel count; a stream of several channels counts once. It walks every
        channel: for the metrics, not the hot path.
        """
        counts = dict.fromkeys(Framing, 0)
        channels = 0
        for mailbox in self.streams.values():
            counts[mailbox.framing] += 1
        for room in self._rooms.values():
            for framing, members in room.by_framing.items():
                counts[framing] += sum(not m.multi for m in members.values())
            for opening in room.opening.values():
                counts[opening.mailbox.framing] += not opening.mailbox.multi
            if any(m.framing is not Framing.JSON for m in _members(room)):
                channels += 1
        return counts, channels

    def mailboxes(self, channel: str | None = None) -> Iterator[Mailbox]:
        """Iterate over the mailboxes of ``channel``, or of every channel (opening ones too)."""
        rooms = self._rooms.values() if channel is None else [self._rooms.get(channel)]
        for room in rooms:
            if room is not None:
                yield from [
                    *(o.mailbox for o in room.opening.values()),
                    *room.by_connection.values(),
                ]

    # -- delivery ------------------------------------------------------------------------------

    def dispatch(self, delivery: Delivery) -> None:
        """Frame ``delivery`` once per framing and queue it for every matching mailbox.

        A delivery to channel ``"*"`` applies to every channel this process holds (see
        :meth:`_dispatch_everywhere`).
        """
        room = self._rooms.get(delivery.channel)
        if room is None:
            if delivery.channel == "*":
                self._dispatch_everywhere(delivery)
            return
        self._scheduler.dispatched()
        if room.opening:
            self._collect(room, delivery)
        kind = delivery.kind
        if kind == "request" or kind == "change":
            target = room.by_connection.get(delivery.to_connection or "")
            if target is None:
                return
            if kind == "change":  # a stream's add/remove, addressed through one of its channels
                target.put_control(Control("change", delivery.channel, delivery.payload))
            else:  # empty, or the range asked for
                target.request_history(delivery.payload, delivery.channel)
            return
        targeted = delivery.to_user is not None or delivery.to_connection is not None
        if targeted:
            targets = dict(room.by_user.get(delivery.to_user or "", {}))
            sender_key = delivery.to_connection or ""
            sender = room.by_connection.get(sender_key)
            if sender is not None:
                targets[sender_key] = sender
            ending = list(targets.items())
        else:
            ending = list(room.by_connection.items())
        if kind == "disconnect":
            for key, mailbox in ending:
                self._close(mailbox, delivery.channel, key, Close.DISCONNECT)
            return
        payload = delivery.payload
        if delivery.id is not None:
            payload = with_id(payload, delivery.id)
        channel = delivery.channel
        if targeted:
            self._offer(ending, payload, delivery)
        else:
            replayed = _replayed_to(room, delivery.id) if room.catching_up else None
            for framing, members in room.by_framing.items():
                if members:
                    frame = _frame(framing, payload, delivery.id, channel)
                    self._offer_framed(members, frame, delivery, replayed)
        if kind == "end":  # the channel's connections, or only the addressee's (a ban)
            for key, mailbox in ending:
                self._close(mailbox, channel, key, Close.END)

    def _close(self, mailbox: Mailbox, channel: str, key: str, reason: Close) -> None:
        """Close a connection's ``channel``: the mailbox, or only that channel of a stream."""
        if not mailbox.multi:
            mailbox.close(reason)
            return
        if mailbox.closed is not None:
            return
        room = self._rooms.get(channel)
        if room is not None and (key in room.by_connection or key in room.opening):
            self.detach(mailbox, Connection(mailbox.user_id or "", channel, key))
            mailbox.put_control(Control("leave", channel, reason.value.encode()))

    def _dispatch_everywhere(self, delivery: Delivery) -> None:
        """Apply a delivery to ``"*"`` to each channel of this process that it concerns.

        Each channel gets it as its own, with its name as the envelope's ``stream_id``
        (``protocol.for_channel``); one addressed to a user goes only to the channels where
        that user has a connection (live or still opening). It is news for every channel, such
        as a ban on every channel, and rare: it may walk every room.
        """
        user = delivery.to_user
        for channel, room in list(self._rooms.items()):
            if user is not None and user not in room.by_user:
                if all(opening.mailbox.user_id != user for opening in room.opening.values()):
                    continue
            payload = for_channel(delivery.payload, channel)
            self.dispatch(msgspec.structs.replace(delivery, channel=channel, payload=payload))

    def _deliver_one(self, mailbox: Mailbox, key: str, delivery: Delivery) -> None:
        if not _wants(key, mailbox.user_id, delivery):
            return
        channel = delivery.channel
        if delivery.kind == "request" or delivery.kind == "change":
            if delivery.kind == "change":
                mailbox.put_control(Control("change", channel, delivery.payload))
            else:
                mailbox.request_history(delivery.payload, channel)
            return
        payload = delivery.payload
        if delivery.id is not None:
            payload = with_id(payload, delivery.id)
        if delivery.kind == "disconnect":
            self._close(mailbox, channel, key, Close.DISCONNECT)
            return
        if not mailbox.put(_frame(mailbox.framing, payload, delivery.id, channel)):
            _too_slow(mailbox)
        if delivery.kind == "end":
            self._close(mailbox, channel, key, Close.END)

    def _offer(
        self, targets: Iterable[tuple[str, Mailbox]], payload: bytes, delivery: Delivery
    ) -> None:
        frames: dict[Framing, bytes | str | ChannelFrame] = {}
        for key, mailbox in targets:
            if key == delivery.exclude_connection:
                continue
            frame = frames.get(mailbox.framing)
            if frame is None:
                frame = frames[mailbox.framing] = _frame(
                    mailbox.framing, payload, delivery.id, delivery.channel
                )
            if not mailbox.put(frame):
                _too_slow(mailbox)
            self.delivered += 1

    def _offer_framed(
        self,
        by_key: dict[str, Mailbox],
        frame: bytes | str | ChannelFrame,
        delivery: Delivery,
        replayed: set[str] | None = None,
    ) -> None:
        exclude = delivery.exclude_connection
        members: Collection[Mailbox] = by_key.values()
        if exclude is not None or replayed:  # a joiner's own join; replays that held it
            members = [
                member
                for key, member in by_key.items()
                if key != exclude and (not replayed or key not in replayed)
            ]
        for mailbox in put_many(members, frame):
            _too_slow(mailbox)
        self.delivered += len(members)

    @staticmethod
    def _collect(room: _Room, delivery: Delivery) -> None:
        for opening in list(room.opening.values()):
            mailbox = opening.mailbox
            if mailbox.closed is not None or not _wants(opening.key, mailbox.user_id, delivery):
                continue
            opening.backlog.append(delivery)
            opening.size += len(delivery.payload)
            if opening.size > mailbox.limit:
                _too_slow(mailbox)

    def heartbeat(self) -> None:
        """Ping every SSE and WebSocket connection that was silent for ``HEARTBEAT_TICKS`` calls.

        The app calls this ``HEARTBEAT_TICKS`` times per ``heartbeat`` interval, so a stream is
        never silent for more than a third of an interval past its heartbeat. An SSE stream
        gets ``: ping``, a WebSocket ``{"type":"ping"}`` (ASGI cannot send a WebSocket ping, and
        hypercorn and granian send none of their own).
        """
        for room in self._rooms.values():
            by_framing = room.by_framing
            for framing, ping in _PINGS:
                for mailbox in list(by_framing[framing].values()):
                    if not mailbox.beat(ping, HEARTBEAT_TICKS):
                        _too_slow(mailbox)
        for mailbox in list(self.streams.values()):  # once each, whatever its channels
            beat = _STREAM_PINGS.get(mailbox.framing)
            if beat is not None and not mailbox.beat(beat, HEARTBEAT_TICKS):
                _too_slow(mailbox)

    def close_all(self, reason: Close) -> None:
        """Close every mailbox (the app is stopping)."""
        for mailbox in [*self.mailboxes(), *self.streams.values()]:
            mailbox.close(reason)


class _Change:
    """Hold a channel's listen lock; forget the lock once nobody holds or awaits it."""

    __slots__ = ("_channel", "_lock", "_locks")

    def __init__(self, locks: dict[str, anyio.Lock], channel: str, lock: anyio.Lock) -> None:
        self._locks = locks
        self._channel = channel
        self._lock = lock

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()
        if (
            not self._lock.statistics().tasks_waiting
            and self._locks.get(self._channel) is self._lock
        ):
            del self._locks[self._channel]


def _members(room: _Room) -> Iterator[Mailbox]:
    yield from room.by_connection.values()
    yield from (opening.mailbox for opening in room.opening.values())


def _place(mailbox: Mailbox, member: Connection | None) -> tuple[str, str]:
    """The channel and the key of ``mailbox`` in its room (a stream's member, or its own)."""
    if member is None:
        return mailbox.channel, mailbox.connection_id
    return member.channel, member.connection_id


def _wants(key: str, user_id: str | None, delivery: Delivery) -> bool:
    """Return whether ``delivery`` (of the member's channel) is addressed to member ``key``."""
    if delivery.kind == "request" or delivery.kind == "change":
        return delivery.to_connection == key
    if delivery.exclude_connection == key:
        return False
    if delivery.to_user is None and delivery.to_connection is None:
        return True
    return (
        delivery.to_user is not None and delivery.to_user == user_id
    ) or delivery.to_connection == key


def _too_slow(mailbox: Mailbox) -> None:
    logger.warning(
        "Closing connection %s on channel %r: it is not reading and its buffer is full",
        mailbox.connection_id,
        mailbox.channel,
    )
    mailbox.close(Close.SLOW)


def _replayed_to(room: _Room, event_id: str | None) -> set[str] | None:
    """The connections of ``room`` that already had broadcast ``event_id`` in their replay.

    Deliveries arrive in the order of publication, so a connection is caught up (and leaves
    ``catching_up``) at the last broadcast of its replay, or at the first one it did not hold.
    Other events (private, system, ...) are never in a replay.
    """
    if event_id is None:
        return None
    replayed: set[str] = set()
    for key, (ids, last) in list(room.catching_up.items()):
        if event_id in ids:
            replayed.add(key)
            if event_id != last:
                continue
        del room.catching_up[key]
    return replayed


def _frame(
    framing: Framing, payload: bytes, event_id: str | None, channel: str
) -> bytes | str | ChannelFrame:
    if framing is Framing.SSE:
        return sse.event(payload, event_id)
    if framing is Framing.MULTI:  # the data once; each stream adds its own id: line
        return ChannelFrame(channel, event_id, sse.event(payload))
    if framing is Framing.TEXT:
        return payload.decode()
    if framing is Framing.TEXT_MULTI:  # the text once; the stream drops a channel it left
        return ChannelFrame(channel, event_id, payload.decode())
    return payload
