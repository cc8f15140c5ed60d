"""What RedisStorage keeps in Redis (archive, bans, buckets, presence), and for how long."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio

from channel_asgi import clock
from channel_asgi.storage import RedisStorage
from channel_asgi.storage.conformance import running
from channel_asgi.storage.redis import _place, _unplace

from ..helpers import eventually


@pytest.fixture
async def keys(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client, to look at the storage's keys."""
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_the_archive_survives_a_restart_and_never_expires(
    redis_url: str, redis_prefix: str, keys: redis.asyncio.Redis
) -> None:
    """A new RedisStorage (a restarted app) reads the archive; its keys have no ttl."""
    async with running(RedisStorage(redis_url, prefix=redis_prefix)) as first:
        ids = [
            await first.storage.append(
                "vod", b'{"n":%d}' % n, keep=2, ttl=60.0, archive=10, timestamp=float(n)
            )
            for n in range(5)
        ]
    restarted = RedisStorage(redis_url, prefix=redis_prefix)
    try:
        page = await restarted.archive_range("vod")
    finally:
        await restarted.aclose()
    assert [e.id for e in page.events] == ids
    assert [e.payload for e in page.events] == [b'{"n":%d}' % n for n in range(5)]
    assert await keys.pttl(f"{redis_prefix}:h:vod") > 0  # the history has its ttl
    for kind in ("a", "ap"):
        assert await keys.pttl(f"{redis_prefix}:{kind}:vod") == -1


def test_archive_places_sort_as_their_ids() -> None:
    """Members of one score sort as strings: the fixed width makes that the ids' order."""
    ids = ["9-5", "10-0", "10-2", "10-10", "123456789012-0", "123456789012-11"]
    places = [_place(event_id) for event_id in ids]
    assert sorted(places, key=str) == places
    assert [_unplace(str(place).encode()) for place in places] == ids
    for malformed in ("garbage", "1", "1-", "-1", "1-2-3", "1-x", "\u0661-2", f"{2**64}-0"):
        assert _place(malformed) is None, malformed


async def test_a_channels_bans_key_expires_a_grace_after_its_last_ban(
    redis_url: str, redis_prefix: str, keys: redis.asyncio.Redis
) -> None:
    """Timed bans: the key expires a minute after the last ends; a ban for ever keeps it."""
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    key = f"{redis_prefix}:b:c"
    try:
        await storage.ban("c", "u", until=clock.time() + 100)
        await storage.ban("c", "v", until=clock.time() + 10)
        assert 150_000 < await keys.pttl(key) <= 160_000
        await storage.ban("c", "w")
        assert await keys.pttl(key) == -1
        await storage.unban("c", "w")
        assert 150_000 < await keys.pttl(key) <= 160_000
        await storage.unban("c", "u")
        await storage.unban("c", "v")
        assert not await keys.exists(key)
    finally:
        await storage.aclose()


async def test_a_bucket_key_expires_once_it_would_be_full(
    redis_url: str, redis_prefix: str, keys: redis.asyncio.Redis
) -> None:
    """A bucket missing from Redis is full, so its key lives only until it would be."""
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    try:
        assert await storage.take_token("k", rate=0.5, burst=3) == 0.0
        assert 0 < await keys.pttl(f"{redis_prefix}:t:k") <= 2000  # one token, at 0.5 a second
    finally:
        await storage.aclose()


async def test_a_processs_users_key_lives_with_its_lease_and_is_renewed_whole(
    redis_url: str, redis_prefix: str, keys: redis.asyncio.Redis
) -> None:
    """P:u:{channel}:{process} expires with the lease; a renewal writes it again if it is lost."""
    storage = RedisStorage(redis_url, prefix=redis_prefix, presence_ttl=1.5)
    key = f"{redis_prefix}:u:room:{storage.process_id}"
    async with running(storage):
        await storage.join("room", "k1", "alice")
        await storage.join("room", "k2", "alice")
        await storage.join("room", "k3", "bob")
        assert await keys.hgetall(key) == {b"alice": b"2", b"bob": b"1"}
        assert 0 < await keys.pttl(key) <= 1500
        await keys.delete(key)  # as if Redis had lost its data
        await eventually(
            lambda: storage.presence("room"), lambda got: got == {"alice": 2, "bob": 1}
        )
        await storage.leave("room", "k3")
        assert await keys.hgetall(key) == {b"alice": b"2"}
    assert not await keys.exists(key)  # a process that stops removes its presence at once


async def test_a_lease_renewal_during_a_join_keeps_the_joined_user(
    redis_url: str, redis_prefix: str
) -> None:
    """A renewal queued while a join is in flight re-asserts that join too (it replaces whole)."""
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    try:
        await storage.join("room", "k0", "bob")
        async with anyio.create_task_group() as group:
            group.start_soon(storage.join, "room", "k1", "alice")
            await anyio.lowlevel.checkpoint()  # the join is queued, its reply not read yet
            await storage._renew()
        assert await storage.presence("room") == {"alice": 1, "bob": 1}
        assert await storage.viewer_count("room") == 2
    finally:
        await storage.aclose()


async def test_the_renewal_after_a_channels_last_leave_clears_what_redis_still_holds(
    redis_url: str, redis_prefix: str, keys: redis.asyncio.Redis
) -> None:
    """A leave that never reached Redis is repaired by the next renewal: no viewer, no user."""
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    key = f"{redis_prefix}:u:room:{storage.process_id}"
    try:
        await storage.join("room", "k1", "alice")
        await storage.leave("room", "k1")
        # as if the leave had been lost on its way to Redis
        await keys.hset(key, "alice", 1)
        await keys.hset(f"{redis_prefix}:v:room", storage.process_id, 1)
        assert await storage.presence("room") == {"alice": 1}
        await storage._renew()
        assert await storage.presence("room") == {}
        assert await storage.viewer_count("room") == 0
        assert not await keys.exists(key)
    finally:
        await storage.aclose()
