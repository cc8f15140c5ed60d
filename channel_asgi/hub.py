"""Per-process fan-out: channel -> the connections this process holds, each with a bounded mailbox.

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
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, cast

import anyio

from . import sse
from .protocol import with_id
from .storage.base import Delivery

__all__ = ["Close", "Hub", "Resume", "Subscriber", "Transport"]

logger = logging.getLogger("channel_asgi")


class Transport(enum.Enum):
    """How a subscriber wants its events framed."""

    SSE = "sse"  #: ``id:``/``data:`` bytes
    TEXT = "text"  #: the envelope as ``str`` (a WebSocket text frame)
    JSON = "json"  #: the envelope as ``bytes`` (a server-side subscriber)


class Close(enum.Enum):
    """Why a subscriber's mailbox was closed."""

    END = "end"  #: the channel was closed
    SLOW = "slow"  #: it did not keep up and its buffer overflowed
    GONE = "gone"  #: the client disconnected
    SHUTDOWN = "shutdown"  #: the app is stopping


#: Mailbox item asking the writer to send the channel's history (a ``request`` reply).
REQUEST: Final = object()
#: Heartbeat ticks per ``heartbeat`` interval.
HEARTBEAT_TICKS: Final = 3
#: Under load, the least and the most time between two batches of writes (seconds); see Hub.
WAKE_GAP: Final = 0.005
MAX_WAKE_GAP: Final = 0.05


class Subscriber:
    """One connection's place in the hub, and its bounded mailbox.

    Args:
        channel: the channel it listens to.
        connection_id: unique across processes.
        user_id: the user, or None for a server-side subscriber.
        transport: the framing it wants.
        limit: the byte size past which it is too slow (live events only).
    """

    __slots__ = (
        "_items",
        "_size",
        "_waiter",
        "backlog",
        "backlog_size",
        "channel",
        "closed",
        "connection_id",
        "controls",
        "direct",
        "inflight",
        "interrupt",
        "limit",
        "quiet",
        "transport",
        "user_id",
        "wake_soon",
        "waking",
    )

    def __init__(
        self,
        channel: str,
        connection_id: str,
        user_id: str | None,
        transport: Transport,
        limit: int,
    ) -> None:
        self.channel = channel
        self.connection_id = connection_id
        self.user_id = user_id
        self.transport = transport
        self.limit = limit
        self.closed: Close | None = None
        #: Heartbeat ticks since the last thing queued (see Hub.heartbeat).
        self.quiet = 0
        #: Stops the writer at once, even inside a send (set by the connection's writer).
        self.interrupt: Callable[[], object] | None = None
        self._items: list[object] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | anyio.Event | None = None
        #: Wakes the writer, now or a little later (the hub batches wake-ups; see Hub).
        self.wake_soon: Callable[[Subscriber], None] = Subscriber._wake
        self.waking = False
        #: How many queued items are instructions (REQUEST) rather than events.
        self.controls = 0
        #: Starts a write of ``body`` (a coroutine); set when the hub may write for the writer.
        self.direct: Callable[[bytes], Coroutine[Any, Any, Any]] | None = None
        #: A direct write that had to wait for the client; the writer finishes it.
        self.inflight: Resume | None = None
        #: Deliveries that arrive while the connection opens (before its replay is written).
        self.backlog: list[Delivery] | None = None
        self.backlog_size = 0

    def put(self, item: bytes | str) -> bool:
        """Queue an encoded event; return False if that made the mailbox overflow."""
        if self.closed is not None:
            return True
        self._items.append(item)
        self._size += len(item)
        self.quiet = 0
        if self._size > self.limit:
            return False
        if self._waiter is not None and not self.waking:
            self.waking = True
            self.wake_soon(self)
        return True

    def put_reply(self, text: str) -> None:
        """Queue a reply frame (WebSocket); replies do not count against the limit."""
        if self.closed is None:
            self._items.append(text)
            self._wake()

    def put_control(self, item: object) -> None:
        """Queue an instruction for the writer; it does not count against the limit."""
        if self.closed is None:
            self._items.append(item)
            self.controls += 1
            self._wake()

    def close(self, reason: Close) -> None:
        """Close the mailbox: the writer sends what is queued (unless too slow), then stops."""
        if self.closed is not None:
            return
        self.closed = reason
        if reason is Close.SLOW or reason is Close.GONE:
            self._items.clear()
            self._size = 0
            self.backlog = None
        if reason is Close.SLOW and self.interrupt is not None:
            # The writer may be blocked in a send to a client that stopped reading.
            self.interrupt()
        self._wake()

    def wants(self, delivery: Delivery) -> bool:
        """Return whether ``delivery`` (of this subscriber's channel) is addressed to it."""
        if delivery.kind == "request":
            return delivery.to_connection == self.connection_id
        if delivery.exclude_connection == self.connection_id:
            return False
        if delivery.to_user is None and delivery.to_connection is None:
            return True
        return (
            delivery.to_user is not None and delivery.to_user == self.user_id
        ) or delivery.to_connection == self.connection_id

    def _wake(self) -> None:
        self.waking = False
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        if isinstance(waiter, asyncio.Future):
            if not waiter.done():
                waiter.set_result(None)
        else:
            waiter.set()

    def parked(self) -> bool:
        """Whether the writer is idle, waiting, with only events (no instruction) queued."""
        waiter = self._waiter
        return (
            waiter is not None
            and isinstance(waiter, asyncio.Future)
            and not waiter.done()
            and not self.controls
            and self.closed is None
            and self.inflight is None
        )

    def drain(self) -> list[object]:
        """Return everything queued (possibly nothing), without waiting."""
        items, self._items = self._items, []
        self._size = 0
        self.controls = 0
        return items

    def until_ready(self) -> Awaitable[object]:
        """Return what to await until something is queued or the mailbox closes."""
        # On asyncio a bare future is the cheapest wake-up there is (it runs once per write of
        # every connection); elsewhere an anyio Event does the same job.
        try:
            waiter = asyncio.get_running_loop().create_future()
        except RuntimeError:
            event = self._waiter = anyio.Event()
            return event.wait()
        self._waiter = waiter
        return waiter

    async def take(self) -> list[object]:
        """Wait for queued items and return all of them; an empty list once closed and drained."""
        while not self._items:
            if self.closed is not None:
                return []
            await self.until_ready()
        return self.drain()


