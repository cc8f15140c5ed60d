"""``RedisStorage``: channels shared by every worker process and host that uses the same Redis.

Layout, under ``prefix`` (``P``)::

    P:h:{channel}     stream      retained broadcasts (ids are Redis stream ids, "<ms>-<seq>")
    P:last:{channel}  string      the newest event id ever published (resume after eviction)
    P:e:{channel}     pub/sub     deliveries to every process listening on the channel
    P:v:{channel}     hash        viewers per process: {process id: connection count}
    P:procs           sorted set  live processes, scored by when their lease expires (ms)
    P:c:{process}     set         the process's live connection ids (expires with its lease)
    P:u:{channel}:{process}
                      hash        the process's users on the channel: {user id: connection
                                  count} (expires with its lease)
    P:pj:{channel}    hash        joins and leaves of a large channel not yet announced
    P:pt:{channel}    string      set for one presence_interval by the process that announces
    P:closed          set         closed channels
    P:control         pub/sub     "C<channel>" / "O<channel>" when a channel is closed or opened;
                                  "D<delivery>" for a delivery to every channel ("*")
    P:a:{channel}     sorted set  the archive: each archived broadcast's place, scored by its
                                  timestamp (its id, each part 20 digits wide: ties sort by id)
    P:ap:{channel}    hash        archived payloads by place (a deleted one keeps its place only)
    P:b:{channel}     hash        bans: {user id: end in Unix seconds, "" for none}; P:b:* for
                                  every channel. Expires a grace after its last ban ends.
    P:t:{key}         hash        a token bucket: {tokens, at}; expires once it would be full

A broadcast is one script call: check its author's bans, append to the stream (and the archive),
remember its id and publish it, so its cost is O(1) round trips whatever the number of subscribers.
Calls are pipelined automatically (one pipeline in flight; the calls made meanwhile go in the next),
and consecutive appends to a channel in a pipeline are one script call and one pub/sub message. Each
process holds one pub/sub connection for all the channels it serves. A process renews its lease
every ``presence_ttl / 3`` seconds; one that dies stops counting in ``viewer_count`` and
``presence`` when its lease expires, and is pruned then.

When the pub/sub connection drops, the reader reconnects with backoff, subscribes again and first
delivers, from the streams, the broadcasts published while it was away. A channel's messages are
delivered only while its subscription is confirmed: from the ``subscribe`` reply that ``listen``
waits for until ``unlisten``, which therefore stops delivery at once, even of messages already
on their way. A Redis failure at a call surfaces as
:class:`~channel_asgi.storage.base.StorageUnreachable` (nothing happened), or, when a change was
sent and its reply never came, as :class:`~channel_asgi.storage.base.StorageNoReply` (it may
have happened; see ``redis_pipeline``). Redis Cluster is not supported (the scripts touch keys
of several channels).

The archive and the bans have no ttl, so they survive an app restart; a deleted broadcast
leaves the stream (XDEL) and its payload leaves the archive. Token buckets are judged by Redis's
clock, bans by the clock of the process that asks (``base.Moderation``).
"""

from __future__ import annotations

import logging
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from .. import clock
from . import redis_scripts as scripts
from .base import (
    ArchivePage,
    Deliver,
    Delivery,
    History,
    PresenceTotals,
    StorageChannelClosed,
    StorageUnreachable,
    StorageUserBanned,
    StoredEvent,
    decode_delivery,
    encode_delivery,
)
from .checks import check_bucket, check_page, check_time
from .redis_pipeline import AutoPipeline, Call, unavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = ["RedisStorage"]

logger = logging.getLogger("channel_asgi.redis")

_CONNECT_WAIT: Final = 2.0  # how long connecting waits for Redis to confirm the subscriptions
_LISTEN_WAIT: Final = 10.0  # how long a new channel's subscription may take (a busy reader)
_BACKOFF_FIRST: Final = 0.1  # the reconnect delay after a connection that worked
_BACKOFF_MAX: Final = 5.0
#: Connections to Redis per process, besides the pub/sub one. Most calls go through the one
#: pipeline in flight (see redis_pipeline), so a handful is plenty; a burst waits its turn.
_MAX_CONNECTIONS: Final = 32
_SOCKET_TIMEOUT: Final = 2.0
#: How long a channel's bans key outlives its last ban (see redis_scripts.TIDY_BANS_LUA).
_BAN_GRACE_MS: Final = 60_000


