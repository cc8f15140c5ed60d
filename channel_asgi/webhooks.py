"""Outbound HTTP: the ``webhook`` publish type and per-pattern bridges, as CloudEvents 1.0.

A client can only make the server call URLs under the host's allow-list (``webhook_urls``): same
scheme, host and port, and a path under the entry's path at a segment boundary, so
``https://a.com/hooks`` allows ``https://a.com/hooks/x`` but never ``https://a.com.evil.net/`` or
``https://a.com/hooksx``. Redirects are not followed (they could lead anywhere). A URL holding an
ASCII control character is no URL at all: ``urlsplit`` silently drops tabs, CRs and LFs (so the
allow-list would judge another URL than the one written) and httpx refuses them, so a publish
naming one is a 400 and an allow-list entry or bridge naming one a ``ValueError``.

Bridges (scriptr's) POST every broadcast of matching channels to a URL the host configured, from a
bounded queue with bounded retries; a full queue drops the event (and logs it) rather than slow the
fan-out.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Final
from urllib.parse import unquote, urlsplit

import anyio
import httpx
import msgspec
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from .errors import BadRequest, ChannelError
from .patterns import pattern_matches

__all__ = [
    "Bridge",
    "CloudEvent",
    "call_webhook",
    "check_webhook_url",
    "cloud_event",
    "url_allowed",
    "validate_url_prefix",
]

logger = logging.getLogger("channel_asgi")

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_HEADERS: Final = {"content-type": "application/cloudevents+json", "user-agent": "channel_asgi"}
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def _parts(url: str) -> tuple[str, str, int, str] | None:
    if _CONTROL.search(url):
        return None
    try:
        split = urlsplit(url)
        port = split.port
    except ValueError:
        return None
    scheme = split.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not split.hostname or split.username or split.password:
        return None
    path = unquote(split.path) or "/"
    if any(segment in (".", "..") for segment in path.split("/")):
        return None
    return scheme, split.hostname.lower(), port or _DEFAULT_PORTS[scheme], path


def url_allowed(url: str, allowed: Iterable[str]) -> bool:
    """Return whether ``url`` is under one of the ``allowed`` URL prefixes."""
    target = _parts(url)
    if target is None:
        return False
    for entry in allowed:
        base = _parts(entry)
        if base is None or base[:3] != target[:3]:
            continue
        prefix = base[3].rstrip("/")
        if not prefix or target[3] == prefix or target[3].startswith(prefix + "/"):
            return True
    return False


def check_webhook_url(url: str) -> None:
    """Refuse the ``message.url`` of a webhook publish that no request could be sent to.

    Raises:
        BadRequest: the URL holds an ASCII control character (a tab, CR, LF, NUL...).
    """
    if _CONTROL.search(url):
        raise BadRequest(
            "`message.url` must not hold control characters (tab, CR, LF) - at `$.message.url`"
        )


def validate_url_prefix(entry: str) -> str:
    """Return ``entry`` if it can serve as an allow-list entry or bridge target, else raise."""
    if isinstance(entry, str) and _CONTROL.search(entry):
        raise ValueError(f"the URL holds a control character (tab, CR, LF...): {entry!r}")
    if _parts(entry) is None:
        raise ValueError(f"expected an http(s) URL such as 'https://host/path', got {entry!r}")
    return entry


class CloudEvent(msgspec.Struct, kw_only=True):
    """A CloudEvents 1.0 event in structured JSON mode."""

    specversion: str = "1.0"
    id: str
    source: str
    type: str
    time: str
    datacontenttype: str = "application/json"
    data: msgspec.Raw


def cloud_event(kind: str, source: str, data: bytes, event_id: str | None = None) -> bytes:
    """Encode a CloudEvent of ``kind`` about channel ``source`` carrying JSON ``data``."""
    event = CloudEvent(
        id=event_id or uuid.uuid4().hex,
        source=source,
        type=kind,
        time=datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        data=msgspec.Raw(data),
    )
    return msgspec.json.encode(event)


async def call_webhook(client: httpx.AsyncClient, url: str, body: bytes, within: float) -> int:
    """POST ``body`` to ``url`` without following redirects; return the upstream status.

    Raises:
        ChannelError: 502 when the upstream cannot be reached, 504 after ``within`` seconds.
    """
    try:
        with anyio.fail_after(within):
            response = await client.post(url, content=body, headers=_HEADERS, timeout=within)
    except (TimeoutError, httpx.TimeoutException):
        raise ChannelError(504, f"The webhook did not answer within {within} s") from None
    except httpx.InvalidURL as exc:  # the checks before should leave none; never a 500
        raise BadRequest(f"The webhook URL is not valid: {exc} - at `$.message.url`") from None
    except httpx.HTTPError as exc:
        raise ChannelError(502, f"The webhook could not be reached: {type(exc).__name__}") from None
    return response.status_code


@dataclass
class Bridge:
    """POST every broadcast of channels matching ``pattern`` to ``url``.

    Args:
        pattern: a channel name or pattern such as ``"chats/{id}"``.
        url: where to POST each broadcast as a CloudEvent (``channel_asgi.broadcast``).
        retries: further attempts after a failure (connection error, timeout or 5xx).
        queue_size: broadcasts waiting to be sent; past it, new ones are dropped.
        timeout: seconds one attempt may take.
    """

    pattern: str
    url: str
    retries: int = 3
    queue_size: int = 1000
    timeout: float = 5.0
    dropped: int = 0
    sent: int = 0
    failed: int = 0
    _send: MemoryObjectSendStream[tuple[str, str, bytes]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        validate_url_prefix(self.url)
        if self.retries < 0 or self.queue_size < 1 or not self.timeout > 0:
            raise ValueError("need retries >= 0, queue_size >= 1 and timeout > 0")

    def offer(self, channel: str, event_id: str, payload: bytes) -> None:
        """Queue a broadcast if its channel matches; never waits (drops when full)."""
        if self._send is None or pattern_matches(self.pattern, channel) is None:
            return
        try:
            self._send.send_nowait((channel, event_id, payload))
        except anyio.WouldBlock:
            self.dropped += 1
            logger.warning(
                "Bridge to %s is %d behind; dropped event %s", self.url, self.queue_size, event_id
            )

    async def run(
        self,
        client: httpx.AsyncClient,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Send queued broadcasts until cancelled."""
        send, receive = anyio.create_memory_object_stream[tuple[str, str, bytes]](self.queue_size)
        self._send = send
        task_status.started()
        try:
            async with receive:
                async for channel, event_id, payload in receive:
                    await self._deliver(client, channel, event_id, payload)
        finally:
            self._send = None
            send.close()

    async def _deliver(
        self, client: httpx.AsyncClient, channel: str, event_id: str, payload: bytes
    ) -> None:
        body = cloud_event("channel_asgi.broadcast", channel, payload, event_id)
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                status = await call_webhook(client, self.url, body, self.timeout)
            except ChannelError as exc:
                problem = exc.message
            else:
                if status < 500:
                    self.sent += 1
                    return
                problem = f"status {status}"
            if attempt < self.retries:
                await anyio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.failed += 1
        logger.warning("Bridge to %s gave up on event %s: %s", self.url, event_id, problem)
