"""An async Python client for channel_asgi servers, over Server-Sent Events or a WebSocket.

::

    async with Client("https://example.com/channel", widget_key="…") as client:
        async with client.subscribe("15") as sub:
            await sub.publish({"text": "hello"})
            async for event in sub:
                print(event.type, event.message)

A subscription keeps a background task that reads the stream: it keeps the latest ``init``'s user
id and publish token, hands events to the iteration (``init`` and ``request`` replies excluded),
and when the connection drops it reconnects with backoff and ``Last-Event-ID``, so the broadcasts
it missed are replayed (``recovered`` says whether the resume was complete). A refused subscribe
raises :class:`ChannelError` at ``async with``; a refusal on a later reconnect ends the iteration
with it. The ``end`` of a closed channel is the last event iterated.

The WebSocket transport (``transport="ws"``) needs the ``websockets`` package.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import quote, urlencode

import anyio
import httpx
import msgspec
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import sse
from .errors import ChannelError
from .protocol import (
    WS_PING,
    Envelope,
    Outline,
    decode_envelope,
    decode_outline,
    skip_undecodable,
)

__all__ = ["ChannelError", "Client", "Envelope", "Subscription"]

logger = logging.getLogger("channel_asgi.client")

Transport = Literal["sse", "ws"]

#: Events waiting to be iterated; past it the reader stops reading, the server drops the slow
#: connection, and the client reconnects and catches up from history.
_BUFFER: Final = 1000
_BACKOFF_FIRST: Final = 0.5
_BACKOFF_MAX: Final = 10.0
#: Refusals that will not change by retrying: the subscription ends with them.
_FINAL: Final = frozenset({400, 401, 403, 404, 405})


_decode_items: Final = msgspec.json.Decoder(list[msgspec.Raw]).decode


def _refusal(status: int, body: bytes) -> ChannelError:
    try:
        reply = json.loads(body)
        return ChannelError(int(reply.get("code", status)), str(reply.get("message", "")))
    except (ValueError, AttributeError):
        return ChannelError(status, body.decode(errors="replace")[:200] or f"HTTP {status}")


class Client:
    """A connection to a channel_asgi server.

    Args:
        base_url: where the channel routes are, mount prefix included
            (``"https://example.com/channel"``).
        widget_key: sent with every publish, when the server requires one.
        token: an identity token (``channels.issue_token(...)``) to subscribe as its user.
        transport: ``"sse"`` (subscribe over Server-Sent Events, publish over HTTP) or ``"ws"``
            (both over one WebSocket per subscription).
        http: an ``httpx.AsyncClient`` to use (else the client makes its own).
        timeout: seconds a connect, a publish or a ``request`` may take.
    """

    def __init__(
        self,
        base_url: str,
        *,
        widget_key: str | None = None,
        token: str | None = None,
        transport: Transport = "sse",
        http: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        if transport not in ("sse", "ws"):
            raise ValueError(f"transport must be 'sse' or 'ws', got {transport!r}")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.widget_key = widget_key
        self.token = token
        self.transport = transport
        self.timeout = timeout
        self._own_http = http is None
        self._http = http

    @property
    def http(self) -> httpx.AsyncClient:
        """The HTTP client (inside ``async with``)."""
        if self._http is None:
            raise RuntimeError("Use the Client inside 'async with'")
        return self._http

    async def __aenter__(self) -> Client:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    def url(self, route: str, channel: str, **query: str | None) -> str:
        """Return the URL of ``route`` (``subscribe``, ``publish``, ``ws``) for ``channel``."""
        url = f"{self.base_url}/{route}/{quote(channel, safe='/:@')}"
        params = {name: value for name, value in query.items() if value}
        if params:
            url += "?" + urlencode(params)
        if route == "ws":
            url = "ws" + url[len("http") :]
        return url

    def subscribe(self, channel: str, *more: str, last_event_id: str | None = None) -> Subscription:
        """Subscribe to ``channel``: ``async with client.subscribe("15") as sub``.

        Several channels (``client.subscribe("a", "b")``) share one stream
        (``GET /subscribe?channel=a&channel=b``, or ``/ws?channel=a&channel=b`` with
        ``transport="ws"``); see :class:`~channel_asgi.client_streams.Streams`.

        Args:
            channel: the channel.
            more: further channels, for one stream of several.
            last_event_id: resume after this event id (the broadcasts after it come first); for
                several channels, the stream's own composite id.
        """
        if more:
            from .client_streams import Streams  # a module of its own: most never need it

            return Streams(self, [channel, *more], last_event_id)
        return Subscription(self, channel, last_event_id)


class Subscription:
    """One subscription: an async iterator of events, and publishing as its user.

    Attributes:
        channel: the channel.
        user_id: the user, from the latest ``init``.
        token: the publish token, from the latest ``init``.
        recovered: None until a resume; then whether it replayed everything that was missed.
        last_event_id: the id of the newest broadcast received.
    """

    def __init__(self, client: Client, channel: str, last_event_id: str | None) -> None:
        self.client = client
        self.channel = channel
        self.last_event_id = last_event_id
        self.user_id: str | None = None
        self.token: str | None = None
        self.recovered: bool | None = None
        self._resuming = last_event_id is not None
        self._group: TaskGroup | None = None
        self._events_in: MemoryObjectSendStream[Envelope | ChannelError]
        self._events: MemoryObjectReceiveStream[Envelope | ChannelError]
        self._finished = False
        self._live = False
        self._request_lock = anyio.Lock()
        self._request_parts: list[Envelope] | None = None
        self._request_done: anyio.Event | None = None
        self._ws: Any = None
        self._refs = itertools.count(1)
        self._replies: dict[int, anyio.Event] = {}
        self._reply_values: dict[int, dict[str, Any]] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Subscription:
        """Connect (raising :class:`ChannelError` if refused) and start reading."""
        send, receive = anyio.create_memory_object_stream[Envelope | ChannelError](_BUFFER)
        self._events_in, self._events = send, receive
        group = anyio.create_task_group()
        await group.__aenter__()
        try:
            reader = self._read_sse if self.client.transport == "sse" else self._read_ws
            await group.start(reader)
        except BaseException:
            group.cancel_scope.cancel()
            try:
                await group.__aexit__(None, None, None)
            except BaseException:  # the same failure again, wrapped in a group: report it once
                pass
            send.close()
            receive.close()
            raise
        self._group = group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group, self._group = self._group, None
        try:
            if group is not None:
                group.cancel_scope.cancel()
                # Not handed the block's exception: it goes on as it was, not in a group.
                await group.__aexit__(None, None, None)
        finally:
            self._events_in.close()
            self._events.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Envelope:
        if self._finished:
            raise StopAsyncIteration
        try:
            item = await self._events.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None
        if isinstance(item, ChannelError):
            self._finished = True
            raise item
        if self._is_last(item):
            self._finished = True
        return item

    def _is_last(self, event: Envelope) -> bool:
        """Whether ``event`` is the subscription's last (the channel's ``end``)."""
        return event.type == "end"

    # -- publishing ----------------------------------------------------------------------------

    async def publish(
        self,
        message: Any,
        *,
        type: Literal["broadcast", "private"] = "broadcast",
        to_user_id: str | None = None,
        timestamp: float = 0.0,
        channel: str | None = None,
    ) -> str | None:
        """Publish as this subscription's user; return the event id of a broadcast.

        Args:
            channel: which channel, in a subscription of several (required there); a
                subscription of one publishes to its channel.

        Raises:
            ChannelError: the server refused it (its ``code`` and ``message``).
            ValueError: ``channel`` is not one of the subscription's.
        """
        if message is None:
            raise ValueError("message must not be None")
        body: dict[str, Any] = {"type": type, "message": message, "timestamp": timestamp}
        if type == "private":
            if not to_user_id:
                raise ValueError("a private message needs to_user_id")
            body["to_user_id"] = to_user_id
        reply = await self._publish(body, channel)
        return reply.get("id")

    async def request(
        self,
        *,
        start: float | None = None,
        end: float | None = None,
        limit: int | None = None,
        after: str | None = None,
        channel: str | None = None,
    ) -> list[Envelope]:
        """Return the channel's retained broadcasts, oldest first (a ``request`` publish).

        With any of ``start``, ``end``, ``limit`` or ``after``, return a page of the channel's
        archive instead: the broadcasts with ``start <= timestamp < end`` by (timestamp, id), at
        most ``limit`` (the server's default: 200), after the event ``after`` (the last of the
        previous page; a page shorter than ``limit`` is the last). ``channel``: as for
        :meth:`publish`.

        Raises:
            ChannelError: the server refused it.
        """
        body: dict[str, Any] = {"type": "request"}
        wanted = {"from": start, "to": end, "limit": limit, "after": after}
        if any(value is not None for value in wanted.values()):
            body["message"] = {name: value for name, value in wanted.items() if value is not None}
        async with self._request_lock:
            self._request_parts = []
            self._request_done = anyio.Event()
            try:
                with anyio.fail_after(self.client.timeout):
                    await self._publish(body, channel)
                    if self.client.transport == "sse":
                        # Over SSE the parts come on the stream, closed by a marker comment;
                        # over a WebSocket they all come before the publish's ack.
                        await self._request_done.wait()
                return self._request_parts
            finally:
                self._request_parts = None
                self._request_done = None

    def _channel_for(self, channel: str | None) -> str:
        """The channel a publish goes to (``channel``, when several are subscribed)."""
        if channel is not None and channel != self.channel:
            raise ValueError(f"This subscription is to {self.channel!r}, not {channel!r}")
        return self.channel

    def _token_of(self, channel: str) -> str | None:
        return self.token

    async def _publish(self, body: dict[str, Any], channel: str | None = None) -> dict[str, Any]:
        target = self._channel_for(channel)
        if self.client.widget_key is not None:
            body["widget_key"] = self.client.widget_key
        if self.client.transport == "ws":
            return await self._publish_ws(body)
        token = self._token_of(target)
        if token is None:
            raise ChannelError(401, "Not subscribed yet: no publish token")
        try:
            response = await self.client.http.post(
                self.client.url("publish", target, token=token),
                content=msgspec.json.encode(body),
                headers={"content-type": "application/json"},
            )
        except httpx.TransportError as exc:
            raise ChannelError(503, f"Could not reach the server: {exc}") from exc
        if response.status_code != 200:
            raise _refusal(response.status_code, response.content)
        reply: dict[str, Any] = response.json()
        return reply

    async def _publish_ws(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._ws is None:
            raise ChannelError(503, "The WebSocket is reconnecting; try again")
        ref = next(self._refs)
        answered = self._replies[ref] = anyio.Event()
        try:
            await self._ws.send(msgspec.json.encode({**body, "ref": ref}).decode())
            with anyio.fail_after(self.client.timeout):
                await answered.wait()
            reply = self._reply_values.pop(ref, None)
        finally:
            self._replies.pop(ref, None)
        if reply is None:
            raise ChannelError(503, "The WebSocket closed before the server replied; try again")
        if reply.get("type") != "ack":
            raise ChannelError(int(reply.get("code", 500)), str(reply.get("message", "")))
        return reply

    # -- reading -------------------------------------------------------------------------------

    def _decode(self, data: str) -> Envelope | None:
        """Decode one event; log and skip one that cannot be (SPEC 6.1), keeping its id.

        Its id still counts as seen, so a reconnect resumes after it and it is not replayed. The
        good parts of a ``request`` reply holding a bad item are kept.
        """
        try:
            return decode_envelope(data)
        except msgspec.DecodeError as exc:  # ValidationError included
            outline = decode_outline(data)
            if outline is not None and outline.type == "request":
                return self._request_parts_of(outline)
            event_id = skip_undecodable(logger, self.channel, data, exc)
            if event_id is not None:
                self.last_event_id = event_id
            return None

    def _request_parts_of(self, outline: Outline) -> Envelope:
        """A ``request`` reply with its undecodable items dropped (each one logged)."""
        try:
            items = _decode_items(outline.message)
        except msgspec.DecodeError:
            items = []
        kept: list[Any] = []
        for raw in items:
            item = bytes(raw)
            try:
                kept.append(msgspec.to_builtins(decode_envelope(item)))
            except msgspec.DecodeError as exc:
                skip_undecodable(logger, self.channel, item, exc, where=" of a request reply")
        return Envelope(type="request", stream_id=self.channel, message=kept)

    def _on_event(self, event: Envelope) -> Envelope | None:
        """Take in one event; return it if it is for the iteration."""
        if event.type == "init":
            message = event.message or {}
            self._live = True  # a connection that got this far resets the backoff
            self.user_id = message.get("user_id")
            self.token = message.get("token")
            if self._resuming:
                self.recovered = message.get("recovered")
            return None
        if event.type == "request":
            if self._request_parts is not None:
                self._request_parts.extend(
                    msgspec.convert(item, Envelope) for item in event.message or ()
                )
            return None
        if event.id is not None:
            self.last_event_id = event.id
        return event

    def _request_complete(self) -> None:
        if self._request_done is not None:
            self._request_done.set()

    async def _deliver(self, event: Envelope) -> None:
        await self._events_in.send(event)

    async def _reconnecting(
        self,
        connect: Callable[[TaskStatus[None] | None], Any],
        *,
        task_status: TaskStatus[None],
    ) -> None:
        """Run ``connect`` until the channel ends, reconnecting with backoff and jitter.

        Until the first ``init`` arrives, a failure is the subscribe's answer and is raised (at
        ``async with``); after it, a drop means reconnect, and a final refusal ends the iteration.
        """
        status: TaskStatus[None] | None = task_status
        attempt = 0
        while True:
            try:
                ended = await connect(status)
                if ended:
                    return
            except ChannelError as exc:
                if self.token is None:
                    raise
                if exc.code in _FINAL:
                    await self._events_in.send(exc)
                    return
                logger.info("Subscription to %r refused (%s); retrying", self.channel, exc)
            except Exception as exc:  # httpx's and websockets' errors, OSError
                if self.token is None:
                    raise ChannelError(503, f"Could not connect: {exc}") from exc
                logger.info("Subscription to %r dropped (%s); reconnecting", self.channel, exc)
            if self.token is not None:
                status = None  # started() was called with the first init
                attempt = 0 if self._live else attempt
            self._live = False
            self._resuming = self._resuming or self.last_event_id is not None
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**attempt)
            attempt += 1
            await anyio.sleep(delay * (0.5 + random.random()))

    async def _read_sse(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._reconnecting(self._sse_once, task_status=task_status)

    async def _sse_once(self, started: TaskStatus[None] | None) -> bool:
        """Read one SSE response; True when the channel ended (no reconnect)."""
        headers = {"accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["last-event-id"] = self.last_event_id
        url = self.client.url("subscribe", self.channel, token=self.client.token)
        timeout = httpx.Timeout(self.client.timeout, read=None)
        async with self.client.http.stream(
            "GET", url, headers=headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                raise _refusal(response.status_code, await response.aread())
            data: list[str] = []
            async for line in sse.lines(response.aiter_bytes()):
                if line:
                    if line.startswith("data:"):
                        data.append(line[6:] if line.startswith("data: ") else line[5:])
                    elif line == ": request-end":
                        self._request_complete()
                    continue
                if not data:
                    continue
                event = self._decode("\n".join(data))
                data = []
                if event is None:
                    continue
                wanted = self._on_event(event)
                if event.type == "init" and started is not None:
                    started.started()
                    started = None
                if wanted is not None:
                    await self._deliver(wanted)
                    if self._is_last(wanted):
                        return True
        return False

    async def _read_ws(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._reconnecting(self._ws_once, task_status=task_status)

    async def _ws_once(self, started: TaskStatus[None] | None) -> bool:
        """Read one WebSocket connection; True when the channel ended (no reconnect)."""
        try:
            import websockets
        except ImportError:
            raise ChannelError(
                500, "The WebSocket transport needs the websockets package: pip install websockets"
            ) from None
        url = self._ws_url()
        try:
            connection = await websockets.connect(url, open_timeout=self.client.timeout)
        except websockets.exceptions.InvalidStatus as exc:
            response = exc.response
            raise _refusal(response.status_code, bytes(response.body or b"")) from None
        try:
            async for frame in connection:
                raw = frame if isinstance(frame, str) else frame.decode()
                if raw == WS_PING:  # the server's keepalive: nothing to yield
                    continue
                if raw.startswith(('{"type":"ack"', '{"type":"error"')):
                    self._on_reply(raw)
                    continue
                event = self._decode(raw)
                if event is None:
                    continue
                wanted = self._on_event(event)
                if event.type == "init":
                    self._ws = connection
                if started is not None and self._ready(event, wanted):
                    started.started()
                    started = None
                if wanted is not None:
                    await self._deliver(wanted)
                    if self._is_last(wanted):
                        return True
        finally:
            self._ws = None
            for waiting in self._replies.values():
                waiting.set()  # the waiting publishes see no reply: they fail with 503
            # Shielded: when the subscription is left, this runs in a cancelled scope, and an
            # interrupted close would leave the socket open.
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.client.timeout):
                await connection.close()
        return False

    def _ws_url(self) -> str:
        return self.client.url(
            "ws", self.channel, token=self.client.token, last_event_id=self.last_event_id
        )

    def _ready(self, event: Envelope, wanted: Envelope | None) -> bool:
        """Whether ``async with`` may return (after ``event``): the channel's ``init`` came."""
        return event.type == "init"

    def _on_reply(self, raw: str) -> None:
        try:
            reply = json.loads(raw)
        except ValueError as exc:  # an integer past Python's digit limit, say
            logger.warning("Skipped a reply on %r that cannot be decoded: %s", self.channel, exc)
            return
        ref = reply.get("ref")
        if isinstance(ref, int) and ref in self._replies:
            self._reply_values[ref] = reply
            self._replies[ref].set()
