"""CORS for the channel routes: the seed pages run from another origin (e.g. JSFiddle).

With ``["*"]`` any origin may read the replies, without credentials. With a list, the request's
``Origin`` is echoed back when it is in the list, with ``Vary: Origin`` and credentials allowed,
so an ``EventSource(url, {withCredentials: true})`` can send the host's session cookie.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = ["CorsPolicy"]

#: Response headers, as ASGI sends them (request headers are ``http.Headers``, a mapping).
HeaderList = list[tuple[bytes, bytes]]

_ALLOW_METHODS: Final = b"GET, POST, OPTIONS"
_DEFAULT_ALLOW_HEADERS: Final = b"content-type, authorization, last-event-id"
_EXPOSE_HEADERS: Final = b"retry-after"
_MAX_AGE: Final = b"600"


class CorsPolicy:
    """Which origins may use the channel routes from a browser.

    Args:
        origins: allowed origins such as ``"https://example.com"``, or ``["*"]`` for any.
    """

    def __init__(self, origins: Iterable[str]) -> None:
        if isinstance(origins, str):
            raise TypeError(f"cors_origins must be a list of origins, not one string: {origins!r}")
        cleaned = []
        for origin in origins:
            if not isinstance(origin, str):
                raise TypeError(f"CORS origins must be strings, got {origin!r}")
            scheme, _, rest = origin.rstrip("/").partition("://")
            if origin != "*" and (not scheme or not rest or "/" in rest):
                raise ValueError(
                    f"CORS origin must look like 'https://host[:port]', got {origin!r}"
                )
            cleaned.append(origin.rstrip("/"))
        self.allow_all = "*" in cleaned
        self.origins = frozenset(cleaned) - {"*"}  # the origins listed by name

    def is_allowed_origin(self, origin: str | None, *, credentials: bool = False) -> bool:
        """Return whether a browser page at ``origin`` may read the replies.

        Args:
            origin: the request's ``Origin``.
            credentials: whether the request carries the user's cookies or HTTP credentials.
                A browser never lets ``*`` read a credentialed reply, so then only an origin
                listed by name is allowed.
        """
        if origin is None:
            return False
        if origin in self.origins:
            return True
        return self.allow_all and not credentials

    def headers(self, origin: str | None) -> HeaderList:
        """CORS headers for an actual (non-preflight) reply to ``origin``; empty if not allowed."""
        if not self.is_allowed_origin(origin):
            return []
        if self.allow_all:
            return [
                (b"access-control-allow-origin", b"*"),
                (b"access-control-expose-headers", _EXPOSE_HEADERS),
            ]
        return [
            (b"access-control-allow-origin", (origin or "").encode("latin-1")),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-expose-headers", _EXPOSE_HEADERS),
            (b"vary", b"Origin"),
        ]

    def preflight_headers(self, origin: str | None, requested_headers: str | None) -> HeaderList:
        """Headers answering an allowed preflight (the caller refuses disallowed ones)."""
        headers = self.headers(origin)
        allow_headers = (
            requested_headers.encode("latin-1") if requested_headers else _DEFAULT_ALLOW_HEADERS
        )
        headers += [
            (b"access-control-allow-methods", _ALLOW_METHODS),
            (b"access-control-allow-headers", allow_headers),
            (b"access-control-max-age", _MAX_AGE),
        ]
        return headers
