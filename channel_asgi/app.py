"""``ChannelApp``: the ASGI application, its lifecycle and its server-side API.

Routes, relative to wherever the app is mounted::

    GET  /subscribe/{channel}   Server-Sent Events (init, system, broadcasts, private, request, end)
    GET  /subscribe?channel=a&channel=b   one SSE stream of several channels
    POST /subscribe             add channels to a live stream of several, or remove them
    POST /publish/{channel}     a JSON envelope, authorised by the token from ``init``
    GET  /history/{channel}     a page of the archive by media time (``?from=&to=&limit=&after=``)
    WS   /ws/{channel}          the same events as text frames; client frames are publishes
    GET  /health                200 while the storage answers, else 503
    GET  /metrics               Prometheus metrics (with ``metrics=True``)

This module is where a refused request becomes its reply: a :class:`ChannelError` becomes
``{"code", "message"}`` with its status (before a WebSocket upgrade, through
``websocket.refuse``); anything else an HTTP route raises is logged and answered with a 500.
Each refusal is logged as one line (``errors.log_refusal``) and counted (``metrics.Tally``).
"""

from __future__ import annotations

import inspect
import logging
import math
import secrets
from collections.abc import Callable, Coroutine, Iterable
from functools import lru_cache, partial
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import anyio
import httpx
import msgspec
from anyio.abc import TaskStatus

from .access import Access
from .archive import HistoryRoute
from .auth import Auth
from .config import Settings
from .cors import CorsPolicy
from .engine import Engine, Hooks
from .errors import (
    ChannelError,
    MethodNotAllowed,
    NotFound,
    RequestTimeout,
    StorageUnavailable,
    TooManyConnections,
    TooManyRequests,
    UnprocessableEntity,
    http_error,
    maps_storage_errors,
)
from .fastpath import DirectWriter
from .health import HealthRoute
from .http import (
    Headers,
    Receive,
    Scope,
    Send,
    client_address,
    header,
    headers_of,
    log_refusal,
    route_path,
    send_json,
    validate_channel,
)
from .hub import HEARTBEAT_TICKS, Hub
from .identity import IdentityTokens
from .lifecycle import Runner, asyncio_loop, run_every, server_is_exiting, watch_exit_signals
from .listener import Listener
from .mailbox import Close
from .metrics import FLUSH_INTERVAL, MetricsRoute, PrometheusMetrics, Tally
from .moderation import EVERY_CHANNEL
from .numbers import encode_checked
from .patterns import Authorizer, ChannelPattern, PatternSet
from .protocol import Envelope, Reply, encode, with_id
from .publish import PublishRoute
from .ranges import DEFAULT_LIMIT, checked_range
from .ratelimit import ConnectionLimit
from .scheduler import WriteScheduler
from .servers import (
    DAPHNE,
    GRANIAN,
    HYPERCORN,
    UNPACED,
    HypercornWatch,
    identify,
    on_reactor_shutdown,
    warn_unpaced,
)
from .storage.base import Storage, StorageError
from .storage.memory import MemoryStorage
from .streams import StreamsRoute, channels_of
from .subscribe import SubscribeRoute
from .tokens import TokenSigner
from .webhooks import Bridge, validate_url_prefix
from .websocket import WebSocketRoute, refuse
from .writer import CLEANUP_TIMEOUT, until_all_ended

__all__ = ["ChannelApp"]

logger = logging.getLogger("channel_asgi")

_HTTP_ROUTES: Final = ("subscribe", "publish", "history")
_PLAIN_ROUTES: Final = ("/health", "/metrics")  # no channel in the path
_TRANSPORT: Final = {"subscribe": "sse", "streams": "sse", "websocket": "websocket"}
_EXIT_POLL: Final = 0.25

HookT = TypeVar("HookT", bound=Callable[..., Any])


