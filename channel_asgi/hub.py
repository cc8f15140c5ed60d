"""Per-process fan-out: channel -> the connections this process holds, each with a bounded mailbox
(``mailbox.Subscriber``).

A delivery is framed once per transport (the SSE bytes for every SSE connection, the JSON text for
every WebSocket and server-side subscriber), and the same object is appended to every matching
mailbox. Appending never awaits: a mailbox that grows past its byte limit marks its connection
too slow, closes it and cancels its writer; the client reconnects and recovers from history.

Each connection's own ASGI task drains its mailbox and writes everything pending in one ``send``,
so a burst of events costs one write per connection, not one per event. Under uvicorn, whose
``send`` writes at once, the hub's flush even writes for writers that are parked waiting, without
waking their tasks (see ``_write_directly``); a write that must wait for the client is finished
by the writer itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Final, cast

from . import sse
from .mailbox import REQUEST, Close, Resume, Subscriber, Transport
from .protocol import with_id
from .storage.base import Delivery

__all__ = ["HEARTBEAT_TICKS", "Hub"]

logger = logging.getLogger("channel_asgi")


#: Heartbeat ticks per ``heartbeat`` interval.
HEARTBEAT_TICKS: Final = 3
#: Under load, the least and the most time between two batches of writes (seconds); see Hub.
WAKE_GAP: Final = 0.005
MAX_WAKE_GAP: Final = 0.05
#: How long one slice of a batch of writes holds the loop (seconds; see ``Hub._write_slice``),
#: and how many writes go between two looks at the clock.
WRITE_SLICE: Final = 0.00025
SLICE_CHECK: Final = 16


@dataclass(slots=True)
class _Room:
    """The subscribers of one channel in this process."""

    by_transport: dict[Transport, dict[str, Subscriber]] = field(
        default_factory=lambda: {transport: {} for transport in Transport}
    )
    by_user: dict[str, dict[str, Subscriber]] = field(default_factory=dict)
    by_connection: dict[str, Subscriber] = field(default_factory=dict)
    opening: dict[str, Subscriber] = field(default_factory=dict)
    #: Live subscribers whose replay may still arrive as live deliveries: connection id ->
    #: (the replayed ids, the last of them). See :meth:`Hub.activate`.
    catching_up: dict[str, tuple[frozenset[str], str]] = field(default_factory=dict)


class Hub:
    """The channels and connections of this process.

    Writers are woken in batches: the first wake-up after a quiet spell happens at the end of the
    current loop iteration, and the next batch waits at least ``WAKE_GAP`` seconds after the
    previous batch's writes are done. When that batch carried more than one event, events are
    arriving faster than they are written: the next one then waits as long as the writes took
    (direct writes included; at most ``MAX_WAKE_GAP``). Under load, every event that arrives
    meanwhile leaves in the same write, even when events come one per loop iteration (as they do
    from Redis), and writing never takes more than about half of the process's time, so
    publishes keep flowing in. At light load (one event per batch) nothing waits.

    A batch is written in slices of about ``WRITE_SLICE``, the loop serving what arrived between
    two of them, so a publish, or a round trip to the storage, is not held back for a whole
    batch of thousands of writes.
    """

    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}
        self._to_wake: list[Subscriber] = []
        self._flush_at: float | None = None  # when the scheduled flush runs, if one is
        self._writes_done = -1.0  # when the writers woken by the last flush had run
        self._writing = 0.0  # seconds the slices of the current batch have spent writing
        self._sliced_at = 0.0  # when its last slice ended (perf_counter)
        self._woke = False  # whether that slice woke writer tasks (they run after it)
        self._events = 0  # events dispatched since the last flush
        self._gap = WAKE_GAP

    def _wake_soon(self, subscriber: Subscriber) -> None:
        self._to_wake.append(subscriber)
        if self._flush_at is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on asyncio: wake at once
            self._flush()
            return
        now = loop.time()
        due = max(now, self._writes_done + self._gap)
        self._flush_at = due
        if due <= now:
            loop.call_soon(self._flush)
        else:
            loop.call_at(due, self._flush)

    def _flush(self) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        busy, self._events = self._events > 1, 0
        batch, self._to_wake = self._to_wake, []
        self._writing = 0.0
        self._write_slice(batch, 0, loop, busy)

    def _write_slice(
        self,
        batch: list[Subscriber],
        start: int,
        loop: asyncio.AbstractEventLoop | None,
        busy: bool,
    ) -> None:
        """Write for ``batch[start:]``, handing the loop back every ``WRITE_SLICE`` seconds.

        Between two slices the loop reads what arrived meanwhile: publishes, and the storage's
        replies and deliveries. A batch of thousands of writes thus never holds a publish (or a
        round trip to Redis) back for all of them, and what it brings in joins the writes of
        this batch still to come.
        """
        began = perf_counter()
        if start and self._woke:  # the writers the last slice woke ran meanwhile: count them
            self._writing += began - self._sliced_at
        woke = False
        end = stop = len(batch)
        for index in range(start, end):
            subscriber = batch[index]
            if subscriber.direct is not None and subscriber.parked():
                _write_directly(subscriber, subscriber.direct)
            else:
                subscriber._wake()
                woke = True
            if (
                loop is not None
                and index % SLICE_CHECK == SLICE_CHECK - 1
                and index + 1 < end
                and perf_counter() - began >= WRITE_SLICE
            ):
                stop = index + 1
                break
        self._woke = woke
        self._sliced_at = perf_counter()
        self._writing += self._sliced_at - began
        if loop is None:
            self._flush_at = None
        elif stop < end:
            loop.call_soon(self._write_slice, batch, stop, loop, busy)
        else:  # the woken writers run next, in this order; this callback runs right after them
            loop.call_soon(self._writes_ran, loop, busy)

    def _writes_ran(self, loop: asyncio.AbstractEventLoop, busy: bool) -> None:
        """The batch's writes are done; ``busy``: it carried more than one event."""
        self._writes_done = loop.time()
        took = self._writing + perf_counter() - self._sliced_at
        # One event per batch is light load: the next one may leave soon. More, and events
        # are arriving faster than they are written: wait as long as the writes took.
        self._gap = min(MAX_WAKE_GAP, max(WAKE_GAP, took)) if busy else WAKE_GAP
        self._flush_at = None
        if self._to_wake:  # arrived while the writers ran: the next batch, after the gap
            to_wake, self._to_wake = self._to_wake, []
            for subscriber in to_wake:
                self._wake_soon(subscriber)

    def attach(self, subscriber: Subscriber) -> None:
        """Start collecting the channel's deliveries for ``subscriber`` in its backlog.

        The connection then reads its replay from the storage, writes it, and calls
        :meth:`activate`; nothing published in between is lost or delivered twice.
        """
        room = self._rooms.get(subscriber.channel)
        if room is None:
            room = self._rooms[subscriber.channel] = _Room()
        subscriber.backlog = []
        subscriber.wake_soon = self._wake_soon
        room.opening[subscriber.connection_id] = subscriber

    def activate(self, subscriber: Subscriber, replayed: Sequence[str] = ()) -> None:
        """Queue the backlog (minus what the replay already held) and go live.

        A broadcast read from the storage's history may reach this process as a live delivery
        only later (Redis answers the history read and the pub/sub message on two connections):
        until a broadcast the replay did not hold arrives, or the last one it did, the live
        deliveries of replayed broadcasts are dropped for this subscriber too.

        Args:
            subscriber: an attached subscriber.
            replayed: the ids of the newest broadcasts its replay held, in order (the only ones
                that can still arrive live).
        """
        room = self._rooms.get(subscriber.channel)
        backlog = subscriber.backlog
        subscriber.backlog = None
        if room is None or room.opening.pop(subscriber.connection_id, None) is None:
            return
        if subscriber.closed is not None:
            return
        key = subscriber.connection_id
        if replayed:
            ids = frozenset(replayed)
            caught_up = False
            if backlog:
                caught_up = any(d.id == replayed[-1] or d.id not in ids for d in backlog if d.id)
                backlog = [delivery for delivery in backlog if delivery.id not in ids]
            if not caught_up:
                room.catching_up[key] = (ids, replayed[-1])
        room.by_connection[key] = subscriber
        room.by_transport[subscriber.transport][key] = subscriber
        if subscriber.user_id is not None:
            room.by_user.setdefault(subscriber.user_id, {})[key] = subscriber
        for delivery in backlog or ():
            self._deliver_one(subscriber, delivery)

    def detach(self, subscriber: Subscriber) -> None:
        """Stop delivering to ``subscriber``."""
        subscriber.backlog = None
        room = self._rooms.get(subscriber.channel)
        if room is None:
            return
        key = subscriber.connection_id
        room.opening.pop(key, None)
        room.catching_up.pop(key, None)
        room.by_connection.pop(key, None)
        room.by_transport[subscriber.transport].pop(key, None)
        if subscriber.user_id is not None:
            same_user = room.by_user.get(subscriber.user_id)
            if same_user is not None:
                same_user.pop(key, None)
                if not same_user:
                    del room.by_user[subscriber.user_id]
        if not room.by_connection and not room.opening:
            del self._rooms[subscriber.channel]

    def _deliver_one(self, subscriber: Subscriber, delivery: Delivery) -> None:
        if not subscriber.wants(delivery):
            return
        if delivery.kind == "request":
            subscriber.put_control(REQUEST)
            return
        payload = delivery.payload
        if delivery.id is not None:
            payload = with_id(payload, delivery.id)
        if not subscriber.put(_frame(subscriber.transport, payload, delivery.id)):
            self._too_slow(subscriber)
        if delivery.kind == "end":
            subscriber.close(Close.END)

    def subscribers(self, channel: str | None = None) -> Iterator[Subscriber]:
        """Iterate over the subscribers of ``channel``, or of every channel."""
        rooms = self._rooms.values() if channel is None else [self._rooms.get(channel)]
        for room in rooms:
            if room is not None:
                yield from [*room.opening.values(), *room.by_connection.values()]

    def dispatch(self, delivery: Delivery) -> None:
        """Frame ``delivery`` once per transport and queue it for every matching subscriber."""
        room = self._rooms.get(delivery.channel)
        if room is None:
            return
        self._events += 1
        if room.opening:
            self._collect(room, delivery)
        if delivery.kind == "request":
            target = room.by_connection.get(delivery.to_connection or "")
            if target is not None:
                target.put_control(REQUEST)
            return
        payload = delivery.payload
        if delivery.id is not None:
            payload = with_id(payload, delivery.id)
        if delivery.to_user is not None or delivery.to_connection is not None:
            targets = dict(room.by_user.get(delivery.to_user or "", {}))
            sender = room.by_connection.get(delivery.to_connection or "")
            if sender is not None:
                targets[sender.connection_id] = sender
            self._offer(targets.values(), payload, delivery)
        else:
            replayed = _replayed_to(room, delivery.id) if room.catching_up else None
            for transport, members in room.by_transport.items():
                if members:
                    frame = _frame(transport, payload, delivery.id)
                    self._offer_framed(members.values(), frame, delivery, replayed)
        if delivery.kind == "end":
            for subscriber in list(room.by_connection.values()):
                subscriber.close(Close.END)

    def _offer(self, targets: Iterable[Subscriber], payload: bytes, delivery: Delivery) -> None:
        frames: dict[Transport, bytes | str] = {}
        for subscriber in targets:
            if subscriber.connection_id == delivery.exclude_connection:
                continue
            frame = frames.get(subscriber.transport)
            if frame is None:
                frame = _frame(subscriber.transport, payload, delivery.id)
                frames[subscriber.transport] = frame
            if not subscriber.put(frame):
                self._too_slow(subscriber)

    def _offer_framed(
        self,
        members: Iterable[Subscriber],
        frame: bytes | str,
        delivery: Delivery,
        replayed: set[str] | None = None,
    ) -> None:
        exclude = delivery.exclude_connection
        if exclude is not None:
            members = [member for member in members if member.connection_id != exclude]
        if replayed:  # the connections whose replay already held this broadcast
            members = [member for member in members if member.connection_id not in replayed]
        for subscriber in members:
            if not subscriber.put(frame):
                self._too_slow(subscriber)

    def _collect(self, room: _Room, delivery: Delivery) -> None:
        for subscriber in list(room.opening.values()):
            if subscriber.backlog is None or not subscriber.wants(delivery):
                continue
            subscriber.backlog.append(delivery)
            subscriber.backlog_size += len(delivery.payload)
            if subscriber.backlog_size > subscriber.limit:
                self._too_slow(subscriber)

    @staticmethod
    def _too_slow(subscriber: Subscriber) -> None:
        logger.warning(
            "Closing connection %s on channel %r: it is not reading and its buffer is full",
            subscriber.connection_id,
            subscriber.channel,
        )
        subscriber.close(Close.SLOW)

    def heartbeat(self) -> None:
        """Ping every SSE connection that was silent for ``HEARTBEAT_TICKS`` calls.

        The app calls this ``HEARTBEAT_TICKS`` times per ``heartbeat`` interval, so a stream is
        never silent for more than a third of an interval past its heartbeat.
        """
        for room in self._rooms.values():
            for subscriber in room.by_transport[Transport.SSE].values():
                if subscriber.quiet >= HEARTBEAT_TICKS:
                    subscriber.put(sse.PING)
                else:
                    subscriber.quiet += 1

    def close_all(self, reason: Close) -> None:
        """Close every mailbox (the app is stopping)."""
        for subscriber in self.subscribers():
            subscriber.close(reason)


def _write_directly(
    subscriber: Subscriber, start: Callable[[bytes], Coroutine[Any, Any, Any]]
) -> None:
    """Write what a parked writer would write, without waking its task (one write per event
    per connection is the cost that dominates at light load; a task switch is most of the rest).
    """
    subscriber.waking = False
    body = b"".join(cast("list[bytes]", subscriber.drain()))
    coroutine = start(body)
    try:
        yielded = coroutine.send(None)
    except StopIteration:
        return
    except Exception:
        logger.debug("Direct write to %s failed", subscriber.connection_id, exc_info=True)
        subscriber.close(Close.GONE)
        return
    subscriber.inflight = Resume(coroutine, yielded)
    subscriber._wake()


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


def _frame(transport: Transport, payload: bytes, event_id: str | None) -> bytes | str:
    if transport is Transport.SSE:
        return sse.event(payload, event_id)
    if transport is Transport.TEXT:
        return payload.decode()
    return payload
