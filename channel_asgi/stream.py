"""The SSE response of ``GET /subscribe/{channel}``: init, replay, then the live mailbox.

A connection closed as too slow ends without completing its response (its writer may be stuck in a
send); the server closes the socket and the browser reconnects with ``Last-Event-ID``.

One task group per connection races the writer against the disconnect listener; whichever ends
first cancels the other. The writer drains the connection's mailbox and sends everything pending in
one ``http.response.body`` message. Replays and ``request`` replies are written directly with
``await send`` (the server's flow control paces them); only live events go through the bounded
mailbox.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final, cast

import anyio

from . import sse
from .engine import Engine, Session
from .errors import ChannelError
from .http import Receive, Send
from .hub import REQUEST
from .protocol import with_id

__all__ = ["serve_stream"]

logger = logging.getLogger("channel_asgi")

#: Replays are written in sends of about this many bytes.
_REPLAY_CHUNK: Final = 64 * 1024
#: How long the cleanup of a closed connection may take (it runs shielded).
_CLEANUP_TIMEOUT: Final = 10.0

_SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def serve_stream(
    engine: Engine,
    session: Session,
    receive: Receive,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    """Stream ``session``'s events until the client leaves, the channel ends or the app stops."""
    subscriber = session.subscriber
    try:
        async with anyio.create_task_group() as group:
            subscriber.cancel_scope = group.cancel_scope
            group.start_soon(_watch_disconnect, receive, group.cancel_scope)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*_SSE_HEADERS, *extra_headers],
                }
            )
            reconnect_ms = int(engine.settings.reconnect_delay * 1000)
            opening = sse.retry(reconnect_ms) + sse.event(session.init)
            replay = (sse.event(with_id(e.payload, e.id), e.id) for e in session.replay)
            await _write_all(send, [opening], replay)
            try:
                await engine.go_live(session)
                await _pump(engine, session, send)
            except ChannelError as exc:  # the storage failed mid-stream: end it; it reconnects
                logger.warning("Ending stream %s: %s", subscriber.connection_id, exc)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + _CLEANUP_TIMEOUT
            await engine.end_session(session)


async def _pump(engine: Engine, session: Session, send: Send) -> None:
    subscriber = session.subscriber
    while True:
        items = await subscriber.take()
        if not items:
            return
        if REQUEST not in items:
            body = b"".join(cast("list[bytes]", items))
            await send({"type": "http.response.body", "body": body, "more_body": True})
            continue
        pending: list[bytes] = []
        for item in items:
            if item is REQUEST:
                connection = session.connection
                reply = await engine.history_events(connection.channel, connection.user_id)
                await _write_all(send, pending, (sse.event(event) for event in reply))
                pending = []
            else:
                pending.append(cast(bytes, item))
        if pending:
            await _write_all(send, pending, ())


async def _write_all(send: Send, head: list[bytes], frames: Iterable[bytes]) -> None:
    """Send ``head`` and then ``frames``, batched into sends of about 64 KiB."""
    batch = list(head)
    size = sum(map(len, batch))
    for frame in frames:
        batch.append(frame)
        size += len(frame)
        if size >= _REPLAY_CHUNK:
            await send({"type": "http.response.body", "body": b"".join(batch), "more_body": True})
            batch, size = [], 0
    if batch:
        await send({"type": "http.response.body", "body": b"".join(batch), "more_body": True})


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
