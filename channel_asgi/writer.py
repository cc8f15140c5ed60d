"""The writer of a live connection (SSE or WebSocket), and what runs around it.

The connection's own task is its writer: it takes what its mailbox holds and writes it, in
:func:`pump`, the one writer loop of every transport. A second, bare asyncio task watches the
client (for SSE, its disconnect; for a WebSocket, its frames too). A connection found too slow
is interrupted by cancelling the writer, which may be stuck in a send; that cancellation is the
connection's own business and ends here. Whatever happens, the cleanup (leave, announce it, run
the hooks) runs shielded, with a deadline so that a storage outage cannot hold the task forever.

These are plain asyncio tasks rather than an anyio task group: a task group per connection
would add to the memory every idle connection holds, and idle connections should stay small.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol

import anyio

from .engine import Engine, Opening
from .mailbox import SEND_HISTORY, Close, Mailbox

__all__ = ["CLEANUP_TIMEOUT", "Sink", "pump", "serving"]

#: How long the cleanup of a closed connection may take (it runs shielded).
CLEANUP_TIMEOUT: Final = 10.0


class Sink(Protocol):
    """Where a connection's writer writes: the transport's framing of a batch."""

    def events(self, frames: list[Any]) -> Awaitable[None]:
        """Write framed events (``bytes`` for SSE, ``str`` for WebSocket), in order.

        It may return the transport's own ``send`` awaitable (no coroutine of its own).
        """

    def history(self, reply: AsyncGenerator[bytes, None]) -> Awaitable[None]:
        """Write a ``request`` reply as it is read (each event written before the next read)."""


async def pump(
    mailbox: Mailbox, sink: Sink, reply: Callable[[], AsyncGenerator[bytes, None]]
) -> None:
    """Write what ``mailbox`` holds to ``sink`` until it is closed and empty.

    Args:
        mailbox: the connection's mailbox.
        sink: the transport.
        reply: returns the ``request`` reply to write for a :data:`SEND_HISTORY` item.
    """
    write_events = sink.events
    while True:
        items = mailbox.take_nowait()
        if items is None:
            await mailbox.ready()
            continue
        if not items:
            return
        if SEND_HISTORY not in items:  # the hot path: one write for everything taken
            await write_events(items)
            continue
        pending: list[Any] = []
        for item in items:
            if item is SEND_HISTORY:
                if pending:
                    await sink.events(pending)
                    pending = []
                async with contextlib.aclosing(reply()) as events:
                    await sink.history(events)
            else:
                pending.append(item)
        if pending:
            await sink.events(pending)


@asynccontextmanager
async def serving(
    engine: Engine, mailbox: Mailbox, opening: Opening, watcher: Coroutine[Any, Any, None]
) -> AsyncIterator[None]:
    """Run the block as the connection's writer, with ``watcher`` beside it; clean up after.

    The block ends early, without an error, when the connection is cut for being too slow
    (``mailbox.closed`` is then ``Close.SLOW``).
    """
    writer = asyncio.current_task()
    if writer is None:  # pragma: no cover - an ASGI app always runs in a task
        raise RuntimeError("a connection must run in a task")
    mailbox.interrupt_with(writer.cancel)
    watching = asyncio.ensure_future(watcher)
    try:
        yield
    except asyncio.CancelledError:
        if mailbox.closed is not Close.SLOW:
            raise
        uncancel = getattr(writer, "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()
    finally:
        mailbox.interrupt_with(None)
        watching.cancel()
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + CLEANUP_TIMEOUT
            await engine.disconnect(mailbox, opening)
            with contextlib.suppress(asyncio.CancelledError):
                await watching
