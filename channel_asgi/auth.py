"""The ``Auth`` protocol: who the user is, and what they may do on which channel.

The default (``auth=None``) is inLive's: everyone is an anonymous user with a fresh id, and every
action is allowed. A host plugs in its own sessions by passing an object with ``identify`` (and
optionally ``allow``); ``docs/auth.md`` shows one for Starlette's and Django's sessions.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from functools import cached_property
from http.cookies import CookieError, SimpleCookie
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import parse_qsl

__all__ = ["Action", "Auth", "Request"]

#: What a user asks to do on a channel.
Action = Literal["subscribe", "broadcast", "private", "request", "webhook"]


class Request:
    """What an ``Auth`` sees of an incoming request (read-only views of the ASGI scope).

    Args:
        scope: the ASGI ``http`` or ``websocket`` scope.
    """

    def __init__(self, scope: MutableMapping[str, Any]) -> None:
        self.scope = scope

    @cached_property
    def headers(self) -> Mapping[str, str]:
        """Request headers, lower-cased names, latin-1 decoded (the last of repeated names wins)."""
        return {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in self.scope.get("headers", ())
        }

    @cached_property
    def query_params(self) -> Mapping[str, str]:
        """Query-string parameters (the last of repeated names wins)."""
        query = self.scope.get("query_string", b"").decode("latin-1")
        return dict(parse_qsl(query, keep_blank_values=True))

    @cached_property
    def cookies(self) -> Mapping[str, str]:
        """Cookies sent with the request."""
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.headers.get("cookie", ""))
        except CookieError:
            return {}
        return {name: morsel.value for name, morsel in jar.items()}

    @property
    def client(self) -> str | None:
        """The client address the server reports, if any."""
        client = self.scope.get("client")
        return str(client[0]) if client else None


@runtime_checkable
class Auth(Protocol):
    """**Protocol**: identify the user of a request.

    An implementation may also define ``async allow(user_id, channel, action) -> bool``; when it
    does, it runs for every subscribe and publish, before the channel patterns.
    """

    async def identify(self, request: Request) -> str | None:
        """Return the user id the request is authenticated as, or None for an anonymous user."""
        ...
