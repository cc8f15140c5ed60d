"""Moderation across worker processes on Redis: what one worker does holds on every other.

Worker A is an app in the test's process (so the test can call ``channels.ban`` and the rest on
it); worker B is another process, ``channel_asgi.cli:create_app`` under uvicorn, built from
``CHANNEL_ASGI_CLI_OPTIONS`` with the same Redis, key prefix and secret.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from channel_asgi import ChannelApp
from channel_asgi.storage import RedisStorage

from .conftest import ServerProcess
from .helpers import FakeClock, publish, subscribe
from .test_moderation import recv_json, rest_of, ws_close_code, ws_subscribe

SECRET = "moderation-workers-secret-0123456789"

StartServer = Callable[..., ServerProcess]


def chat(text: str = "hi") -> dict[str, Any]:
    return {"type": "broadcast", "message": {"text": text}}


def worker_b(server_process: StartServer, redis_url: str, prefix: str, **options: Any) -> str:
    """Start worker B (another process) with ``options``; return its base URL."""
    values = {"redis": redis_url, "redis_prefix": prefix, "secret": SECRET, **options}
    command = [
        "-m", "uvicorn", "channel_asgi.cli:create_app", "--factory", "--port", "{port}",
        "--log-level", "warning",
    ]  # fmt: skip
    return server_process(command, {"CHANNEL_ASGI_CLI_OPTIONS": json.dumps(values)}).base


def worker_a(redis_url: str, prefix: str, **options: Any) -> ChannelApp:
    """Worker A: an app of this process on the same Redis."""
    return ChannelApp(storage=RedisStorage(redis_url, prefix=prefix), secret=SECRET, **options)


async def test_a_ban_through_one_worker_ends_the_users_streams_held_by_another(
    serve, server_process: StartServer, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """Banned through A: B's SSE and WebSocket of the user end (banned); B refuses them after."""
    a = worker_a(redis_url, redis_prefix)
    await serve(a)
    b = worker_b(server_process, redis_url, redis_prefix)
    token = a.issue_token("mallory")
    async with (
        subscribe(client, f"{b}/subscribe/chat?token={token}") as sse,
        ws_subscribe(b, "chat", token) as (ws, _),
        subscribe(client, f"{b}/subscribe/chat") as bystander,
    ):
        publish_token = sse.token
        await a.ban("chat", "mallory")
        assert [e["message"] for e in await rest_of(sse) if e["type"] == "end"] == [
            {"status": "banned"}
        ]
        frame = await recv_json(ws)
        while frame["type"] != "end":
            frame = await recv_json(ws)
        assert frame["message"] == {"status": "banned"}
        assert await ws_close_code(ws) == 1000

        refused = await publish(client, f"{b}/publish/chat", publish_token, chat("spam"))
        assert refused.status_code == 403
        assert (await client.get(f"{b}/subscribe/chat?token={token}")).status_code == 403
        event_id = await a.publish("chat", "the others stay")
        assert (await bystander.stream.until("broadcast")).id == event_id
    await a.unban("chat", "mallory")
    async with subscribe(client, f"{b}/subscribe/chat?token={token}"):
        pass


