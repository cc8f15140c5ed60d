"""Slow mode and rate limits: token buckets of the storage, shared by the apps that share it.

Apps sharing a ``MemoryStorage`` in one process stand for workers sharing a storage; the same
on Redis, with two worker processes, is in ``test_moderation_workers.py``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from channel_asgi import ChannelApp, Envelope, Reject
from channel_asgi.connection import Connection
from channel_asgi.storage import MemoryStorage
from channel_asgi.storage.base import StorageUnreachable

from .helpers import FakeClock, publish, subscribe

SECRET = "l" * 40


def chat(text: str = "hi") -> dict[str, Any]:
    return {"type": "broadcast", "message": {"text": text}}


async def test_slow_mode_lets_a_user_broadcast_once_per_interval_per_channel(
    serve, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """slow_mode=10: a second broadcast is 429 (Retry-After 10); others and privates are not."""
    channels = ChannelApp(secret=SECRET, slow_mode=10)
    base = await serve(channels)
    async with (
        subscribe(client, f"{base}/subscribe/chat") as one,
        subscribe(client, f"{base}/subscribe/chat") as two,
        subscribe(client, f"{base}/subscribe/other") as one_elsewhere,
    ):
        url = f"{base}/publish/chat"
        assert (await publish(client, url, one.token, chat())).status_code == 200
        refused = await publish(client, url, one.token, chat())
        assert (refused.status_code, refused.headers["retry-after"]) == (429, "10")
        assert refused.json() == {
            "code": 429,
            "message": "Slow mode: one message every 10 s; retry after 10 s",
        }
        private = {"type": "private", "message": "psst", "to_user_id": two.user_id}
        assert (await publish(client, url, one.token, private)).status_code == 200
        assert (await publish(client, url, one.token, {"type": "request"})).status_code == 200
        assert (await publish(client, url, two.token, chat())).status_code == 200
        elsewhere = f"{base}/publish/other"
        assert (await publish(client, elsewhere, one_elsewhere.token, chat())).status_code == 200
        clock.advance(4)
        refused = await publish(client, url, one.token, chat())
        assert refused.headers["retry-after"] == "6"
        clock.advance(6)
        assert (await publish(client, url, one.token, chat())).status_code == 200
    assert await channels.publish("chat", "the server is never slowed") is not None
    assert await channels.publish("chat", "twice") is not None


async def test_slow_mode_per_pattern_overrides_the_apps(
    serve, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """A pattern's slow_mode replaces the app's; 0 turns it off."""
    channels = ChannelApp(secret=SECRET, slow_mode=30)
    channels.channel("calm/{id}", slow_mode=5)
    channels.channel("free/{id}", slow_mode=0)
    base = await serve(channels)

    async def twice(channel: str) -> list[httpx.Response]:
        async with subscribe(client, f"{base}/subscribe/{channel}") as sub:
            url = f"{base}/publish/{channel}"
            return [await publish(client, url, sub.token, chat()) for _ in range(2)]

    assert [r.headers.get("retry-after") for r in await twice("calm/1")] == [None, "5"]
    assert [r.status_code for r in await twice("free/1")] == [200, 200]
    assert [r.headers.get("retry-after") for r in await twice("lobby")] == [None, "30"]


async def test_slow_mode_comes_after_authorisation_and_before_on_publish(
    serve, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """A forbidden broadcast is 403 and spends nothing; a slowed one never reaches the hooks."""
    channels = ChannelApp(secret=SECRET, slow_mode=60, widget_keys={"k"})
    seen: list[Any] = []

    @channels.on_publish
    async def moderate(envelope: Envelope, conn: Connection) -> None:
        seen.append(envelope.message)
        if envelope.message == "bad word":
            raise Reject(422, "Mind your language")

    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/chat") as sub:
        url = f"{base}/publish/chat"
        no_key = await publish(client, url, sub.token, {"type": "broadcast", "message": "x"})
        assert no_key.status_code == 403
        body = {"type": "broadcast", "widget_key": "k"}
        assert (await publish(client, url, sub.token, {**body, "message": "bad word"})).is_error
        slowed = await publish(client, url, sub.token, {**body, "message": "hello"})
        assert slowed.status_code == 429
    assert seen == ["bad word"]


async def test_slow_mode_counts_across_apps_sharing_the_storage(
    serve, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """One bucket per user and channel in the storage: a second worker refuses the second."""
    storage = MemoryStorage()
    base_a = await serve(ChannelApp(storage=storage, secret=SECRET, slow_mode=10))
    base_b = await serve(ChannelApp(storage=storage, secret=SECRET, slow_mode=10))
    async with subscribe(client, f"{base_a}/subscribe/chat") as sub:
        assert (await publish(client, f"{base_a}/publish/chat", sub.token, chat())).is_success
        refused = await publish(client, f"{base_b}/publish/chat", sub.token, chat())
        assert (refused.status_code, refused.headers["retry-after"]) == (429, "10")


async def test_rate_limits_count_across_apps_sharing_the_storage(
    serve, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """rate_limit and ip_rate_limit: the buckets are the storage's, shared by its apps."""
    storage = MemoryStorage()
    options: dict[str, Any] = {"storage": storage, "secret": SECRET}
    base_a = await serve(ChannelApp(**options, rate_limit=(1.0, 2)))
    base_b = await serve(ChannelApp(**options, rate_limit=(1.0, 2)))
    async with subscribe(client, f"{base_a}/subscribe/r") as sub:
        replies = [
            await publish(client, f"{base}/publish/r", sub.token, chat())
            for base in (base_a, base_b, base_a)
        ]
        assert [r.status_code for r in replies] == [200, 200, 429]
    ip_a = await serve(ChannelApp(**options, ip_rate_limit=(1.0, 1)))
    ip_b = await serve(ChannelApp(**options, ip_rate_limit=(1.0, 1)))
    async with subscribe(client, f"{ip_a}/subscribe/r") as sub:
        assert (await publish(client, f"{ip_a}/publish/r", sub.token, chat())).is_success
        assert (await publish(client, f"{ip_b}/publish/r", sub.token, chat())).status_code == 429


class _NoBuckets(MemoryStorage):
    """A MemoryStorage whose token buckets cannot be reached."""

    async def take_token(self, key: str, *, rate: float, burst: float) -> float:
        raise StorageUnreachable("buckets are down")


@pytest.mark.parametrize(
    "options", [{"slow_mode": 5.0}, {"rate_limit": (1.0, 1)}], ids=["slow_mode", "rate_limit"]
)
async def test_an_unreachable_bucket_is_503_and_nothing_is_published(
    serve, client: httpx.AsyncClient, options: dict[str, Any]
) -> None:
    """A limit the storage cannot check refuses as other storage failures do: 503, Retry-After."""
    channels = ChannelApp(storage=_NoBuckets(), secret=SECRET, **options)
    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/chat") as sub:
        reply = await publish(client, f"{base}/publish/chat", sub.token, chat())
        assert (reply.status_code, reply.headers["retry-after"]) == (503, "1")
        assert reply.json()["message"] == "buckets are down"
        assert (await channels.storage.history("chat")).events == []
