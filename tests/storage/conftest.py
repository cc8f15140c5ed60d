"""Run the conformance suite over every backend that ships: memory and Redis.

``make_storage`` returns a factory: each call is another process's view of one shared storage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from channel_asgi.storage import MemoryStorage, RedisStorage, Storage
from channel_asgi.storage.conformance import Inbox, Running, running

from ..helpers import FakeClock, free_port

__all__ = ["Inbox", "Running", "running"]


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_storage(backend: str, request: pytest.FixtureRequest) -> Iterator[Callable[[], Storage]]:
    """A factory: each call is another process's view of one shared storage.

    The memory backend runs on the test's clock (the ``clock`` fixture), which ``elapse`` moves.
    """
    if backend == "memory":
        clock: FakeClock = request.getfixturevalue("clock")
        shared = MemoryStorage(clock=clock.monotonic)
        yield lambda: shared
    else:
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        yield lambda: RedisStorage(url, prefix=prefix)


@pytest.fixture
async def make_unreachable_storage(backend: str) -> AsyncIterator[Callable[[], Storage]]:
    """A factory of storages with nothing to reach: Redis on a port nothing listens on."""
    if backend == "memory":
        pytest.skip("MemoryStorage lives in this process: it cannot be unreachable")
    made: list[RedisStorage] = []

    def make() -> Storage:
        made.append(RedisStorage(f"redis://127.0.0.1:{free_port()}/0", prefix="unreachable"))
        return made[-1]

    yield make
    for storage in made:
        await storage.aclose()


@pytest.fixture
async def make_lapsing_storage(
    backend: str, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[[], Storage]]:
    """Views of the shared Redis with a lease of 1.5 s, which the suite never renews."""
    if backend == "memory":
        pytest.skip("MemoryStorage lives in its one process: its presence dies with it")
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    made: list[RedisStorage] = []

    def make() -> Storage:
        made.append(RedisStorage(url, prefix=prefix, presence_ttl=1.5))
        return made[-1]

    yield make
    for storage in made:
        await storage.aclose()