class ChannelApp:
    """Real-time channels for an ASGI app: mount it, or wrap a host with ``ChannelMiddleware``.

    Args:
        storage: where history and presence live and how events reach every process
            (default: a new :class:`MemoryStorage`, one process).
        auth: identifies users and authorises actions (default: anonymous, everything allowed).
        secret: the HMAC key for publish tokens; every process sharing a storage needs the same
            one. Required with a shared storage; generated (single process) when omitted.
        widget_keys: when given, every publish must carry one of these as ``widget_key``.
        cors_origins: origins whose pages may use the routes, or ``["*"]``.
        history_size: broadcasts retained per channel.
        history_ttl: seconds a broadcast is retained, or None for no limit.
        archive_size: broadcasts archived per channel by media time (``timestamp``), for chat
            replay (``GET /history``, range requests, :meth:`history`); 0: no archive.
        max_body_bytes: the largest publish body accepted.
        heartbeat: seconds between ``: ping`` comments on an idle stream.
        max_buffer_bytes: per connection, the live events that may wait for a slow client before
            it is disconnected.
        token_ttl: seconds a publish token stays valid.
        webhook_urls: URL prefixes the ``webhook`` publish type may call.
        webhook_timeout: seconds a webhook call may take.
        rate_limit: ``(per_second, burst)`` publishes per user, or None.
        ip_rate_limit: ``(per_second, burst)`` publishes per client address, or None.
        slow_mode: seconds a user waits between two broadcasts on a channel, or None (channel
            patterns may differ).
        system_events_max_viewers: above this many viewers, join/leave events of a channel are
            coalesced into one ``count`` event per ``presence_interval``.
        presence_interval: seconds between coalesced ``count`` events.
        reconnect_delay: the ``retry:`` the browser waits before reconnecting, in seconds.
        hook_timeout: seconds a hook may run before it is abandoned.
        max_connections_per_ip: the most subscriber connections (SSE and WebSocket) one client
            address may hold open in this process (429 past it), or None for no limit.
        body_timeout: seconds a publish body may take to arrive (408 after).
        max_channels_per_connection: the most channels one stream of several channels
            (``/subscribe?channel=a&channel=b``) may hold (400 past it).
        metrics: serve Prometheus metrics at ``{prefix}/metrics`` (needs the ``metrics`` extra;
            see ``docs/operations.md``).

    Attributes:
        storage: the storage it was given (or the :class:`MemoryStorage` it made).
        settings: the validated options above, read-only.
    """

    def __init__(
        self,
        *,
        storage: Storage | None = None,
        auth: Auth | None = None,
        secret: str | bytes | None = None,
        widget_keys: Iterable[str] | None = None,
        cors_origins: Iterable[str] = (),
        history_size: int = 1000,
        history_ttl: float | None = None,
        archive_size: int = 0,
        max_body_bytes: int = 65536,
        heartbeat: float = 15.0,
        max_buffer_bytes: int = 1048576,
        token_ttl: float = 86400.0,
        webhook_urls: Iterable[str] = (),
        webhook_timeout: float = 5.0,
        rate_limit: tuple[float, float] | None = None,
        ip_rate_limit: tuple[float, float] | None = None,
        slow_mode: float | None = None,
        system_events_max_viewers: int = 1000,
        presence_interval: float = 1.0,
        reconnect_delay: float = 3.0,
        hook_timeout: float = 5.0,
        max_connections_per_ip: int | None = 256,
        body_timeout: float = 10.0,
        metrics: bool = False,
        max_channels_per_connection: int = 100,
    ) -> None:
        self.settings = Settings(
            widget_keys=widget_keys,
            history_size=history_size,
            history_ttl=history_ttl,
            archive_size=archive_size,
            max_body_bytes=max_body_bytes,
            heartbeat=heartbeat,
            max_buffer_bytes=max_buffer_bytes,
            token_ttl=token_ttl,
            webhook_urls=webhook_urls,
            webhook_timeout=webhook_timeout,
            rate_limit=rate_limit,
            ip_rate_limit=ip_rate_limit,
            slow_mode=slow_mode,
            system_events_max_viewers=system_events_max_viewers,
            presence_interval=presence_interval,
            reconnect_delay=reconnect_delay,
            hook_timeout=hook_timeout,
            max_connections_per_ip=max_connections_per_ip,
            body_timeout=body_timeout,
            metrics=metrics,
            max_channels_per_connection=max_channels_per_connection,
        )
        for url in self.settings.webhook_urls:
            validate_url_prefix(url)
        self.storage: Storage = MemoryStorage() if storage is None else storage
        if not isinstance(self.storage, Storage):
            raise TypeError(f"storage must implement channel_asgi.Storage, got {storage!r}")
        if auth is not None and not callable(getattr(auth, "identify", None)):
            raise TypeError(f"auth must have an async identify(request) method, got {auth!r}")
        if secret is not None and len(secret) < 32:
            logger.warning("The secret is shorter than 32 bytes; use a longer random one")
        if secret is None:
            if self.storage.shared:
                raise ValueError(
                    "A shared storage needs secret=: every process must verify the tokens "
                    "the others issue"
                )
            logger.warning(
                "No secret given: generated one for this process only. Tokens will not verify "
                "in other processes; pass secret= to run more than one."
            )
            secret = secrets.token_bytes(32)
        settings = self.settings
        self._cors = CorsPolicy(cors_origins)
        self._hooks = Hooks()
        self._bridges: list[Bridge] = []
        direct = DirectWriter()
        self._hub = Hub(self.storage, WriteScheduler(writing=direct.busy), direct)
        self._access = Access(auth, IdentityTokens(secret), PatternSet())
        self._tally = Tally()
        self._metrics = (
            PrometheusMetrics(self._tally, self._hub, self._bridges) if settings.metrics else None
        )
        self._engine = Engine(
            settings,
            self.storage,
            self._hub,
            TokenSigner(secret, token_ttl),
            self._hooks,
            history_size=partial(self._access.history_size, default=settings.history_size),
            archive_size=partial(self._access.archive_size, default=settings.archive_size),
            on_broadcast=self._offer_to_bridges,
            tally=self._tally,
        )
        limit = ConnectionLimit(
            settings.max_connections_per_ip, retry_after=math.ceil(settings.reconnect_delay)
        )
        self._outbound: httpx.AsyncClient | None = None
        self._publish = PublishRoute(self._engine, self._hooks, self._access, self._outbound_client)
        self._subscribe = SubscribeRoute(self._engine, self._access, limit)
        streams = StreamsRoute(self._engine, self._access, limit, self._publish)
        self._websocket = WebSocketRoute(
            self._engine, self._access, limit, self._publish, self._cors
        )
        self._routes: dict[
            str,
            SubscribeRoute
            | StreamsRoute
            | PublishRoute
            | HistoryRoute
            | HealthRoute
            | MetricsRoute,
        ] = {
            "subscribe": self._subscribe,
            "streams": streams,
            "publish": self._publish,
            "history": HistoryRoute(
                self.storage, self._engine.archive, self._access, self._engine.moderator
            ),
            "health": HealthRoute(self.storage),
        }
        if self._metrics is not None:
            self._routes["metrics"] = MetricsRoute(self._metrics)
        self._runner = Runner(self._background)
        self._server: str | None = None  # the ASGI server's name, once met (see servers)
        self._exiting: Callable[[], bool] | None = None  # the server's own "stopping" state
        self._stopping = False  # shutdown() was called: every stream ends, new ones too

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the background work runs (started by lifespan, ``async with`` or first use)."""
        return self._runner.running

    async def __aenter__(self) -> ChannelApp:
        """Start the background work here (instead of on first use)."""
        await self._runner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """End every stream and stop the background work."""
        self._hub.close_all(Close.SHUTDOWN)
        self._stopping = False  # a later start is a new start
        await self._runner.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """End every stream and stop background work that started on first use."""
        self._hub.close_all(Close.SHUTDOWN)
        self._stopping = False
        await self._runner.aclose()

    def shutdown(self) -> None:
        """End every stream now, and each one that opens later: the server is stopping.

        Each SSE response completes (a browser reconnects after ``retry``, with
        ``Last-Event-ID``, to whichever process is still up), each WebSocket closes with 1001,
        and each connection leaves the channel's presence as it ends. Publishing and the rest
        of the server-side API keep working until the app stops (lifespan, ``async with`` or
        :meth:`aclose`), so a server's graceful shutdown finds nothing left open.

        The app does this itself when it sees its server stop (``docs/servers.md``, "Stopping");
        call it from a server's own shutdown hook where it cannot, such as hypercorn's
        ``shutdown_trigger``. Call it from the app's event loop (a coroutine or a loop
        callback, not a ``signal.signal`` handler).
        """
        self._stopping = True
        self._hub.close_all(Close.SHUTDOWN)

    async def _background(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with httpx.AsyncClient(follow_redirects=False) as outbound:
            self._outbound = outbound
            try:
                async with anyio.create_task_group() as group:
                    await group.start(self.storage.run, self._hub.dispatch)
                    tick = self.settings.heartbeat / HEARTBEAT_TICKS
                    await group.start(run_every, tick, self._hub.heartbeat)
                    interval = self.settings.presence_interval
                    await group.start(run_every, interval, self._engine.announcer.flush)
                    await group.start(run_every, _EXIT_POLL, self._end_streams_if_exiting)
                    deadlines = self._publish.deadlines
                    await group.start(run_every, deadlines.interval, deadlines.sweep)
                    for bridge in self._bridges:
                        await group.start(bridge.run, outbound)
                    if self._metrics is not None and self._metrics.directory:
                        await group.start(run_every, FLUSH_INTERVAL, self._metrics.flush)
                    task_status.started()
            finally:
                self._outbound = None
                if self._metrics is not None:
                    self._metrics.stop()

    def _outbound_client(self) -> httpx.AsyncClient:
        if self._outbound is None:
            raise RuntimeError("The ChannelApp is not running")
        return self._outbound

    def _offer_to_bridges(self, channel: str, event_id: str, payload: bytes) -> None:
        for bridge in self._bridges:
            bridge.offer(channel, event_id, with_id(payload, event_id))

    def _stop_for_reactor(self) -> Coroutine[Any, Any, None]:
        """End every stream now; return what waits (bounded) until each has left (daphne)."""
        self.shutdown()  # now: the reactor's cancellations are on their way
        return _until_all_ended()

    def _end_streams_if_exiting(self) -> None:
        exiting = self._exiting
        if self._stopping or server_is_exiting() or (exiting is not None and exiting()):
            self.shutdown()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            await self.__aenter__()
        except Exception as exc:
            logger.exception("channel_asgi failed to start")
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        try:
            message = await receive()
        finally:
            await self.__aexit__(None, None, None)
        await send({"type": "lifespan.shutdown.complete"})

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection (``http``, ``websocket`` or ``lifespan``).

        HTTP, the hot path (every publish is a request), is served here directly.
        """
        if self._server is None:
            self._meet_server(receive, send)
        if scope["type"] != "http":
            await self._other(scope, receive, send)
            return
        headers = headers_of(scope)
        origin = header(headers, b"origin")
        cors = [] if origin is None else self._cors.headers(origin)
        route_name = ""
        try:
            route_name, channel = _match(route_path(scope))
            route = self._routes.get(route_name)
            if route is None:
                raise NotFound(
                    "No route for '/metrics': metrics are off (ChannelApp(metrics=True))"
                )
            method = scope["method"]
            if method not in route.methods:
                raise MethodNotAllowed(route.methods)
            if method == "OPTIONS":
                await self._options(headers, send, route.methods, origin)
                return
            if route_name in _HTTP_ROUTES:
                validate_channel(channel)
            if not self._runner.running:
                await self._runner.ensure_started()
            await route.serve(scope, headers, receive, send, channel, cors)
        except (ChannelError, StorageError) as caught:
            exc = http_error(caught)
            self._refused(scope, route_name, caught, exc)
            body = encode(Reply(exc.status, exc.message))
            await send_json(send, exc.status, body, cors + _error_headers(exc))
        except Exception:
            logger.exception(
                "Unexpected error serving %s %s", scope.get("method"), scope.get("path")
            )
            if route_name == "subscribe":
                self._tally.add("subscribes", "sse", 500)
            await send_json(send, 500, encode(Reply(500, "Internal server error")), cors)

    def _refused(self, scope: Scope, route: str, caught: BaseException, exc: ChannelError) -> None:
        """Log and count a request refused before its response started."""
        tally = self._tally
        tally.storage_error(caught)
        transport = _TRANSPORT.get(route)
        if transport is not None:  # publishes are counted by their route, with their type
            tally.add("subscribes", transport, exc.status)
            if isinstance(exc, TooManyConnections):
                tally.add("rate_limited", "connections")
        log_refusal(exc, scope.get("method", "WS"), route_path(scope), client_address(scope))

    def _meet_server(self, receive: Receive, send: Send) -> None:
        """Adapt to what the server does on its first connection (see ``servers``)."""
        name = self._server = identify(receive, send)
        loop = asyncio_loop()
        if name == GRANIAN and loop is not None:
            # In the signal handler only a callback is scheduled; granian's own handler follows.
            watch_exit_signals(partial(loop.call_soon_threadsafe, self.shutdown))
        elif name == HYPERCORN:
            self._exiting = HypercornWatch()
        elif name == DAPHNE:
            on_reactor_shutdown(self._stop_for_reactor)
        if name in UNPACED:
            warn_unpaced(name, self.settings.max_buffer_bytes)
        self._subscribe.pace_for(name)
        self._websocket.close_for(name)

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket_connect(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _options(
        self, headers: Headers, send: Send, methods: tuple[str, ...], origin: str | None
    ) -> None:
        allow = (b"allow", ", ".join(methods).encode())
        if origin is None or header(headers, b"access-control-request-method") is None:
            await send({"type": "http.response.start", "status": 204, "headers": [allow]})
            await send({"type": "http.response.body", "body": b""})
            return
        if not self._cors.is_allowed_origin(origin):
            body = encode(Reply(403, f"Origin {origin} is not allowed"))
            await send_json(send, 403, body, [allow])
            return
        requested = header(headers, b"access-control-request-headers")
        reply_headers = [allow, *self._cors.preflight_headers(origin, requested)]
        await send({"type": "http.response.start", "status": 204, "headers": reply_headers})
        await send({"type": "http.response.body", "body": b""})

    async def _websocket_connect(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        try:
            path = route_path(scope)
            if path in ("/ws", "/ws/"):  # several channels: /ws?channel=a&channel=b
                await self._runner.ensure_started()
                names = channels_of(scope)
                await self._websocket.serve_streams(scope, headers_of(scope), receive, send, names)
                return
            if not path.startswith("/ws/"):
                raise NotFound(
                    f"No WebSocket route for {path!r}; use /ws/{{channel}} or /ws?channel=..."
                )
            channel = validate_channel(path[len("/ws/") :])
            await self._runner.ensure_started()
            await self._websocket.serve(scope, headers_of(scope), receive, send, channel, [])
        except (ChannelError, StorageError) as caught:  # refused before the upgrade
            exc = http_error(caught)
            self._refused(scope, "websocket", caught, exc)
            await refuse(scope, send, exc)

    # -- identity, authorisation, channel patterns and bridges ---------------------------------

    def issue_token(
        self, user_id: str, *, channels: Iterable[str] | None = None, ttl: float = 3600.0
    ) -> str:
        """Return an identity token (JWT HS256) for ``user_id``, for the host's negotiate route.

        A subscribe that presents it (``?token=`` or ``Authorization: Bearer``) runs as that
        user; with ``channels``, only on those channel names or patterns.
        """
        return self._access.identity.issue(user_id, channels=channels, ttl=ttl)

    def channel(
        self,
        pattern: str,
        *,
        authorize: Authorizer | None = None,
        anonymous_subscribe: bool = True,
        anonymous_publish: bool = True,
        history: int | None = None,
        types: Iterable[str] | None = None,
        slow_mode: float | None = None,
        archive: int | None = None,
    ) -> ChannelPattern:
        """Set the rules of the channels matching ``pattern`` (e.g. ``"chats/{id}"``).

        Args:
            pattern: segments separated by ``/``; ``{name}`` matches any one segment.
            authorize: ``authorize(user_id, action, params) -> bool`` (sync or async), asked for
                every subscribe and publish, and as ``request`` for every resume; ``user_id``
                is None for an anonymous user.
            anonymous_subscribe: False makes an anonymous subscribe a 401.
            anonymous_publish: False makes a publish with an anonymous user's token a 403.
            history: broadcasts retained (instead of ``history_size``); False: none, and
                nobody may read the history (``request``, resume, ``GET /history``: 403).
            types: the publish types allowed; others are 403. Without ``request``, a resume
                replays nothing (``recovered: false``).
            slow_mode: seconds a user waits between two broadcasts (instead of the app's
                ``slow_mode``; 0 turns it off).
            archive: broadcasts archived by media time (instead of ``archive_size``).

        Returns:
            The registered pattern. The most specific matching pattern (most literal segments;
            the first registered among equals) governs a channel.
        """
        rules = ChannelPattern(
            pattern,
            authorize=authorize,
            anonymous_subscribe=anonymous_subscribe,
            anonymous_publish=anonymous_publish,
            history=history,
            types=None if types is None else frozenset(types),
            slow_mode=slow_mode,
            archive=archive,
        )
        self._access.add_pattern(rules)
        return rules

    def bridge(
        self,
        pattern: str,
        url: str,
        *,
        retries: int = 3,
        queue_size: int = 1000,
        timeout: float = 5.0,
    ) -> Bridge:
        """POST every broadcast made in this process on channels matching ``pattern`` to ``url``.

        Each broadcast goes as a CloudEvent (``type`` ``channel_asgi.broadcast``), from a queue
        of ``queue_size`` with ``retries`` further attempts; a full queue drops the event rather
        than slow the channel. Register bridges before the app starts.
        """
        if self._runner.running:
            raise RuntimeError("Register bridges before the ChannelApp starts")
        bridge = Bridge(pattern, url, retries=retries, queue_size=queue_size, timeout=timeout)
        self._bridges.append(bridge)
        return bridge

    # -- server-side API -----------------------------------------------------------------------

    @maps_storage_errors
    async def publish(
        self,
        channel: str,
        message: Any,
        *,
        type: Literal["broadcast", "private"] = "broadcast",
        author_id: str = "0",
        to_user_id: str | None = None,
        timestamp: float = 0.0,
    ) -> str | None:
        """Publish from the server (Northle's emit, Azure's sendToAll).

        Args:
            channel: the channel.
            message: any JSON-encodable value but None.
            type: ``"broadcast"`` (retained, to everyone) or ``"private"`` (to ``to_user_id``).
            author_id: the ``author_id`` subscribers see.
            to_user_id: the addressee of a private message.
            timestamp: the video time in seconds.

        Returns:
            The event id of a broadcast; None for a private message.

        Raises:
            ValueError: a bad channel name, type, message or addressee.
            UnprocessableEntity: a number in ``message`` (or ``timestamp``) breaks the number
                rule (SPEC 6.1); it is a ``ValueError`` too, and names the path.
            NotFound: the channel is closed.
            StorageUnavailable: the storage cannot be reached; nothing was published.
            StorageTimeout: the storage got the publish but did not answer; it may have been
                published (check the history before publishing it again).
        """
        channel = _checked_channel(channel)
        if message is None:
            raise ValueError("message must not be None")
        if not math.isfinite(timestamp):
            raise UnprocessableEntity(f"timestamp must be finite, got {timestamp!r}")
        if type not in ("broadcast", "private"):
            raise ValueError(f"type must be 'broadcast' or 'private', got {type!r}")
        if type == "private" and not to_user_id:
            raise ValueError("a private message needs to_user_id")
        raw = msgspec.Raw(encode_checked(message, root="$.message"))
        await self._runner.ensure_started()
        tally = self._tally
        started = tally.start()
        try:
            await self._engine.ensure_open(channel)
            # Always yield to the event loop once: with the memory storage nothing else would,
            # and a loop of publishes would starve the connections that deliver them.
            await anyio.lowlevel.checkpoint()
            event_id = None
            if type == "broadcast":
                event_id = await self._engine.broadcast(
                    channel, raw, author_id=author_id, timestamp=timestamp
                )
            else:
                await self._engine.private(
                    channel,
                    raw,
                    to_user_id=to_user_id or "",
                    author_id=author_id,
                    timestamp=timestamp,
                )
        except (ChannelError, StorageError) as exc:
            tally.refused(type, exc, started)
            tally.storage_error(exc)
            raise
        tally.published(type, 200, started)
        return event_id

    def subscribe(self, channel: str, *, last_event_id: str | None = None) -> Listener:
        """Subscribe from the server: ``async with channels.subscribe(ch) as events``.

        Iterating yields :class:`~channel_asgi.Envelope` objects (broadcasts, system events and
        the final ``end``). A server-side subscriber is not counted as a viewer.
        """
        return Listener(
            self._engine, self._runner.ensure_started, _checked_channel(channel), last_event_id
        )

    @maps_storage_errors
    async def history(
        self,
        channel: str,
        *,
        start: float | None = None,
        end: float | None = None,
        limit: int = DEFAULT_LIMIT,
        after: str | None = None,
    ) -> list[Envelope]:
        """Return a page of the channel's archive: broadcasts with ``start <= timestamp < end``.

        Ordered by (``timestamp``, ``id``), as ``GET /history`` and range requests answer.

        Args:
            channel: the channel.
            start: the earliest media time, inclusive (None: from the first).
            end: the media time where the page stops, exclusive (None: to the last).
            limit: the most broadcasts to return, 1 to 1000.
            after: the ``id`` of the last broadcast of the previous page: continue after it.
                With fewer than ``limit`` broadcasts, a page is the last.

        Raises:
            ValueError: a bad channel name or range, or an ``after`` the archive does not
                hold (evicted, or never archived).
            TypeError: an argument of the wrong type.
            StorageUnavailable: the storage cannot be reached.
        """
        wanted = checked_range(start, end, limit, after)
        return await self._engine.archive.envelopes(_checked_channel(channel), wanted)

    @maps_storage_errors
    async def viewer_count(self, channel: str) -> int:
        """Return the number of live subscriber connections on ``channel``, in every process."""
        return await self.storage.viewer_count(_checked_channel(channel))

    @maps_storage_errors
    async def presence(self, channel: str) -> dict[str, int]:
        """Return who is connected to ``channel``: user id -> live connections, in every process.

        Anonymous users appear under the user id their ``init`` gave them; server-side
        subscribers are not connections. A worker that died drops out within its presence
        lease, as in :meth:`viewer_count`.
        """
        return await self.storage.presence(_checked_channel(channel))

    @maps_storage_errors
    async def close_channel(self, channel: str) -> None:
        """End a channel: subscribers get ``end`` and are disconnected; then it answers 404.

        History is kept; :meth:`open_channel` makes the channel usable again.
        """
        await self._runner.ensure_started()
        await self._engine.close_channel(_checked_channel(channel))

    @maps_storage_errors
    async def open_channel(self, channel: str) -> None:
        """Make a closed channel usable again."""
        await self.storage.open_channel(_checked_channel(channel))

    # -- moderation (docs/moderation.md) ---------------------------------------------------------

    @maps_storage_errors
    async def delete_message(self, channel: str, event_id: str) -> bool:
        """Remove a broadcast from the channel's history and archive, in every process.

        Every subscriber then gets ``{"type": "system", "message": {"status": "deleted",
        "id": event_id}}``; resumes and ``request`` replies never return it again.

        Returns:
            True when it was removed; False when the channel holds no such broadcast (an
            unknown or evicted id, or one deleted already): nothing is sent then.

        Raises:
            ValueError: a bad channel name, or an ``event_id`` that is not a string.
            StorageUnavailable: the storage cannot be reached. When it comes after the
                removal (the ``deleted`` event could not be sent), the broadcast is gone from
                history and archive, but the pages that show it were not told.
            StorageTimeout: the storage got the deletion but did not answer.
        """
        channel = _checked_channel(channel)
        if not isinstance(event_id, str):
            raise ValueError(f"event_id must be a str, got {event_id!r}")
        await self._runner.ensure_started()
        return await self._engine.moderator.delete_message(channel, event_id)

    @maps_storage_errors
    async def ban(self, channel: str, user_id: str, *, seconds: float | None = None) -> None:
        """Ban a user from ``channel`` (``"*"``: every channel), in every process.

        The user's live connections there (SSE and WebSocket) get an ``end`` event with
        ``{"status": "banned"}`` and close; until the ban ends, their subscribes and publishes
        there answer 403. A new ban replaces the user's earlier one on that channel.

        Args:
            channel: the channel, or ``"*"``.
            user_id: the user, as ``init`` and ``author_id`` name them.
            seconds: how long the ban lasts, or None until :meth:`unban`.

        Raises:
            ValueError: a bad channel name, an empty ``user_id``, or ``seconds`` not > 0.
            StorageUnavailable: the storage cannot be reached; nobody was banned. When it
                comes after the ban was recorded (its connections could not be told), the ban
                holds and the connections stay open: ban again.
            StorageTimeout: the storage got the ban but did not answer; it may hold.
        """
        channel = _moderated_channel(channel)
        user_id = _checked_user(user_id)
        if seconds is not None and (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not 0 < seconds < math.inf
        ):
            raise ValueError(f"seconds must be a finite number > 0 or None, got {seconds!r}")
        await self._runner.ensure_started()
        await self._engine.moderator.ban(channel, user_id, seconds)

    @maps_storage_errors
    async def unban(self, channel: str, user_id: str) -> None:
        """Lift a ban of :meth:`ban` (each channel's and ``"*"``'s are lifted on their own)."""
        channel = _moderated_channel(channel)
        await self._engine.moderator.unban(channel, _checked_user(user_id))

    @maps_storage_errors
    async def disconnect(self, channel: str, user_id: str) -> int:
        """End a user's connections on ``channel``, in every process; they may reconnect.

        Nothing is written to them: an SSE response completes (``EventSource`` reconnects by
        itself, with ``Last-Event-ID``) and a WebSocket closes with code 4000. Unlike
        :meth:`ban`, a new subscribe is welcome at once.

        Returns:
            How many live connections (SSE and WebSocket) the user had on the channel, in
            every process (as :meth:`presence` counts them, just before).

        Raises:
            ValueError: a bad channel name, or an empty ``user_id``.
            StorageUnavailable: the storage cannot be reached; nothing was ended.
            StorageTimeout: the storage got the request but did not answer.
        """
        channel = _checked_channel(channel)
        user_id = _checked_user(user_id)
        await self._runner.ensure_started()
        return await self._engine.moderator.disconnect(channel, user_id)

    # -- hooks ---------------------------------------------------------------------------------

    def on_connect(self, hook: HookT) -> HookT:
        """Register ``async hook(conn)``, called when a subscriber has received ``init``."""
        self._hooks.on_connect.append(_async_hook(hook, "on_connect"))
        return hook

    def on_disconnect(self, hook: HookT) -> HookT:
        """Register ``async hook(conn)``, called when a subscriber has gone."""
        self._hooks.on_disconnect.append(_async_hook(hook, "on_disconnect"))
        return hook

    def on_publish(self, hook: HookT) -> HookT:
        """Register ``async hook(envelope, conn)`` for client publishes.

        It may raise :class:`~channel_asgi.Reject` to refuse the message, or change
        ``envelope.message`` before it is delivered.
        """
        self._hooks.on_publish.append(_async_hook(hook, "on_publish"))
        return hook


async def _until_all_ended() -> None:
    """Wait until every connection of this process has ended and left, or CLEANUP_TIMEOUT."""
    with anyio.move_on_after(CLEANUP_TIMEOUT):
        await until_all_ended()


def _async_hook(hook: Any, name: str) -> Any:
    if not inspect.iscoroutinefunction(hook) and not inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004 - an object with an async __call__
    ):
        raise TypeError(f"{name} hooks must be async functions, got {hook!r}")
    return hook


@lru_cache(maxsize=1024)  # the paths a process serves repeat; unknown ones raise (not kept)
def _match(path: str) -> tuple[str, str]:
    """Return the route's name and the channel in ``path`` ("" for a route without one)."""
    parts = path.split("/", 2)  # "/publish/a/b" -> ["", "publish", "a/b"]
    if len(parts) == 3 and not parts[0] and parts[1] in _HTTP_ROUTES:
        return parts[1], parts[2]
    if path in _PLAIN_ROUTES:
        return path[1:], ""
    if path == "/subscribe":  # a stream of several channels, named in the query
        return "streams", ""
    raise NotFound(
        f"No route for {path!r}; use /subscribe/{{channel}}, /publish/{{channel}}, "
        "/history/{channel}, /health or a WebSocket to /ws/{channel}"
    )


def _checked_channel(channel: str) -> str:
    if not isinstance(channel, str):
        raise TypeError(f"channel must be a str, got {channel!r}")
    try:
        return validate_channel(channel)
    except ChannelError as exc:
        raise ValueError(f"{exc.message}: {channel!r}") from None


def _moderated_channel(channel: str) -> str:
    """A channel name, or ``"*"`` (every channel)."""
    return EVERY_CHANNEL if channel == EVERY_CHANNEL else _checked_channel(channel)


def _checked_user(user_id: str) -> str:
    if not isinstance(user_id, str) or not user_id:
        raise ValueError(f"user_id must be a non-empty str, got {user_id!r}")
    return user_id


def _error_headers(exc: ChannelError) -> list[tuple[bytes, bytes]]:
    if isinstance(exc, MethodNotAllowed):
        return [(b"allow", ", ".join(exc.allow).encode())]
    if isinstance(exc, TooManyRequests):
        return [(b"retry-after", str(exc.retry_after).encode())]
    if isinstance(exc, RequestTimeout):  # the rest of the body may still come: do not read it
        return [(b"connection", b"close")]
    if isinstance(exc, StorageUnavailable):
        return [(b"retry-after", b"1")]
    return []
