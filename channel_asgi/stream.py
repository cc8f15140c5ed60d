"""The SSE response of ``GET /subscribe/{channel}``: init, replay, then the live mailbox.

A connection closed as too slow ends without completing its response (its writer may be stuck in a
send); the server closes the socket and the browser reconnects with ``Last-Event-ID``.

The connection's own task is the writer; a second task listens for the client's disconnect and
closes the mailbox (see ``connection.live``). The writer drains the mailbox and sends everything
pending in one ``http.response.body`` message. Replays and ``request`` replies are written
directly with ``await send`` (the server's flow control paces them); only live events go
through the bounded mailbox.

On a server whose ``send`` never waits (daphne), the mailbox never fills, so ``budget`` bounds
what a stream may write there instead: past that many bytes of live events it ends cleanly, and
the browser reconnects and resumes (see ``servers``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, MutableMapping
from typing import Any, Final, cast

from . import sse
from .connection import live
from .engine import Engine, Session
from .errors import ChannelError
from .http import Receive, Send
from .mailbox import REQUEST, Close, Subscriber
from .protocol import with_id

__all__ = ["serve_stream"]

logger = logging.getLogger("channel_asgi")

#: Replays are written in sends of about this many bytes.
_REPLAY_CHUNK: Final = 64 * 1024

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
    *,
    budget: int | None = None,
) -> None:
    """Stream ``session``'s events until the client leaves, the channel ends or the app stops.

    Args:
        budget: end the stream after this many bytes of live events (None: no end).
    """
    subscriber = session.subscriber
    async with live(engine, session, _watch_disconnect(receive, subscriber)):
        await _open(engine, session, send, extra_headers)
        try:
            await engine.go_live(session)
            if budget is not None:
                send = _budgeted(send, subscriber, budget)
            await _pump(engine, session, send)
        except ChannelError as exc:  # the storage failed mid-stream: end it; it reconnects
            logger.warning("Ending stream %s: %s", subscriber.connection_id, exc)
        if subscriber.closed is not Close.GONE:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _open(
    engine: Engine, session: Session, send: Send, extra_headers: list[tuple[bytes, bytes]]
) -> None:
    """Send the headers, ``retry:``, ``init`` and the replay.

    A function of its own so that what it builds is freed once sent: the connection's frame
    lives as long as the connection, and idle connections should stay small.
    """
    headers = [*_SSE_HEADERS, *extra_headers]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    reconnect_ms = int(engine.settings.reconnect_delay * 1000)
    head = [sse.retry(reconnect_ms) + sse.event(session.init)]
    session.init = b""
    async with contextlib.aclosing(engine.replay(session)) as pages:
        async for events in pages:  # each page written (flow control) before the next is read
            await _write_all(
                send, head, (sse.event(with_id(e.payload, e.id), e.id) for e in events)
            )
            head = []
    if head:
        await send({"type": "http.response.body", "body": head[0], "more_body": True})


async def _pump(engine: Engine, session: Session, send: Send) -> None:
    subscriber = session.subscriber
    subscriber.direct = _direct_writer(send)
    while True:
        if subscriber.inflight is not None:  # a direct write waits for the client: finish it
            inflight, subscriber.inflight = subscriber.inflight, None
            await inflight
            continue
        # The hot loop of every connection: await the mailbox's future directly, take all that
        # is queued, write it in one send.
        if not subscriber._items:
            if subscriber.closed is not None:
                return
            await subscriber.until_ready()
            continue
        controls = subscriber.controls
        items = subscriber.drain()
        if not controls:
            body = b"".join(cast("list[bytes]", items))
            await send({"type": "http.response.body", "body": body, "more_body": True})
            continue
        pending: list[bytes] = []
        for item in items:
            if item is REQUEST:
                connection = session.connection
                reply = engine.request_reply(connection.channel, connection.user_id)
                await _write_reply(send, pending, reply)
                pending = []
            else:
                pending.append(cast(bytes, item))
        if pending:
            await _write_all(send, pending, ())


def _direct_writer(send: Send) -> Callable[[bytes], Coroutine[Any, Any, None]] | None:
    """Let the hub write events for this connection from its flush, if the server allows.

    Only uvicorn's ``send`` is known to be plain enough to run outside the connection's task
    (it writes to the transport at once, and awaits only the client's flow control).
    """
    if type(getattr(send, "__self__", None)).__module__.startswith("uvicorn.protocols.http."):

        def start(body: bytes) -> Coroutine[Any, Any, None]:
            message = {"type": "http.response.body", "body": body, "more_body": True}
            return cast("Coroutine[Any, Any, None]", send(message))

        return start
    return None


async def _write_reply(send: Send, head: list[bytes], reply: AsyncGenerator[bytes, None]) -> None:
    """Send ``head``, then a ``request`` reply as it is read, and the marker that ends it.

    Sends are batched to about 64 KiB, and each waits for the client (flow control), so a
    requester that does not read holds one batch and one page of the history, never the whole.
    """
    batch = list(head)
    size = sum(map(len, batch))
    async with contextlib.aclosing(reply):
        async for event in reply:
            frame = sse.event(event)
            if batch and size + len(frame) > _REPLAY_CHUNK:
                await send(
                    {"type": "http.response.body", "body": b"".join(batch), "more_body": True}
                )
                batch, size = [], 0
            batch.append(frame)
            size += len(frame)
    batch.append(sse.REQUEST_END)
    await send({"type": "http.response.body", "body": b"".join(batch), "more_body": True})


def _budgeted(send: Send, subscriber: Subscriber, budget: int) -> Send:
    """Wrap ``send`` to close ``subscriber`` once ``budget`` bytes have gone through it."""
    left = budget

    async def send_within_budget(message: MutableMapping[str, Any]) -> None:
        nonlocal left
        await send(message)
        left -= len(message.get("body", b""))
        if left < 0 and subscriber.closed is None:
            logger.debug(
                "Ending stream %s after %d bytes: the server cannot pace it; it will resume",
                subscriber.connection_id,
                budget - left,
            )
            subscriber.close(Close.BUDGET)

    return send_within_budget


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


async def _watch_disconnect(receive: Receive, subscriber: Subscriber) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            subscriber.close(Close.GONE)
            return
