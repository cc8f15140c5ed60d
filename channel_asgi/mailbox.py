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
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import anyio

from .connection import Framing
from .fastpath import DirectWriter, Resume, enabled, step
from .http import Send

__all__ = [
    "MAX_REQUESTS",
    "SEND_HISTORY",
    "ChannelFrame",
    "Close",
    "Control",
    "HistoryRequest",
    "Mailbox",
    "put_many",
]

logger = logging.getLogger("channel_asgi")


class Close(enum.Enum):
    """Why a mailbox was closed."""

    END = "end"  #: the channel was closed, or the user banned (an ``end`` event was queued)
    DISCONNECT = "disconnect"  #: ``channels.disconnect``: ended with no event; it may reconnect
    SLOW = "slow"  #: it did not keep up and its buffer overflowed
    GONE = "gone"  #: the client disconnected
    SHUTDOWN = "shutdown"  #: the app is stopping
    BUDGET = "budget"  #: it wrote its byte budget on a server that cannot pace it (see servers)


class HistoryRequest:
    """A mailbox item asking the writer to send a ``request`` reply.

    Args:
        query: what to send, opaque here: empty for the channel's live history, else the
            encoded range of its archive (``ranges.encode_range``).
        channel: whose history, in a stream of several channels (None: the mailbox's).
    """

    __slots__ = ("channel", "query")

    def __init__(self, query: bytes = b"", channel: str | None = None) -> None:
        self.query: Final = query
        self.channel: Final = channel


class Control:
    """A mailbox item asking the writer of a stream of several channels to change it.

    Args:
        kind: ``"leave"`` (the hub has taken ``channel`` out of its room: the channel ended
            here; ``payload`` is the ``Close`` value saying why) or ``"change"`` (channels to
            add and remove, ``payload`` encoded by ``streams``).
        channel: the channel it concerns (for a change, the one it was addressed through).
        payload: as above.
    """

    __slots__ = ("channel", "kind", "payload")

    def __init__(self, kind: str, channel: str, payload: bytes = b"") -> None:
        self.kind: Final = kind
        self.channel: Final = channel
        self.payload: Final = payload


class ChannelFrame:
    """An event for streams of several channels: its framing, channel and event id.

    The hub makes one per delivery and queues the same object for every such stream. ``data``
    is the SSE event's ``data:`` bytes, before which each SSE stream's writer puts its own
    ``id:`` line (a cursor per channel); or a WebSocket's text frame, as it is sent. A stream
    drops the frames of a channel it has left since they were queued.
    """

    __slots__ = ("channel", "data", "id")

    def __init__(self, channel: str, event_id: str | None, data: bytes | str) -> None:
        self.channel: Final = channel
        self.id: Final = event_id
        self.data: Final = data

    def __len__(self) -> int:
        return len(self.data)


#: The mailbox item asking the writer to send the channel's history (the reply to a ``request``).
SEND_HISTORY: Final = HistoryRequest()

#: Range requests a connection may have waiting; one more means it does not read its replies.
MAX_REQUESTS: Final = 16

