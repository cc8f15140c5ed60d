"""Shared fixtures: the anyio backend (asyncio, as uvicorn), servers, an HTTP client, a clock."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import IO, Any

import httpx
import pytest

import channel_asgi.clock

from .helpers import (
    WAIT,
    FakeClock,
    eventually_blocking,
    free_port,
    listening,
    redis_answers,
    running_server,
)


class ServerProcess:
    """A server in a child process, stopped by its PID."""

    def __init__(self, process: subprocess.Popen[bytes], base: str, log: IO[bytes]) -> None:
        self.process = process
        self.base = base
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """Everything the process printed so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _quiet_secret_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Tests build many apps without a secret; the warning is tested on its own."""
    caplog.set_level(logging.ERROR, logger="channel_asgi")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Stop the library's clock (``channel_asgi.clock``); the test moves it with ``advance``.

    Rate limits refill, tokens expire, body deadlines pass and the app's periodic work
    (heartbeats, presence announcements) ticks when the test says so, not by sleeping. Servers
    the test runs in this process (``serve``) read the same clock.
    """
    fake = FakeClock()
    monkeypatch.setattr(channel_asgi.clock, "time", fake.time)
    monkeypatch.setattr(channel_asgi.clock, "monotonic", fake.monotonic)
    monkeypatch.setattr(channel_asgi.clock, "sleep", fake.sleep)
    return fake


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Start ``app`` under uvicorn on a free loopback port; return its base URL."""
    async with AsyncExitStack() as stack:

        async def start(app: Any, **config: Any) -> str:
            return await stack.enter_async_context(running_server(app, **config))

        yield start


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for loopback servers (no proxies from the environment)."""
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as http:
        yield http


def start_server_process(
    args: list[str], env: dict[str, str] | None = None, port: int | None = None
) -> ServerProcess:
    """Start ``python <args>`` in its own session on a free port (``{port}`` in ``args``).

    Returns once the port accepts connections; stop it with :func:`stop_server_process`.
    """
    port = port or free_port()
    command = [sys.executable, *(arg.format(port=port) for arg in args)]
    # A file, not a pipe: a chatty server must never block on a full pipe.
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: workers it spawns stop with it
    )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        eventually_blocking(lambda: listening(process, port))
    except BaseException:
        stop_server_process(server)
        raise
    return server


def stop_server_process(server: ServerProcess) -> None:
    """Stop a server started by :func:`start_server_process`, and every process of its group."""
    if not server.log.closed:
        _stop_group(server.process)
        server.log.close()


@pytest.fixture
def server_process() -> Iterator[Callable[..., ServerProcess]]:
    """Start a server command in a child process on a free port; stop it by PID afterwards.

    The command gets ``{port}`` substituted; ``env`` adds environment variables.
    """
    started: list[ServerProcess] = []

    def start(
        args: list[str], env: dict[str, str] | None = None, port: int | None = None
    ) -> ServerProcess:
        server = start_server_process(args, env, port)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_server_process(server)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a child started in its own session, and every process of its group."""
    group = process.pid  # start_new_session made it the leader of its process group
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)  # workers a killed supervisor left behind
    process.wait(timeout=WAIT)


REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The machine's Redis (started with DEVELOPERS.md's command if it is down)."""
    if not redis_answers():
        subprocess.run(REDIS_START, check=True, timeout=WAIT)
        try:
            eventually_blocking(redis_answers)
        except TimeoutError:
            pytest.fail("Redis did not start on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = new_redis_prefix()
    yield prefix
    drop_redis_keys(redis_url, prefix)


def new_redis_prefix() -> str:
    """A Redis key prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


def drop_redis_keys(redis_url: str, prefix: str) -> None:
    """Delete every key under ``prefix``."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
