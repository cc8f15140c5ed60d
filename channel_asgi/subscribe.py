"""``GET /subscribe/{channel}``: the checks, then the SSE stream (init, replay, live events).

The checks, in order (SPEC, "Order of checks on subscribe"): connections per client address,
closed channel, identity and authorisation; then the connection joins (:func:`admit`, shared
with the WebSocket route). Nothing is sent before every check has passed.

The connection's own task is the writer (``writer.pump``); a second task listens for the
client's disconnect and closes the mailbox. The writer sends everything pending in one
``http.response.body`` message. Replays and ``request`` replies are written with ``await send``
page by page (the server's flow control paces them); only live events go through the bounded
mailbox. A connection closed as too slow ends without completing its response (its writer may
be stuck in a send); the server closes the socket and the browser reconnects with
``Last-Event-ID``.

On a server whose ``send`` never waits (daphne), the mailbox never fills, so ``budget`` bounds
what a stream may write there instead: past that many bytes of live events it ends cleanly, and
the browser reconnects and resumes (see ``servers``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Iterable, MutableMapping
from functools import partial
from typing import Any, Final

from . import sse
from .access import Access
from .auth import Request
from .connection import Framing
from .engine import Engine, Opening
from .errors import ChannelError
from .http import Headers, Receive, Scope, Send, client_address, header
from .mailbox import Close, HistoryRequest, Mailbox
from .protocol import with_id
from .ratelimit import ConnectionLimit
from .servers import UNPACED
from .storage.base import StorageError
from .writer import pump, run_connection

__all__ = [
    "SSE_HEADERS",
    "SseSink",
    "SubscribeRoute",
    "admit",
    "last_event_id",
    "watch_disconnect",
    "write_all",
]

logger = logging.getLogger("channel_asgi")

#: Replays and ``request`` replies are written in sends of about this many bytes.
_CHUNK: Final = 64 * 1024

#: The headers of every SSE response.
SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def last_event_id(scope: Scope, headers: Headers) -> str | None:
    """Return the resume point: the ``Last-Event-ID`` header, else ``?last_event_id=``."""
    value = header(headers, b"last-event-id")
    if value is None:
        value = Request(scope).query_params.get("last_event_id")
    return value or None


async def admit(
    engine: Engine,
    access: Access,
    scope: Scope,
    headers: Headers,
    channel: str,
    framing: Framing,
    *,
    check: Callable[[], None] | None = None,
) -> tuple[Mailbox, Opening]:
    """Run the subscribe checks and join the connection to ``channel``.

    Args:
        check: a further check, run after the closed-channel one (the WebSocket's origin).

    Raises:
        ChannelError: the channel is closed (404), or the user may not subscribe (401/403).
    """
    await engine.ensure_open(channel)
    if check is not None:
        check()
    user_id, anonymous = await access.identify(scope, channel)
    resume = last_event_id(scope, headers)
    return await engine.connect(
        channel,
        user_id,
        anonymous=anonymous,
        framing=framing,
        last_event_id=resume,
        may_replay=await access.may_replay(user_id, anonymous, channel, resume),
    )


class SubscribeRoute:
    """Serve ``GET /subscribe/{channel}`` for one app.

    Args:
        engine: the app's engine.
        access: identity and authorisation.
        limit: subscriber connections per client address.
    """

    methods: Final = ("GET", "OPTIONS")

    def __init__(self, engine: Engine, access: Access, limit: ConnectionLimit) -> None:
        self._engine = engine
        self._access = access
        self._limit = limit
        self._budget: int | None = None  # per stream, on a server that cannot pace one

    def pace_for(self, server: str | None) -> None:
        """Adapt to the ASGI server: on one that cannot pace a stream, bound what it writes."""
        if server in UNPACED:
            self._budget = self._engine.settings.max_buffer_bytes

    async def serve(
        self,
        scope: Scope,
        headers: Headers,
        receive: Receive,
        send: Send,
        channel: str,
        reply_headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Check the request, then stream the channel's events until either side ends.

        Raises:
            ChannelError: refused before the response started.
        """
        held = self._limit.take(client_address(scope))  # first: a flood costs no more
        try:
            mailbox, opening = await admit(
                self._engine, self._access, scope, headers, channel, Framing.SSE
            )
            try:
                await self._stream(mailbox, opening, receive, send, reply_headers)
            except OSError as exc:  # ASGI's word for "the client has gone" (from send)
                logger.debug("Stream %s: the client left mid-send (%r)", mailbox.connection_id, exc)
            except Exception:  # the response has started: log it, never answer again
                logger.exception("Stream %s failed", mailbox.connection_id)
        finally:
            self._limit.release(held)

    async def _stream(
        self,
        mailbox: Mailbox,
        opening: Opening,
        receive: Receive,
        send: Send,
        reply_headers: list[tuple[bytes, bytes]],
    ) -> None:
        write = self._write(mailbox, opening, send, reply_headers)
        await run_connection(
            self._engine, mailbox, opening, write, watch_disconnect(receive, mailbox)
        )

    async def _write(
        self,
        mailbox: Mailbox,
        opening: Opening,
        send: Send,
        reply_headers: list[tuple[bytes, bytes]],
    ) -> None:
        """The connection's writer: the response, the replay, then live events until the end.

        A method, not a closure: each idle connection keeps this frame, and no cells with it.
        """
        engine = self._engine
        headers = [*SSE_HEADERS, *reply_headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        del headers
        body_send = send
        try:
            await self._open(mailbox, opening, send)
            await engine.go_live(mailbox, opening)
            if self._budget is not None:
                body_send = _budgeted(send, mailbox, self._budget)
            else:
                engine.write_directly(mailbox, send)
            reply = partial(_reply, engine, mailbox.channel, opening.connection.user_id)
            await pump(mailbox, SseSink(body_send), reply)
        except (ChannelError, StorageError) as exc:  # the storage failed mid-stream: end it
            engine.tally.storage_error(exc)
            logger.warning("Ending stream %s: %s", mailbox.connection_id, exc)
        if mailbox.closed is not Close.GONE:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _open(self, mailbox: Mailbox, opening: Opening, send: Send) -> None:
        """Send ``retry:``, ``init`` and the replay.

        A function of its own so that what it builds is freed once sent: the connection's frame
        lives as long as the connection, and idle connections should stay small.
        """
        reconnect_ms = int(self._engine.settings.reconnect_delay * 1000)
        head = [sse.retry(reconnect_ms) + sse.event(opening.take_init())]
        async with contextlib.aclosing(self._engine.replay(mailbox, opening)) as pages:
            async for events in pages:  # each page written (flow control) before the next is read
                await write_all(
                    send, head, (sse.event(with_id(e.payload, e.id), e.id) for e in events)
                )
                head = []
        if head:
            await send({"type": "http.response.body", "body": head[0], "more_body": True})


class SseSink:
    """Write a mailbox's batches as SSE ``http.response.body`` messages."""

    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    async def events(self, frames: list[Any]) -> None:
        await self._send(
            {"type": "http.response.body", "body": b"".join(frames), "more_body": True}
        )

    async def history(self, reply: AsyncGenerator[bytes, None]) -> None:
        """Send a ``request`` reply as it is read, then the marker that ends it.

        Sends are batched to about 64 KiB, and each waits for the client (flow control), so a
        requester that does not read holds one batch and one page of the history, never the
        whole.
        """
        send = self._send
        batch: list[bytes] = []
        size = 0
        async for event in reply:
            frame = sse.event(event)
            if batch and size + len(frame) > _CHUNK:
                await send(
                    {"type": "http.response.body", "body": b"".join(batch), "more_body": True}
                )
                batch, size = [], 0
            batch.append(frame)
            size += len(frame)
        batch.append(sse.REQUEST_END)
        await send({"type": "http.response.body", "body": b"".join(batch), "more_body": True})


def _budgeted(send: Send, mailbox: Mailbox, budget: int) -> Send:
    """Wrap ``send`` to close ``mailbox`` once ``budget`` bytes have gone through it."""
    left = budget

    async def send_within_budget(message: MutableMapping[str, Any]) -> None:
        nonlocal left
        await send(message)
        left -= len(message.get("body", b""))
        if left < 0 and mailbox.closed is None:
            logger.debug(
                "Ending stream %s after %d bytes: the server cannot pace it; it will resume",
                mailbox.connection_id,
                budget - left,
            )
            mailbox.close(Close.BUDGET)

    return send_within_budget


async def write_all(send: Send, head: list[bytes], frames: Iterable[bytes]) -> None:
    """Send ``head`` and then ``frames``, batched into sends of about 64 KiB."""
    batch = list(head)
    size = sum(map(len, batch))
    for frame in frames:
        batch.append(frame)
        size += len(frame)
        if size >= _CHUNK:
            await send({"type": "http.response.body", "body": b"".join(batch), "more_body": True})
            batch, size = [], 0
    if batch:
        await send({"type": "http.response.body", "body": b"".join(batch), "more_body": True})


async def watch_disconnect(receive: Receive, mailbox: Mailbox) -> None:
    """Close ``mailbox`` as gone once the client disconnects."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            mailbox.close(Close.GONE)
            return


def _reply(
    engine: Engine, channel: str, user_id: str, item: HistoryRequest
) -> AsyncGenerator[bytes, None]:
    """The ``request`` reply for a queued request of a connection (``pump``'s ``reply``)."""
    return engine.request_reply(channel, user_id, item.query)
