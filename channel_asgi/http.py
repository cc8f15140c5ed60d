"""Small ASGI helpers for the HTTP routes: routing, channel names, bodies and JSON replies."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final
from urllib.parse import parse_qsl

from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

__all__ = [
    "Receive",
    "Scope",
    "Send",
    "check_json_content_type",
    "header",
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
_JSON_TYPE: Final = re.compile(r"application/(?:[\w.+-]+\+)?json", re.ASCII)


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
    if not name:
        raise BadRequest("Channel name is empty")
    if len(name) > MAX_CHANNEL_LENGTH:
        raise BadRequest(f"Channel name is longer than {MAX_CHANNEL_LENGTH} characters")
    if not _CHANNEL_CHARS.fullmatch(name):
        raise BadRequest("Channel name may only contain A-Z a-z 0-9 _ - . : @ /")
    if any(segment in ("", ".", "..") for segment in name.split("/")):
        raise BadRequest("Channel name has an empty, '.' or '..' segment")
    return name


def header(scope: Scope, name: bytes) -> str | None:
    """Return the first value of header ``name`` (lower-case bytes), or None."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def request_token(scope: Scope) -> str | None:
    """Return the token of a request: ``?token=``, else ``Authorization: Bearer``."""
    query = scope.get("query_string", b"")
    if b"token=" in query:
        for name, value in parse_qsl(query.decode("latin-1")):
            if name == "token" and value:
                return str(value)
    authorization = header(scope, b"authorization")
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def check_json_content_type(scope: Scope) -> None:
    """Refuse a body that is not declared as ``application/json`` or ``application/*+json``.

    Raises:
        UnsupportedMediaType: the ``Content-Type`` is missing or not JSON.
    """
    content_type = header(scope, b"content-type")
    if content_type is None:
        raise UnsupportedMediaType("Content-Type must be application/json")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not _JSON_TYPE.fullmatch(media_type):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {media_type!r}")


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the request body, refusing it as soon as it is known to exceed ``limit`` bytes.

    Raises:
        PayloadTooLarge: ``Content-Length`` or the bytes received exceed ``limit``.
    """
    too_large = PayloadTooLarge(f"Body is larger than {limit} bytes")
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # http.disconnect: nobody will read a reply; stop reading
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a complete JSON reply."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
