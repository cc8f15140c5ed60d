"""``{prefix}/subscribe?channel=a&channel=b``: one SSE stream of several channels.

``GET`` opens the stream: the names are checked (400, and at most
``max_channels_per_connection``), then every channel in order gets the checks of a single-channel
subscribe (closed 404, identity and authorisation 401/403) and is joined (a ban 403), so the first
refused channel refuses the whole request before anything is sent. Then, for each channel in
order, its ``init`` and its replay; then the live events of all of them.

``POST`` changes a live stream: ``{"stream": <the publish token of any of its channels>, "add":
[...], "remove": [...]}``. Each added channel is checked as a subscribe of the stream's user (the
request identifies as a subscribe does: ``?token=``, ``Authorization``, ``Auth.identify``), then
the change goes, as a ``change`` delivery, to the process that holds the stream (any worker may
get the POST), which answers in the stream itself: an added channel's ``init`` and replay, or its
``end`` with ``{"status": "refused"}``; a removed channel's ``end`` with ``{"status": "removed"}``.

The stream has one mailbox (``Framing.MULTI``) in every channel's room, keyed there by that
channel's own connection id (its publish token, presence and ``request`` replies are the
channel's). Events are framed once per delivery, as for everyone; this stream's writer puts its own
``id:`` line, a cursor per channel (``cursors``), before a broadcast's shared ``data:`` bytes. One
channel's end (closed, a ban, ``channels.disconnect``, a removal) ends that channel only: its
``end`` event, then it leaves (presence, the ``leave`` event, ``on_disconnect``); the stream ends
when its last channel does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any, Final, TypeVar, cast
from urllib.parse import parse_qsl

import anyio
import msgspec

from . import sse
from .access import Access
from .connection import Framing, new_connection_id
from .cursors import Cursors, parse_cursors
from .engine import Engine, Opening
from .errors import BadRequest, ChannelError, Forbidden, Gone, http_error
from .http import (
    Headers,
    Receive,
    Scope,
    Send,
    check_json_content_type,
    client_address,
    send_json,
    validate_channel,
)
from .mailbox import ChannelFrame, Close, Control, HistoryRequest, Mailbox
from .protocol import Reply, encode, encode_event, with_id
from .publish import PublishRoute
from .ratelimit import ConnectionLimit
from .storage.base import Delivery, StorageError
from .subscribe import SSE_HEADERS, SseSink, last_event_id, watch_disconnect, write_all
from .writer import pump, run_connection

__all__ = ["SseStream", "Stream", "StreamsRoute", "admit_stream", "channels_of", "checked_channels"]

logger = logging.getLogger("channel_asgi")

S = TypeVar("S", bound="Stream")

_ENDED: Final = {Close.END.value.encode(): None, Close.DISCONNECT.value.encode(): "disconnected"}


class _ChangeBody(msgspec.Struct):
    """A ``POST {prefix}/subscribe`` body."""

    stream: str
    add: list[str] = msgspec.field(default_factory=list)
    remove: list[str] = msgspec.field(default_factory=list)


class _Change(msgspec.Struct, array_like=True):
    """A change on its way to the stream's process (the ``change`` delivery's payload)."""

    add: list[str]
    remove: list[str]


_decode_body: Final = msgspec.json.Decoder(_ChangeBody).decode
_encode_change: Final = msgspec.msgpack.Encoder().encode
_decode_change: Final = msgspec.msgpack.Decoder(_Change).decode


def channels_of(scope: Scope) -> list[str]:
    """Return the ``channel`` query parameters of a request, in order (percent-decoded)."""
    query = scope.get("query_string", b"").decode("latin-1")
    return [value for key, value in parse_qsl(query, keep_blank_values=True) if key == "channel"]


def checked_channels(names: Iterable[str], limit: int, what: str) -> list[str]:
    """Validate channel names: each one (400 naming it), no repeats, at most ``limit``."""
    names = list(names)
    if len(names) > limit:
        raise BadRequest(
            f"Too many channels {what}: {len(names)}; at most {limit} per connection "
            "(max_channels_per_connection)"
        )
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str):  # pragma: no cover - the decoder types it
            raise BadRequest(f"Channel names must be strings, got {name!r}")
        try:
            validate_channel(name)
        except ChannelError as exc:
            raise BadRequest(f"{exc.message}: {name!r}") from None
        if name in seen:
            raise BadRequest(f"Channel {name!r} is named twice")
        seen.add(name)
    return names


class StreamsRoute:
    """Serve ``GET`` and ``POST {prefix}/subscribe`` (a stream of several channels) for one app.

    Args:
        engine: the app's engine.
        access: identity and authorisation.
        limit: subscriber connections per client address.
        publish: its body reader (the same limits as a publish body).
    """

    methods: Final = ("GET", "POST", "OPTIONS")

    def __init__(
        self, engine: Engine, access: Access, limit: ConnectionLimit, publish: PublishRoute
    ) -> None:
        self._engine = engine
        self._access = access
        self._limit = limit
        self._publish = publish

    @property
    def _cap(self) -> int:
        return self._engine.settings.max_channels_per_connection

    async def serve(
        self,
        scope: Scope,
        headers: Headers,
        receive: Receive,
        send: Send,
        channel: str,
        reply_headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Open a stream of several channels (``GET``) or change a live one (``POST``).

        Raises:
            ChannelError: refused before the response started.
        """
        if scope["method"] == "POST":
            await self._change(scope, headers, receive, send, reply_headers)
            return
        names = channels_of(scope)
        if not names:
            raise BadRequest(
                "Name the channels: /subscribe?channel=a&channel=b (or /subscribe/{channel})"
            )
        checked_channels(names, self._cap, "in one stream")
        held = self._limit.take(client_address(scope))
        try:
            stream = await self._admit(scope, headers, names)
            try:
                await stream.run(receive, send, reply_headers)
            except OSError as exc:  # ASGI's word for "the client has gone" (from send)
                logger.debug("Stream %s: the client left mid-send (%r)", stream.id, exc)
            except Exception:  # the response has started: log it, never answer again
                logger.exception("Stream %s failed", stream.id)
        finally:
            self._limit.release(held)

    async def _admit(self, scope: Scope, headers: Headers, names: list[str]) -> SseStream:
        return await admit_stream(
            self._engine, self._access, scope, headers, names, Framing.MULTI, SseStream
        )

    async def _change(
        self,
        scope: Scope,
        headers: Headers,
        receive: Receive,
        send: Send,
        reply_headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Check a change of a live stream and send it to the stream's process; reply 202."""
        engine = self._engine
        check_json_content_type(headers)
        body = await self._publish.deadlines.read(headers, receive, engine.settings.max_body_bytes)
        try:
            change = _decode_body(body)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise BadRequest(str(exc) or "Malformed JSON body") from None
        claims = engine.signer.verify(change.stream, None)
        add = checked_channels(change.add, self._cap, "to add")
        remove = checked_channels(change.remove, self._cap, "to remove")
        if not add and not remove:
            raise BadRequest('Nothing to change: give "add" or "remove" (lists of channels)')
        if not await engine.storage.is_connected(claims.connection_id):
            raise Gone(
                "The stream this token was issued on has closed, or has left that channel; "
                "use the token of one of its channels"
            )
        for name in add:
            await engine.ensure_open(name)
            user_id, anonymous = await self._access.identify(scope, name)
            if anonymous != claims.anonymous or (not anonymous and user_id != claims.user_id):
                raise Forbidden("Add channels as the stream's own user (the same sign-in)")
        payload = _encode_change(_Change(add, remove))
        await engine.storage.send(
            Delivery(claims.channel, "change", payload, to_connection=claims.connection_id)
        )
        message = "Sent to the stream: its added channels' init and removed channels' end follow"
        await send_json(send, 202, encode(Reply(202, message)), reply_headers)


async def admit_stream(
    engine: Engine,
    access: Access,
    scope: Scope,
    headers: Headers,
    names: list[str],
    framing: Framing,
    make: Callable[[Engine, Access, Mailbox, bool, Cursors, int], S],
) -> S:
    """Check every channel of a new stream in order, then join them all (``make``: the stream).

    The checks of a single-channel subscribe, channel by channel: closed 404, identity and
    authorisation 401/403; then each is joined (a ban 403, 503). The joins are undone on a
    refusal, so the first refused channel refuses the whole request.
    """
    identities = []
    for name in names:
        await engine.ensure_open(name)
        identities.append(await access.identify(scope, name))
    user_id, anonymous = identities[0]  # one user: an anonymous one keeps the first id
    cap = engine.settings.max_channels_per_connection
    cursors = Cursors(parse_cursors(last_event_id(scope, headers)))
    cursors.keep_only(cap)  # a resume names no more channels than a stream holds
    mailbox = engine.stream_mailbox(names[0], new_connection_id(), user_id, framing)
    stream = make(engine, access, mailbox, anonymous, cursors, cap)
    try:
        for name in names:
            await stream.join(name)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.cleanup()
        raise
    return stream


class Stream:
    """One live stream of several channels: its mailbox, its channels and where each stands.

    What does not depend on the transport: joining, leaving, changes. A transport's stream
    (:class:`SseStream`, ``websocket.WebSocketStream``) writes: ``_open`` writes a channel's
    ``init`` and replay, ``_write`` frames, and ``_event`` frames an event the stream makes
    itself (a channel's ``end``).
    """

    def __init__(
        self,
        engine: Engine,
        access: Access,
        mailbox: Mailbox,
        anonymous: bool,
        cursors: Cursors,
        cap: int,
    ) -> None:
        self._engine = engine
        self._access = access
        self.mailbox = mailbox
        self.id = mailbox.connection_id
        self.user_id = mailbox.user_id or ""
        self.anonymous = anonymous
        self._cursors = cursors
        self._cap = cap
        #: channel -> its opening, in the order joined; ``_live``: those past ``go_live``.
        self.members: dict[str, Opening] = {}
        self._live: set[str] = set()

    async def join(self, channel: str) -> Opening:
        """Join ``channel`` to the stream (the checks after identity: a ban 403, 503)."""
        engine = self._engine
        resume = self._cursors.get(channel)
        _, opening = await engine.connect(
            channel,
            self.user_id,
            anonymous=self.anonymous,
            framing=self.mailbox.framing,
            last_event_id=resume,
            may_replay=await self._access.may_replay(self.user_id, self.anonymous, channel, resume),
            stream=self.mailbox,
        )
        self.members[channel] = opening
        return opening

    async def _open(self, opening: Opening, head: list[bytes]) -> None:
        """Write a channel's ``init`` and replay (after ``head``), then make it live."""
        raise NotImplementedError

    def _event(self, payload: bytes) -> Any:
        """Frame an event the stream writes itself, for ``_write``."""
        raise NotImplementedError

    async def _write(self, frames: list[Any]) -> None:
        """Write frames now, unless the stream has ended."""
        raise NotImplementedError

    async def _forgot(self) -> None:
        """Channels left the cursors (removed): tell the client, if its transport must know."""

    async def _went_live(self, opening: Opening) -> None:
        await self._engine.go_live(self.mailbox, opening)
        self._live.add(opening.connection.channel)

    def _reply(self, item: HistoryRequest) -> AsyncGenerator[bytes, None]:
        channel = item.channel or self.mailbox.channel
        return self._engine.request_reply(channel, self.user_id, item.query)

    async def _control(self, control: Control) -> None:
        """Leave a channel that ended here, or apply a change the stream's token asked for."""
        if control.kind == "leave":
            status = _ENDED.get(control.payload)
            await self._leave(control.channel, status)
        elif control.kind == "change":
            await self._apply(_decode_change(control.payload))
        if not self.members:
            self.mailbox.close(Close.END)

    async def _apply(self, change: _Change) -> None:
        dropped = False
        for channel in change.remove:
            if channel in self.members:
                await self._leave(channel, "removed")
                dropped = self._cursors.drop(channel) or dropped
        if dropped:
            await self._forgot()
        for channel in change.add:
            if channel in self.members:
                continue
            try:
                if len(self.members) >= self._cap:
                    raise BadRequest(
                        f"Too many channels in one stream; at most {self._cap} per connection "
                        "(max_channels_per_connection)"
                    )
                await self._engine.ensure_open(channel)
                opening = await self.join(channel)
            except (ChannelError, StorageError) as caught:
                exc = http_error(caught)
                notice = {"status": "refused", "code": exc.status, "message": exc.message}
                await self._write([self._event(encode_event("end", channel, encode(notice)))])
                continue
            await self._open(opening, [])

    async def _leave(self, channel: str, status: str | None) -> None:
        """End ``channel`` on this stream: its ``end`` (unless queued already), then leave."""
        opening = self.members.pop(channel, None)
        if opening is None:
            return
        if status is not None:  # (a closed channel's or a ban's end was queued by the hub)
            notice = encode_event("end", channel, encode({"status": status}))
            await self._write([self._event(notice)])
        await self._finish(opening)

    async def _finish(self, opening: Opening) -> None:
        channel = opening.connection.channel
        if channel in self._live:
            self._live.discard(channel)
            await self._engine.disconnect(self.mailbox, opening)
        else:
            await self._engine.abandon(self.mailbox, opening)

    async def cleanup(self) -> None:
        """Leave every channel still joined (shielded by the caller); forget the stream."""
        engine = self._engine
        if self.mailbox.closed is Close.SLOW:
            engine.tally.add("slow_consumer_disconnects")
        members, self.members = self.members, {}
        try:
            for opening in members.values():
                await self._finish(opening)
        finally:
            engine.forget_stream(self.mailbox)


class SseStream(Stream):
    """A stream of several channels over SSE: one cursor per channel in each ``id:`` line."""

    _send: Send | None = None

    async def run(
        self, receive: Receive, send: Send, reply_headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Stream until the client leaves or the last channel ends."""
        engine, mailbox = self._engine, self.mailbox
        self._send = send

        async def write() -> None:
            headers = [*SSE_HEADERS, *reply_headers]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            try:
                reconnect_ms = int(engine.settings.reconnect_delay * 1000)
                head = [sse.retry(reconnect_ms)]
                for opening in list(self.members.values()):
                    await self._open(opening, head)
                    head = []
                sink = _StreamSink(send, self._cursors, self.members)
                await pump(mailbox, sink, self._reply, self._control)
            except (ChannelError, StorageError) as exc:  # the storage failed mid-stream: end it
                engine.tally.storage_error(exc)
                logger.warning("Ending stream %s: %s", self.id, exc)
            if mailbox.closed is not Close.GONE:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await run_connection(
            engine,
            mailbox,
            None,
            write(),
            watch_disconnect(receive, mailbox),
            cleanup=self.cleanup,
        )

    async def _open(self, opening: Opening, head: list[bytes]) -> None:
        send = self._send
        if send is None:  # pragma: no cover - run() sets it before any channel opens
            raise RuntimeError("the stream is not running")
        engine, cursors = self._engine, self._cursors
        channel = opening.connection.channel
        head = [*head, sse.event(opening.take_init())]

        def framed(event_id: str, payload: bytes) -> bytes:
            return cursors.advance(channel, event_id) + sse.event(with_id(payload, event_id))

        async with contextlib.aclosing(engine.replay(self.mailbox, opening)) as pages:
            async for events in pages:  # each page written (flow control) before the next read
                await write_all(send, head, (framed(e.id, e.payload) for e in events))
                head = []
        if head:
            await write_all(send, head, ())
        await self._went_live(opening)

    def _event(self, payload: bytes) -> bytes:
        return sse.event(payload)

    async def _forgot(self) -> None:
        """The browser's ``lastEventId`` forgets the removed channels too (an id-only event)."""
        await self._write([self._cursors.line() + b"\n"])

    async def _write(self, frames: list[bytes]) -> None:
        if self._send is not None and self.mailbox.closed is None:
            await self._send(
                {"type": "http.response.body", "body": b"".join(frames), "more_body": True}
            )


class _StreamSink(SseSink):
    """Write a stream's batches: each broadcast with the stream's own ``id:`` line."""

    __slots__ = ("_cursors", "_members")

    def __init__(self, send: Send, cursors: Cursors, members: dict[str, Opening]) -> None:
        super().__init__(send)
        self._cursors = cursors
        self._members = members

    async def events(self, frames: list[Any]) -> None:
        out: list[bytes] = []
        members, cursors = self._members, self._cursors
        for frame in frames:
            if type(frame) is not ChannelFrame:  # a ping
                out.append(frame)
            elif frame.channel not in members:  # queued before it left the stream
                continue
            elif frame.id is None:
                out.append(cast(bytes, frame.data))  # Framing.MULTI: SSE bytes
            else:
                out.append(cursors.advance(frame.channel, frame.id))
                out.append(cast(bytes, frame.data))
        if out:
            await self._send(
                {"type": "http.response.body", "body": b"".join(out), "more_body": True}
            )
