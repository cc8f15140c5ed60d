"""The ``Storage`` protocol: every rule a storage backend must follow, in one module.

A storage is what the processes serving the same channels share: each channel's history and
archive, who is watching it, which channels are closed, who is banned, the rate-limit buckets,
and the delivery of every event to every process that listens to the channel. ``MemoryStorage``
shares nothing beyond one process; ``RedisStorage`` shares everything through Redis. A
third-party backend needs this module and the conformance suite
(``channel_asgi.storage.conformance``), nothing else: it implements :class:`Storage` (which
includes :class:`Presence`, :class:`Archive`, :class:`Moderation` and :class:`Limits`), raises
the errors below, and passes the suite.

Errors are the storage's own, and know nothing of HTTP: a backend maps its driver's exceptions at
its edge (``raise StorageUnreachable(...) from exc``) to one of

- :class:`StorageUnreachable`: the backend could not be reached; nothing was applied, and doing
  it again is safe;
- :class:`StorageNoReply`: a change was sent and no reply came; it may have been applied;
- :class:`StorageChannelClosed`: the channel is closed; nothing was stored or delivered;
- :class:`StorageUserBanned`: the author of a broadcast is banned there; nothing was stored or
  delivered.

The app turns them into its HTTP refusals in one place (``channel_asgi.errors.http_error``): 503
with ``Retry-After``, 504, 404 and 403. The public ``channel_asgi.StorageUnavailable``,
``channel_asgi.StorageTimeout`` and ``channel_asgi.errors.ChannelClosed`` are those refusals;
each is also a subclass of its storage-level error here, so that ``except StorageUnreachable``
catches an outage whether it comes from a storage call or from ``channels.publish()``.

This module imports nothing from the rest of channel_asgi.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal, Protocol, runtime_checkable

import msgspec
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

__all__ = [
    "Archive",
    "ArchivePage",
    "Deliver",
    "Delivery",
    "DeliveryKind",
    "History",
    "Limits",
    "Moderation",
    "Presence",
    "PresenceTotals",
    "Storage",
    "StorageChannelClosed",
    "StorageError",
    "StorageNoReply",
    "StorageUnreachable",
    "StorageUserBanned",
    "StoredEvent",
    "decode_delivery",
    "encode_delivery",
]


# -- errors ------------------------------------------------------------------------------------


class StorageError(Exception):
    """A storage call did not do what was asked. Backends raise one of its subclasses.

    The app answers a bare ``StorageError`` as it answers :class:`StorageUnreachable` (503).
    """


class StorageUnreachable(StorageError):
    """The backend could not be reached: nothing was stored, changed or delivered.

    Raised for every failure that happened before the call reached the backend (no connection,
    connection refused, a connect or health-check timeout), and for a read that got no reply
    (running a read again changes nothing). Retrying is safe. The app answers 503 with
    ``Retry-After``.
    """


class StorageNoReply(StorageError):
    """A change was sent to the backend and no reply came: it may have been applied.

    Raised only by calls that change something, once their request may have reached the
    backend (a reply timed out, the connection broke before it came). A broadcast may have been
    stored and delivered, so the caller must look before retrying; never raise
    :class:`StorageUnreachable` for such a failure, whose promise that nothing happened does not
    hold. The app answers 504.
    """


class StorageChannelClosed(StorageError):
    """The channel is closed (:meth:`Storage.close_channel`): nothing was stored or delivered.

    The app answers 404.

    Args:
        channel: the closed channel.
    """

    def __init__(self, channel: str) -> None:
        super().__init__(f"Channel {channel!r} is closed")
        self.channel = channel


class StorageUserBanned(StorageError):
    """The author of a broadcast is banned from its channel (:class:`Moderation`).

    Nothing was stored or delivered. The app answers 403.

    Args:
        channel: the channel.
        user_id: the banned author.
    """

    def __init__(self, channel: str, user_id: str) -> None:
        super().__init__(f"User {user_id!r} is banned from channel {channel!r}")
        self.channel = channel
        self.user_id = user_id


# -- what a storage keeps and carries ------------------------------------------------------------

#: What a delivery asks of the processes that get it.
DeliveryKind = Literal["event", "request", "end", "disconnect", "change"]


class Delivery(msgspec.Struct, array_like=True, gc=False):
    """One event on its way to the subscribers of a channel, in every process.

    A backend carries it as it is: every field arrives intact (:func:`encode_delivery` and
    :func:`decode_delivery` carry it across processes).

    Attributes:
        channel: the channel it belongs to, or ``"*"`` for every channel (:meth:`Storage.send`).
        kind: ``"event"`` (write ``payload`` to the matching connections), ``"request"`` (send
            the channel's history to ``to_connection``), ``"end"`` (write ``payload``, then
            close the matching connections: every connection of the channel, or with
            ``to_user`` only that user's, as for a ban) or ``"disconnect"`` (close the matching
            connections, writing nothing: they may reconnect) or ``"change"`` (``payload``:
            channels to add to and remove from the stream of several channels that
            ``to_connection``, one of its channels' connection ids, belongs to).
        payload: the encoded envelope, without ``id``; for a ``"request"``, what the app asks
            to send (empty: the history; else a range of the archive, encoded by the app).
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


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Delivery)


