"""Redis going away and coming back, on a redis-server this test starts on a spare port."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import msgspec
import pytest

from channel_asgi import ChannelApp
from channel_asgi.storage import RedisStorage, StorageNoReply, StorageUnreachable
from channel_asgi.storage.conformance import running

from .helpers import WAIT, eventually, free_port, publish, redis_answers, subscribe


class OwnRedis:
    """A redis-server of the test's own, which it may stop and start again on the same port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while not redis_answers(self.port):
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not start")
            time.sleep(0.05)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it keeps its connections and answers nothing."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=WAIT)
        self.process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.resume()  # a test that failed while it was paused
    server.kill()


def chat(text: str) -> dict[str, object]:
    return {"type": "broadcast", "message": {"text": text}}


#: The reconnect delays of RedisStorage's pub/sub reader without jitter: from 0.1 s, doubling,
#: up to 5 s.
BACKOFF = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


class Backoff:
    """Stands in for the reader's sleep: records each delay, and holds the last one.

    The first ``len(BACKOFF) - 1`` delays return at once (the reader tries again); the next one
    waits for :meth:`release`, so that an outage costs a fixed number of attempts whatever the
    test does meanwhile.
    """

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.recorded = anyio.Event()
        self._released = anyio.Event()

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if len(self.delays) < len(BACKOFF):
            await anyio.lowlevel.checkpoint()
            return
        self.recorded.set()
        await self._released.wait()

    def release(self) -> None:
        self._released.set()


async def reconnect_delays(jitter: float, outcomes: list[bool]) -> list[float]:
    """The delays the pub/sub reader sleeps, given whether each connect attempt works.

    Each connection that works drops at once; the reader is stopped after the last attempt.
    """
    storage = RedisStorage("redis://127.0.0.1:1/0", prefix="backoff")
    attempts = iter(outcomes)
    delays: list[float] = []
    done = anyio.Event()

    async def connect() -> None:
        if not next(attempts):
            raise ConnectionError("refused")

    async def pump() -> None:
        raise ConnectionError("the connection worked, then dropped")

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == len(outcomes):
            done.set()
            await anyio.sleep_forever()
        await anyio.lowlevel.checkpoint()

    storage._connect = connect  # type: ignore[method-assign]
    storage._pump = pump  # type: ignore[method-assign]
    storage._sleep = sleep
    storage._jitter = lambda: jitter
    async with anyio.create_task_group() as group:
        group.start_soon(storage._read_forever)
        with anyio.fail_after(WAIT):
            await done.wait()
        group.cancel_scope.cancel()
    return delays


@pytest.mark.parametrize(("jitter", "factor"), [(0.5, 1.0), (0.0, 0.5), (0.999, 1.499)])
async def test_the_reconnect_backoff_doubles_to_its_cap_and_starts_again_after_a_connection(
    jitter: float, factor: float
) -> None:
    """The pub/sub reader waits 0.1, 0.2, 0.4 ... up to 5 s between attempts, times [0.5, 1.5)."""
    # eight failures (doubling, capped), a connection that works (starts again), two failures
    delays = await reconnect_delays(jitter, [False] * 8 + [True] + [False] * 2)
    assert delays == pytest.approx([base * factor for base in [*BACKOFF, 0.1, 0.2, 0.4]])


