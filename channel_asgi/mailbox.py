"""One connection's bounded mailbox: what the hub queues for it and its writer takes.

A ``Subscriber`` holds the encoded frames waiting for its connection, their total size and at most
one waiter (the writer, parked). Appending never awaits: past its byte limit the mailbox reports
the connection too slow and the hub closes it. The writer takes everything queued at once, so a
burst of events costs one ``send``. ``Resume`` lets the writer finish a write the hub started for
it (see ``hub``).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Final

import anyio

from .storage.base import Delivery

__all__ = ["REQUEST", "Close", "Resume", "Subscriber", "Transport"]


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
    BUDGET = "budget"  #: it wrote its byte budget on a server that cannot pace it (see servers)


#: Mailbox item asking the writer to send the channel's history (a ``request`` reply).
REQUEST: Final = object()


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
        """Queue an instruction for the writer; it does not count against the limit.

        ``REQUEST`` is the only instruction, and one already queued is not queued again: the
        reply it gives is read when it is written, so it answers every request made before.
        """
        if self.closed is None and not self.controls:
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
