"""The Python client's subscription to several channels over one stream (SSE or WebSocket).

::

    async with client.subscribe("news", "chats/42") as sub:
        await sub.publish({"text": "hi"}, channel="chats/42")
        await sub.add("chats/43")
        async for event in sub:
            print(event.stream_id, event.type, event.message)

One ``GET {prefix}/subscribe?channel=...`` (or, with ``transport="ws"``, one WebSocket to
``{prefix}/ws?channel=...``) carries every channel. Each channel's ``init`` brings its own
publish token (``sub.tokens``); a publish or a ``request`` names its channel (over the WebSocket,
in the frame's ``stream_id``). The stream's ``id:`` lines name where every channel stands
(``cursors``); over the WebSocket the subscription composes the same list from each channel's
last broadcast id. So a reconnect sends the latest (``Last-Event-ID``, or ``?last_event_id=``)
and every channel resumes; the reconnect asks for the channels the
subscription holds then (added ones included, removed and ended ones not). A channel's ``end``
(closed, a ban, a disconnect, a removal, a refused add) is iterated and drops that channel; the
iteration ends after the last channel's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec
from anyio.abc import TaskStatus

from . import sse
from .client import Client, Subscription, _refusal
from .cursors import Cursors, parse_cursors
from .errors import ChannelError
from .protocol import Envelope

__all__ = ["Streams"]


class Streams(Subscription):
    """A subscription to several channels over one stream (``client.subscribe("a", "b")``).

    Attributes:
        channels: the channels it holds now, in the order joined.
        tokens: each channel's publish token, from its latest ``init``.
        recovered_by: each resumed channel's ``recovered``, from its latest ``init``.
        recovered: None until a resume; then whether every resumed channel recovered.
        last_event_id: the stream's latest ``id:`` (a cursor per channel).
    """

    def __init__(self, client: Client, channels: list[str], last_event_id: str | None) -> None:
        super().__init__(client, channels[0], last_event_id)
        if len(set(channels)) != len(channels):
            raise ValueError(f"A channel is named twice: {channels!r}")
        self.channels = list(channels)
        self.tokens: dict[str, str] = {}
        self.recovered_by: dict[str, bool] = {}
        self._opening = len(channels)  # inits to wait for before ``async with`` returns
        self._last: Envelope | None = None  # the end of the last channel
        self._cursors = Cursors(parse_cursors(last_event_id))  # the WebSocket's own id list

    def _channel_for(self, channel: str | None) -> str:
        if channel is None:
            if len(self.channels) == 1:
                return self.channels[0]
            raise ValueError(
                "This subscription has several channels: name one, publish(..., channel='a')"
            )
        if channel not in self.tokens:
            raise ValueError(f"Not subscribed to {channel!r} (yet): {self.channels!r}")
        return channel

    def _token_of(self, channel: str) -> str | None:
        return self.tokens.get(channel)

    def _is_last(self, event: Envelope) -> bool:
        # Decided when the reader took it in: the iteration may be events behind the reader.
        return event is self._last

    def _on_event(self, event: Envelope) -> Envelope | None:
        channel = event.stream_id
        if event.type == "init":
            message = event.message or {}
            self.tokens[channel] = str(message.get("token"))
            if "recovered" in message:
                self.recovered_by[channel] = bool(message["recovered"])
        elif event.type == "end":
            self.tokens.pop(channel, None)
            self._cursors.drop(channel)
            if channel in self.channels:
                self.channels.remove(channel)
            if not self.channels:
                self._last = event
        last = self.last_event_id
        wanted = super()._on_event(event)
        if self.client.transport == "ws":
            if event.type == "broadcast" and event.id is not None:
                self._cursors.advance(channel, event.id)
            self.last_event_id = self._cursors.value() or last
        else:
            self.last_event_id = last  # the stream's id: lines say it, not the envelope's id
        if event.type == "init" and self.recovered_by:
            self.recovered = all(self.recovered_by.values())
        return wanted

    async def _publish(self, body: dict[str, Any], channel: str | None = None) -> dict[str, Any]:
        if self.client.transport == "ws":  # the frame names its channel
            body["stream_id"] = self._channel_for(channel)
        return await super()._publish(body, channel)

    def _ready(self, event: Envelope, wanted: Envelope | None) -> bool:
        return len(self.tokens) >= self._opening or wanted is not None

    async def _ws_once(self, started: TaskStatus[None] | None) -> bool:
        if not self.channels:
            return True
        self._opening = len(self.channels)
        self.tokens.clear()
        return await super()._ws_once(started)

    def _ws_url(self) -> str:
        query = [("channel", channel) for channel in self.channels]
        if self.client.token:
            query.append(("token", self.client.token))
        if self.last_event_id:
            query.append(("last_event_id", self.last_event_id))
        return "ws" + f"{self.client.base_url}/ws?{urlencode(query)}"[len("http") :]

    async def add(self, *channels: str) -> None:
        """Add channels to the live stream; their ``init`` (or ``end``, refused) follows there.

        Raises:
            ChannelError: the server refused the change (nothing changed).
        """
        await self._change({"add": list(channels)})
        self.channels.extend(channel for channel in channels if channel not in self.channels)

    async def remove(self, *channels: str) -> None:
        """Remove channels from the live stream; each one's ``end`` (removed) follows there.

        Raises:
            ChannelError: the server refused the change.
        """
        await self._change({"remove": list(channels)})

    async def _change(self, body: dict[str, Any]) -> None:
        token = next(iter(self.tokens.values()), None)
        if token is None:
            raise ChannelError(410, "The stream holds no channel any more")
        headers = {"content-type": "application/json"}
        if self.client.token is not None:
            headers["authorization"] = f"Bearer {self.client.token}"
        try:
            response = await self.client.http.post(
                f"{self.client.base_url}/subscribe",
                content=msgspec.json.encode({"stream": token, **body}),
                headers=headers,
            )
        except httpx.TransportError as exc:
            raise ChannelError(503, f"Could not reach the server: {exc}") from exc
        if response.status_code != 202:
            raise _refusal(response.status_code, response.content)

    async def _sse_once(self, started: TaskStatus[None] | None) -> bool:
        """Read one response of the stream; True when its last channel ended."""
        if not self.channels:
            return True
        headers = {"accept": "text/event-stream"}
        if self.last_event_id:
            headers["last-event-id"] = self.last_event_id
        query = [("channel", channel) for channel in self.channels]
        if self.client.token:
            query.append(("token", self.client.token))
        url = f"{self.client.base_url}/subscribe?{urlencode(query)}"
        self._opening = len(self.channels)
        self.tokens.clear()
        timeout = httpx.Timeout(self.client.timeout, read=None)
        async with self.client.http.stream(
            "GET", url, headers=headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                raise _refusal(response.status_code, await response.aread())
            data: list[str] = []
            event_id: str | None = None
            async for line in sse.lines(response.aiter_bytes()):
                if line:
                    if line.startswith("data:"):
                        data.append(line[6:] if line.startswith("data: ") else line[5:])
                    elif line.startswith("id:"):
                        event_id = line[4:] if line.startswith("id: ") else line[3:]
                    elif line == ": request-end":
                        self._request_complete()
                    continue
                text, data = "\n".join(data), []
                seen, event_id = event_id, None
                event = self._decode(text) if text else None
                if event is not None:
                    wanted = self._on_event(event)
                else:
                    wanted = None
                if seen is not None:  # after the event: a reconnect resumes past it
                    self.last_event_id = seen or None
                if started is not None and (len(self.tokens) >= self._opening or wanted):
                    started.started()
                    started = None
                if wanted is not None:
                    await self._deliver(wanted)
                    if self._is_last(wanted):
                        return True
        return not self.channels
