"""``GET {prefix}/health``: 200 while the storage answers, 503 while Redis is down, then 200."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import httpx
import pytest

from channel_asgi import ChannelApp
from channel_asgi.storage import RedisStorage

from .helpers import WAIT, eventually, eventually_blocking, free_port, redis_answers

SECRET = "h" * 40


class OwnRedis:
    """A redis-server of the test's own, on a loopback port nobody else uses."""

    def __init__(self, directory: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again) on the same port; return once it answers PING."""
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self.directory,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        eventually_blocking(lambda: redis_answers(self.port))

    def stop(self) -> None:
        """Stop it by its PID and wait until it is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=WAIT)


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with tempfile.TemporaryDirectory() as directory:
        server = OwnRedis(directory)
        server.start()
        try:
            yield server
        finally:
            server.stop()


async def test_health_is_200_ok_with_the_memory_storage(client: httpx.AsyncClient, serve) -> None:
    """The documented reply, never cached; CORS like the other routes; POST is 405."""
    base = await serve(ChannelApp(secret=SECRET, cors_origins=["https://status.example"]))
    reply = await client.get(f"{base}/health", headers={"Origin": "https://status.example"})
    assert reply.status_code == 200
    assert reply.json() == {"code": 200, "message": "ok"}
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["access-control-allow-origin"] == "https://status.example"
    refused = await client.post(f"{base}/health")
    assert (refused.status_code, refused.headers["allow"]) == (405, "GET, OPTIONS")


async def test_health_is_503_while_redis_is_down_and_200_once_it_is_back(
    client: httpx.AsyncClient, serve, own_redis: OwnRedis
) -> None:
    """Stop the test's Redis by its PID: 503 with Retry-After; start it again: 200."""
    channels = ChannelApp(storage=RedisStorage(own_redis.url, prefix="health"), secret=SECRET)
    base = await serve(channels)
    url = f"{base}/health"
    assert (await client.get(url)).json() == {"code": 200, "message": "ok"}

    own_redis.stop()
    down = await eventually(lambda: client.get(url), lambda r: r.status_code == 503)
    assert down.json()["code"] == 503
    assert down.json()["message"]
    assert down.headers["retry-after"] == "1"
    assert down.headers["cache-control"] == "no-store"

    own_redis.start()
    up = await eventually(lambda: client.get(url), lambda r: r.status_code == 200)
    assert up.json() == {"code": 200, "message": "ok"}