def encode_delivery(delivery: Delivery) -> bytes:
    """Encode a delivery to send it to other processes (MessagePack, an array of its fields)."""
    return _encoder.encode(delivery)


def decode_delivery(data: bytes) -> Delivery:
    """Decode what :func:`encode_delivery` made.

    Raises:
        msgspec.DecodeError: ``data`` is not an encoded delivery (it is a ``ValueError``).
    """
    return _decoder.decode(data)


#: The callback a storage calls, in the process's event loop, for each delivery.
Deliver = Callable[[Delivery], None]


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


class ArchivePage(msgspec.Struct, gc=False):
    """One page of a channel's archive, in media-time order (:meth:`Archive.archive_range`).

    Attributes:
        events: the archived broadcasts, ordered by (timestamp, id).
        more: whether further archived broadcasts of the range follow the last of ``events``:
            pass its id as the next call's ``after`` to read them. False on the last page
            (and whenever ``events`` is empty).
    """

    events: list[StoredEvent]
    more: bool = False


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


# -- the protocols -----------------------------------------------------------------------------


@runtime_checkable
class Presence(Protocol):
    """**Protocol**: who is connected to which channel, across every process.

    The app calls :meth:`join` once for each live subscriber connection (SSE or WebSocket; a
    server-side subscriber is not a viewer), with the connection's user id (an anonymous user's
    is the id its ``init`` gave it), and :meth:`leave` once when it has gone. Connection ids are
    unique; each connection joins one channel, as one user.

    **Leases.** A process can die without leaving. A backend shared by several processes must
    stop counting the connections of a process that died, and stop reporting them connected and
    present (:meth:`presence`), within a bounded time (``RedisStorage``: its ``presence_ttl``,
    renewed by ``run``), and a process that stops normally (``run`` ends) removes its presence
    at once.

    Every method raises :class:`StorageUnreachable` when the backend cannot be reached; the
    ones that change something raise :class:`StorageNoReply` instead when the change was sent
    and no reply came.
    """

    async def join(self, channel: str, connection_id: str, user_id: str | None = None) -> int:
        """Count a live connection on ``channel``, of ``user_id`` when given.

        The backend keeps the user id with the connection until :meth:`leave` (or until the
        lease of its process ends), for :meth:`presence`. A connection joined without one is
        counted by :meth:`viewer_count` but listed by no user.

        Returns:
            The channel's viewer count across all processes, this connection included.

        Raises:
            StorageUnreachable: the backend cannot be reached; the connection is not counted.
            StorageNoReply: the join was sent and no reply came; it may be counted.
        """
        ...

    async def leave(self, channel: str, connection_id: str) -> int:
        """Stop counting a connection (and reporting it connected).

        Returns:
            The channel's viewer count across all processes after it.

        Raises:
            StorageUnreachable: the backend cannot be reached; a shared backend stops counting
                the connection when this process's lease ends.
            StorageNoReply: the leave was sent and no reply came; it may have been applied.
        """
        ...

    async def viewer_count(self, channel: str) -> int:
        """Return the number of live connections on ``channel`` across all processes.

        Raises:
            StorageUnreachable: the backend cannot be reached, or did not answer (a read).
        """
        ...

    async def presence(self, channel: str) -> dict[str, int]:
        """Return who is connected to ``channel``: user id -> live connections, in all processes.

        Each user joined on the channel and not left counts once per connection, whichever
        process holds it; users with none are absent (an unknown channel gives ``{}``). The
        connections of a process whose lease ended are not counted, as in
        :meth:`viewer_count`. A read costs one round trip (``RedisStorage``: one script), and
        grows with the channel's users, not with the other channels.

        Raises:
            StorageUnreachable: the backend cannot be reached, or did not answer (a read).
        """
        ...

    async def is_connected(self, connection_id: str) -> bool:
        """Return whether the connection is live (joined, not left), in whichever process.

        Raises:
            StorageUnreachable: the backend cannot be reached, or did not answer (a read).
        """
        ...

    async def coalesce_presence(
        self, channel: str, joined: int, left: int, *, interval: float
    ) -> PresenceTotals | None:
        """Record joins and leaves of a large channel; return what to announce now, if anything.

        The tallies are shared by every process. Across all of them, at most one call per
        ``interval`` seconds returns totals: all the joins and leaves recorded since the
        previous announcement, and the viewer count. Other calls return None and keep what they
        recorded for the next announcement. A call with nothing recorded anywhere returns None.

        Args:
            channel: the large channel.
            joined: joins in this process since its last call.
            left: leaves in this process since its last call.
            interval: seconds between two announcements of the channel.

        Raises:
            StorageUnreachable: the backend cannot be reached; nothing was recorded (the app
                keeps the tallies for its next call).
            StorageNoReply: the tallies were sent and no reply came; they may be recorded.
        """
        ...


