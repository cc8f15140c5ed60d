"""One connection's bounded mailbox: what the hub queues for it and its writer takes.

A ``Mailbox`` holds the framed events waiting for one connection (SSE, WebSocket or server-side),
their total size, and at most one waiter: the connection's writer, parked in :meth:`take`.
Appending never awaits. Past its byte limit the mailbox reports the connection too slow and the
hub closes it. The writer takes everything queued at once, so a burst of events costs one write.

Nothing outside this module reads or writes a mailbox's state: the hub appends and closes, the
write scheduler wakes, the writer takes.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import Final

import anyio

from .connection import Framing

__all__ = ["SEND_HISTORY", "Close", "Mailbox"]


class Close(enum.Enum):
    """Why a mailbox was closed."""

    END = "end"  #: the channel was closed
    SLOW = "slow"  #: it did not keep up and its buffer overflowed
    GONE = "gone"  #: the client disconnected
    SHUTDOWN = "shutdown"  #: the app is stopping
    BUDGET = "budget"  #: it wrote its byte budget on a server that cannot pace it (see servers)


#: The mailbox item asking the writer to send the channel's history (the reply to a ``request``).
SEND_HISTORY: Final = object()

#: An item the writer takes: a framed event (``bytes`` for SSE and server-side subscribers,
#: ``str`` for WebSocket text frames) or :data:`SEND_HISTORY`.
Item = bytes | str | object


class Mailbox:
    """One connection's place in the hub, and its bounded queue of framed events.

    Args:
        channel: the channel it listens to.
        connection_id: unique across processes.
        user_id: the user, or None for a server-side subscriber (it gets no private events).
        framing: how the hub frames the events it queues here.
        limit: the byte size past which it is too slow (live events only).
        wake_soon: called when a parked writer has something to take; it must call
            :meth:`wake`, now or a little later (the write scheduler batches wake-ups).
            Without one the writer is woken at once.
    """

    __slots__ = (
        "_closed",
        "_controls",
        "_interrupt",
        "_items",
        "_quiet",
        "_size",
        "_waiter",
        "_wake_soon",
        "_waking",
        "channel",
        "connection_id",
        "framing",
        "limit",
        "user_id",
    )

    def __init__(
        self,
        channel: str,
        connection_id: str,
        user_id: str | None,
        framing: Framing,
        limit: int,
        wake_soon: Callable[[Mailbox], None] | None = None,
    ) -> None:
        self.channel: Final = channel
        self.connection_id: Final = connection_id
        self.user_id: Final = user_id
        self.framing: Final = framing
        self.limit: Final = limit
        self._wake_soon = Mailbox.wake if wake_soon is None else wake_soon
        self._items: list[Item] = []
        self._size = 0
        self._controls = 0  # how many queued items are SEND_HISTORY
        self._waiter: asyncio.Future[None] | anyio.Event | None = None
        self._waking = False  # a wake-up is scheduled
        self._closed: Close | None = None
        self._quiet = 0  # heartbeat ticks since the last thing queued
        self._interrupt: Callable[[], object] | None = None

    @property
    def closed(self) -> Close | None:
        """Why the mailbox was closed, or None while it is open."""
        return self._closed

    def pending(self) -> list[Item]:
        """Return a copy of what is queued, oldest first (to inspect; the writer takes)."""
        return list(self._items)

    def put(self, item: bytes | str) -> bool:
        """Queue a framed event; return False if that made the mailbox overflow."""
        if self._closed is not None:
            return True
        self._items.append(item)
        self._size += len(item)
        self._quiet = 0
        if self._size > self.limit:
            return False
        if self._waiter is not None and not self._waking:
            self._waking = True
            self._wake_soon(self)
        return True

    def put_reply(self, text: str) -> None:
        """Queue a reply frame (WebSocket) and wake the writer; replies do not count."""
        if self._closed is None:
            self._items.append(text)
            self.wake()

    def request_history(self) -> None:
        """Ask the writer to send the channel's history; it does not count against the limit.

        A request already queued is not queued again: the history it sends is read when it is
        written, so it answers every request made before.
        """
        if self._closed is None and not self._controls:
            self._items.append(SEND_HISTORY)
            self._controls += 1
            self.wake()

    def beat(self, ping: bytes, ticks: int) -> bool:
        """Count a heartbeat tick; queue ``ping`` after ``ticks`` ticks with nothing queued.

        Returns:
            False if the ping made the mailbox overflow (as :meth:`put`).
        """
        if self._quiet >= ticks:
            return self.put(ping)
        self._quiet += 1
        return True

    def close(self, reason: Close) -> None:
        """Close the mailbox: the writer takes what is queued (unless too slow), then stops.

        A mailbox closed as too slow or gone is emptied at once, and a slow one interrupts its
        writer (see :meth:`interrupt_with`), which may be stuck writing to a client that
        stopped reading.
        """
        if self._closed is not None:
            return
        self._closed = reason
        if reason is Close.SLOW or reason is Close.GONE:
            self._items.clear()
            self._size = 0
            self._controls = 0
        if reason is Close.SLOW and self._interrupt is not None:
            self._interrupt()
        self.wake()

    def interrupt_with(self, interrupt: Callable[[], object] | None) -> None:
        """Set what stops the writer at once when the mailbox is closed as too slow."""
        self._interrupt = interrupt

    def wake(self) -> None:
        """Wake the parked writer, if there is one (the write scheduler calls this)."""
        self._waking = False
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        if isinstance(waiter, asyncio.Future):
            if not waiter.done():
                waiter.set_result(None)
        else:
            waiter.set()

    async def take(self) -> list[Item]:
        """Wait for queued items and return all of them; an empty list once closed and taken."""
        while (items := self.take_nowait()) is None:
            await self.ready()
        return items

    def take_nowait(self) -> list[Item] | None:
        """Return everything queued; an empty list once closed and taken; None: wait first.

        With :meth:`ready`, the writer's loop without a coroutine of its own per batch (it runs
        once per write of every connection).
        """
        items = self._items
        if not items:
            return [] if self._closed is not None else None
        self._items = []
        self._size = 0
        self._controls = 0
        return items

    def ready(self) -> Awaitable[object]:
        """Return what to await until something is queued or the mailbox closes (one waiter)."""
        # On asyncio a bare future is the cheapest wake-up there is (it runs once per write of
        # every connection); elsewhere an anyio Event does the same job.
        try:
            waiter = asyncio.get_running_loop().create_future()
        except RuntimeError:
            event = self._waiter = anyio.Event()
            return event.wait()
        self._waiter = waiter
        return waiter
