"""Test helpers: a uvicorn server on loopback, an SSE reader with bounded waits, a fake clock."""

from __future__ import annotations

import inspect
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import uvicorn

from channel_asgi import sse
from channel_asgi.storage import MemoryStorage
from channel_asgi.storage.base import StorageError

WAIT = 10.0  # seconds any single wait in a test may take


async def eventually(
    check: Callable[[], Any],
    until: Callable[[Any], object] = bool,
    *,
    timeout: float = WAIT,
    interval: float = 0.02,
) -> Any:
    """Return ``check()`` (awaited if it is awaitable) once ``until`` holds for it.

    The one bounded poll of the tests, for what no event announces (a viewer count in another
    process, a process exiting). Raises ``TimeoutError`` when ``timeout`` is up.
    """
    value: Any = None
    with anyio.move_on_after(timeout):
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if until(value):
                return value
            await anyio.sleep(interval)
    raise TimeoutError(f"still {value!r} after {timeout} s")


def eventually_blocking(
    check: Callable[[], Any],
    until: Callable[[Any], object] = bool,
    *,
    timeout: float = WAIT,
    interval: float = 0.05,
) -> Any:
    """:func:`eventually` for code outside the event loop (sync fixtures, sync tests).

    ``check`` is called, never awaited, and the wait between checks blocks the thread.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"still {value!r} after {timeout} s")
        time.sleep(interval)


class FakeClock:
    """A time source that stands still until a test moves it (see :mod:`channel_asgi.clock`).

    It starts at the real time, so tokens a test forges with ``time.time()`` stay comparable,
    rounded down to a whole second, so that advancing it by whole seconds moves it exactly. The
    ``clock`` fixture installs it for the library.
    """

    def __init__(self) -> None:
        self._wall = float(int(time.time()))
        self._monotonic = float(int(time.monotonic()))
        self._sleepers: list[tuple[float, anyio.Event]] = []  # (when it is over, its event)

    def time(self) -> float:
        """Unix seconds, as ``time.time()``."""
        return self._wall

    def monotonic(self) -> float:
        """Seconds on a clock that only moves forward, as ``time.monotonic()``."""
        return self._monotonic

    def advance(self, seconds: float) -> None:
        """Move both clocks ``seconds`` forward, and wake the sleeps that are then over."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back, got {seconds!r}")
        self._wall += seconds
        self._monotonic += seconds
        due = [sleeper for sleeper in self._sleepers if sleeper[0] <= self._monotonic]
        for sleeper in due:
            self._sleepers.remove(sleeper)
            sleeper[1].set()

    async def sleep(self, seconds: float) -> None:
        """Return once the clock has been advanced ``seconds`` (``channel_asgi.clock.sleep``)."""
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        sleeper = (self._monotonic + seconds, anyio.Event())
        self._sleepers.append(sleeper)
        try:
            await sleeper[1].wait()
        finally:
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)


