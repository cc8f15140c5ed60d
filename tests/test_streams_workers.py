"""Streams of several channels across worker processes on Redis.

Worker A is an app of the test's process (the test calls ``close_channel``, ``ban`` and the rest
on it); worker B is another process on the same Redis, key prefix and secret.
"""

from __future__ import annotations

from typing import Any

import httpx

from .helpers import eventually, publish
from .test_moderation_workers import StartServer, worker_a, worker_b
from .test_streams import chat, settled, stream_of
from .test_ws_streams import socket_of


async def test_presence_close_and_ban_hold_across_workers(
    serve, server_process: StartServer, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """A stream on B counts once per channel on A; A's close and ban end one channel on B."""
    a = worker_a(redis_url, redis_prefix)
    await serve(a)
    b = worker_b(server_process, redis_url, redis_prefix)
    token = a.issue_token("mallory")
    headers = {"authorization": f"Bearer {token}"}
    async with stream_of(client, b, "x", "y", "z", headers=headers) as stream:
        assert [await a.viewer_count(c) for c in ("x", "y", "z")] == [1, 1, 1]
        assert await a.presence("y") == {"mallory": 1}
        await a.close_channel("x")
        end = await stream.until("end")
        assert (end.json["stream_id"], end.json["message"]) == ("x", {"status": "closed"})
        await a.ban("y", "mallory")
        end = await stream.until("end")
        assert (end.json["stream_id"], end.json["message"]) == ("y", {"status": "banned"})
        assert await eventually(lambda: a.presence("y"), lambda p: p == {}) == {}
        event_id = await a.publish("z", "z goes on")
        event = await stream.until("broadcast")
        assert (event.json["stream_id"], event.json["id"]) == ("z", event_id)
        assert await a.viewer_count("z") == 1
    await settled(a, "z")


async def test_a_resume_on_another_worker_is_exact_and_a_change_reaches_the_stream(
    serve, server_process: StartServer, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """The composite id from B resumes on A; a change POSTed to B reaches the stream on A."""
    a = worker_a(redis_url, redis_prefix)
    base_a = await serve(a)
    b = worker_b(server_process, redis_url, redis_prefix)
    async with stream_of(client, b, "p", "q") as first:
        for channel in ("p", "q"):
            reply = await publish(client, f"{b}/publish/{channel}", first.token(channel), chat("1"))
            assert reply.status_code == 200, reply.text
            await first.until("broadcast", channel)
        last = first.last_id
    missed = [await a.publish("q", "missed")]
    async with stream_of(client, base_a, "p", "q", headers={"last-event-id": last or ""}) as again:
        assert again.inits["p"]["message"]["recovered"] is True
        assert again.inits["q"]["message"]["recovered"] is True
        event = await again.until("broadcast")
        assert (event.json["stream_id"], event.json["id"]) == ("q", missed[0])
        body: dict[str, Any] = {"stream": again.token("q"), "add": ["r"], "remove": ["p"]}
        reply = await client.post(f"{b}/subscribe", json=body)
        assert reply.status_code == 202, reply.text
        assert (await again.until("end")).json["stream_id"] == "p"
        assert (await again.until("init")).json["stream_id"] == "r"
        reply = await publish(client, f"{b}/publish/r", again.token("r"), chat("on r"))
        assert reply.status_code == 200
        assert (await again.until("broadcast")).json["stream_id"] == "r"
        assert await a.viewer_count("p") == 0
    await settled(a, "q", "r")


async def test_a_websocket_of_several_channels_across_workers(
    serve, server_process: StartServer, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """A socket on B: A's ban ends one channel, a change POSTed to A reaches it, the resume of
    its composed cursor on A is exact."""
    a = worker_a(redis_url, redis_prefix)
    base_a = await serve(a)
    b = worker_b(server_process, redis_url, redis_prefix)
    token = a.issue_token("mallory")
    headers = {"authorization": f"Bearer {token}"}
    async with socket_of(b, "x", "y", headers=headers) as socket:
        assert await a.presence("x") == {"mallory": 1}
        await a.ban("x", "mallory")
        end = await socket.until("end")
        assert (end["stream_id"], end["message"]) == ("x", {"status": "banned"})
        reply = await client.post(
            f"{base_a}/subscribe",
            json={"stream": socket.inits["y"]["message"]["token"], "add": ["w"]},
            headers=headers,
        )
        assert reply.status_code == 202, reply.text
        assert (await socket.until("init"))["stream_id"] == "w"
        for channel in ("y", "w"):
            ack = await socket.send(type="broadcast", message=channel, stream_id=channel)
            assert ack["code"] == 200, ack
            await socket.until("broadcast", channel)
        cursor = socket.cursors.value()
    await settled(a, "y", "w")
    missed = await a.publish("w", "missed")
    async with socket_of(base_a, "y", "w", headers=headers, last_event_id=cursor) as again:
        assert again.inits["w"]["message"]["recovered"] is True
        event = await again.until("broadcast")
        assert (event["stream_id"], event["id"]) == ("w", missed)
    await settled(a, "y", "w")
