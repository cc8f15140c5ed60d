"""``MemoryStorage``: the embedded default, for one process.

Several apps in one process may share one instance; each gets every delivery of the channels
listened to, which is how the tests model several workers without Redis. Such an instance is
every app's view at once and cannot tell their calls apart, so it keeps, per channel, how many
``listen`` calls are not undone yet: each app's hub listens once per channel (``base``), so that
is the number of apps listening, and one app's ``unlisten`` does not stop the others'
deliveries. With one app, as the protocol says, ``unlisten`` stops the channel's deliveries.

Memory is bounded as a whole, not only per channel (``docs/storage.md``, "Memory bounds"):

- A channel that nobody watches (no viewer, no listener) and that holds no history is dropped at
  once. One whose history has expired (``ttl``) is dropped by the sweep, which ``run`` calls every
  ``sweep_interval`` seconds; the sweep visits only channels that have something to expire (a
  heap ordered by when), at most ``_SWEEP_BATCH`` of them per call.
- Retained history counts against ``max_history_bytes``: each broadcast its payload and id plus
  ``_EVENT_BYTES``, each channel holding history ``_CHANNEL_BYTES`` (what Python spends on them,
  measured by ``benchmarks/storage_memory.py``). Counting is O(1) per append. The archive counts
  too, each archived broadcast its payload and id plus ``ARCHIVED_BYTES`` (``memory_archive``),
  its payload counted again while the history shares it. Past the budget the least recently
  used idle channels are dropped whole, archive included; only when no idle channel is left do
  watched channels lose their oldest broadcasts (history first, then the oldest media time of
  the archive), least recently used channel first. Their viewers already have those
  broadcasts; a resume from one of them reports ``recovered`` false.
- Ids come from one counter for the whole storage, so a channel dropped and used again never
  reuses an id; a resume from an id the storage forgot reports ``recovered`` false, never a
  silent gap. Closed channels are remembered apart from the history, and never dropped.
- Bans and token buckets live apart from the channels. Bans are few (moderators make them);
  ``ban`` forgets the channel's ended bans, ``is_banned`` an ended one it finds. Buckets are
  bounded in number, the least recently used forgotten first (it starts full again).

Bans and buckets read ``channel_asgi.clock`` (``time()`` and ``monotonic()``), the edge's clock,
so that a test which stops it moves them too; ``clock=`` judges ``ttl`` and presence.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from bisect import bisect_right
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Final

import anyio
import anyio.lowlevel
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from .. import clock as edge_clock
from .base import (
    ArchivePage,
    Deliver,
    Delivery,
    History,
    PresenceTotals,
    StorageChannelClosed,
    StorageUserBanned,
    StoredEvent,
)
from .checks import check_bucket, check_page, check_time
from .memory_archive import MediaArchive

__all__ = ["MemoryStorage"]

#: Counted for a channel while it holds history: its state, its deque and its table entries.
_CHANNEL_BYTES: Final = 1100
#: Counted for each retained broadcast besides its payload and id.
_EVENT_BYTES: Final = 200
#: Channels the sweep visits per call, so that one call never holds the loop for long.
_SWEEP_BATCH: Final = 1000
#: Token buckets remembered; past it the least recently used is forgotten (it starts full).
_MAX_BUCKETS: Final = 100_000
DEFAULT_MAX_HISTORY_BYTES: Final = 256 * 2**20


def _cost(event: StoredEvent) -> int:
    return len(event.payload) + len(event.id) + _EVENT_BYTES


class _Channel:
    __slots__ = (
        "archive",
        "counted",
        "events",
        "events_bytes",
        "expires_at",
        "last_at",
        "last_id",
        "listeners",
        "ttl",
        "viewers",
    )

    def __init__(self) -> None:
        self.events: deque[tuple[StoredEvent, float]] | None = None  # (event, appended at)
        self.events_bytes = 0  # the cost of ``events``
        self.counted = 0  # what the channel adds to the storage's total now
        self.last_id: str | None = None  # the newest id ever appended (until it expires)
        self.last_at = 0.0  # when it was appended
        self.viewers: dict[str, str | None] | None = None  # connection id -> user id
        self.listeners = 0  # the apps listening (see the module docstring)
        self.ttl: float | None = None  # of the newest append
        self.expires_at: float | None = None  # the deadline of its entry in the expiry heap
        self.archive: MediaArchive | None = None

    @property
    def live(self) -> bool:
        return self.listeners > 0 or bool(self.viewers)


class MemoryStorage:
    """History, presence and delivery held in this process's memory.

    Nothing survives a restart and nothing crosses process boundaries: run one worker, or use
    :class:`~channel_asgi.storage.RedisStorage`.

    Args:
        max_history_bytes: the history all channels together may retain, in bytes (None: no
            limit). Past it, the least recently used channels nobody watches are dropped first.
        sweep_interval: seconds between two sweeps of expired history while ``run`` runs.
        clock: the monotonic clock, in seconds, that judges ``ttl`` and presence intervals.
    """

    shared = False

    def __init__(
        self,
        *,
        max_history_bytes: int | None = DEFAULT_MAX_HISTORY_BYTES,
        sweep_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_history_bytes is not None and (
            isinstance(max_history_bytes, bool) or not isinstance(max_history_bytes, int)
        ):
            raise TypeError(f"max_history_bytes must be an int or None, got {max_history_bytes!r}")
        if max_history_bytes is not None and max_history_bytes < 1:
            raise ValueError(f"max_history_bytes must be >= 1, got {max_history_bytes!r}")
        if (
            isinstance(sweep_interval, bool)
            or not isinstance(sweep_interval, (int, float))
            or not (math.isfinite(sweep_interval) and sweep_interval > 0)
        ):
            raise ValueError(f"sweep_interval must be a finite number > 0, got {sweep_interval!r}")
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        self.max_history_bytes = max_history_bytes
        self._sweep_interval = float(sweep_interval)
        self._clock = clock
        self._channels: dict[str, _Channel] = {}
        # Channels that count against the budget, least recently used first: those nobody
        # watches (evicted first) and watched ones with history (evicted last).
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._live: OrderedDict[str, None] = OrderedDict()
        self._bytes = 0
        self._expiries: list[tuple[float, str]] = []  # heap of (deadline, channel)
        self._scheduled = 0  # entries of the heap that are current (the others are skipped)
        self._closed: set[str] = set()
        self._connections: set[str] = set()
        self._consumers: list[Deliver] = []
        #: channel -> [joined, left, announced at, interval], for large channels
        self._presence: dict[str, list[float]] = {}
        #: channel (or "*") -> user id -> when the ban ends (Unix seconds; None: never)
        self._bans: dict[str, dict[str, float | None]] = {}
        #: bucket key -> (tokens, when counted), least recently used first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_buckets = _MAX_BUCKETS
        # Event ids are "<when this storage started, in ms>-<sequence>" (the shape of Redis
        # stream ids): ordered by publication, and never equal to an id a browser kept from an
        # earlier process, which then resumes as unknown (``recovered`` false).
        self._id_prefix = f"{time.time_ns() // 1_000_000}-"
        self._sequence = itertools.count()

    @property
    def history_bytes(self) -> int:
        """The history retained now, in bytes, as counted against ``max_history_bytes``."""
        return self._bytes

    @property
    def channel_count(self) -> int:
        """The channels this storage holds anything for (history, viewers or listeners)."""
        return len(self._channels)

    # -- bookkeeping ---------------------------------------------------------------------------

    def _state(self, channel: str) -> _Channel:
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
        return state

    def _settle(self, channel: str, state: _Channel, *, touch: bool = True) -> None:
        """Recount a channel after a change, and drop it when it holds nothing worth keeping."""
        live = state.live
        archive = state.archive
        if not live and state.last_id is None and not archive:
            self._drop(channel, state)
            return
        counted = 0
        if state.events or archive or not live:
            counted = state.events_bytes + _CHANNEL_BYTES + (archive.bytes if archive else 0)
        self._bytes += counted - state.counted
        state.counted = counted
        ring, other = (self._live, self._idle) if live else (self._idle, self._live)
        other.pop(channel, None)
        if not counted:
            ring.pop(channel, None)
        elif channel not in ring:
            ring[channel] = None
        elif touch:
            ring.move_to_end(channel)

    def _drop(self, channel: str, state: _Channel) -> None:
        del self._channels[channel]
        self._idle.pop(channel, None)
        self._live.pop(channel, None)
        presence = self._presence.get(channel)
        if presence is not None and not presence[0] and not presence[1]:
            if self._clock() - presence[2] >= presence[3]:  # its interval is over: forget it
                del self._presence[channel]
        self._bytes -= state.counted
        if state.expires_at is not None:
            self._scheduled -= 1

    def _trim(self, state: _Channel, horizon: float) -> None:
        """Forget what was appended before ``horizon``."""
        events = state.events
        while events and events[0][1] < horizon:
            state.events_bytes -= _cost(events.popleft()[0])
        if state.last_id is not None and state.last_at < horizon:
            state.last_id = None  # everything expired, the newest id too (as on Redis)

    def _schedule(self, channel: str, state: _Channel) -> None:
        """Put the channel in the expiry heap, due when its oldest broadcast expires."""
        if state.ttl is None or state.expires_at is not None:
            return
        if state.events:
            oldest = state.events[0][1]
        elif state.last_id is not None:
            oldest = state.last_at
        else:
            return
        state.expires_at = deadline = oldest + state.ttl
        self._scheduled += 1
        heap = self._expiries
        if len(heap) > 2 * self._scheduled + 64:  # mostly dropped channels: rebuild, amortised
            heap[:] = [
                (due, name)
                for due, name in heap
                if (other := self._channels.get(name)) is not None and other.expires_at == due
            ]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, channel))

    def _enforce_budget(self) -> None:
        limit = self.max_history_bytes
        if limit is None:
            return
        while self._bytes > limit and (self._idle or self._live):
            if self._idle:
                channel = next(iter(self._idle))
                self._drop(channel, self._channels[channel])
                continue
            channel = next(iter(self._live))
            state = self._channels[channel]
            if state.events:  # a watched channel counts only while it has broadcasts
                state.events_bytes -= _cost(state.events.popleft()[0])
            elif state.archive:
                state.archive.evict(1)
            self._settle(channel, state, touch=False)

    def sweep(self) -> bool:
        """Free expired history and drop the channels left empty, up to a batch at a time.

        ``run`` calls it every ``sweep_interval`` seconds; call it yourself when the storage
        is used without ``run``.

        Returns:
            True when more is due now than one call handles (call again).
        """
        now = self._clock()
        heap = self._expiries
        for _ in range(_SWEEP_BATCH):
            if not heap or heap[0][0] >= now:
                return False
            deadline, channel = heapq.heappop(heap)
            state = self._channels.get(channel)
            if state is None or state.expires_at != deadline:
                continue  # dropped, or dropped and used again since
            state.expires_at = None
            self._scheduled -= 1
            if state.ttl is not None:
                self._trim(state, now - state.ttl)
                self._schedule(channel, state)
            self._settle(channel, state, touch=False)
        return bool(heap) and heap[0][0] < now

    def _deliver(self, delivery: Delivery) -> None:
        state = self._channels.get(delivery.channel)
        if delivery.channel != "*" and (state is None or not state.listeners):
            return
        for deliver in self._consumers:
            deliver(delivery)

    # -- the Storage protocol ------------------------------------------------------------------

    async def run(
        self, deliver: Deliver, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Call ``deliver`` for every delivery, and sweep expired history, until cancelled."""
        self._consumers.append(deliver)
        try:
            task_status.started()
            while True:
                await anyio.sleep(self._sweep_interval)
                while self.sweep():
                    await anyio.lowlevel.checkpoint()
        finally:
            self._consumers.remove(deliver)

    async def listen(self, channel: str) -> None:
        """Deliver ``channel``; a watched channel is evicted last (see the module docstring)."""
        state = self._state(channel)
        state.listeners += 1
        self._settle(channel, state)

    async def unlisten(self, channel: str) -> None:
        """Stop delivering ``channel`` at once, unless another app sharing this still listens."""
        state = self._channels.get(channel)
        if state is not None and state.listeners:
            state.listeners -= 1
            self._settle(channel, state)

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
        """Retain (and archive) a broadcast, deliver it, and return its id."""
        if channel in self._closed:
            raise StorageChannelClosed(channel)
        if author is not None and self._bans and self._banned(channel, author):
            raise StorageUserBanned(channel, author)
        stamp = timestamp if archive > 0 else None
        if stamp is not None:
            check_time("timestamp", stamp)
        state = self._channels.get(channel) or self._state(channel)
        events = state.events
        if (
            ttl is None
            and state.ttl is None
            and state.counted
            and events is not None
            and events.maxlen == keep
        ):
            # The hot path, a channel that already keeps history: what the general path does,
            # by difference (``counted`` is ``events_bytes`` plus the channel's own cost).
            event_id = state.last_id = f"{self._id_prefix}{next(self._sequence)}"
            grow = len(payload) + len(event_id) + _EVENT_BYTES
            if len(events) == keep:  # the deque drops the oldest (its _cost, inline)
                oldest = events[0][0]
                grow -= len(oldest.payload) + len(oldest.id) + _EVENT_BYTES
            events.append((StoredEvent(event_id, payload), 0.0))
            state.events_bytes += grow
            state.counted += grow
            self._bytes += grow
            (self._live if state.listeners or state.viewers else self._idle).move_to_end(channel)
        else:
            event_id = self._append(channel, state, payload, keep, ttl)
        if stamp is not None:
            self._archive(channel, state, StoredEvent(event_id, payload), archive, stamp)
        limit = self.max_history_bytes
        if limit is not None and self._bytes > limit:
            self._enforce_budget()
        if state.listeners:
            delivery = Delivery(channel, "event", payload, event_id)
            for deliver in self._consumers:
                deliver(delivery)
        return event_id

    def _append(
        self, channel: str, state: _Channel, payload: bytes, keep: int, ttl: float | None
    ) -> str:
        """Retain a broadcast: the general case (a new channel, a ``ttl``, a size change)."""
        now = 0.0 if ttl is None else self._clock()
        event_id = state.last_id = f"{self._id_prefix}{next(self._sequence)}"
        state.last_at = now
        state.ttl = ttl
        if ttl is not None:
            self._trim(state, now - ttl)
        events = state.events
        if not keep:
            state.events, state.events_bytes = None, 0
        else:
            if events is None or events.maxlen != keep:  # the first, or the size changed
                events = state.events = deque(events or (), maxlen=keep)
                state.events_bytes = sum(_cost(event) for event, _ in events)
            if len(events) == keep:  # the deque drops the oldest
                state.events_bytes -= _cost(events[0][0])
            events.append((StoredEvent(event_id, payload), now))
            state.events_bytes += _cost(events[-1][0])
        if ttl is not None:
            self._schedule(channel, state)
        self._settle(channel, state)
        return event_id

    def _archive(
        self, channel: str, state: _Channel, event: StoredEvent, size: int, timestamp: float
    ) -> None:
        archive = state.archive
        if archive is None:
            archive = state.archive = MediaArchive()
        archive.add(timestamp, self._number(event.id), event, size)
        self._settle(channel, state, touch=False)

    def _number(self, event_id: str) -> int:
        """The sequence number in one of this storage's ids (ids are prefix, then sequence)."""
        return int(event_id[len(self._id_prefix) :])

    def _number_of(self, event_id: str) -> int | None:
        """The sequence number of ``event_id`` if this storage made it, else None."""
        digits = event_id[len(self._id_prefix) :]
        if event_id.startswith(self._id_prefix) and digits.isascii() and digits.isdigit():
            return int(digits)
        return None

    async def send(self, delivery: Delivery) -> None:
        """Deliver an event that is not retained."""
        self._deliver(delivery)

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
        if ttl is not None:
            self._trim(state, self._clock() - ttl)
        last_id = state.last_id
        events = [event for event, _ in state.events or ()]
        self._settle(channel, state)  # a read is a use; a channel expired by it may go
        end = None if limit is None else max(limit, 0)
        if after is None:
            return History(events[:end])
        if after == last_id:
            return History([], True)
        start = self._resume_index(events, after, last_id)
        if start is None:
            return History(events[:end], False)
        return History(events[start : None if end is None else start + end], True)

    def _resume_index(
        self, events: list[StoredEvent], after: str, last_id: str | None
    ) -> int | None:
        """Where the broadcasts after ``after`` start in ``events``; None if some are gone.

        ``after`` need not be retained: one that ``delete_event`` removed still marks a place,
        and while a broadcast older than it is retained, none after it was evicted (eviction
        and expiry take the oldest first).
        """
        sequence = self._number_of(after)
        if sequence is None or last_id is None or not events:
            return None
        if not self._number(events[0].id) <= sequence <= self._number(last_id):
            return None
        return bisect_right(events, sequence, key=lambda event: self._number(event.id))

    async def archive_range(
        self,
        channel: str,
        *,
        start: float | None = None,
        end: float | None = None,
        limit: int = 200,
        after: str | None = None,
    ) -> ArchivePage:
        """Return a page of the archive: two bisections and the page's walk."""
        check_page(start, end, limit)
        state = self._channels.get(channel)
        archive = None if state is None else state.archive
        if archive is None:
            if after is not None:
                raise ValueError(f"after: {after!r} is not an event of this archive")
            return ArchivePage([])
        return archive.page(start, end, limit, after)

    async def delete_event(self, channel: str, event_id: str) -> bool:
        """Remove a broadcast from the history and the archive (keeping its archive place)."""
        state = self._channels.get(channel)
        if state is None:
            return False
        removed = False
        events = state.events
        found = next((i for i, (e, _) in enumerate(events or ()) if e.id == event_id), None)
        if events is not None and found is not None:
            state.events_bytes -= _cost(events[found][0])
            del events[found]
            removed = True
        if state.archive is not None and state.archive.delete(event_id):
            removed = True
        if removed:
            self._settle(channel, state, touch=False)
        return removed

    async def ban(self, channel: str, user_id: str, *, until: float | None = None) -> None:
        """Ban a user until ``until`` (Unix seconds, by ``channel_asgi.clock.time()``)."""
        check_time("until", until)
        bans = self._bans.setdefault(channel, {})
        bans[user_id] = until
        now = edge_clock.time()
        for user, end in list(bans.items()):
            if end is not None and end <= now:
                del bans[user]
        if not bans:
            del self._bans[channel]

    async def unban(self, channel: str, user_id: str) -> None:
        """Lift a ban."""
        bans = self._bans.get(channel)
        if bans is not None:
            bans.pop(user_id, None)
            if not bans:
                del self._bans[channel]

    async def is_banned(self, channel: str, user_id: str) -> bool:
        """Return whether a ban on ``channel`` or on ``"*"`` is in force."""
        return self._banned(channel, user_id)

    def _banned(self, channel: str, user_id: str) -> bool:
        return self._in_force(channel, user_id) or (channel != "*" and self._in_force("*", user_id))

    def _in_force(self, channel: str, user_id: str) -> bool:
        bans = self._bans.get(channel)
        if bans is None or user_id not in bans:
            return False
        end = bans[user_id]
        if end is None or end > edge_clock.time():
            return True
        del bans[user_id]  # ended: forget it
        if not bans:
            del self._bans[channel]
        return False

    async def take_token(self, key: str, *, rate: float, burst: float) -> float:
        """Spend a token of a bucket in this process (``channel_asgi.clock.monotonic()``)."""
        check_bucket(rate, burst)
        now = edge_clock.monotonic()
        buckets = self._buckets
        tokens, at = buckets.get(key, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - at) * rate)
        if tokens < 1:
            return (1 - tokens) / rate
        buckets[key] = (tokens - 1, now)
        buckets.move_to_end(key)
        if len(buckets) > self._max_buckets:
            buckets.popitem(last=False)
        return 0.0

    async def join(self, channel: str, connection_id: str, user_id: str | None = None) -> int:
        """Count a live connection, and remember its user."""
        state = self._state(channel)
        if state.viewers is None:
            state.viewers = {}
        state.viewers[connection_id] = user_id
        self._connections.add(connection_id)
        self._settle(channel, state)
        return len(state.viewers)

    async def leave(self, channel: str, connection_id: str) -> int:
        """Stop counting a connection."""
        self._connections.discard(connection_id)
        state = self._channels.get(channel)
        if state is None or state.viewers is None:
            return 0
        state.viewers.pop(connection_id, None)
        count = len(state.viewers)
        if not count:
            state.viewers = None
        self._settle(channel, state)
        return count

    async def viewer_count(self, channel: str) -> int:
        """Return the number of live connections."""
        state = self._channels.get(channel)
        return 0 if state is None or state.viewers is None else len(state.viewers)

    async def presence(self, channel: str) -> dict[str, int]:
        """Return the live connections of each user on the channel."""
        state = self._channels.get(channel)
        if state is None or state.viewers is None:
            return {}
        return dict(Counter(user for user in state.viewers.values() if user is not None))

    async def is_connected(self, connection_id: str) -> bool:
        """Return whether the connection is live."""
        return connection_id in self._connections

    async def coalesce_presence(
        self, channel: str, joined: int, left: int, *, interval: float
    ) -> PresenceTotals | None:
        """Accumulate joins and leaves; release them at most once per ``interval``."""
        state = self._presence.setdefault(channel, [0, 0, -interval, interval])
        state[3] = interval
        state[0] += joined
        state[1] += left
        now = self._clock()
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

    async def ping(self) -> None:
        """Return at once: the storage lives in this process."""
