"""``{prefix}/ws/{channel}``: the subscribe stream and publishing over one WebSocket.

The server's first text frame is the ``init`` envelope; then every event the SSE stream would carry,
one JSON envelope per text frame. A client text frame is a publish body (the same envelope and rules
as ``POST /publish``, without the token: the connection is the token). Each frame gets exactly one
reply frame, ``{"type": "ack", "code": 200, "message", "id"?}`` or ``{"type": "error", "code",
"message"}``, echoing the frame's ``"ref"`` when it had one.

As for SSE, the connection's task is the writer and a second task reads the client's frames (and
notices it leaving); see ``connection.live``. Replies go through the connection's mailbox, so a
single task writes to the socket and a ``request``'s history always arrives before its ``ack``.
Refusals before the upgrade are HTTP JSON replies (ASGI's ``websocket.http.response``
extension), or a close with code 1008 where the server lacks the extension. A connection too
slow to keep up is closed with code 1008.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import MutableMapping
from typing import Any, Final

import anyio
import msgspec

from .access import Access
from .connection import live
from .cors import CorsPolicy
from .engine import Engine, Session
from .errors import ChannelError, Forbidden
from .http import Headers, Receive, Scope, Send, header
from .mailbox import REQUEST, Close, Subscriber, Transport
from .numbers import fits
from .protocol import Reply, encode, with_id
from .publish import PublishRoute, client_address
from .tokens import PublishClaims

__all__ = ["Ack", "Error", "WebSocketRoute"]

logger = logging.getLogger("channel_asgi")

_CLOSE_CODES: Final = {Close.END: 1000, Close.SHUTDOWN: 1001, Close.SLOW: 1008}


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


class WebSocketRoute:
    """Serve WebSocket connections for one app."""

    def __init__(
        self, engine: Engine, access: Access, publish: PublishRoute, cors: CorsPolicy
    ) -> None:
        self.engine = engine
        self.access = access
        self.publish = publish
        self.cors = cors

    async def refuse(self, scope: Scope, send: Send, exc: ChannelError) -> None:
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

    async def open(self, scope: Scope, headers: Headers, channel: str) -> Session:
        """Run the subscribe checks and join the connection to ``channel``.

        Raises:
            ChannelError: the same refusals as ``GET /subscribe``, in the same order, and 403
                for a browser page from an origin that is neither this host nor allowed.
        """
        await self.engine.ensure_open(channel)
        self._check_origin(headers)
        user_id, anonymous = await self.access.identify(scope, channel)
        last_event_id = header(headers, b"last-event-id")
        if last_event_id is None:
            query = scope.get("query_string", b"").decode("latin-1")
            for part in query.split("&"):
                if part.startswith("last_event_id="):
                    last_event_id = part[len("last_event_id=") :] or None
        return await self.engine.open_session(
            channel,
            user_id,
            anonymous=anonymous,
            transport=Transport.TEXT,
            last_event_id=last_event_id,
            may_replay=await self.access.may_replay(user_id, anonymous, channel, last_event_id),
        )

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
        if self.cors.is_allowed_origin(origin, credentials=credentials):
            return
        if credentials and self.cors.allow_all:
            raise Forbidden(
                f"Origin {origin} may not open a WebSocket with credentials (cookies): "
                'cors_origins=["*"] admits other sites only without them; list the origin'
            )
        raise Forbidden(f"Origin {origin} is not allowed")

    async def serve(self, scope: Scope, receive: Receive, send: Send, session: Session) -> None:
        """Accept, then stream events and answer frames until either side ends."""
        subscriber = session.subscriber
        connection = session.connection
        claims = PublishClaims(
            connection.channel,
            connection.user_id,
            connection.connection_id,
            math.inf,
            session.anonymous,
        )
        await send({"type": "websocket.accept"})
        reader = self._read(receive, subscriber, claims, client_address(scope))
        async with live(self.engine, session, reader):
            await send({"type": "websocket.send", "text": session.init.decode()})
            session.init = b""
            async with contextlib.aclosing(self.engine.replay(session)) as pages:
                async for events in pages:  # a page at a time, as the client takes them
                    for event in events:
                        text = with_id(event.payload, event.id).decode()
                        await send({"type": "websocket.send", "text": text})
            try:
                await self.engine.go_live(session)
                await self._pump(session, send)
            except ChannelError as exc:
                logger.warning("Ending WebSocket %s: %s", subscriber.connection_id, exc)
                subscriber.closed = subscriber.closed or Close.SHUTDOWN
            code = _CLOSE_CODES.get(subscriber.closed or Close.SHUTDOWN)
            if code is not None:
                await send({"type": "websocket.close", "code": code})
        if subscriber.closed is Close.SLOW:
            with anyio.move_on_after(1.0), contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1008})

    async def _pump(self, session: Session, send: Send) -> None:
        subscriber = session.subscriber
        while True:
            if not subscriber._items:
                if subscriber.closed is not None:
                    return
                await subscriber.until_ready()
                continue
            for item in subscriber.drain():
                if item is REQUEST:  # read page by page, each frame sent before the next is read
                    connection = session.connection
                    reply = self.engine.request_reply(connection.channel, connection.user_id)
                    async with contextlib.aclosing(reply):
                        async for event in reply:
                            await send({"type": "websocket.send", "text": event.decode()})
                else:
                    await send({"type": "websocket.send", "text": item})

    async def _read(
        self, receive: Receive, subscriber: Subscriber, claims: PublishClaims, client: str | None
    ) -> None:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                subscriber.close(Close.GONE)
                return
            if kind != "websocket.receive":
                continue
            reply = await self._answer(message, subscriber, claims, client)
            subscriber.put_reply(encode(reply).decode())

    async def _answer(
        self,
        message: MutableMapping[str, Any],
        subscriber: Subscriber,
        claims: PublishClaims,
        client: str | None,
    ) -> Ack | Error:
        """Run one client frame as a publish; return the frame that answers it."""
        text = message.get("text")
        if text is None:
            return Error(400, "Send publish bodies as text frames")
        body = text.encode()
        limit = self.engine.settings.max_body_bytes
        if len(body) > limit:  # before parsing it (a ref it may hold is not read)
            return Error(413, f"Frame is larger than {limit} bytes")
        try:
            ref = _decode_frame(body).ref
        except (msgspec.DecodeError, RecursionError):
            return Error(400, "A frame must be a JSON object (a publish body)")
        if ref is not msgspec.UNSET and not fits(bytes(ref)):  # never echo a number no one reads
            ref = msgspec.UNSET
        try:
            await self.engine.ensure_open(claims.channel)
            reply = await self.publish.handle(claims, body, client, local=subscriber)
        except ChannelError as exc:
            return Error(exc.status, exc.message, ref=ref)
        except Exception:
            logger.exception("Unexpected error answering a WebSocket frame")
            return Error(500, "Internal server error", ref=ref)
        return Ack(reply.code, reply.message, reply.id, reply.status, ref=ref)