#: An item the writer takes: a framed event (``bytes`` for SSE and server-side subscribers,
#: ``str`` for WebSocket text frames, a :class:`ChannelFrame` for streams of several channels),
#: a :class:`HistoryRequest` or a :class:`Control`.
Item = bytes | str | object  # object: a ChannelFrame, HistoryRequest or Control


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
        multi: the mailbox of a stream of several channels (``channel`` is its first): the
            end of one channel is a :class:`Control`, not a close (see ``hub``).
    """

    __slots__ = (
        "_closed",
        "_controls",
        "_direct",
        "_direct_writer",
        "_interrupt",
        "_items",
        "_quiet",
        "_release",
        "_size",
        "_waiter",
        "_wake_soon",
        "_waking",
        "channel",
        "connection_id",
        "framing",
        "limit",
        "multi",
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
        *,
        multi: bool = False,
    ) -> None:
        self.channel: Final = channel
        self.multi: Final = multi
        self.connection_id: Final = connection_id
        self.user_id: Final = user_id
        self.framing: Final = framing
        self.limit: Final = limit
        self._wake_soon = Mailbox.wake if wake_soon is None else wake_soon
        self._items: list[Item] = []
        self._size = 0
        self._controls = 0  # how many queued items are HistoryRequests
        self._waiter: asyncio.Future[Resume | None] | anyio.Event | None = None
        self._waking = False  # a wake-up is scheduled
        self._closed: Close | None = None
        self._quiet = 0  # heartbeat ticks since the last thing queued
        self._interrupt: Callable[[], object] | None = None
        self._release: Callable[[], Awaitable[None]] | None = None
        self._direct: Send | None = None  # the send a direct write steps (fastpath)
        self._direct_writer: DirectWriter | None = None

    @property
    def closed(self) -> Close | None:
        """Why the mailbox was closed, or None while it is open."""
        return self._closed

    @property
    def controls(self) -> int:
        """How many queued items are :class:`HistoryRequest` (none: a batch of frames only)."""
        return self._controls

    def pending(self) -> list[Item]:
        """Return a copy of what is queued, oldest first (to inspect; the writer takes)."""
        return list(self._items)

    def put(self, item: bytes | str | ChannelFrame) -> bool:
        """Queue a framed event; return False if that made the mailbox overflow."""
        return not put_many((self,), item)

    def put_reply(self, text: str) -> None:
        """Queue a reply frame (WebSocket) and wake the writer; replies do not count."""
        if self._closed is None:
            self._items.append(text)
            self.wake()

    def put_control(self, control: Control) -> None:
        """Queue a :class:`Control` and wake the writer; it does not count against the limit.

        Changes come from clients: with :data:`MAX_REQUESTS` controls already waiting, the
        stream does not keep up with them and is closed as too slow instead.
        """
        if self._closed is not None:
            return
        if control.kind == "change" and self._controls >= MAX_REQUESTS:
            logger.warning("Closing stream %s: its changes wait unanswered", self.connection_id)
            self.close(Close.SLOW)
            return
        self._items.append(control)
        self._controls += 1
        self.wake()

    def request_history(self, query: bytes = b"", channel: str | None = None) -> bool:
        """Ask the writer to send a ``request`` reply; it does not count against the limit.

        A request for the live history (``query`` empty) already queued is not queued again:
        the history it sends is read when it is written, so it answers every request made
        before. Each range request (``query``: an encoded range) is queued; with
        :data:`MAX_REQUESTS` already waiting, the connection does not read its replies and is
        closed as too slow instead.

        Returns:
            False if it closed the mailbox as too slow.
        """
        if self._closed is not None:
            return True
        if channel == self.channel and not self.multi:
            channel = None
        if not query and channel is None:
            if SEND_HISTORY in self._items:
                return True
            item = SEND_HISTORY
        elif not query and any(
            isinstance(queued, HistoryRequest) and queued.channel == channel and not queued.query
            for queued in self._items
        ):
            return True
        elif self._controls >= MAX_REQUESTS:
            logger.warning(
                "Closing connection %s on channel %r: %d history requests wait unanswered",
                self.connection_id,
                self.channel,
                self._controls,
            )
            self.close(Close.SLOW)
            return False
        else:
            item = HistoryRequest(query, channel)
        self._items.append(item)
        self._controls += 1
        self.wake()
        return True

    def beat(self, ping: bytes | str, ticks: int) -> bool:
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

    @property
    def release(self) -> Callable[[], Awaitable[None]] | None:
        """What the writer awaits before it ends a stream closed with ``Close.SHUTDOWN``."""
        return self._release

    def release_with(self, release: Callable[[], Awaitable[None]] | None) -> None:
        """Set :attr:`release`: the connection's leave, so its presence is gone before its end.

        A server may exit as soon as its last response completes (granian does), before the
        connection's cleanup would have run.
        """
        self._release = release

    def write_directly_with(self, send: Send | None, writer: DirectWriter) -> None:
        """Let ``writer`` write this mailbox's batches through ``send`` while its writer is parked.

        See ``fastpath``; None (no direct write for this connection) does nothing.
        """
        if send is not None:
            self._direct = send
            self._direct_writer = writer

    def wake(self) -> None:
        """Wake the parked writer, if there is one (the write scheduler calls this)."""
        waiter = self._waiter
        if (
            self._direct_writer is not None
            and waiter is not None
            and self._items
            and not self._controls
            and self._closed is None
        ):
            self._direct_writer.queue(self)  # the writer stays parked; _waking stays set
            return
        self.wake_writer()

    def wake_writer(self) -> None:
        """Wake the parked writer itself, never through a direct write."""
        self._waking = False
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        if isinstance(waiter, asyncio.Future):
            if not waiter.done():
                waiter.set_result(None)
        else:
            waiter.set()

    def write_directly(self) -> bool:
        """Write the queued batch with the direct write, or wake the writer to do it.

        Called by the direct writer's task (see ``fastpath``). A write that has to wait is
        handed to the writer, which finishes it; an error is raised in the writer.

        Returns:
            Whether the batch was written here.
        """
        waiter, send = self._waiter, self._direct
        if (
            send is None
            or not isinstance(waiter, asyncio.Future)
            or waiter.done()
            or not self._items
            or self._controls
            or self._closed is not None
        ):
            self.wake_writer()
            return False
        if not enabled():  # off since a failure: this writer writes for itself from now on
            self._direct = self._direct_writer = None
            self.wake_writer()
            return False
        self._waking = False
        items = self._items
        self._items = []
        self._size = 0
        try:
            rest = step(send, items)
        except Exception as exc:  # the writer raises it, as if its own send had
            self._direct = self._direct_writer = None
            self._waiter = None
            waiter.set_exception(exc)
            return False
        if rest is not None:  # it waits for the client: the writer finishes it
            self._waiter = None
            waiter.set_result(rest)
        return True

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

    def ready(self) -> Awaitable[Resume | None]:
        """Return what to await until something is queued or the mailbox closes (one waiter).

        What it returns, if not None, is a direct write that waits for the client: the writer
        awaits it before taking more (see ``fastpath``).
        """
        # On asyncio a bare future is the cheapest wake-up there is (it runs once per write of
        # every connection); elsewhere an anyio Event does the same job.
        try:
            waiter = asyncio.get_running_loop().create_future()
        except RuntimeError:
            event = self._waiter = anyio.Event()
            return event.wait()
        self._waiter = waiter
        return waiter


def put_many(mailboxes: Iterable[Mailbox], item: bytes | str | ChannelFrame) -> list[Mailbox]:
    """Queue the same framed event in every open mailbox of ``mailboxes``.

    The hub's fan-out: one loop here rather than a method call per connection.

    Returns:
        The mailboxes that overflowed (the caller closes them as too slow).
    """
    size = len(item)
    overflowed: list[Mailbox] = []
    for mailbox in mailboxes:
        if mailbox._closed is not None:
            continue
        mailbox._items.append(item)
        mailbox._size += size
        mailbox._quiet = 0
        if mailbox._size > mailbox.limit:
            overflowed.append(mailbox)
        elif mailbox._waiter is not None and not mailbox._waking:
            mailbox._waking = True
            mailbox._wake_soon(mailbox)
    return overflowed
