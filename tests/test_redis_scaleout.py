"""Many workers on RedisStorage: every subscriber sees every message, whichever worker it is on."""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio
import httpx
import pytest
import redis
import redis.asyncio

from channel_asgi import ChannelApp
from channel_asgi.storage import RedisStorage

from .helpers import WAIT, eventually, publish, subscribe

SECRET = "scale-out-secret"


def worker(redis_url: str, prefix: str, *extra: str) -> list[str]:
    """The CLI command of one worker process on the shared Redis."""
    return [
        "-m", "channel_asgi", "serve", "--port", "{port}", "--redis", redis_url,
        "--redis-prefix", prefix, "--secret", SECRET, "--log-level", "warning", *extra,
    ]  # fmt: skip


def chat(text: str) -> dict[str, object]:
    return {"type": "broadcast", "message": {"text": text}}


async def test_two_workers_share_subscribers_tokens_privates_and_requests(
    server_process, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """Subscribe on A, publish on B with A's token: it reaches both; privates and requests too."""
    a = server_process(worker(redis_url, redis_prefix)).base
    b = server_process(worker(redis_url, redis_prefix)).base
    async with subscribe(client, f"{a}/subscribe/live") as on_a:
        async with subscribe(client, f"{b}/subscribe/live") as on_b:
            assert on_b.init["message"]["viewer_count"] == 2
            join = (await on_a.stream.until("system")).json["message"]
            assert (join["status"], join["viewer_count"]) == ("join", 2)

            reply = await publish(client, f"{b}/publish/live", on_a.token, chat("from B"))
            assert reply.status_code == 200, reply.text
            event_id = reply.json()["id"]
            for sub in (on_a, on_b):
                event = await sub.stream.until("broadcast")
                assert (event.id, event.json["author_id"]) == (event_id, on_a.user_id)

            private = {"type": "private", "message": "psst", "to_user_id": on_a.user_id}
            assert (await publish(client, f"{a}/publish/live", on_b.token, private)).is_success
            assert (await on_a.stream.until("private")).json["author_id"] == on_b.user_id
            assert (await on_b.stream.until("private")).json["to_user_id"] == on_a.user_id

            reply = await publish(client, f"{b}/publish/live", on_a.token, {"type": "request"})
            assert reply.status_code == 200, reply.text
            history = (await on_a.stream.until("request")).json["message"]
            assert [item["id"] for item in history] == [event_id]
        leave = (await on_a.stream.until("system")).json["message"]
        assert (leave["status"], leave["viewer_count"]) == ("leave", 1)


async def test_resume_on_another_worker_has_no_gap_and_no_duplicate(
    server_process, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """Event ids are valid on every worker, so a reconnect elsewhere resumes exactly."""
    a = server_process(worker(redis_url, redis_prefix)).base
    b = server_process(worker(redis_url, redis_prefix)).base
    async with subscribe(client, f"{a}/subscribe/r") as first:
        token = first.token
        sent = [
            (await publish(client, f"{a}/publish/r", token, chat(str(n)))).json()["id"]
            for n in range(3)
        ]
        seen = [(await first.stream.until("broadcast")).id for _ in range(3)]
        assert seen == sent
    later = [
        (await publish(client, f"{b}/publish/r", token, chat(f"late {n}"))).json()["id"]
        for n in range(4)
    ]
    resume_from = seen[1]
    assert resume_from is not None
    async with subscribe(client, f"{b}/subscribe/r", {"Last-Event-ID": resume_from}) as resumed:
        assert resumed.init["message"]["recovered"] is True
        replayed = [(await resumed.stream.next()).id for _ in range(5)]
        assert replayed == [sent[2], *later]


async def test_history_survives_restarting_every_worker(
    server_process, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """Stop all workers, start new ones: the retained broadcasts are still there."""
    first = server_process(worker(redis_url, redis_prefix))
    async with subscribe(client, f"{first.base}/subscribe/keep") as sub:
        ids = [
            (await publish(client, f"{first.base}/publish/keep", sub.token, chat(str(n)))).json()[
                "id"
            ]
            for n in range(3)
        ]
    os.kill(first.pid, signal.SIGTERM)
    first.process.wait(timeout=WAIT)
    second = server_process(worker(redis_url, redis_prefix))
    async with subscribe(client, f"{second.base}/subscribe/keep") as sub:
        await publish(client, f"{second.base}/publish/keep", sub.token, {"type": "request"})
        history = (await sub.stream.until("request")).json["message"]
        assert [item["id"] for item in history] == ids
    async with subscribe(client, f"{second.base}/subscribe/keep", {"Last-Event-ID": ids[0]}) as sub:
        assert [(await sub.stream.next()).id for _ in range(2)] == ids[1:]


async def test_a_killed_worker_drops_out_of_viewer_count_and_presence_by_expiry(
    server_process, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """SIGKILL leaves no chance to clean up; the lease expiry removes its viewers and users."""
    ttl = "2"
    doomed = server_process(worker(redis_url, redis_prefix, "--presence-ttl", ttl))
    alive = server_process(worker(redis_url, redis_prefix, "--presence-ttl", ttl)).base
    async with (
        subscribe(client, f"{doomed.base}/subscribe/v"),
        subscribe(client, f"{doomed.base}/subscribe/v"),
    ):
        async with subscribe(client, f"{alive}/subscribe/v") as watcher:
            assert watcher.init["message"]["viewer_count"] == 3
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.process.wait(timeout=WAIT)
            storage = RedisStorage(redis_url, prefix=redis_prefix)
            try:
                await eventually(lambda: storage.viewer_count("v"), lambda n: n == 1, interval=0.2)
                assert await storage.presence("v") == {watcher.user_id: 1}
            finally:
                await storage.aclose()


async def test_presence_adds_up_a_users_connections_on_every_worker(
    server_process, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """One user on two workers (twice on one) is 3 for an app elsewhere; gone once they close."""
    a = server_process(worker(redis_url, redis_prefix)).base
    b = server_process(worker(redis_url, redis_prefix)).base
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    async with ChannelApp(storage=storage, secret=SECRET) as elsewhere:
        alice = {"authorization": f"Bearer {elsewhere.issue_token('alice')}"}
        async with (
            subscribe(client, f"{a}/subscribe/room", alice) as first,
            subscribe(client, f"{b}/subscribe/room", alice),
            subscribe(client, f"{b}/subscribe/room", alice),
            subscribe(client, f"{a}/subscribe/room") as anonymous,
        ):
            assert first.user_id == "alice"
            assert await elsewhere.presence("room") == {"alice": 3, anonymous.user_id: 1}
            assert await elsewhere.viewer_count("room") == 4
        await eventually(lambda: elsewhere.presence("room"), lambda users: users == {})


async def test_one_pubsub_connection_per_process_and_constant_cost_per_publish(
    serve, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """50 subscribers share one Redis subscription; a publish costs the same with 1 or 50."""
    sent: list[str] = []

    class CountingRedis(redis.asyncio.Redis):
        """Counts the commands the storage sends (pub/sub has connections of its own)."""

        async def execute_command(self, *args: object, **options: object) -> object:
            sent.append(str(args[0]))
            return await super().execute_command(*args, **options)

        def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Any:
            pipe = super().pipeline(transaction, shard_hint)
            queue = pipe.execute_command

            def counting(*args: Any, **options: Any) -> Any:
                sent.append(str(args[0]))
                return queue(*args, **options)

            pipe.execute_command = counting  # type: ignore[method-assign]
            return pipe

    counting = CountingRedis.from_url(redis_url)
    storage = RedisStorage(prefix=redis_prefix, client=counting, presence_ttl=3600)
    channels = ChannelApp(storage=storage, secret=SECRET)
    base = await serve(channels)
    direct = redis.Redis.from_url(redis_url)
    topic = f"{redis_prefix}:e:fan"

    async def cost_of_one_publish(token: str) -> list[str]:
        sent.clear()
        assert (await publish(client, f"{base}/publish/fan", token, chat("x"))).is_success
        return list(sent)

    try:
        async with subscribe(client, f"{base}/subscribe/fan") as one:
            assert direct.pubsub_numsub(topic) == [(topic.encode(), 1)]
            await cost_of_one_publish(one.token)  # the first loads the script
            alone = await cost_of_one_publish(one.token)
            async with anyio.create_task_group() as group:
                ready = anyio.Event()
                opened = 0

                async def hold() -> None:
                    nonlocal opened
                    async with subscribe(client, f"{base}/subscribe/fan"):
                        opened += 1
                        if opened == 49:
                            ready.set()
                        await anyio.sleep_forever()

                for _ in range(49):
                    group.start_soon(hold)
                with anyio.fail_after(WAIT):
                    await ready.wait()
                for _ in range(49):  # every join announced: nothing else is in flight
                    assert (await one.stream.until("system")).json["message"]["status"] == "join"
                assert direct.pubsub_numsub(topic) == [(topic.encode(), 1)]
                crowded = await cost_of_one_publish(one.token)
                group.cancel_scope.cancel()
        assert crowded == alone, (alone, crowded)
        assert len(alone) <= 2, alone  # is the channel closed? then one script call
    finally:
        direct.close()
        await channels.aclose()  # the storage's last calls use the client: stop it first
        await counting.aclose()


@pytest.mark.slow
async def test_cli_serves_four_workers_on_redis(
    server_process, client: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    """`channel-asgi serve --workers 4 --redis URL`: subscribers on any worker see everything."""
    server = server_process(worker(redis_url, redis_prefix, "--workers", "4"))
    async with anyio.create_task_group() as group:
        subscribers = []
        ready = anyio.Event()

        async def hold() -> None:
            async with httpx.AsyncClient(trust_env=False) as own:  # a connection each
                async with subscribe(own, f"{server.base}/subscribe/w") as sub:
                    subscribers.append(sub)
                    if len(subscribers) == 12:
                        ready.set()
                    await anyio.sleep_forever()

        for _ in range(12):
            group.start_soon(hold)
        with anyio.fail_after(WAIT * 2):
            await ready.wait()
        counts = sorted(sub.init["message"]["viewer_count"] for sub in subscribers)
        assert counts == list(range(1, 13))
        reply = await publish(client, f"{server.base}/publish/w", subscribers[0].token, chat("all"))
        assert reply.status_code == 200
        for sub in subscribers:
            assert (await sub.stream.until("broadcast")).id == reply.json()["id"]
        group.cancel_scope.cancel()