@runtime_checkable
class Archive(Protocol):
    """**Protocol**: broadcasts kept by media time, to replay the chat of a recorded stream.

    A channel's archive is apart from its history. :meth:`Storage.append` adds a broadcast to
    it when given ``archive`` > 0 and a ``timestamp`` (the envelope's media time, in seconds),
    whatever ``keep`` and ``ttl`` do to the history. The rules:

    - **Order**: by (timestamp, id). Broadcasts with equal timestamps are in publication order
      (event ids are ordered by publication).
    - **Bound**: a channel archives at most ``archive`` broadcasts (the value its latest
      archiving append passed). Past it, the first in that order goes: the oldest media time is
      evicted first, so a broadcast older than every archived one, appended to a full archive,
      is not kept.
    - **Lifetime**: no ``ttl`` applies. A backend that outlives the app's process keeps the
      archive across restarts (``RedisStorage``: its keys never expire); a backend may bound
      its memory as a whole, as it does for history (``MemoryStorage``'s
      ``max_history_bytes``).
    - **Deletion**: :meth:`Moderation.delete_event` removes a broadcast from the archive but
      keeps its place (its id and timestamp, until it is evicted; it still counts against
      ``archive``), so that a page which ended with it continues with ``after`` as if it were
      there.
    """

    async def archive_range(
        self,
        channel: str,
        *,
        start: float | None = None,
        end: float | None = None,
        limit: int = 200,
        after: str | None = None,
    ) -> ArchivePage:
        """Return the archived broadcasts with ``start <= timestamp < end``, by (timestamp, id).

        Costs O(log n + k) for an archive of n broadcasts and a page of k (plus the deleted
        broadcasts the page steps over).

        Args:
            channel: the channel.
            start: the earliest media time, inclusive; None: from the first.
            end: the media time where the range stops, exclusive; None: to the last. With
                ``start >= end`` the range is empty.
            limit: the most broadcasts to return, at least 1.
            after: continue strictly after this event's (timestamp, id) place: the id of the
                last event of the previous page, when its ``more`` was True. Pages read so,
                with the same ``start`` and ``end``, cover the range with no gap and no
                duplicate, even across many broadcasts of one timestamp, and even when that
                event has been deleted since. A broadcast archived between two pages shows on
                a later page when its place is after ``after``.

        Returns:
            At most ``limit`` broadcasts, and whether more of the range follow them
            (:attr:`ArchivePage.more`). A channel that archived nothing gives an empty page.

        Raises:
            ValueError: ``after`` is not in the channel's archive (unknown, malformed, never
                archived, or evicted since: the reader may start again from the timestamp of
                the last broadcast it got), ``limit`` is less than 1, or ``start`` or ``end``
                is not a finite number. The app answers 400.
            StorageUnreachable: the backend cannot be reached, or did not answer (a read).
        """
        ...