def free_socket() -> socket.socket:
    """Bind a listening socket on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    return sock


async def asgi_body(receive: Callable[[], Awaitable[Any]]) -> bytes:
    """Read a whole request body from an ASGI ``receive`` (for the tests' own small servers)."""
    body = b""
    while True:
        message = await receive()
        chunk: bytes = message.get("body", b"")
        body += chunk
        if not message.get("more_body"):
            return body


@asynccontextmanager
async def running_server(app: Any, **config: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn in this event loop; yield its base URL."""
    sock = free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            lifespan=config.pop("lifespan", "off"),
            timeout_graceful_shutdown=config.pop("timeout_graceful_shutdown", 2),
            **config,
        )
    )
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve, [sock])
        await eventually(lambda: server.started, interval=0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            close = getattr(app, "aclose", None)
            if close is not None:
                await close()
            server.should_exit = True
    sock.close()


@dataclass
class SSEEvent:
    """One parsed Server-Sent Event."""

    data: str
    id: str | None = None
    retry: int | None = None
    comment: str | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def type(self) -> str:
        return str(self.json["type"])


@dataclass
class EventStream:
    """An open SSE response, read event by event."""

    response: httpx.Response
    lines: AsyncIterator[str]
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    async def next(self, timeout: float = WAIT, *, comments: bool = False) -> SSEEvent:
        """Return the next event; comments are collected, or returned when ``comments``."""
        data: list[str] = []
        event_id: str | None = None
        with anyio.fail_after(timeout):
            async for line in self.lines:
                if line == "":
                    if data:
                        return SSEEvent("\n".join(data), event_id, self.retry)
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "":
                    self.comments.append(value)
                    if comments:
                        return SSEEvent("", None, self.retry, comment=value)
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    event_id = value
                elif name == "retry":
                    self.retry = int(value)
        raise EOFError("stream ended")

    async def until(self, type_: str, timeout: float = WAIT) -> SSEEvent:
        """Skip events until one of ``type_`` arrives, and return it."""
        with anyio.fail_after(timeout):
            while True:
                event = await self.next(timeout)
                if event.type == type_:
                    return event

    async def ended(self, timeout: float = WAIT) -> bool:
        """Read until the server ends the stream; return True if it did within ``timeout``."""
        with anyio.move_on_after(timeout):
            try:
                while True:
                    await self.next(timeout)
            except (EOFError, httpx.ReadError, httpx.RemoteProtocolError):
                return True
        return False


@dataclass
class Subscriber:
    """A subscribed client: its stream and what its init event said."""

    stream: EventStream
    init: dict[str, Any]

    @property
    def token(self) -> str:
        return str(self.init["message"]["token"])

    @property
    def user_id(self) -> str:
        return str(self.init["message"]["user_id"])


@asynccontextmanager
async def subscribe(
    client: httpx.AsyncClient, url: str, headers: Mapping[str, str | None] | None = None
) -> AsyncIterator[Subscriber]:
    """Open ``GET url`` as SSE, read ``init``, and yield the subscriber.

    ``headers`` may be typed with optional values (event ids from ``channels.publish``), but each
    must be a string.
    """
    sent = None
    if headers is not None:
        sent = {name: value for name, value in headers.items() if value is not None}
        assert len(sent) == len(headers), headers
    async with client.stream("GET", url, headers=sent, timeout=WAIT) as response:
        assert response.status_code == 200, (response.status_code, await response.aread())
        stream = EventStream(response, sse.lines(response.aiter_bytes()))
        init = await stream.next()
        assert init.type == "init", init
        yield Subscriber(stream, init.json)


async def publish(
    client: httpx.AsyncClient, url: str, token: str, body: dict[str, Any]
) -> httpx.Response:
    """POST a publish body with ``?token=``."""
    return await client.post(url, params={"token": token}, json=body, timeout=WAIT)


def free_port() -> int:
    """Return a port that was free a moment ago (for servers in other processes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(process: subprocess.Popen[bytes], port: int, host: str = "127.0.0.1") -> bool:
    """Return whether ``host:port`` accepts connections; raise if ``process`` has exited."""
    if process.poll() is not None:
        raise RuntimeError(f"server exited with {process.returncode}")
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def redis_answers(port: int = 6379) -> bool:
    """Return whether a Redis on 127.0.0.1:``port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class DownStorage(MemoryStorage):
    """A MemoryStorage whose appends fail while ``failure`` is set."""

    failure: StorageError | None = None

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
        if self.failure is not None:
            raise self.failure
        return await super().append(
            channel,
            payload,
            keep=keep,
            ttl=ttl,
            archive=archive,
            timestamp=timestamp,
            author=author,
        )


@asynccontextmanager
async def ticking(clock: FakeClock, step: float, *, limit: int = 100_000) -> AsyncIterator[None]:
    """Advance ``clock`` by ``step`` each time every task is blocked, for the block (bounded).

    The app's periodic work (heartbeats, presence announcements) then runs tick after tick, as
    fast as the loop serves it, while the block waits for what it produces.
    """

    async def tick() -> None:
        for _ in range(limit):
            await anyio.wait_all_tasks_blocked()
            clock.advance(step)

    async with anyio.create_task_group() as group:
        group.start_soon(tick)
        yield
        group.cancel_scope.cancel()