@pytest.mark.slow
async def test_publish_is_503_while_redis_is_down_and_flows_again_after(
    serve, client: httpx.AsyncClient, own_redis: OwnRedis
) -> None:
    """Streams survive an outage, publishes fail with 503, and recovery needs no restart."""
    storage = RedisStorage(own_redis.url, prefix="faults", presence_ttl=3.0)
    channels = ChannelApp(storage=storage, secret="s", heartbeat=0.2)
    backoff = Backoff()
    storage._sleep = backoff
    storage._jitter = lambda: 0.5  # no jitter: each delay is the schedule's
    base = await serve(channels)
    url = f"{base}/publish/f"
    async with (
        subscribe(client, f"{base}/subscribe/f") as one,
        subscribe(client, f"{base}/subscribe/f") as two,
    ):
        before = await publish(client, url, one.token, chat("before"))
        assert before.status_code == 200
        for sub in (one, two):
            assert (await sub.stream.until("broadcast")).id == before.json()["id"]

        own_redis.kill()
        with anyio.fail_after(WAIT):
            down = await publish(client, url, one.token, chat("lost"))
        # The pooled connection may have taken the command before it saw Redis gone: then
        # Redis cannot have confirmed it, which is a 504 (see the next test); after that,
        # every connection is refused and nothing is sent: 503.
        assert (down.status_code, down.json()["code"]) in ((503, 503), (504, 504)), down.text
        with anyio.fail_after(WAIT):
            down = await publish(client, url, one.token, chat("lost"))
        assert (down.status_code, down.json()["code"]) == (503, 503), down.text
        assert "connecting" in down.json()["message"]
        refused = await client.get(f"{base}/subscribe/f")
        assert refused.status_code == 503
        for _ in range(200):  # failing publishes leave nothing behind
            assert (await publish(client, url, one.token, chat("x"))).status_code == 503
        # the streams stay open: heartbeats keep coming, and nothing else does
        for sub in (one, two):
            pings = len(sub.stream.comments)
            with anyio.fail_after(WAIT):
                while len(sub.stream.comments) < pings + 3:
                    event = await sub.stream.next(comments=True)
                    assert event.comment == "ping", event
        with anyio.fail_after(WAIT):
            await backoff.recorded.wait()
        assert backoff.delays == pytest.approx(BACKOFF)  # the reader backs off, up to 5 s
        assert list(storage._listening) == ["f"]

        own_redis.start()
        backoff.release()
        after = await eventually(
            lambda: publish(client, url, one.token, chat("after")),
            lambda reply: reply.status_code == 200,
            interval=0.1,
        )
        for sub in (one, two):
            event = await sub.stream.until("broadcast", timeout=WAIT * 1.5)
            assert event.id == after.json()["id"]
            assert event.json["message"] == {"text": "after"}
        # presence is re-asserted into the fresh Redis by the lease renewal
        await eventually(lambda: channels.viewer_count("f"), lambda n: n == 2, interval=0.1)
        users = {one.user_id: 1, two.user_id: 1}
        await eventually(lambda: channels.presence("f"), lambda got: got == users, interval=0.1)


async def test_a_storage_outage_at_startup_answers_503_until_redis_is_up(
    serve, client: httpx.AsyncClient, own_redis: OwnRedis
) -> None:
    """An app that starts while Redis is down serves 503s, then works once Redis is back."""
    own_redis.kill()
    channels = ChannelApp(storage=RedisStorage(own_redis.url, prefix="boot"), secret="s")
    base = await serve(channels)
    reply = await client.get(f"{base}/subscribe/b")
    assert (reply.status_code, reply.json()["code"]) == (503, 503)
    own_redis.start()

    async def subscribed() -> bool:
        try:
            async with subscribe(client, f"{base}/subscribe/b") as sub:
                return bool(sub.init["message"]["viewer_count"] == 1)
        except AssertionError:  # refused (503) while the storage reconnects
            return False

    await eventually(subscribed, timeout=WAIT * 1.5, interval=0.2)


async def test_broadcasts_made_while_the_pubsub_connection_was_down_are_delivered(
    own_redis: OwnRedis,
) -> None:
    """A dropped pub/sub connection catches up from the stream, even on a quiet channel."""
    import redis.asyncio

    from channel_asgi.storage.conformance import running

    async with (
        running(RedisStorage(own_redis.url, prefix="gap")) as reader,
        running(RedisStorage(own_redis.url, prefix="gap")) as writer,
    ):
        await reader.storage.listen("quiet")  # nothing published on it yet
        admin = redis.asyncio.Redis.from_url(own_redis.url)
        try:
            await admin.client_kill_filter(_type="pubsub")
        finally:
            await admin.aclose()
        ids = [await writer.storage.append("quiet", b'{"n":%d}' % n, keep=10) for n in range(3)]
        got = await reader.inbox.wait_for(3, "quiet")
        assert [delivery.id for delivery in got] == ids
        ids.append(await writer.storage.append("quiet", b'{"n":3}', keep=10))
        # and no duplicates after: any would arrive before the next broadcast (one channel's
        # deliveries keep their order)
        ids.append(await writer.storage.append("quiet", b'{"n":4}', keep=10))
        got = await reader.inbox.wait_until(
            lambda got: bool(got) and got[-1].id == ids[-1], "quiet"
        )
        assert [delivery.id for delivery in got] == ids
        await reader.storage.unlisten("quiet")


