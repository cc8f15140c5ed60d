"""``{prefix}/ws/{channel}``: the subscribe stream and publishing over one WebSocket.

The server's first text frame is the ``init`` envelope; then every event the SSE stream would carry,
one JSON envelope per text frame. A client text frame is a publish body (the same envelope and rules
as ``POST /publish``, without the token: the connection is the token). Each frame gets exactly one
reply frame, ``{"type": "ack", "code": 200, "message", "id"?}`` or ``{"type": "error", "code",
"message"}``, echoing the frame's ``"ref"`` when it had one.

As for SSE, the connection's task is the writer and a second task reads the client's frames (and
notices it leaving); see ``writer``. Replies go through the connection's mailbox, so a
single task writes to the socket and a ``request``'s history always arrives before its ``ack``.
Refusals before the upgrade are HTTP JSON replies (ASGI's ``websocket.http.response``
extension), or a close with code 1008 where the server lacks the extension. A connection too
slow to keep up is closed with code 1008.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncGenerator, MutableMapping
from typing import Any, Final

import anyio
import msgspec

from .access import Access
from .connection import Framing
from .cors import CorsPolicy
from .engine import Engine, Opening
from .errors import BadRequest, ChannelError, Forbidden, PayloadTooLarge, http_error
from .http import Headers, Receive, Scope, Send, client_address, header, log_refusal
from .mailbox import Close, Mailbox
from .metrics import UNKNOWN_TYPE
from .numbers import fits
from .protocol import Reply, encode, with_id
from .publish import PublishRoute
from .ratelimit import ConnectionLimit
from .servers import DAPHNE
from .storage.base import StorageError
from .subscribe import admit
from .tokens import PublishClaims
from .writer import pump, run_connection

__all__ = ["Ack", "Error", "WebSocketRoute", "refuse"]

logger = logging.getLogger("channel_asgi")

_CLOSE_CODES: Final = {
    Close.END: 1000,
    Close.SHUTDOWN: 1001,
    Close.SLOW: 1008,
    Close.DISCONNECT: 4000,  # channels.disconnect: an app-defined code, "reconnect if you like"
}


class _Frame(msgspec.Struct):
    """What a client frame must be before anything else: a JSON object, maybe with a ``ref``."""

    ref: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_decode_frame: Final = msgspec.json.Decoder(_Frame).decode


class Ack(msgspec.Struct, omit_defaults=True, tag_field="type", tag="ack"):
    """The reply to an accepted client frame."""

    code: int
    message: str
    id: str | None = None
    status: int | None = None
    ref: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class Error(msgspec.Struct, omit_defaults=True, tag_field="type", tag="error"):
    """The reply to a refused client frame."""

    code: int
    message: str
    ref: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


async def refuse(scope: Scope, send: Send, exc: ChannelError) -> None:
    """Answer a connection attempt with an HTTP JSON reply (or a plain close)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = encode(Reply(exc.status, exc.message))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send(
            {"type": "websocket.http.response.start", "status": exc.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})


