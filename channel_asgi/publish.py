"""``POST /publish/{channel}?token=…``: check a publish in the documented order, then act on it.

The order of checks is part of the protocol (SPEC, "Order of checks on publish"): closed channel,
content type, body size (and its arrival within ``body_timeout``), token, rate limit, body, ban,
widget key, authorisation, slow mode, ``on_publish``, and the ``request`` connection. Nothing is
delivered or stored before every check has passed.

A ban is checked for every user, anonymous ones included (a banned anonymous id may still hold
its publish token). A broadcast's is checked by the storage in its append, atomically with it and
at no cost of its own (``Storage.append(author=…)``): a ban that ``channels.ban`` has returned
from refuses every later broadcast, whichever process it reaches. The other types, and a
broadcast when ``on_publish`` hooks are set (so they never see a banned user's message), ask the
storage right after the body is read. Slow mode needs the body (only broadcasts count) and comes
before the ``on_publish`` hooks, so a user who sends too fast costs the host's hooks nothing; a
broadcast refused by a hook has spent its slow-mode token.

Every publish is counted once (``metrics.Tally``), with its envelope type (``unknown`` when it
was refused before its body was read) and the status it was answered with: the checks before the
body by :meth:`PublishRoute.serve`, the rest by :meth:`PublishRoute.handle`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import Final, cast

import anyio
import httpx
import msgspec

from .access import Access
from .auth import Action
from .connection import Connection
from .engine import Engine, Hooks, PublishHook
from .errors import (
    ChannelClosed,
    ChannelError,
    Forbidden,
    Reject,
    TooManyRequests,
    UnprocessableEntity,
)
from .http import (
    BodyDeadlines,
    Headers,
    Receive,
    Scope,
    Send,
    check_json_content_type,
    client_address,
    request_token,
    send_json,
)
from .mailbox import Mailbox
from .metrics import UNKNOWN_TYPE
from .numbers import encode_checked
from .protocol import (
    BroadcastBody,
    Envelope,
    PrivateBody,
    PublishBody,
    RangeRequestBody,
    Reply,
    RequestBody,
    WebhookBody,
    WebhookData,
    decode_publish,
    encode,
    publish_type,
)
from .ranges import MediaRange
from .ratelimit import PublishLimits
from .tokens import PublishClaims
from .webhooks import call_webhook, check_webhook_url, cloud_event, url_allowed

__all__ = ["PublishRoute"]

logger = logging.getLogger("channel_asgi")

_OK_BROADCAST: Final = "Message broadcast"
_OK_PRIVATE: Final = "Private message sent"
_OK_REQUEST: Final = "History requested; it arrives on the subscribe stream"
_OK_REQUEST_HERE: Final = "History sent, just before this reply"
_OK_WEBHOOK: Final = "Webhook called"
_WEBHOOK_FAILURES: Final = {502: "unreachable", 504: "timeout"}  # call_webhook's statuses


class PublishRoute:
    """Serve ``POST /publish/{channel}`` for one app, and run WebSocket frames as publishes.

    Args:
        engine: the app's engine.
        hooks: the app's hooks (``on_publish``).
        access: identity and authorisation.
        http: returns the client used for webhook calls.
    """

    methods: Final = ("POST", "OPTIONS")

    def __init__(
        self,
        engine: Engine,
        hooks: Hooks,
        access: Access,
        http: Callable[[], httpx.AsyncClient],
    ) -> None:
        self._engine = engine
        self._hooks = hooks
        self._access = access
        self._http = http
        settings = engine.settings
        self._limits = PublishLimits(
            engine.storage,
            settings.rate_limit,
            settings.ip_rate_limit,
            partial(access.slow_mode, default=settings.slow_mode),
        )
        # Settings do not change: the checks that cannot refuse anything are skipped outright.
        self._ip_limited = settings.ip_rate_limit is not None
        self._widget_keys = settings.widget_keys
        self._max_body = settings.max_body_bytes
        #: Bounds the time bodies take to arrive; the app sweeps it every ``interval``.
        self.deadlines = BodyDeadlines(settings.body_timeout)

    async def serve(
        self,
        scope: Scope,
        headers: Headers,
        receive: Receive,
        send: Send,
        channel: str,
        reply_headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Run every check of an HTTP publish, in order, then the publish; send the reply.

        Raises:
            ChannelError: the publish was refused; nothing was stored or delivered.
        """
        engine = self._engine
        try:
            if await engine.storage.is_closed(channel):
                raise ChannelClosed(channel)
            check_json_content_type(headers)
            body = await self.deadlines.read(headers, receive, self._max_body)
            claims = engine.signer.verify(request_token(scope, headers), channel)
        except Exception as exc:
            engine.tally.refused(UNKNOWN_TYPE, exc)
            raise
        client = client_address(scope) if self._ip_limited else None
        reply = await self.handle(claims, body, client)
        await send_json(send, reply.code, encode(reply), reply_headers)

    async def handle(
        self,
        claims: PublishClaims,
        body: bytes,
        client: str | None,
        *,
        local: Mailbox | None = None,
    ) -> Reply:
        """Checks from the rate limit on (shared with the WebSocket route), then the publish.

        Args:
            claims: who publishes, from where.
            body: the publish body.
            client: the client's address (for ``ip_rate_limit``).
            local: the publishing connection's own mailbox, when it is in this process (a
                WebSocket): a ``request`` is then queued on it directly, before the reply.

        Raises:
            ChannelError: the publish was refused; nothing was stored or delivered.
        """
        tally = self._engine.tally
        started = tally.start()
        kind = UNKNOWN_TYPE
        try:
            if self._limits.rated:
                await self._check_rate(claims.user_id, client)
            envelope = decode_publish(body)
            kind = publish_type(envelope)
            if self._hooks.on_publish or not isinstance(envelope, BroadcastBody):
                # A broadcast's ban is checked by its append (``by_user``); asked here too, the
                # hooks never see a banned user's message.
                await self._engine.moderator.refuse_banned(claims.channel, claims.user_id)
            reply = await self._checked(envelope, claims, local)
        except Exception as exc:
            tally.refused(kind, exc, started)
            raise
        tally.published(kind, reply.code, started)
        return reply

    async def _checked(
        self, envelope: PublishBody, claims: PublishClaims, local: Mailbox | None
    ) -> Reply:
        """The checks from the widget key on, then the publish."""
        if isinstance(envelope, WebhookBody):
            check_webhook_url(envelope.url)  # part of the body's check: a 400 before any 403
        channel = claims.channel
        if self._widget_keys is not None:
            self._check_widget_key(envelope, self._widget_keys)
        if self._access.decides:
            user_id = None if claims.anonymous else claims.user_id
            # A request asks the history permission (HISTORY_ACTION) as a publish: with
            # anonymous_publish as well, which a resume does not ask.
            action = cast(Action, publish_type(envelope))
            await self._access.authorize(user_id, channel, action)
        if isinstance(envelope, WebhookBody) and not url_allowed(
            envelope.url, self._engine.settings.webhook_urls
        ):
            raise Forbidden("The webhook URL is not under an allowed prefix (webhook_urls)")
        if isinstance(envelope, BroadcastBody) and (seconds := self._limits.slow_mode(channel)):
            wait = await self._limits.over_slow_mode(channel, claims.user_id, seconds)
            if wait is not None:
                self._engine.tally.add("rate_limited", "slow_mode")
                raise TooManyRequests(
                    wait, f"Slow mode: one message every {seconds:g} s; retry after {wait} s"
                )
        if self._hooks.on_publish:
            connection = Connection(claims.user_id, channel, claims.connection_id)
            message = await self._run_publish_hooks(envelope, connection)
            if message is not None and not isinstance(envelope, RequestBody):
                envelope.message = message
        if isinstance(envelope, BroadcastBody):  # the usual case, first
            event_id = await self._engine.broadcast(
                channel,
                envelope.message,
                author_id=claims.user_id,
                timestamp=envelope.timestamp,
                by_user=True,
            )
            return Reply(200, _OK_BROADCAST, event_id)
        if local is not None and isinstance(envelope, RequestBody):
            await self._engine.request_here(local, claims.channel, _range_of(envelope))
            return Reply(200, _OK_REQUEST_HERE)
        return await self._act(envelope, claims)

    async def _check_rate(self, user_id: str, client: str | None) -> None:
        """Refuse with 429 when a limit is exceeded (the buckets are the storage's)."""
        over = await self._limits.over_rate(user_id, client)
        if over is not None:
            limit, wait = over
            self._engine.tally.add("rate_limited", limit)
            raise TooManyRequests(wait)

    @staticmethod
    def _check_widget_key(envelope: PublishBody, keys: Iterable[str]) -> None:
        if envelope.widget_key is msgspec.UNSET:
            raise Forbidden("Missing widget_key")
        if envelope.widget_key not in keys:
            raise Forbidden("widget_key is not accepted")

    async def _run_publish_hooks(
        self, body: PublishBody, connection: Connection
    ) -> msgspec.Raw | None:
        """Run ``on_publish`` hooks on a decoded copy; return the (possibly changed) message.

        A ``request``'s hooks see the range it asks for as ``message`` (None for the live
        history); it is theirs to read, not to change, and None is returned.
        """
        request = isinstance(body, RequestBody)
        raw = body.range_message if isinstance(body, RequestBody) else body.message
        envelope = Envelope(
            type=publish_type(body),
            stream_id=connection.channel,
            author_id=connection.user_id,
            to_user_id=getattr(body, "to_user_id", ""),
            message=msgspec.json.decode(raw),
            timestamp=body.timestamp,
        )
        for hook in self._hooks.on_publish:
            await self._run_publish_hook(hook, envelope, connection)
        if request:
            return None
        if envelope.message is None:
            raise ChannelError(500, "on_publish hook set the message to null")
        try:
            return msgspec.Raw(encode_checked(envelope.message, root="$.message"))
        except UnprocessableEntity as exc:  # the hook's number, not the publisher's: a 500
            raise ChannelError(500, f"on_publish hook: {exc.message}") from None

    async def _run_publish_hook(
        self, hook: PublishHook, envelope: Envelope, connection: Connection
    ) -> None:
        timeout = self._engine.settings.hook_timeout
        try:
            with anyio.fail_after(timeout):
                await hook(envelope, connection)
        except Reject:
            raise
        except TimeoutError:
            self._engine.tally.add("hook_failures", "on_publish", "timeout")
            raise ChannelError(504, f"on_publish hook took longer than {timeout} s") from None
        except Exception as exc:
            self._engine.tally.add("hook_failures", "on_publish", "error")
            logger.exception("on_publish hook %r failed", hook)
            raise ChannelError(500, "on_publish hook failed") from exc

    async def _act(self, envelope: PublishBody, claims: PublishClaims) -> Reply:
        """The other publish types (a broadcast is handled in :meth:`handle`)."""
        channel = claims.channel
        if isinstance(envelope, PrivateBody):
            await self._engine.private(
                channel,
                envelope.message,
                to_user_id=envelope.to_user_id,
                author_id=claims.user_id,
                timestamp=envelope.timestamp,
                from_connection=claims.connection_id,
            )
            return Reply(200, _OK_PRIVATE)
        if isinstance(envelope, RequestBody):
            await self._engine.request_history(channel, claims.connection_id, _range_of(envelope))
            return Reply(200, _OK_REQUEST)
        assert isinstance(envelope, WebhookBody)
        data = encode(
            WebhookData(
                stream_id=channel,
                author_id=claims.user_id,
                message=envelope.message,
                timestamp=envelope.timestamp,
            )
        )
        event = cloud_event("channel_asgi.webhook", channel, data)
        timeout = self._engine.settings.webhook_timeout
        tally = self._engine.tally
        try:
            status = await call_webhook(self._http(), envelope.url, event, timeout)
        except ChannelError as exc:
            if exc.status in _WEBHOOK_FAILURES:
                tally.add("webhooks", _WEBHOOK_FAILURES[exc.status])
            raise
        tally.add("webhooks", f"{status // 100}xx")
        return Reply(200, _OK_WEBHOOK, status=status)


def _range_of(envelope: RequestBody) -> MediaRange | None:
    """The range of the archive a ``request`` asks for, or None for the live history."""
    return envelope.range if isinstance(envelope, RangeRequestBody) else None