async def test_an_anonymous_users_token_is_refused_on_another_worker_after_its_ban(
    serve, server_process: StartServer, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """Banned through A, an anonymous viewer of B can store nothing with the token it holds."""
    a = worker_a(redis_url, redis_prefix)
    await serve(a)
    b = worker_b(server_process, redis_url, redis_prefix)
    async with subscribe(client, f"{b}/subscribe/chat") as anonymous:
        publish_token = anonymous.token
        await a.ban("chat", anonymous.user_id)
        assert [e["message"] for e in await rest_of(anonymous) if e["type"] == "end"] == [
            {"status": "banned"}
        ]
    for body in (chat("spam"), {"type": "private", "to_user_id": "x", "message": "psst"}):
        refused = await publish(client, f"{b}/publish/chat", publish_token, body)
        assert refused.status_code == 403
    assert (await a.storage.history("chat")).events == []
    await a.unban("chat", anonymous.user_id)
    assert (await publish(client, f"{b}/publish/chat", publish_token, chat())).status_code == 200


async def test_a_ban_on_every_channel_through_one_worker_reaches_another(
    serve, server_process: StartServer, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """ban("*") on A: B's streams of the user on two channels end, each with its stream_id."""
    a = worker_a(redis_url, redis_prefix)
    await serve(a)
    b = worker_b(server_process, redis_url, redis_prefix)
    token = a.issue_token("mallory")
    async with (
        subscribe(client, f"{b}/subscribe/one?token={token}") as one,
        subscribe(client, f"{b}/subscribe/two?token={token}") as two,
    ):
        await a.ban("*", "mallory", seconds=3600)
        for sub, channel in ((one, "one"), (two, "two")):
            ended = [e for e in await rest_of(sub) if e["type"] == "end"]
            assert [(e["stream_id"], e["message"]) for e in ended] == [
                (channel, {"status": "banned"})
            ]
    assert (await client.get(f"{b}/subscribe/three?token={token}")).status_code == 403


async def test_a_ban_on_redis_ends_on_the_clock(
    serve, client: httpx.AsyncClient, clock: FakeClock, redis_url: str, redis_prefix: str
) -> None:
    """A ban's end is judged by the edge's clock on RedisStorage too."""
    a = worker_a(redis_url, redis_prefix)
    base = await serve(a)
    token = a.issue_token("mallory", ttl=7200)
    await a.ban("chat", "mallory", seconds=120)
    assert (await client.get(f"{base}/subscribe/chat?token={token}")).status_code == 403
    clock.advance(120)
    async with subscribe(client, f"{base}/subscribe/chat?token={token}"):
        pass


async def test_a_delete_on_one_worker_is_gone_from_a_resume_and_a_request_on_another(
    serve, server_process: StartServer, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """Deleted through A: B's subscriber is told, and B's resume and request skip it."""
    a = worker_a(redis_url, redis_prefix)
    await serve(a)
    b = worker_b(server_process, redis_url, redis_prefix)
    first, doomed, last = [await a.publish("vod", {"n": n}) for n in range(3)]
    assert first is not None and doomed is not None
    async with subscribe(client, f"{b}/subscribe/vod") as on_b:
        assert await a.delete_message("vod", doomed) is True
        deleted = (await on_b.stream.until("system")).json["message"]
        assert deleted == {"status": "deleted", "id": doomed}
        reply = await publish(client, f"{b}/publish/vod", on_b.token, {"type": "request"})
        assert reply.status_code == 200, reply.text
        history = (await on_b.stream.until("request")).json["message"]
        assert [item["id"] for item in history] == [first, last]
    async with subscribe(client, f"{b}/subscribe/vod", {"Last-Event-ID": first}) as resumed:
        assert resumed.init["message"]["recovered"] is True
        assert (await resumed.stream.next()).id == last
    assert await a.delete_message("vod", doomed) is False


async def test_slow_mode_counts_across_workers(
    serve, server_process: StartServer, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """slow_mode on both: a broadcast through A makes the next one through B a 429."""
    a_base = await serve(worker_a(redis_url, redis_prefix, slow_mode=600))
    b = worker_b(server_process, redis_url, redis_prefix, slow_mode=600)
    async with subscribe(client, f"{a_base}/subscribe/chat") as sub:
        assert (await publish(client, f"{a_base}/publish/chat", sub.token, chat())).is_success
        refused = await publish(client, f"{b}/publish/chat", sub.token, chat())
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 600
        assert (
            await publish(client, f"{a_base}/publish/chat", sub.token, chat())
        ).status_code == 429


@pytest.mark.parametrize("option", ["rate_limit", "ip_rate_limit"], ids=["per-user", "per-address"])
async def test_rate_limits_count_across_workers(
    serve,
    server_process: StartServer,
    client: httpx.AsyncClient,
    redis_url: str,
    redis_prefix: str,
    option: str,
) -> None:
    """A burst of 2 spent on A and B together: the third publish, on either, is a 429."""
    limit = {option: (0.001, 2)}
    a_base = await serve(worker_a(redis_url, redis_prefix, **limit))
    b = worker_b(server_process, redis_url, redis_prefix, **limit)
    async with subscribe(client, f"{a_base}/subscribe/r") as sub:
        codes = [
            (await publish(client, f"{base}/publish/r", sub.token, chat())).status_code
            for base in (a_base, b, b)
        ]
    assert codes == [200, 200, 429]


async def test_disconnect_through_one_worker_counts_and_ends_connections_on_another(
    serve, server_process: StartServer, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """A counts the user's two connections held by B, which end quietly (SSE done, WS 4000)."""
    a = worker_a(redis_url, redis_prefix)
    await serve(a)
    b = worker_b(server_process, redis_url, redis_prefix)
    token = a.issue_token("kicked")
    async with (
        subscribe(client, f"{b}/subscribe/chat?token={token}") as sse,
        ws_subscribe(b, "chat", token) as (ws, _),
    ):
        assert await a.disconnect("chat", "kicked") == 2
        assert [e for e in await rest_of(sse) if e["type"] == "end"] == []
        assert await ws_close_code(ws) == 4000
    async with subscribe(client, f"{b}/subscribe/chat?token={token}"):
        pass
