"""``{prefix}/ws/{channel}`` and ``{prefix}/ws?channel=a&channel=b``: subscribing and publishing
over one WebSocket.

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

``/ws?channel=a&channel=b`` carries several channels (:class:`WebSocketStream`, the WebSocket
side of ``streams``): one ``init`` per channel in order, then every channel's events, each naming
its channel in ``stream_id``. A client frame names the channel it publishes to in its
``"stream_id"``. A resume names a cursor per channel as the SSE stream does
(``?last_event_id=a=<id>,b=<id>``); the client composes it from each channel's last ``id``. One
channel's end (closed, a ban, ``channels.disconnect``, a removal through ``POST /subscribe``) is
that channel's ``end`` event; the socket closes (1000) when the last channel has ended.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncGenerator, Callable, MutableMapping
from typing import Any, Final

import anyio
import msgspec

from .access import Access
from .connection import Framing
from .cors import CorsPolicy
from .engine import Engine, Opening
from .errors import BadRequest, ChannelError, Forbidden, PayloadTooLarge, http_error
from .http import Headers, Receive, Scope, Send, client_address, header, log_refusal
from .mailbox import ChannelFrame, Close, Mailbox
from .metrics import UNKNOWN_TYPE
from .numbers import fits
from .protocol import Reply, encode, with_id
from .publish import PublishRoute
from .ratelimit import ConnectionLimit
from .servers import DAPHNE
from .storage.base import StorageError
from .streams import Stream, admit_stream, checked_channels
from .subscribe import admit
from .tokens import PublishClaims
from .writer import pump, run_connection

__all__ = ["Ack", "Error", "WebSocketRoute", "WebSocketStream", "refuse"]

logger = logging.getLogger("channel_asgi")

_CLOSE_CODES: Final = {
    Close.END: 1000,
    Close.SHUTDOWN: 1001,
    Close.SLOW: 1008,
    Close.DISCONNECT: 4000,  # channels.disconnect: an app-defined code, "reconnect if you like"
}


class _Frame(msgspec.Struct):
    """What a client frame must be before anything else: a JSON object, maybe with a ``ref``
    (and, on a stream of several channels, the ``stream_id`` it publishes to)."""

    ref: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    stream_id: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_decode_frame: Final = msgspec.json.Decoder(_Frame).decode
_decode_name: Final = msgspec.json.Decoder(str).decode

#: Who publishes a client frame: the connection's claims, or (a stream) its channel's.
ClaimsOf = Callable[[_Frame], PublishClaims]


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

    async def serve_streams(
        self, scope: Scope, headers: Headers, receive: Receive, send: Send, names: list[str]
    ) -> None:
        """Serve ``/ws?channel=a&channel=b``: one WebSocket for several channels.

        Raises:
            ChannelError: refused before the upgrade: the channel names (400, at most
                ``max_channels_per_connection``), the origin (403), then each channel in order
                as ``GET /subscribe?channel=...`` checks it, so one refused channel refuses all.
        """
        if not names:
            raise BadRequest("Name the channels: /ws?channel=a&channel=b (or /ws/{channel})")
        engine = self._engine
        checked_channels(names, engine.settings.max_channels_per_connection, "in one stream")
        self._check_origin(headers)
        held = self._limit.take(client_address(scope))
        try:
            stream = await admit_stream(
                engine, self._access, scope, headers, names, Framing.TEXT_MULTI, WebSocketStream
            )
            try:
                await stream.run(self, scope, receive, send)
            except OSError as exc:  # ASGI's word for "the client has gone" (from send)
                logger.debug("WebSocket stream %s: the client left mid-send (%r)", stream.id, exc)
            except Exception:  # accepted already: log it, never answer again
                logger.exception("WebSocket stream %s failed", stream.id)
        finally:
            self._limit.release(held)

    def close_code(self, closed: Close | None) -> int | None:
        """The close code for a connection the app ends (None: the client has gone)."""
        closed = closed or Close.SHUTDOWN
        return self._shutdown_code if closed is Close.SHUTDOWN else _CLOSE_CODES.get(closed)

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
            code = self.close_code(mailbox.closed)
            if code is not None:
                await send({"type": "websocket.close", "code": code})

        path = f"/ws/{connection.channel}"
        reader = self.read(receive, mailbox, lambda _: claims, path, client_address(scope))
        await run_connection(engine, mailbox, opening, write(), reader)
        await close_slow(mailbox, send)

    async def read(
        self,
        receive: Receive,
        mailbox: Mailbox,
        claims_of: ClaimsOf,
        path: str,
        client: str | None,
    ) -> None:
        """Answer the client's frames until it leaves (then close the mailbox)."""
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                mailbox.close(Close.GONE)
                return
            if kind != "websocket.receive":
                continue
            reply = await self._answer(message, mailbox, claims_of, path, client)
            mailbox.put_reply(encode(reply).decode())

    async def _answer(
        self,
        message: MutableMapping[str, Any],
        mailbox: Mailbox,
        claims_of: ClaimsOf,
        path: str,
        client: str | None,
    ) -> Ack | Error:
        """Run one client frame as a publish; return the frame that answers it.

        A refused frame is logged and counted like a refused ``POST /publish``.
        """
        ref: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
        try:
            body, frame = self._frame_body(message)
            ref = frame.ref
            claims = claims_of(frame)
            await self._engine.ensure_open(claims.channel)
        except (ChannelError, StorageError) as caught:  # before its body is read: no type
            self._engine.tally.refused(UNKNOWN_TYPE, caught)
            return self._refused(caught, ref, path, client)
        try:
            reply = await self._publish.handle(claims, body, client, local=mailbox)
        except (ChannelError, StorageError) as caught:  # counted by handle, with its type
            return self._refused(caught, ref, path, client)
        except Exception:
            logger.exception("Unexpected error answering a WebSocket frame")
            return Error(500, "Internal server error", ref=ref)
        return Ack(reply.code, reply.message, reply.id, reply.status, ref=ref)

    def _frame_body(self, message: MutableMapping[str, Any]) -> tuple[bytes, _Frame]:
        """Return a frame's publish body and its ``ref``, or raise the refusal of the frame."""
        text = message.get("text")
        if text is None:
            raise BadRequest("Send publish bodies as text frames")
        body = text.encode()
        limit = self._engine.settings.max_body_bytes
        if len(body) > limit:  # before parsing it (a ref it may hold is not read)
            raise PayloadTooLarge(f"Frame is larger than {limit} bytes")
        try:
            frame = _decode_frame(body)
        except (msgspec.DecodeError, RecursionError):
            raise BadRequest("A frame must be a JSON object (a publish body)") from None
        ref = frame.ref
        if ref is not msgspec.UNSET and not fits(bytes(ref)):  # never echo a number no one reads
            frame.ref = msgspec.UNSET
        return body, frame

    def _refused(
        self,
        caught: ChannelError | StorageError,
        ref: msgspec.Raw | msgspec.UnsetType,
        path: str,
        client: str | None,
    ) -> Error:
        exc = http_error(caught)
        self._engine.tally.storage_error(caught)
        log_refusal(exc, "WS frame", path, client)
        return Error(exc.status, exc.message, ref=ref)


