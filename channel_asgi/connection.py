"""What every live subscriber connection (SSE or WebSocket) does around its writing.

The connection's own task writes; a second, bare asyncio task watches the client (for SSE, its
disconnect; for a WebSocket, its frames too). A connection found too slow is interrupted by
cancelling the writer, which may be stuck in a send; that cancellation is the connection's own
business and ends here. Whatever happens, the cleanup (leave, announce it, run the hooks) runs
shielded, with a deadline so that a storage outage cannot hold the task forever.

These are plain asyncio tasks rather than an anyio task group: a task group per connection
costs about 5 KiB, and the routes are served by asyncio servers (uvicorn, hypercorn, daphne).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio

from .engine import Engine, Session
from .mailbox import Close

__all__ = ["live"]

#: How long the cleanup of a closed connection may take (it runs shielded).
CLEANUP_TIMEOUT: Final = 10.0


@asynccontextmanager
async def live(
    engine: Engine, session: Session, watcher: Coroutine[Any, Any, None]
) -> AsyncIterator[None]:
    """Run the block as ``session``'s writer, with ``watcher`` beside it; clean up after.

    The block ends early, without an error, when the connection is cut for being too slow
    (``session.subscriber.closed`` is then ``Close.SLOW``).
    """
    subscriber = session.subscriber
    writer = asyncio.current_task()
    if writer is None:  # pragma: no cover - an ASGI app always runs in a task
        raise RuntimeError("a connection must run in a task")
    subscriber.interrupt = writer.cancel
    watching = asyncio.ensure_future(watcher)
    try:
        yield
    except asyncio.CancelledError:
        if subscriber.closed is not Close.SLOW:
            raise
        uncancel = getattr(writer, "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()
    finally:
        subscriber.interrupt = None
        watching.cancel()
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + CLEANUP_TIMEOUT
            await engine.end_session(session)
            with contextlib.suppress(asyncio.CancelledError):
                await watching
