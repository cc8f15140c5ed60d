"""``POST /publish/{channel}?token=…``: check a publish in the documented order, then act on it.

The order of checks is part of the protocol (SPEC, "Order of checks on publish"): closed channel,
content type, body size, token, rate limit, body, widget key, authorisation, ``on_publish``, and the
``request`` connection. Nothing is delivered or stored before every check has passed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, cast
from urllib.parse import parse_qsl

import anyio
import msgspec

from .auth import Action
from .engine import Connection, Engine, Hooks, PublishHook
from .errors import BadRequest, ChannelError, Forbidden, NotImplementedYet, Reject
from .http import Receive, Scope, check_json_content_type, header, read_body
from .protocol import (
    BroadcastBody,
    Envelope,
    PrivateBody,
    PublishBody,
    Reply,
    RequestBody,
    WebhookBody,
    decode_publish,
    publish_type,
)
from .tokens import PublishClaims

__all__ = ["PublishRoute"]

logger = logging.getLogger("channel_asgi")

Authorize = Callable[[str | None, str, Action], Awaitable[None]]

_OK_BROADCAST: Final = "Message broadcast"
_OK_PRIVATE: Final = "Private message sent"
_OK_REQUEST: Final = "History requested; it arrives on the subscribe stream"


def publish_token(scope: Scope) -> str | None:
    """Return the publish token from ``?token=`` or an ``Authorization: Bearer`` header."""
    query = scope.get("query_string", b"")
    if b"token=" in query:
        for name, value in parse_qsl(query.decode("latin-1")):
            if name == "token":
                return str(value)
    authorization = header(scope, b"authorization")
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


class PublishRoute:
    """Handle publishes from clients (HTTP now, WebSocket frames later) for one app."""

    def __init__(self, engine: Engine, hooks: Hooks, authorize: Authorize) -> None:
        self.engine = engine
        self.hooks = hooks
        self.authorize = authorize

    async def handle_http(self, scope: Scope, receive: Receive, channel: str) -> Reply:
        """Run every check of an HTTP publish, in order, and then the publish itself."""
        settings = self.engine.settings
        await self.engine.ensure_open(channel)
        check_json_content_type(scope)
        body = await read_body(scope, receive, settings.max_body_bytes)
        claims = self.engine.signer.verify(publish_token(scope), channel)
        return await self.handle(claims, body)

    async def handle(self, claims: PublishClaims, body: bytes) -> Reply:
        """Checks from the body on (shared with the WebSocket route), then the publish."""
        envelope = decode_publish(body)
        channel = claims.channel
        self._check_widget_key(envelope)
        user_id = None if claims.anonymous else claims.user_id
        action = cast(Action, publish_type(envelope))
        await self.authorize(user_id, channel, action)
        connection = Connection(claims.user_id, channel, claims.connection_id)
        if isinstance(envelope, (BroadcastBody, PrivateBody)) and self.hooks.on_publish:
            envelope.message = await self._run_publish_hooks(envelope, connection)
        return await self._act(envelope, connection)

    def _check_widget_key(self, envelope: PublishBody) -> None:
        keys = self.engine.settings.widget_keys
        if keys is None:
            return
        if envelope.widget_key is msgspec.UNSET:
            raise Forbidden("Missing widget_key")
        if envelope.widget_key not in keys:
            raise Forbidden("widget_key is not accepted")

    async def _run_publish_hooks(
        self, body: BroadcastBody | PrivateBody, connection: Connection
    ) -> msgspec.Raw:
        """Run ``on_publish`` hooks on a decoded copy; return the (possibly changed) message."""
        envelope = Envelope(
            type=publish_type(body),
            stream_id=connection.channel,
            author_id=connection.user_id,
            to_user_id=getattr(body, "to_user_id", ""),
            message=msgspec.json.decode(body.message),
            timestamp=body.timestamp,
        )
        for hook in self.hooks.on_publish:
            await self._run_publish_hook(hook, envelope, connection)
        if envelope.message is None:
            raise ChannelError(500, "on_publish hook set the message to null")
        return msgspec.Raw(msgspec.json.encode(envelope.message))

    async def _run_publish_hook(
        self, hook: PublishHook, envelope: Envelope, connection: Connection
    ) -> None:
        timeout = self.engine.settings.hook_timeout
        try:
            with anyio.fail_after(timeout):
                await hook(envelope, connection)
        except Reject:
            raise
        except TimeoutError:
            raise ChannelError(504, f"on_publish hook took longer than {timeout} s") from None
        except Exception as exc:
            logger.exception("on_publish hook %r failed", hook)
            raise ChannelError(500, "on_publish hook failed") from exc

    async def _act(self, envelope: PublishBody, connection: Connection) -> Reply:
        channel = connection.channel
        if isinstance(envelope, BroadcastBody):
            event_id = await self.engine.broadcast(
                channel,
                envelope.message,
                author_id=connection.user_id,
                timestamp=envelope.timestamp,
            )
            return Reply(200, _OK_BROADCAST, event_id)
        if isinstance(envelope, PrivateBody):
            await self.engine.private(
                channel,
                envelope.message,
                to_user_id=envelope.to_user_id,
                author_id=connection.user_id,
                timestamp=envelope.timestamp,
                from_connection=connection.connection_id,
            )
            return Reply(200, _OK_PRIVATE)
        if isinstance(envelope, RequestBody):
            await self.engine.request(channel, connection.connection_id)
            return Reply(200, _OK_REQUEST)
        if isinstance(envelope, WebhookBody):
            raise NotImplementedYet("The webhook type is not served by this version")
        raise BadRequest("Unknown publish type")  # pragma: no cover - the decoder refuses it