@runtime_checkable
class Moderation(Protocol):
    """**Protocol**: removing broadcasts and banning users, in every process at once.

    A ban is kept per (channel, user id); the channel ``"*"`` stands for every channel (no
    channel name holds a ``*``). Its end is a Unix time in seconds, judged at each check by
    ``channel_asgi.clock.time()`` of the process that asks (looked up at each call, so that a
    test can stop that clock): hosts whose clocks differ see a ban end that far apart. A
    backend forgets ended bans by itself; keeping them bounded is its job.
    """

    async def delete_event(self, channel: str, event_id: str) -> bool:
        """Remove a broadcast from the channel's history and archive, for every process.

        Afterwards no :meth:`Storage.history` (a resume, a ``request``) and no
        :meth:`Archive.archive_range` returns it. A resume from its id is still recovered
        while a broadcast older than it is retained (see :meth:`Storage.history`), and an
        archive page that ended with it continues after it (see :class:`Archive`). Telling
        the subscribers is the app's part (:meth:`Storage.send`).

        Returns:
            True when the history or the archive held it; False when neither did (unknown,
            malformed, evicted, or deleted already).

        Raises:
            StorageUnreachable: the backend cannot be reached; nothing was removed.
            StorageNoReply: the deletion was sent and no reply came; it may have been applied.
        """
        ...

    async def ban(self, channel: str, user_id: str, *, until: float | None = None) -> None:
        """Ban ``user_id`` from ``channel`` (``"*"``: from every channel) until ``until``.

        The ban replaces any earlier one of that user on that channel, shorter or longer.
        Ending the user's connections is the app's part.

        Args:
            channel: the channel, or ``"*"``.
            user_id: the user.
            until: when the ban ends, in Unix seconds (``channel_asgi.clock.time()`` plus its
                duration), or None for a ban that lasts until :meth:`unban`. A time already
                past bans nothing (and so lifts an earlier ban).

        Raises:
            ValueError: ``until`` is not a finite number.
            StorageUnreachable: the backend cannot be reached; nothing was changed.
            StorageNoReply: the ban was sent and no reply came; it may be in force.
        """
        ...

    async def unban(self, channel: str, user_id: str) -> None:
        """Lift the ban of ``user_id`` on ``channel`` (``"*"``: the ban on every channel).

        Each ban is lifted on its own: unbanning a channel leaves a ban on ``"*"`` in force,
        and unbanning ``"*"`` leaves the bans on single channels. Unbanning a user who is not
        banned does nothing.

        Raises:
            StorageUnreachable: the backend cannot be reached; nothing was changed.
            StorageNoReply: the unban was sent and no reply came; it may have been applied.
        """
        ...

    async def is_banned(self, channel: str, user_id: str) -> bool:
        """Return whether a ban of ``user_id`` on ``channel`` or on ``"*"`` is in force now.

        A ban is in force, in every process, from :meth:`ban` until :meth:`unban` or until
        ``channel_asgi.clock.time()`` reaches its ``until``.

        Raises:
            StorageUnreachable: the backend cannot be reached, or did not answer (a read).
        """
        ...


