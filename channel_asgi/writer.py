"""The writer of a live connection (SSE or WebSocket), and what runs around it.

A connection's writer is a task of its own: it takes what its mailbox holds and writes it, in
:func:`pump`, the one writer loop of every transport. The ASGI task watches the client (for SSE,
its disconnect; for a WebSocket, its frames too). A connection found too slow is interrupted by
cancelling the writer, which may be stuck in a send; that cancellation is the connection's own
business and ends here. A connection whose task the server cancels loses its writer too, unless
the app is stopping (its mailbox closed with ``Close.SHUTDOWN``): then the writer finishes the
response first (within the cleanup's deadline), so that the client can tell the end from a
cut. Whatever happens, the cleanup (leave, announce it, run the hooks) runs shielded, with a
deadline so that a storage outage cannot hold the task forever; on a stop, an SSE connection
runs it before its response ends.

On asyncio these are plain tasks rather than an anyio task group: a task group per connection
would add to the memory every idle connection holds, and idle connections should stay small.
Off asyncio (trio), the same contract runs in an anyio task group.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, Final, Protocol

import anyio

from .connection import Framing
from .engine import Engine, Opening
from .mailbox import Close, Control, HistoryRequest, Mailbox

__all__ = ["CLEANUP_TIMEOUT", "Sink", "pump", "run_connection", "until_all_ended"]

#: How long the cleanup of a closed connection may take (it runs shielded).
CLEANUP_TIMEOUT: Final = 10.0

_running = 0  # connections of this process in run_connection, their cleanup included
_ended: list[anyio.Event] = []  # set when _running drops to 0


async def until_all_ended() -> None:
    """Return once no connection of this process runs, cleanup included (any app's)."""
    while _running:
        event = anyio.Event()
        _ended.append(event)
        await event.wait()


class _LeaveOnce:
    """The connection's cleanup, run shielded, bounded and once (a slotted object, not a closure:
    every connection holds one for its whole life)."""

    __slots__ = ("_cleanup",)

    def __init__(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        self._cleanup: Callable[[], Awaitable[None]] | None = cleanup

    async def __call__(self) -> None:
        cleanup = self._cleanup
        if cleanup is None:
            return
        self._cleanup = None
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + CLEANUP_TIMEOUT
            await cleanup()


def _release_early(mailbox: Mailbox, leave: Callable[[], Awaitable[None]]) -> None:
    """On a stop, let an SSE connection leave before its response ends (``Mailbox.release``).

    Servers wait for open responses, and may exit as soon as the last one has ended (granian
    does). A WebSocket closes first and leaves after: granian drops WebSockets as soon as it
    starts to stop, so their close frame cannot wait.
    """
    if mailbox.framing is Framing.SSE or mailbox.framing is Framing.MULTI:
        mailbox.release_with(leave)


class _Running:
    """Count a connection in :func:`until_all_ended` for as long as the block runs (stateless:
    one for every connection, :data:`_RUNNING`)."""

    def __enter__(self) -> None:
        global _running
        _running += 1

    def __exit__(self, *exc_info: object) -> None:
        global _running
        _running -= 1
        if not _running:
            for event in _ended:
                event.set()
            _ended.clear()


_RUNNING: Final = _Running()


class Sink(Protocol):
    """Where a connection's writer writes: the transport's framing of a batch."""

    def events(self, frames: list[Any]) -> Awaitable[None]:
        """Write framed events (``bytes`` for SSE, ``str`` for WebSocket), in order.

        It may return the transport's own ``send`` awaitable (no coroutine of its own).
        """

    def history(self, reply: AsyncGenerator[bytes, None]) -> Awaitable[None]:
        """Write a ``request`` reply as it is read (each event written before the next read)."""


async def pump(
    mailbox: Mailbox,
    sink: Sink,
    reply: Callable[[HistoryRequest], AsyncGenerator[bytes, None]],
    control: Callable[[Control], Awaitable[None]] | None = None,
) -> None:
    """Write what ``mailbox`` holds to ``sink`` until it is closed and empty.

    Args:
        mailbox: the connection's mailbox.
        sink: the transport.
        reply: returns the ``request`` reply to write for a :class:`HistoryRequest` item.
        control: runs a :class:`Control` item (a stream of several channels), after the events
            queued before it are written.
    """
    write_events = sink.events
    while True:
        controls = mailbox.controls  # read before the take, which resets it
        items = mailbox.take_nowait()
        if items is None:
            handed = await mailbox.ready()
            if handed is not None:  # a direct write that waits for the client (see fastpath)
                await handed
            continue
        if not items:
            release = mailbox.release
            if release is not None and mailbox.closed is Close.SHUTDOWN:
                await release()  # the app is stopping: leave before the client sees the end
            return
        if not controls:  # the hot path: one write for everything taken
            await write_events(items)
            continue
        pending: list[Any] = []
        for item in items:
            if isinstance(item, HistoryRequest):
                if pending:
                    await sink.events(pending)
                    pending = []
                async with contextlib.aclosing(reply(item)) as events:
                    await sink.history(events)
            elif isinstance(item, Control) and control is not None:
                if pending:
                    await sink.events(pending)
                    pending = []
                await control(item)
            else:
                pending.append(item)
        if pending:
            await sink.events(pending)


async def run_connection(
    engine: Engine,
    mailbox: Mailbox,
    opening: Opening | None,
    write: Coroutine[Any, Any, None],
    watch: Coroutine[Any, Any, None],
    cleanup: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run ``write`` as the connection's writer task and ``watch`` in this task; clean up after.

    The writer runs in a task of its own, created here, so that waking it resumes only its own
    short stack, never the host framework's middleware that the ASGI task runs under (a wake-up
    per write of every connection). This task watches the client. The first to end stops the
    other: the watcher closes the mailbox (the client left), the writer's end cancels the watch.
    A connection cut for being too slow ends without an error (``mailbox.closed`` is then
    ``Close.SLOW``); any other error of the writer is raised here, after the cleanup. A
    connection the app stops (``Close.SHUTDOWN``) runs its cleanup before its writer ends the
    stream (see :meth:`Mailbox.release_with`).

    The cleanup is ``engine.disconnect(mailbox, opening)``, or ``cleanup()`` when given (a
    stream of several channels leaves each of them).
    """
    if cleanup is None:
        if opening is None:  # pragma: no cover - a programming error
            raise TypeError("run_connection needs an opening or a cleanup")
        cleanup = partial(engine.disconnect, mailbox, opening)
    with _RUNNING:
        await _run(_LeaveOnce(cleanup), mailbox, write, watch)


async def _run(
    leave: Callable[[], Awaitable[None]],
    mailbox: Mailbox,
    write: Coroutine[Any, Any, None],
    watch: Coroutine[Any, Any, None],
) -> None:
    try:
        own = asyncio.current_task()
    except RuntimeError:  # not on asyncio (trio)
        await _run_on_anyio(leave, mailbox, write, watch)
        return
    if own is None:  # pragma: no cover - an ASGI app always runs in a task
        raise RuntimeError("a connection must run in a task")
    _release_early(mailbox, leave)
    writer = asyncio.ensure_future(write)
    mailbox.interrupt_with(writer.cancel)
    watching = True
    stopped = False

    def writer_ended(_: object) -> None:
        nonlocal stopped
        if watching:
            stopped = True
            own.cancel()

    writer.add_done_callback(writer_ended)
    try:
        await watch
    except asyncio.CancelledError:
        if not stopped:  # cancelled from outside: the server is dropping the connection
            if mailbox.closed is not Close.SHUTDOWN:
                writer.cancel()
            # Else the app is stopping too (daphne cancels every connection as it stops): the
            # writer is finishing the response (below, bounded), so the client sees its end.
            raise
        uncancel = getattr(own, "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()
    finally:
        watching = False
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + CLEANUP_TIMEOUT
            try:
                # The watcher saw the client leave (the mailbox is closed): the writer ends.
                await asyncio.wait({writer}, timeout=CLEANUP_TIMEOUT / 2)
            finally:
                if not writer.done():
                    writer.cancel()
                    await asyncio.wait({writer}, timeout=CLEANUP_TIMEOUT / 2)
                mailbox.interrupt_with(None)
                mailbox.release_with(None)
                await leave()
    if writer.cancelled():
        if mailbox.closed is Close.SLOW:
            return
        raise asyncio.CancelledError
    error = writer.exception()
    if error is not None:
        raise error


async def _run_on_anyio(
    leave: Callable[[], Awaitable[None]],
    mailbox: Mailbox,
    write: Coroutine[Any, Any, None],
    watch: Coroutine[Any, Any, None],
) -> None:
    """:func:`run_connection` off asyncio (trio): the same contract, in an anyio task group."""
    writer_scope = anyio.CancelScope()
    failure: list[Exception] = []
    _release_early(mailbox, leave)
    try:
        async with anyio.create_task_group() as group:

            async def run_writer() -> None:
                with writer_scope:
                    try:
                        await write
                    except Exception as exc:  # raised here after the cleanup, as on asyncio
                        failure.append(exc)
                group.cancel_scope.cancel()  # the writer ended: stop watching

            mailbox.interrupt_with(writer_scope.cancel)
            group.start_soon(run_writer)
            await watch
            # The watcher saw the client leave (the mailbox is closed): the writer ends.
            group.cancel_scope.deadline = anyio.current_time() + CLEANUP_TIMEOUT / 2
    finally:
        write.close()  # never started when the group was cancelled first: no warning
        mailbox.interrupt_with(None)
        mailbox.release_with(None)
        await leave()
    if failure:
        raise failure[0]