async def close_slow(mailbox: Mailbox, send: Send) -> None:
    """Close a socket cut for being too slow with 1008 (its writer was interrupted)."""
    if mailbox.closed is Close.SLOW:
        with anyio.move_on_after(1.0), contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": 1008})


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


class WebSocketStream(Stream):
    """A stream of several channels over one WebSocket: ``/ws?channel=a&channel=b``.

    Every event is the envelope the channel's single-channel sockets get, as is (its
    ``stream_id`` names the channel); a client frame names its channel in ``"stream_id"``.
    """

    _send: Send | None = None

    async def run(self, route: WebSocketRoute, scope: Scope, receive: Receive, send: Send) -> None:
        """Accept; then stream, and answer frames, until the client leaves or all channels end."""
        engine, mailbox = self._engine, self.mailbox
        try:
            await send({"type": "websocket.accept"})
        except BaseException:  # the client left (or the task was cancelled) before it began
            with anyio.CancelScope(shield=True):
                await self.cleanup()
            raise
        self._send = send

        async def write() -> None:
            try:
                for opening in list(self.members.values()):
                    await self._open(opening, [])
                await pump(mailbox, _StreamTextSink(send, self.members), self._reply, self._control)
            except (ChannelError, StorageError) as exc:  # the storage failed mid-stream: end it
                engine.tally.storage_error(exc)
                logger.warning("Ending WebSocket stream %s: %s", self.id, exc)
                mailbox.close(Close.SHUTDOWN)
            code = route.close_code(mailbox.closed)
            if code is not None:
                await send({"type": "websocket.close", "code": code})

        path = "/ws?channel=" + "&channel=".join(self.members)
        reader = route.read(receive, mailbox, self.claims_of, path, client_address(scope))
        await run_connection(engine, mailbox, None, write(), reader, cleanup=self.cleanup)
        await close_slow(mailbox, send)

    def claims_of(self, frame: _Frame) -> PublishClaims:
        """The claims a frame publishes with: those of the channel its ``stream_id`` names.

        Raises:
            BadRequest: the frame names no channel.
            Forbidden: the channel is not (or no longer) one of the stream's.
        """
        if frame.stream_id is msgspec.UNSET:
            raise BadRequest(
                'Name the channel in "stream_id": this socket carries several channels'
            )
        try:
            channel = _decode_name(frame.stream_id)
        except msgspec.DecodeError:
            raise BadRequest('"stream_id" must be a channel name (a string)') from None
        opening = self.members.get(channel)
        if opening is None:
            raise Forbidden(f"Channel {channel!r} is not one of this stream's; add it first")
        connection = opening.connection
        return PublishClaims(
            channel, self.user_id, connection.connection_id, math.inf, self.anonymous
        )

    async def _open(self, opening: Opening, head: list[bytes]) -> None:
        send = self._send
        if send is None:  # pragma: no cover - run() sets it before any channel opens
            raise RuntimeError("the stream is not running")
        await send({"type": "websocket.send", "text": opening.take_init().decode()})
        async with contextlib.aclosing(self._engine.replay(self.mailbox, opening)) as pages:
            async for events in pages:  # a page at a time, as the client takes them
                for event in events:
                    text = with_id(event.payload, event.id).decode()
                    await send({"type": "websocket.send", "text": text})
        await self._went_live(opening)

    def _event(self, payload: bytes) -> str:
        return payload.decode()

    async def _write(self, frames: list[str]) -> None:
        send = self._send
        if send is not None and self.mailbox.closed is None:
            for text in frames:
                await send({"type": "websocket.send", "text": text})


class _StreamTextSink(_TextSink):
    """Write a stream's batches: the channels it has left are dropped."""

    __slots__ = ("_members",)

    def __init__(self, send: Send, members: dict[str, Opening]) -> None:
        super().__init__(send)
        self._members = members

    async def events(self, frames: list[Any]) -> None:
        send, members = self._send, self._members
        for frame in frames:
            if type(frame) is not ChannelFrame:  # a ping or a reply
                await send({"type": "websocket.send", "text": frame})
            elif frame.channel in members:  # (else queued before it left the stream)
                await send({"type": "websocket.send", "text": frame.data})
