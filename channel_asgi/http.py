"""Small ASGI helpers for the HTTP routes: routing, channel names, bodies, JSON replies, logs.

A body's read is bounded in time by :class:`BodyDeadlines`, not by a cancel scope per request:
every publish reads a body, and a cancel scope around each read costs more than a dictionary
entry per read and one sweep every fraction of the timeout. The sweep cancels a read found
overdue, and the reader turns that cancellation into a 408.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Final
from urllib.parse import unquote_plus

import anyio

from . import clock
from .errors import (
    BadRequest,
    ChannelError,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)

__all__ = [
    "BodyDeadlines",
    "Receive",
    "Scope",
    "Send",
    "check_json_content_type",
    "client_address",
    "header",
    "headers_of",
    "log_refusal",
    "read_body",
    "request_token",
    "route_path",
    "send_json",
    "validate_channel",
]

# Loose aliases, as Starlette's, so ``host.mount("/channel", channels)`` type-checks for users.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_CHANNEL_LENGTH: Final = 200
_CHANNEL_CHARS: Final = re.compile(r"[A-Za-z0-9_\-.:@/]+")
_JSON_CONTENT_TYPE: Final = (b"content-type", b"application/json")
_JSON_TYPE: Final = re.compile(r"application/(?:[\w.+-]+\+)?json", re.ASCII)
_QUERY_TOKEN: Final = re.compile(rb"(?:^|&)token=([^&]+)")  # the first non-empty ``token=``

#: One line per refused or failed request (``docs/operations.md`` lists them).
requests_log: Final = logging.getLogger("channel_asgi.requests")


def client_address(scope: Scope) -> str | None:
    """Return the client address the server reports (proxy headers are the server's concern)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def route_path(scope: Scope) -> str:
    """Return the request path relative to where the app is mounted.

    Starlette before 0.33 strips the mount prefix from ``path``; later versions (and uvicorn's
    ``--root-path``) keep it and put it in ``root_path``. Both arrive here the same way.
    """
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :]
    return path


def validate_channel(name: str) -> str:
    """Return ``name`` if it is a valid channel name (already percent-decoded).

    Raises:
        BadRequest: it is empty, longer than 200 characters, has a character outside
            ``A-Z a-z 0-9 _ - . : @ /``, or an empty, ``.`` or ``..`` segment.
    """
    if name in _valid_names:
        return name
    _check_channel(name)
    if len(_valid_names) >= 10000:  # bounded: names come from clients
        _valid_names.clear()
    _valid_names.add(name)
    return name


_valid_names: set[str] = set()


def _check_channel(name: str) -> None:
    if not name:
        raise BadRequest("Channel name is empty")
    if len(name) > MAX_CHANNEL_LENGTH:
        raise BadRequest(f"Channel name is longer than {MAX_CHANNEL_LENGTH} characters")
    if not _CHANNEL_CHARS.fullmatch(name):
        raise BadRequest("Channel name may only contain A-Z a-z 0-9 _ - . : @ /")
    if any(segment in ("", ".", "..") for segment in name.split("/")):
        raise BadRequest("Channel name has an empty, '.' or '..' segment")


#: Request headers by lower-case name (as ASGI gives them); of repeated names, the last wins.
Headers = Mapping[bytes, bytes]


def headers_of(scope: Scope) -> dict[bytes, bytes]:
    """Return the request's headers as a mapping, built once per request."""
    return dict(scope.get("headers", ()))


def header(headers: Headers, name: bytes) -> str | None:
    """Return header ``name`` (lower-case bytes) decoded as latin-1, or None."""
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")


def request_token(scope: Scope, headers: Headers) -> str | None:
    """Return the token of a request: ``?token=``, else ``Authorization: Bearer``."""
    found = _QUERY_TOKEN.search(scope.get("query_string", b""))
    if found is not None:
        text = found[1].decode("latin-1")
        # Tokens are URL-safe; decode only when a client escaped them anyway.
        return unquote_plus(text) if "%" in text or "+" in text else text
    authorization = header(headers, b"authorization")
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def check_json_content_type(headers: Headers) -> None:
    """Refuse a body that is not declared as ``application/json`` or ``application/*+json``.

    Raises:
        UnsupportedMediaType: the ``Content-Type`` is missing or not JSON.
    """
    value = headers.get(b"content-type")
    if value == b"application/json":
        return
    if value is None:
        raise UnsupportedMediaType("Content-Type must be application/json")
    media_type = value.decode("latin-1").split(";", 1)[0].strip().lower()
    if not _JSON_TYPE.fullmatch(media_type):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {media_type!r}")