@runtime_checkable
class Limits(Protocol):
    """**Protocol**: token buckets shared by every process: rate limits and slow mode.

    A bucket holds at most ``burst`` tokens and gains ``rate`` tokens a second; each allowed
    action spends one. A bucket never used is full, and one left alone long enough to fill up
    is again as if never used, so a backend may forget it then; a backend that must bound its
    memory may also forget the least recently used buckets (``MemoryStorage``), which then
    start full. "At most once per N seconds" (slow mode) is ``rate=1/N, burst=1``.

    The refill is judged by one clock for every process that shares a bucket where the
    backend has one (``RedisStorage``: Redis's ``TIME``, so the hosts' clocks do not matter);
    ``MemoryStorage`` reads ``channel_asgi.clock.monotonic()``.
    """

    async def take_token(self, key: str, *, rate: float, burst: float) -> float:
        """Spend a token of the bucket ``key`` if it holds one; else say how long to wait.

        Every process that takes from the same ``key`` shares its bucket, atomically: N
        processes together allow what one would.

        Args:
            key: the bucket, any string the caller chooses, one per limit and subject (for
                example ``"slow:<channel>:<user id>"``).
            rate: the tokens gained per second, a finite number > 0.
            burst: the most tokens the bucket holds, a finite number >= 1 (what a full bucket
                allows at once).

        Returns:
            0.0 when a token was spent (the action is allowed); otherwise the seconds until
            the bucket holds a whole token again, > 0, and nothing was spent (a
            ``Retry-After`` is its ceiling).

        Raises:
            ValueError: ``rate`` or ``burst`` is out of range.
            StorageUnreachable: the backend cannot be reached; nothing was spent.
            StorageNoReply: the call was sent and no reply came; a token may have been spent.
        """
        ...