def _stream_id(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def _place(event_id: str) -> str | None:
    """An event id's member in the archive (``redis_scripts.PLACE_LUA``); None if malformed."""
    ms, dash, seq = event_id.partition("-")
    for part in (ms, seq):
        if not (part.isascii() and part.isdigit()) or int(part) >= 2**64:
            return None
    return f"{int(ms):020d}-{int(seq):020d}" if dash else None


def _unplace(member: bytes) -> str:
    """The event id of an archive member."""
    ms, _, seq = member.partition(b"-")
    return f"{int(ms)}-{int(seq)}"


def _score(value: float) -> str:
    """A float as Redis reads it back exactly (a sorted-set score, a bound, a ban's end)."""
    return repr(float(value))


class RedisStorage:
    """History, presence and delivery shared through Redis.

    Args:
        url: a ``redis://`` URL, e.g. ``"redis://127.0.0.1:6379/0"``.
        prefix: the prefix of every key and pub/sub channel this storage uses.
        client: a ready ``redis.asyncio.Redis`` to use instead of ``url``.
        presence_ttl: seconds after which the connections of a process that died stop counting.

    Raises:
        ImportError: the ``redis`` package is not installed (``pip install
            "channel-asgi[redis]"``).
    """

    shared = True

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "channel_asgi",
        client: Redis | None = None,
        presence_ttl: float = 30.0,
    ) -> None:
        try:
            import redis.asyncio  # noqa: F401 - fail here, with a hint, not on first use
        except ImportError:
            raise ImportError(
                'RedisStorage needs the redis package: pip install "channel-asgi[redis]"'
            ) from None
        if client is None and not url:
            raise ValueError("RedisStorage needs a url (redis://host:port/db) or a client")
        if not prefix or not isinstance(prefix, str):
            raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
        if not presence_ttl > 1:
            raise ValueError(f"presence_ttl must be more than 1 second, got {presence_ttl!r}")
        self._url = url
        self._client = client
        self.prefix = prefix
        self._lease_ms = int(presence_ttl * 1000)
        self.process_id = uuid.uuid4().hex
        self._deliver: Deliver | None = None
        self._pubsub: PubSub | None = None
        self._listening: set[str] = set()
        #: Per listened channel, set once Redis confirmed its subscription: messages of a
        #: channel are delivered only while its event is set.
        self._confirmed: dict[str, anyio.Event] = {}
        self._connected: anyio.Event | _NotYet
        #: Closed channels, kept current over pub/sub while connected (None: ask Redis).
        self._closed: set[str] | None = None
        self._last_seen: dict[str, str] = {}
        self._floor: dict[str, tuple[int, int]] = {}
        #: channel -> {connection id: user id} of this process's connections
        self._local: dict[str, dict[str, str | None]] = {}
        self._emptied: set[str] = set()  # channels left since the last lease renewal
        self._pipeline = AutoPipeline(self._redis)
        self._connected = _NotYet()
        #: Set by ``aclose``, cleared by ``run``: a closed storage opens no connection.
        self._shut = False
        # The reconnect backoff's sleep and jitter (0 <= jitter() < 1); tests replace them.
        self._sleep: Callable[[float], Awaitable[None]] = anyio.sleep
        self._jitter: Callable[[], float] = random.random

    # -- keys ----------------------------------------------------------------------------------

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}:{kind}:{name}" if name else f"{self.prefix}:{kind}"

    def _users_key(self, channel: str) -> str:
        return self._key("u", f"{channel}:{self.process_id}")

    def _topic(self, channel: str) -> str:
        return f"{self.prefix}:e:{channel}"

    def _redis(self) -> Redis:
        if self._client is None:
            if self._shut:  # a late call (a connection's cleanup) must not open a new pool
                raise StorageUnreachable("Redis storage is closed")
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # No retries: a failed call is a 503 at once; the caller (or browser) retries.
            # A blocking pool: a burst of calls beyond its size waits for a connection (up to
            # the socket timeout) instead of failing.
            pool = BlockingConnectionPool.from_url(
                self._url or "",
                max_connections=_MAX_CONNECTIONS,
                timeout=_SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=1.0,
                socket_timeout=_SOCKET_TIMEOUT,
                health_check_interval=5,
            )
            self._client = Redis(connection_pool=pool)
        return self._client

    # -- lifecycle and delivery ----------------------------------------------------------------

    async def run(
        self, deliver: Deliver, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Read deliveries from Redis and renew this process's lease until cancelled."""
        if self._deliver is not None:
            raise RuntimeError("A RedisStorage serves one ChannelApp; create one per app")
        self._deliver = deliver
        self._shut = False
        self._connected = anyio.Event()
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._read_forever)
                group.start_soon(self._renew_forever)
                with anyio.move_on_after(_CONNECT_WAIT):
                    await self._connected.wait()  # usually at once; if Redis is down, 503s
                task_status.started()
        finally:
            self._deliver = None
            with anyio.CancelScope(shield=True):
                await self._shutdown()

    async def _shutdown(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._connected = _NotYet()
        with anyio.move_on_after(2.0):
            if pubsub is not None:
                try:
                    await _untyped(pubsub).aclose()
                except Exception:
                    logger.debug("Closing the pub/sub connection failed", exc_info=True)
            try:
                async with self._redis().pipeline(transaction=False) as pipe:
                    pipe.zrem(self._key("procs"), self.process_id)
                    pipe.delete(self._key("c", self.process_id))
                    for channel in self._local:
                        pipe.hdel(self._key("v", channel), self.process_id)
                        pipe.delete(self._users_key(channel))
                    await pipe.execute()
            except Exception:
                logger.debug("Removing this process's presence failed", exc_info=True)
            await self.aclose()

    async def aclose(self) -> None:
        """Close the Redis connections this storage opened (not a ``client`` it was given).

        ``run`` does this when it stops; call it after using the storage without ``run``. Calls
        made afterwards raise ``StorageUnreachable`` (until ``run`` starts again) rather than
        open connections nobody would close.
        """
        if self._url is None:
            return
        self._shut = True
        if self._client is not None:
            client, self._client = self._client, None
            self._pipeline.forget_scripts()
            await client.aclose(close_connection_pool=True)

    async def _read_forever(self) -> None:
        """Hold the pub/sub connection; after a failure, reconnect with a jittered backoff.

        The delay before an attempt doubles from ``_BACKOFF_FIRST`` up to ``_BACKOFF_MAX``
        seconds, each one scaled by a random factor in [0.5, 1.5); a connection that worked
        starts it again from ``_BACKOFF_FIRST``.
        """
        delay = _BACKOFF_FIRST
        while True:
            try:
                await self._connect()
                delay = _BACKOFF_FIRST
                await self._pump()
            except Exception as exc:
                if self._connected.is_set():
                    logger.warning("Lost the Redis pub/sub connection: %s", exc)
            pubsub, self._pubsub = self._pubsub, None
            self._closed = None
            if self._connected.is_set():
                self._connected = anyio.Event()
            # Listeners already waiting keep their event; the others must wait for the new
            # connection's subscription.
            self._confirmed = {
                channel: event if not event.is_set() else anyio.Event()
                for channel, event in self._confirmed.items()
            }
            if pubsub is not None:
                with anyio.move_on_after(1.0), _ignore_errors():
                    await _untyped(pubsub).aclose()
            await self._sleep(delay * (0.5 + self._jitter()))
            delay = min(delay * 2, _BACKOFF_MAX)

    async def _connect(self) -> None:
        pubsub = self._redis().pubsub()
        try:
            topics = [self._key("control"), *map(self._topic, self._listening)]
            await pubsub.subscribe(*topics)
            pending = set(topics)
            with anyio.fail_after(_CONNECT_WAIT):
                while pending:
                    message = await pubsub.get_message(timeout=_CONNECT_WAIT)
                    if message is not None and message["type"] == "subscribe":
                        pending.discard(message["channel"].decode())
            # Subscribed to the control topic first, then read: no close or open is missed.
            closed = await _untyped(self._redis()).smembers(self._key("closed"))
        except BaseException:  # failed or cancelled before it was kept: close it here
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0), _ignore_errors():
                await _untyped(pubsub).aclose()
            raise
        self._closed = {name.decode() for name in closed}
        self._pubsub = pubsub
        await self._fill_gaps()
        for channel in self._listening:
            self._confirmed.setdefault(channel, anyio.Event()).set()
        self._connected.set()

    async def _fill_gaps(self) -> None:
        """Deliver the broadcasts published while the pub/sub connection was down."""
        for channel, last in list(self._last_seen.items()):
            if channel not in self._listening:
                continue
            entries: list[tuple[bytes, dict[bytes, bytes]]] = await _untyped(self._redis()).xrange(
                self._key("h", channel), f"({last}", "+"
            )
            for raw_id, fields in entries:
                self._broadcast(channel, raw_id.decode(), fields[b"p"])
            if channel in self._last_seen:
                self._floor[channel] = _stream_id(self._last_seen[channel])

    async def _pump(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None  # set by _connect just before
        prefix = f"{self.prefix}:e:"
        control = self._key("control")
        while True:
            message = await pubsub.get_message(timeout=5.0)
            if message is None:
                continue
            kind = message["type"]
            topic = message["channel"].decode()
            channel = topic[len(prefix) :] if topic.startswith(prefix) else ""
            if kind == "message" and channel:
                self._receive(channel, message["data"])
            elif kind == "message" and topic == control:
                self._control(message["data"])
            elif kind == "subscribe" and channel in self._confirmed:
                self._confirmed[channel].set()

    def _control(self, data: bytes) -> None:
        """A channel was closed (``C<name>``) or opened (``O<name>``), or a delivery to ``"*"``."""
        if data[:1] == b"D":
            self._decode_and_deliver("*", data[1:])
            return
        if self._closed is None:
            return
        name = data[1:].decode()
        if data[:1] == b"C":
            self._closed.add(name)
        elif data[:1] == b"O":
            self._closed.discard(name)

    def _receive(self, channel: str, data: bytes) -> None:
        confirmed = self._confirmed.get(channel)
        if confirmed is None or not confirmed.is_set():
            return  # unlistened (a message already on its way), or not confirmed again yet
        if data[:1] == b"B":  # broadcasts: "<id>\n<payload>" pairs joined by "\n"
            parts = data[1:].split(b"\n")
            for index in range(0, len(parts) - 1, 2):
                event_id = parts[index].decode()
                floor = self._floor.get(channel)
                if floor is not None:
                    if _stream_id(event_id) <= floor:
                        continue  # already delivered by _fill_gaps
                    del self._floor[channel]
                self._broadcast(channel, event_id, parts[index + 1])
        elif data[:1] == b"D":
            self._decode_and_deliver(channel, data[1:])

    def _decode_and_deliver(self, channel: str, data: bytes) -> None:
        try:
            delivery = decode_delivery(data)
        except msgspec.DecodeError:
            logger.warning("Ignoring a malformed delivery on channel %r", channel)
            return
        if self._deliver is not None:
            self._deliver(delivery)

    def _broadcast(self, channel: str, event_id: str, payload: bytes) -> None:
        self._last_seen[channel] = event_id
        if self._deliver is not None:
            self._deliver(Delivery(channel, "event", payload, event_id))

    async def _renew_forever(self) -> None:
        while True:
            try:
                await self._renew()
            except Exception as exc:
                logger.debug("Could not renew the presence lease: %s", exc)
            await anyio.sleep(self._lease_ms / 3000)

    async def _renew(self) -> None:
        emptied, self._emptied = self._emptied, set()
        args: list[Any] = [self.process_id, self._lease_ms]
        for channel in emptied - self._local.keys():
            args += [self._key("v", channel), 0, self._users_key(channel), 0]
        for channel, connections in self._local.items():
            users = Counter(user for user in connections.values() if user is not None)
            args += [self._key("v", channel), len(connections), self._users_key(channel)]
            args.append(len(users))
            for user, count in users.items():
                args += [user, count]
        args.append("")
        for connections in self._local.values():
            args += connections
        keys = [self._key("procs"), self._key("c", self.process_id)]
        try:
            await self._pipeline.script("lease", scripts.LEASE, keys, args)
        except BaseException:
            self._emptied |= emptied
            raise

    # -- the Storage protocol ------------------------------------------------------------------

    async def listen(self, channel: str) -> None:
        """Subscribe this process to ``channel``'s deliveries; return once Redis confirmed.

        A channel already listened to is not subscribed again: the call waits for its
        subscription to be confirmed (at once, unless the connection is being restored).
        """
        if channel in self._listening:
            await self._confirmation(channel)
            return
        self._listening.add(channel)
        try:
            self._confirmed.setdefault(channel, anyio.Event())
            pubsub = self._pubsub
            if pubsub is None:
                raise StorageUnreachable("Redis is unavailable (not connected)")
            with unavailable("subscribe"):
                await pubsub.subscribe(self._topic(channel))
            await self._confirmation(channel)
            if channel not in self._last_seen:
                # Where to catch up from if the pub/sub connection drops before a broadcast.
                last = await self._pipeline.command("GET", self._key("last", channel), writes=False)
                self._last_seen.setdefault(channel, last.decode() if last else "0-0")
        except BaseException:
            await self.unlisten(channel)
            raise

    async def _confirmation(self, channel: str) -> None:
        """Wait until Redis confirmed the subscription to ``channel`` (bounded)."""
        event = self._confirmed.setdefault(channel, anyio.Event())
        with anyio.move_on_after(_LISTEN_WAIT):
            await event.wait()
        if not event.is_set():
            raise StorageUnreachable("Redis did not confirm the subscription in time")

    async def unlisten(self, channel: str) -> None:
        """Stop delivering ``channel`` at once; unsubscribe (best effort: never raises)."""
        self._listening.discard(channel)
        self._confirmed.pop(channel, None)
        self._last_seen.pop(channel, None)
        self._floor.pop(channel, None)
        pubsub = self._pubsub
        if pubsub is not None:
            with _ignore_errors():
                await pubsub.unsubscribe(self._topic(channel))

    async def append(
        self,
        channel: str,
        payload: bytes,
        *,
        keep: int,
        ttl: float | None = None,
        archive: int = 0,
        timestamp: float | None = None,
        author: str | None = None,
    ) -> str:
        """Retain (and archive) and publish a broadcast in one script call; return its id.

        The author's bans are read by the same script, so a ban costs no round trip.
        """
        keys = [
            self._key("h", channel),
            self._key("last", channel),
            self._topic(channel),
            self._key("closed"),
            self._key("a", channel),
            self._key("ap", channel),
            self._key("b", channel),
            self._key("b", "*"),
        ]
        size = max(archive, 0)
        who: tuple[Any, ...] = ("", "") if author is None else (author, _score(clock.time()))
        item: tuple[Any, ...] = (*who, payload)
        if size:
            check_time("timestamp", timestamp)
            item = (*who, "" if timestamp is None else _score(timestamp), payload)
        args = (8, *keys, keep, "" if ttl is None else int(ttl * 1000), channel, size)
        # Appends to one channel queued together are merged into one script call.
        call = Call("append", args, scripts.APPEND, item=item)
        event_id = await self._pipeline.queue(call)
        if event_id is None:
            raise StorageChannelClosed(channel)
        if not event_id:
            raise StorageUserBanned(channel, author or "")
        return str(event_id.decode() if isinstance(event_id, bytes) else event_id)

    async def send(self, delivery: Delivery) -> None:
        """Publish a delivery that is not retained (to ``"*"``: on the control topic)."""
        data = b"D" + encode_delivery(delivery)
        every = delivery.channel == "*"
        topic = self._key("control") if every else self._topic(delivery.channel)
        await self._pipeline.command("PUBLISH", topic, data)

    async def history(
        self,
        channel: str,
        *,
        after: str | None = None,
        ttl: float | None = None,
        limit: int | None = None,
    ) -> History:
        """Return retained broadcasts (see the Storage protocol)."""
        keys = [self._key("h", channel), self._key("last", channel)]
        args = [
            after or "",
            "" if ttl is None else int(ttl * 1000),
            "" if limit is None else max(limit, 0),
        ]
        reply = await self._pipeline.script("history", scripts.HISTORY, keys, args, writes=False)
        flag = reply[0]
        events = [
            StoredEvent(reply[i].decode(), bytes(reply[i + 1])) for i in range(1, len(reply), 2)
        ]
        recovered = None if flag == b"" else flag == b"1"
        return History(events, recovered)

    async def archive_range(
        self,
        channel: str,
        *,
        start: float | None = None,
        end: float | None = None,
        limit: int = 200,
        after: str | None = None,
    ) -> ArchivePage:
        """Return a page of the archive, by rank in its sorted set (see the Archive protocol)."""
        check_page(start, end, limit)
        place = "" if after is None else _place(after)
        reply = None
        if place is not None:  # a malformed after is in no archive
            keys = [self._key("a", channel), self._key("ap", channel)]
            bounds = ["" if bound is None else _score(bound) for bound in (start, end)]
            reply = await self._pipeline.script(
                "archive_range", scripts.ARCHIVE_RANGE, keys, [*bounds, limit, place], writes=False
            )
        if reply is None:
            raise ValueError(f"after: {after!r} is not an event of this archive")
        events = [
            StoredEvent(_unplace(reply[i]), bytes(reply[i + 1])) for i in range(1, len(reply), 2)
        ]
        return ArchivePage(events, reply[0] == 1)

    async def delete_event(self, channel: str, event_id: str) -> bool:
        """Remove a broadcast from the stream and the archive in one script call."""
        place = _place(event_id)
        if place is None:
            return False
        keys = [self._key("h", channel), self._key("ap", channel)]
        reply = await self._pipeline.script("delete", scripts.DELETE, keys, [event_id, place])
        return bool(reply)

    async def ban(self, channel: str, user_id: str, *, until: float | None = None) -> None:
        """Record a ban in the channel's bans hash, and forget its ended ones."""
        check_time("until", until)
        ends = "" if until is None else _score(until)
        args = [user_id, ends, _score(clock.time()), _BAN_GRACE_MS]
        await self._pipeline.script("ban", scripts.BAN, [self._key("b", channel)], args)

    async def unban(self, channel: str, user_id: str) -> None:
        """Remove a ban from the channel's bans hash, and forget its ended ones."""
        args = [user_id, _score(clock.time()), _BAN_GRACE_MS]
        await self._pipeline.script("unban", scripts.UNBAN, [self._key("b", channel)], args)

    async def is_banned(self, channel: str, user_id: str) -> bool:
        """Read the bans of the channel and of ``"*"``; judge their ends by this process's clock."""
        keys = [self._key("b", channel), self._key("b", "*")]
        ends = await self._pipeline.script("banned", scripts.BANNED, keys, [user_id], writes=False)
        now = clock.time()
        return any(end is not None and (end == b"" or float(end) > now) for end in ends)

    async def take_token(self, key: str, *, rate: float, burst: float) -> float:
        """Spend a token of a bucket shared by every process, by Redis's clock, in one script."""
        check_bucket(rate, burst)
        args = [_score(rate), _score(burst)]
        reply = await self._pipeline.script(
            "take_token", scripts.TAKE_TOKEN, [self._key("t", key)], args
        )
        return float(reply)

    async def _presence(
        self, channel: str, connection_id: str, delta: int, user_id: str | None
    ) -> int:
        keys = [
            self._key("v", channel),
            self._key("procs"),
            self._key("c", self.process_id),
            self._users_key(channel),
        ]
        args = [self.process_id, connection_id, delta, self._lease_ms]
        if user_id is not None:
            args.append(user_id)
        return int(await self._pipeline.script("presence", scripts.PRESENCE, keys, args))

    def _forget(self, channel: str, connection_id: str) -> str | None:
        """Drop a connection from this process's presence; return its user id."""
        connections = self._local.get(channel)
        if connections is None:
            return None
        user_id = connections.pop(connection_id, None)
        if not connections:
            del self._local[channel]
            self._emptied.add(channel)  # the renewal zeroes it if the call to Redis fails
        return user_id

    async def join(self, channel: str, connection_id: str, user_id: str | None = None) -> int:
        """Count a connection of this process; return the channel's viewers in all processes."""
        # Recorded before the call is queued, so that a lease renewal (which replaces this
        # process's users on the channel whole) queued before or after it agrees with it.
        self._local.setdefault(channel, {})[connection_id] = user_id
        try:
            return await self._presence(channel, connection_id, 1, user_id)
        except BaseException:
            self._forget(channel, connection_id)
            raise

    async def leave(self, channel: str, connection_id: str) -> int:
        """Stop counting a connection; return the channel's viewers in all processes."""
        user_id = self._forget(channel, connection_id)
        return await self._presence(channel, connection_id, -1, user_id)

    async def viewer_count(self, channel: str) -> int:
        """Return the channel's live connections in every process whose lease is current."""
        keys = [self._key("v", channel), self._key("procs")]
        # Only reads (its pruning of dead processes is the same whenever it runs).
        reply = await self._pipeline.script("viewers", scripts.VIEWERS, keys, [], writes=False)
        return int(reply)

    async def presence(self, channel: str) -> dict[str, int]:
        """Add up the users of every process on the channel whose lease is current."""
        keys = [self._key("v", channel), self._key("procs")]
        prefix = self._key("u", f"{channel}:")
        # Only reads (like viewer_count's, its pruning of dead processes is idempotent).
        reply = await self._pipeline.script(
            "presence_list", scripts.PRESENT, keys, [prefix], writes=False
        )
        return {reply[i].decode(): int(reply[i + 1]) for i in range(0, len(reply), 2)}

    async def is_connected(self, connection_id: str) -> bool:
        """Return whether any live process holds ``connection_id``."""
        if any(connection_id in connections for connections in self._local.values()):
            return True
        args = [f"{self.prefix}:c:", connection_id]
        keys = [self._key("procs")]
        reply = await self._pipeline.script(
            "connected", scripts.CONNECTED, keys, args, writes=False
        )
        return bool(reply)

    async def coalesce_presence(
        self, channel: str, joined: int, left: int, *, interval: float
    ) -> PresenceTotals | None:
        """Add to the channel's shared tallies; the first call of each interval announces."""
        keys = [
            self._key("v", channel),
            self._key("procs"),
            self._key("pj", channel),
            self._key("pt", channel),
        ]
        args = [joined, left, max(1, int(interval * 1000))]
        reply = await self._pipeline.script("coalesce", scripts.COALESCE, keys, args)
        if not reply:
            return None
        return PresenceTotals(int(reply[0]), int(reply[1]), int(reply[2]))

    async def close_channel(self, channel: str, end_payload: bytes) -> None:
        """Mark the channel closed and publish its ``end`` to every process."""
        delivery = b"D" + encode_delivery(Delivery(channel, "end", end_payload))
        with unavailable("close_channel"):
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.sadd(self._key("closed"), channel)
                pipe.publish(self._key("control"), b"C" + channel.encode())
                pipe.publish(self._topic(channel), delivery)
                await pipe.execute()
        if self._closed is not None:
            self._closed.add(channel)

    async def open_channel(self, channel: str) -> None:
        """Mark the channel open again."""
        with unavailable("open_channel"):
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.srem(self._key("closed"), channel)
                pipe.publish(self._key("control"), b"O" + channel.encode())
                await pipe.execute()
        if self._closed is not None:
            self._closed.discard(channel)

    async def is_closed(self, channel: str) -> bool:
        """Return whether the channel is closed (from the kept copy while connected).

        The copy may trail a close made by another process by the time its notice takes to
        arrive; ``append`` checks again in Redis, so nothing is published to a closed channel.
        """
        if self._closed is not None:
            return channel in self._closed
        closed = self._key("closed")
        return bool(await self._pipeline.command("SISMEMBER", closed, channel, writes=False))

    async def ping(self) -> None:
        """Send ``PING`` (through the pipeline, like every call): Redis answers or it is down."""
        await self._pipeline.command("PING", writes=False)


def _untyped(value: object) -> Any:
    """redis-py's asyncio API is only partly annotated."""
    return value


class _NotYet:
    """Stands in for the connection event before ``run`` (events need a running loop)."""

    def is_set(self) -> bool:
        return False

    def set(self) -> None:
        """Nothing waits before ``run``."""

    async def wait(self) -> None:  # pragma: no cover - run() replaces it before any wait
        raise RuntimeError("RedisStorage is not running")


@contextmanager
def _ignore_errors() -> Iterator[None]:
    try:
        yield
    except Exception:
        logger.debug("Ignored a cleanup error", exc_info=True)