async def read_body(headers: Headers, receive: Receive, limit: int) -> bytes:
    """Read the request body, refusing it as soon as it is known to exceed ``limit`` bytes.

    Raises:
        PayloadTooLarge: ``Content-Length`` or the bytes received exceed ``limit``.
    """
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Body is larger than {limit} bytes")
    message = await receive()
    if message.get("more_body") or message["type"] != "http.request":
        return await _read_rest(receive, message, limit)
    body: bytes = message.get("body", b"")  # the usual case: one message
    if len(body) > limit:
        raise PayloadTooLarge(f"Body is larger than {limit} bytes")
    return body


class BodyDeadlines:
    """Bound the time request bodies take to arrive: ``timeout`` seconds each.

    Args:
        timeout: the seconds a body may take, from the start of its read to its last byte.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        #: How often :meth:`sweep` should run: a read ends at most this much after its deadline.
        self.interval = min(1.0, timeout / 4)
        self._reads: dict[asyncio.Task[Any], float] = {}  # reading task -> its deadline
        self._expired: set[asyncio.Task[Any]] = set()

    async def read(self, headers: Headers, receive: Receive, limit: int) -> bytes:
        """Read the body as :func:`read_body` does, within ``timeout`` seconds.

        Raises:
            PayloadTooLarge: the body exceeds ``limit`` bytes.
            RequestTimeout: the body did not arrive in time.
        """
        try:
            task = asyncio.current_task()
        except RuntimeError:  # not on asyncio (trio): a deadline on the event loop's own clock
            with anyio.move_on_after(self.timeout):
                return await read_body(headers, receive, limit)
            raise self._late() from None
        if task is None:  # pragma: no cover - an ASGI app always runs in a task
            return await read_body(headers, receive, limit)
        reads = self._reads
        reads[task] = clock.monotonic() + self.timeout
        try:
            return await read_body(headers, receive, limit)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
            raise self._late() from None
        finally:
            del reads[task]
            if self._expired:
                self._expired.discard(task)

    def _late(self) -> RequestTimeout:
        return RequestTimeout(f"The body did not arrive within {self.timeout} s (body_timeout)")

    def sweep(self) -> None:
        """Cancel the reads that are past their deadline (call every :attr:`interval`)."""
        if not self._reads:
            return
        now = clock.monotonic()
        for task, deadline in self._reads.items():
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()


async def _read_rest(receive: Receive, message: Message, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while message["type"] == "http.request":  # else http.disconnect: stop reading
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
        message = await receive()
    return b"".join(chunks)


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a complete JSON reply (refusals are marked not to be stored by caches)."""
    reply_headers = [_JSON_CONTENT_TYPE, (b"content-length", b"%d" % len(body))]
    if status >= 300:
        reply_headers.append((b"cache-control", b"no-store"))
    if headers:
        reply_headers += headers
    await send({"type": "http.response.start", "status": status, "headers": reply_headers})
    await send({"type": "http.response.body", "body": body})


def log_refusal(exc: ChannelError, method: str, path: str, client: str | None) -> None:
    """Log one line for a request refused before its response started, or failed.

    A refusal the client caused (4xx) is logged at INFO, a failure of the server or of what it
    depends on (5xx: the storage, a hook, a webhook) at WARNING; neither with a traceback (an
    unexpected error is logged with its traceback where it is caught). The path carries no
    query string, so no token is ever logged.

    Args:
        exc: the refusal, as answered.
        method: the HTTP method, or ``WS`` for a WebSocket (its handshake or a frame).
        path: the request path within the app.
        client: the client's address, when the server gave one.
    """
    level = logging.WARNING if exc.status >= 500 else logging.INFO
    if requests_log.isEnabledFor(level):
        message = exc.message
        if not path.isprintable():  # a decoded %0A must not start a forged line
            path = repr(path)
        if not message.isprintable():  # it may quote what the client sent
            message = repr(message)
        requests_log.log(
            level, "%s %s from %s: %d %s", method, path, client or "-", exc.status, message
        )