@runtime_checkable
class Storage(Presence, Archive, Moderation, Limits, Protocol):
    """**Protocol**: channel history, presence, closed channels and delivery to every process.

    It includes the archive, moderation and limits (:class:`Archive`, :class:`Moderation`,
    :class:`Limits`, each with its own rules). Rules that hold across the methods:

    - **Payloads** are encoded envelopes, ``bytes``; the storage keeps and carries them exactly,
      never looking inside.
    - **Event ids** are short strings of printable ASCII with no quote, backslash or line break
      (they are written into JSON and SSE lines as they are), unique per channel and ordered
      by publication. An id is never handed out twice on a channel, even after the
      channel's history was dropped.
    - **Delivery.** ``run`` calls its ``deliver`` for each delivery of every channel this
      process listens to, once per delivery (no duplicates), from the event loop; ``deliver``
      is synchronous and cheap. Deliveries of one channel arrive in the order of the calls that
      made them (:meth:`append`, :meth:`send`, :meth:`close_channel`, one awaited after the
      other), interleaved sends and appends included.
    - **Listening** is decided by the app, not counted by the backend: the app's hub calls
      :meth:`listen` once, when the first local connection of a channel attaches, and
      :meth:`unlisten` once, after the last one has left, and never makes two of these calls
      for one channel at the same time. One instance shared by several apps is several
      processes at once (a ``MemoryStorage`` shared by apps in one process): it cannot tell
      their calls apart, so it keeps per channel how many listens are not undone yet, and one
      app's unlisten leaves the channel flowing to the others.
    - **Failures** raise a :class:`StorageError` (see each method's ``Raises``), never a
      driver's exception, and leave nothing half done: a broadcast that raised
      :class:`StorageUnreachable` was neither stored nor delivered.
    - **Retention.** :meth:`append`'s ``keep`` and ``ttl`` bound a channel's history. A backend
      may also forget history on its own to bound its memory (``MemoryStorage``'s
      ``max_history_bytes``), but a resume from an id it forgot then reports ``recovered``
      False, never a silent gap.
    - **Closed channels** stay closed until :meth:`open_channel`, whatever happens to their
      history (eviction and ttl never drop the mark); their history is kept.
    - **Reconnecting.** A backend whose delivery path can break (a network connection)
      reconnects by itself, and should then deliver the retained broadcasts it missed, in
      order, before newer ones (``RedisStorage`` does).
    """

    @property
    def shared(self) -> bool:
        """Whether other processes see the same channels (then they must share one secret)."""
        ...

    async def run(
        self, deliver: Deliver, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Call ``deliver`` for every delivery of a listened channel, until cancelled.

        Each ``ChannelApp`` using the instance runs ``run`` once, with its own ``deliver``; a
        backend may refuse a second app (``RedisStorage`` does, with ``RuntimeError``).
        ``task_status.started()`` is called once, when :meth:`listen` can make deliveries
        flow. A backend that cannot be reached does not make ``run`` fail: it signals started
        within a bounded time all the same, and keeps trying to reach the backend, while calls
        raise :class:`StorageUnreachable` meanwhile. Background work of the backend (lease
        renewals, sweeps) runs here too.

        Raises:
            RuntimeError: the backend serves one app and another one already runs it.
        """
        ...

    async def listen(self, channel: str) -> None:
        """Start delivering ``channel``'s deliveries to this process; return once they flow.

        Every delivery made after ``listen`` returns reaches ``run``'s ``deliver``. Calling it
        for a channel this process already listens to is a no-op that returns once deliveries
        flow: backends keep no count (the app's hub counts its connections).

        Raises:
            StorageUnreachable: the backend cannot be reached, or did not confirm in time;
                ``channel`` is not listened to.
        """
        ...

    async def unlisten(self, channel: str) -> None:
        """Stop delivering ``channel``'s deliveries to this process, at once.

        Once it returns, ``deliver`` is not called for ``channel`` again (even for deliveries
        already on their way) until the next :meth:`listen`. Other processes listening to the
        channel keep getting its deliveries (with an instance shared by several apps: while one
        of them still listens, every app sharing it gets them, see the class docstring).

        It raises no :class:`StorageError`: delivery stops in this process whether or not the
        backend can be reached, and the backend tidies up remotely when it can.
        """
        ...

    async def append(
        self,
        channel: str,
        payload: bytes,
        *,
        keep: int,
        ttl: float | None = None,
        archive: int = 0,
        timestamp: float | None = None,
        author: str | None = None,
    ) -> str:
        """Retain a broadcast and deliver it to every process; return its event id.

        The broadcast is stored (in the history, and in the archive when asked) and delivered
        as ``Delivery(channel, "event", payload, id)`` to every process listening to the
        channel (this one included), or none of these. Archiving is part of the same
        operation: it costs no round trip of its own (``RedisStorage``: the same script).

        Args:
            channel: the channel.
            payload: the encoded envelope, without ``id``.
            keep: how many broadcasts the channel retains; older ones are evicted. With 0
                nothing is retained, but the id is still the channel's newest (a resume from it
                recovers).
            ttl: seconds a broadcast is retained, or None for no limit. Older broadcasts are
                dropped, and once the newest has expired the channel's newest id is forgotten
                too.
            archive: how many broadcasts the channel's archive keeps (:class:`Archive`); 0
                archives nothing.
            timestamp: the broadcast's media time in seconds (the envelope's ``timestamp``),
                its place in the archive; None archives nothing. A broadcast is archived when
                ``archive`` > 0 and ``timestamp`` is given.
            author: the user who publishes it, or None (a server-side publish): the append
                is then refused when a ban of that user on the channel or on ``"*"`` is in
                force (:meth:`Moderation.is_banned`), checked atomically with the append as
                the closed channel is, so that nothing a user sends once :meth:`Moderation.ban`
                has returned is stored or delivered, whichever process it reaches.

        Raises:
            ValueError: the broadcast is to be archived and ``timestamp`` is not a finite
                number; nothing was stored or delivered.
            StorageChannelClosed: the channel is closed (checked atomically with the append,
                whichever process closed it); nothing was stored or delivered.
            StorageUserBanned: ``author`` is banned there; nothing was stored or delivered.
            StorageUnreachable: the backend cannot be reached; nothing was stored or delivered.
            StorageNoReply: the broadcast was sent and no reply came; it may have been stored
                and delivered.
        """
        ...

    async def send(self, delivery: Delivery) -> None:
        """Deliver an event that is not retained to every process listening on its channel.

        Every field arrives intact; nothing is stored. A delivery whose channel is ``"*"`` (no
        channel's name) reaches every process whose ``run`` runs, this one included, whatever
        it listens to: news for every channel at once, such as a ban on every channel. It
        keeps no order with the deliveries of single channels.

        Raises:
            StorageUnreachable: the backend cannot be reached; nothing was delivered.
            StorageNoReply: it was sent and no reply came; it may have been delivered.
        """
        ...

    async def history(
        self,
        channel: str,
        *,
        after: str | None = None,
        ttl: float | None = None,
        limit: int | None = None,
    ) -> History:
        """Return the retained broadcasts of ``channel``, oldest first.

        Without ``after``, all of them and ``recovered`` None. With ``after``: when no
        broadcast that followed it was evicted or expired, the broadcasts after it and
        ``recovered`` True; otherwise (unknown, evicted, malformed) all retained broadcasts and
        ``recovered`` False. The first holds when ``after`` is retained, when it is the newest
        id ever appended to the channel (and not expired), and when it was removed by
        :meth:`Moderation.delete_event` while a broadcast older than it is still retained
        (eviction takes the oldest first). A backend may treat any id of its own that sorts
        between a retained broadcast and the newest id that way. A channel never used has no
        history.

        Args:
            channel: the channel.
            after: return only those after this event id (the resume point), when given.
            ttl: ignore broadcasts older than this many seconds, when given.
            limit: return at most this many (the oldest of those that qualify; 0 returns none),
                when given. A reader pages through a long history by passing the last id of
                one page as the next page's ``after``; ``recovered`` is as it would be without
                ``limit``.

        Raises:
            StorageUnreachable: the backend cannot be reached, or did not answer (a read).
        """
        ...

    async def close_channel(self, channel: str, end_payload: bytes) -> None:
        """Mark ``channel`` closed everywhere and deliver ``end_payload`` as an ``end``.

        Every process listening to the channel gets ``Delivery(channel, "end", end_payload)``;
        from then on :meth:`append` to it raises :class:`StorageChannelClosed`. The history
        is kept. Closing a closed channel closes it again.

        Raises:
            StorageUnreachable: the backend cannot be reached. A backend may raise it, rather
                than :class:`StorageNoReply`, when no reply came too: closing again is safe.
        """
        ...

    async def open_channel(self, channel: str) -> None:
        """Mark ``channel`` open again, everywhere (its history was kept).

        Opening an open channel does nothing.

        Raises:
            StorageUnreachable: the backend cannot be reached. As for :meth:`close_channel`,
                also when no reply came: opening again is safe.
        """
        ...

    async def is_closed(self, channel: str) -> bool:
        """Return whether ``channel`` was closed and not opened again.

        The answer may trail a close or open made by another process for as long as its news
        takes to arrive (:meth:`append` checks again, atomically).

        Raises:
            StorageUnreachable: the backend cannot be reached, or did not answer (a read).
        """
        ...

    async def ping(self) -> None:
        """Check that the backend can be reached now: one cheap round trip (``GET /health``).

        It reads nothing and changes nothing; a backend that lives in the process returns at
        once. The app bounds the wait itself, so a backend need not add a timeout of its own.

        Raises:
            StorageUnreachable: the backend cannot be reached, or did not answer.
        """
        ...