@dataclass(slots=True)
class _Room:
    """The subscribers of one channel in this process."""

    by_transport: dict[Transport, dict[str, Subscriber]] = field(
        default_factory=lambda: {transport: {} for transport in Transport}
    )
    by_user: dict[str, dict[str, Subscriber]] = field(default_factory=dict)
    by_connection: dict[str, Subscriber] = field(default_factory=dict)
    opening: dict[str, Subscriber] = field(default_factory=dict)


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
    """

    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}
        self._to_wake: list[Subscriber] = []
        self._flush_at: float | None = None  # when the scheduled flush runs, if one is
        self._writes_done = -1.0  # when the writers woken by the last flush had run
        self._flushed_at = 0.0
        self._direct_took = 0.0  # how long the last flush's direct writes took
        self._events = 0  # events dispatched since the last flush
        self._batch_events = 0  # events dispatched before the last flush
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
        started = time.perf_counter()
        batch, self._to_wake = self._to_wake, []
        for subscriber in batch:
            if subscriber.direct is not None and subscriber.parked():
                _write_directly(subscriber, subscriber.direct)
            else:
                subscriber._wake()
        self._direct_took = time.perf_counter() - started
        self._batch_events, self._events = self._events, 0
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush_at = None
            return
        # The woken writers run next, in this order; this callback runs right after them.
        self._flushed_at = loop.time()
        loop.call_soon(self._writes_ran, loop)

    def _writes_ran(self, loop: asyncio.AbstractEventLoop) -> None:
        self._writes_done = loop.time()
        took = self._direct_took + self._writes_done - self._flushed_at
        # One event per batch is light load: the next one may leave soon. More, and events
        # are arriving faster than they are written: wait as long as the writes took.
        busy = self._batch_events > 1
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

    def activate(self, subscriber: Subscriber, replayed_through: str | None = None) -> None:
        """Queue the backlog (minus what the replay already held) and go live.

        Args:
            subscriber: an attached subscriber.
            replayed_through: the id of the last broadcast the replay held, if any; backlog
                deliveries up to and including it are dropped.
        """
        room = self._rooms.get(subscriber.channel)
        backlog = subscriber.backlog
        subscriber.backlog = None
        if room is None or room.opening.pop(subscriber.connection_id, None) is None:
            return
        if subscriber.closed is not None:
            return
        if backlog and replayed_through is not None:
            backlog = _after_replay(backlog, replayed_through)
        key = subscriber.connection_id
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
            for transport, members in room.by_transport.items():
                if members:
                    frame = _frame(transport, payload, delivery.id)
                    self._offer_framed(members.values(), frame, delivery)
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
        self, members: Iterable[Subscriber], frame: bytes | str, delivery: Delivery
    ) -> None:
        exclude = delivery.exclude_connection
        if exclude is not None:
            members = [member for member in members if member.connection_id != exclude]
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


class Resume:
    """Await the rest of a coroutine that was started outside of any task and suspended.

    ``_write_directly`` runs a server's ``send`` coroutine from the hub's flush callback; nearly
    always it completes at once. When it suspends instead (the server waits for the client to
    drain), the connection's writer awaits this object, which hands the awaited future to the
    writer's task and resumes the coroutine where it stopped.
    """

    __slots__ = ("_coroutine", "_yielded")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coroutine = coroutine
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        yielded = self._yielded
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # noqa: PERF203 - rare path; cancellation passes in
                try:
                    yielded = self._coroutine.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = self._coroutine.send(sent)
                except StopIteration as stop:
                    return stop.value


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


def _after_replay(backlog: list[Delivery], replayed_through: str) -> list[Delivery]:
    """Drop the retained broadcasts the replay already held (those up to ``replayed_through``).

    Other events (private, system, ...) are never in a replay, so they all stay, in order.
    """
    for index, delivery in enumerate(backlog):
        if delivery.id == replayed_through:
            earlier = [d for d in backlog[:index] if d.id is None]
            return earlier + backlog[index + 1 :]
    return backlog


def _frame(transport: Transport, payload: bytes, event_id: str | None) -> bytes | str:
    if transport is Transport.SSE:
        return sse.event(payload, event_id)
    if transport is Transport.TEXT:
        return payload.decode()
    return payload