async def test_scripts_flushed_from_redis_are_loaded_again(own_redis: OwnRedis) -> None:
    """After ``SCRIPT FLUSH`` (what a Redis restart also does) calls still succeed."""
    import redis

    storage = RedisStorage(own_redis.url, prefix="flush")
    async with running(storage) as live:
        await storage.listen("ch")
        first = await storage.append("ch", b'{"n":1}', keep=10)
        direct = redis.Redis(port=own_redis.port)
        try:
            direct.script_flush()
        finally:
            direct.close()
        second = await storage.append("ch", b'{"n":2}', keep=10)
        assert [event.id for event in (await storage.history("ch")).events] == [first, second]
        assert await storage.join("ch", "c1") == 1
        assert len(await live.inbox.wait_for(2, "ch")) == 2


async def test_a_burst_of_calls_beyond_the_connection_pool_waits_instead_of_failing(
    own_redis: OwnRedis,
) -> None:
    """Hundreds of joins and leaves at once (a crowd arriving) all succeed."""
    storage = RedisStorage(own_redis.url, prefix="burst")
    crowd = [f"c{index}" for index in range(400)]
    async with running(storage):
        async with anyio.create_task_group() as group:
            for connection_id in crowd:
                group.start_soon(storage.join, "live", connection_id)
        assert await storage.viewer_count("live") == len(crowd)
        async with anyio.create_task_group() as group:
            for connection_id in crowd:
                group.start_soon(storage.leave, "live", connection_id)
                group.start_soon(storage.viewer_count, "live")
        assert await storage.viewer_count("live") == 0


async def test_a_publish_redis_took_but_never_answered_is_504_and_may_have_been_applied(
    serve, client: httpx.AsyncClient, own_redis: OwnRedis
) -> None:
    """Issue 14: a paused Redis answers nothing: 504 "may have been applied", never a 503.

    A 503 promises that nothing happened, and a publisher that trusts it and retries
    duplicates the message, which Redis runs once it wakes. Errors before the command is
    written (connection refused) stay 503.
    """
    import redis.asyncio

    redis_client = redis.asyncio.Redis.from_url(
        own_redis.url, socket_timeout=0.5, socket_connect_timeout=0.5
    )
    storage = RedisStorage(prefix="paused", client=redis_client)
    channels = ChannelApp(storage=storage, secret="s" * 32)
    base = await serve(channels)
    url = f"{base}/publish/p"
    try:
        async with subscribe(client, f"{base}/subscribe/p") as sub:
            before = await publish(client, url, sub.token, chat("before"))
            assert before.status_code == 200  # and the pooled connection is warm
            assert (await sub.stream.until("broadcast")).id == before.json()["id"]

            own_redis.pause()
            try:
                with anyio.fail_after(WAIT):
                    paused = await publish(client, url, sub.token, chat("paused"))
                    with pytest.raises(StorageUnreachable) as read:  # a read changed nothing
                        await storage.history("p")
            finally:
                own_redis.resume()
            assert (paused.status_code, paused.json()["code"]) == (504, 504), paused.text
            assert "may have been applied" in paused.json()["message"]
            assert not isinstance(read.value, StorageNoReply)

            # Redis ran what it had received once it woke: the 504 was right not to say 503.
            after = await publish(client, url, sub.token, chat("after"))
            assert after.status_code == 200, after.text
            texts: list[str] = []
            while not texts or texts[-1] != "after":
                texts.append((await sub.stream.until("broadcast")).json["message"]["text"])
            assert texts == ["paused", "after"]  # once: the publisher did not retry it
            history = await storage.history("p")
            kept = [msgspec.json.decode(e.payload)["message"]["text"] for e in history.events]
            assert kept == ["before", "paused", "after"]

        own_redis.kill()
        refused = RedisStorage(own_redis.url, prefix="paused")
        try:  # nothing pooled: the append needs a connection, which is refused: nothing sent
            with pytest.raises(StorageUnreachable, match="connecting") as down:
                await refused.append("p", b'{"n":1}', keep=10)
            assert not isinstance(down.value, StorageNoReply)
        finally:
            await refused.aclose()
    finally:
        await redis_client.aclose()