class WebSocketRoute:
    """Serve WebSocket connections to ``/ws/{channel}`` for one app.

    Args:
        engine: the app's engine.
        access: identity and authorisation.
        limit: subscriber connections per client address.
        publish: runs the frames the client sends as publishes.
        cors: the origins whose pages may connect.
    """

    def __init__(
        self,
        engine: Engine,
        access: Access,
        limit: ConnectionLimit,
        publish: PublishRoute,
        cors: CorsPolicy,
    ) -> None:
        self._engine = engine
        self._access = access
        self._limit = limit
        self._publish = publish
        self._cors = cors
        self._shutdown_code = _CLOSE_CODES[Close.SHUTDOWN]

    def close_for(self, server: str | None) -> None:
        """Adapt to the ASGI server: daphne (autobahn) closes with 1000 or 3000-4999 only."""
        if server == DAPHNE:
            self._shutdown_code = 1000

    async def serve(
        self,
        scope: Scope,
        headers: Headers,
        receive: Receive,
        send: Send,
        channel: str,
        reply_headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Check the handshake, then accept, stream events and answer frames until either ends.

        Raises:
            ChannelError: refused before the upgrade: the same refusals as ``GET /subscribe``,
                in the same order, and 403 for a browser page from an origin that is neither
                this host nor allowed.
        """
        held = self._limit.take(client_address(scope))
        try:
            mailbox, opening = await admit(
                self._engine,
                self._access,
                scope,
                headers,
                channel,
                Framing.TEXT,
                check=lambda: self._check_origin(headers),
            )
            try:
                await self._run(scope, receive, send, mailbox, opening)
            except OSError as exc:  # ASGI's word for "the client has gone" (from send)
                connection_id = mailbox.connection_id
                logger.debug("WebSocket %s: the client left mid-send (%r)", connection_id, exc)
            except Exception:  # accepted already: log it, never answer again
                logger.exception("WebSocket %s failed", mailbox.connection_id)
        finally:
            self._limit.release(held)

    def _check_origin(self, headers: Headers) -> None:
        """Refuse cross-site WebSocket hijacking.

        Browsers apply no same-origin rule to WebSockets, and send the page's cookies (and any
        HTTP credentials they hold) along; so a handshake from a page of another origin is
        refused unless ``cors_origins`` allows it, as the browser would refuse that page the SSE
        and publish routes. ``*`` never admits a credentialed one: a browser lets ``*`` read no
        reply to a request with credentials.
        """
        origin = header(headers, b"origin")
        if origin is None:
            return
        host = header(headers, b"host")
        if host is not None and origin.partition("://")[2].lower() == host.lower():
            return
        credentials = b"cookie" in headers or b"authorization" in headers
        if self._cors.is_allowed_origin(origin, credentials=credentials):
            return
        if credentials and self._cors.allow_all:
            raise Forbidden(
                f"Origin {origin} may not open a WebSocket with credentials (cookies): "
                'cors_origins=["*"] admits other sites only without them; list the origin'
            )
        raise Forbidden(f"Origin {origin} is not allowed")

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, mailbox: Mailbox, opening: Opening
    ) -> None:
        engine = self._engine
        connection = opening.connection
        claims = PublishClaims(
            connection.channel,
            connection.user_id,
            connection.connection_id,
            math.inf,
            opening.anonymous,
        )
        try:
            await send({"type": "websocket.accept"})
        except BaseException:  # the client left (or the task was cancelled) before it began
            with anyio.CancelScope(shield=True):
                await engine.disconnect(mailbox, opening)
            raise

        async def write() -> None:
            await send({"type": "websocket.send", "text": opening.take_init().decode()})
            try:
                async with contextlib.aclosing(engine.replay(mailbox, opening)) as pages:
                    async for events in pages:  # a page at a time, as the client takes them
                        for event in events:
                            text = with_id(event.payload, event.id).decode()
                            await send({"type": "websocket.send", "text": text})
                await engine.go_live(mailbox, opening)
                channel, user_id = connection.channel, connection.user_id
                await pump(
                    mailbox,
                    _TextSink(send),
                    lambda item: engine.request_reply(channel, user_id, item.query),
                )
            except (ChannelError, StorageError) as exc:
                engine.tally.storage_error(exc)
                logger.warning("Ending WebSocket %s: %s", mailbox.connection_id, exc)
                mailbox.close(Close.SHUTDOWN)
            closed = mailbox.closed or Close.SHUTDOWN
            code = self._shutdown_code if closed is Close.SHUTDOWN else _CLOSE_CODES.get(closed)
            if code is not None:
                await send({"type": "websocket.close", "code": code})

        reader = self._read(receive, mailbox, claims, client_address(scope))
        await run_connection(engine, mailbox, opening, write(), reader)
        if mailbox.closed is Close.SLOW:
            with anyio.move_on_after(1.0), contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1008})

    async def _read(
        self, receive: Receive, mailbox: Mailbox, claims: PublishClaims, client: str | None
    ) -> None:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                mailbox.close(Close.GONE)
                return
            if kind != "websocket.receive":
                continue
            reply = await self._answer(message, mailbox, claims, client)
            mailbox.put_reply(encode(reply).decode())

    async def _answer(
        self,
        message: MutableMapping[str, Any],
        mailbox: Mailbox,
        claims: PublishClaims,
        client: str | None,
    ) -> Ack | Error:
        """Run one client frame as a publish; return the frame that answers it.

        A refused frame is logged and counted like a refused ``POST /publish``.
        """
        ref: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
        try:
            body, ref = self._frame_body(message)
            await self._engine.ensure_open(claims.channel)
        except (ChannelError, StorageError) as caught:  # before its body is read: no type
            self._engine.tally.refused(UNKNOWN_TYPE, caught)
            return self._refused(caught, ref, claims, client)
        try:
            reply = await self._publish.handle(claims, body, client, local=mailbox)
        except (ChannelError, StorageError) as caught:  # counted by handle, with its type
            return self._refused(caught, ref, claims, client)
        except Exception:
            logger.exception("Unexpected error answering a WebSocket frame")
            return Error(500, "Internal server error", ref=ref)
        return Ack(reply.code, reply.message, reply.id, reply.status, ref=ref)

    def _frame_body(
        self, message: MutableMapping[str, Any]
    ) -> tuple[bytes, msgspec.Raw | msgspec.UnsetType]:
        """Return a frame's publish body and its ``ref``, or raise the refusal of the frame."""
        text = message.get("text")
        if text is None:
            raise BadRequest("Send publish bodies as text frames")
        body = text.encode()
        limit = self._engine.settings.max_body_bytes
        if len(body) > limit:  # before parsing it (a ref it may hold is not read)
            raise PayloadTooLarge(f"Frame is larger than {limit} bytes")
        try:
            ref = _decode_frame(body).ref
        except (msgspec.DecodeError, RecursionError):
            raise BadRequest("A frame must be a JSON object (a publish body)") from None
        if ref is not msgspec.UNSET and not fits(bytes(ref)):  # never echo a number no one reads
            ref = msgspec.UNSET
        return body, ref

    def _refused(
        self,
        caught: ChannelError | StorageError,
        ref: msgspec.Raw | msgspec.UnsetType,
        claims: PublishClaims,
        client: str | None,
    ) -> Error:
        exc = http_error(caught)
        self._engine.tally.storage_error(caught)
        log_refusal(exc, "WS frame", f"/ws/{claims.channel}", client)
        return Error(exc.status, exc.message, ref=ref)


class _TextSink:
    """Write a mailbox's batches as WebSocket text frames."""

    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    async def events(self, frames: list[Any]) -> None:
        send = self._send
        for text in frames:
            await send({"type": "websocket.send", "text": text})

    async def history(self, reply: AsyncGenerator[bytes, None]) -> None:
        send = self._send
        async for event in reply:  # each frame sent before the next is read
            await send({"type": "websocket.send", "text": event.decode()})
