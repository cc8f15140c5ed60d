"""The ``storage`` fixture, parametrised over every backend, and a ``peer`` (another process).

A third-party backend reuses the whole suite by overriding ``storage`` and ``peer`` in its own
conftest.py (see docs/storage.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest

from channel_asgi.storage import Delivery, MemoryStorage, RedisStorage, Storage

from ..helpers import WAIT


@dataclass
class Inbox:
    """What a storage delivered to one process."""

    deliveries: list[Delivery] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, count: int, channel: str | None = None) -> list[Delivery]:
        """Wait until ``count`` deliveries (of ``channel``) arrived; return them."""
        with anyio.fail_after(WAIT):
            while True:
                got = [d for d in self.deliveries if channel is None or d.channel == channel]
                if len(got) >= count:
                    return got
                await self.changed.wait()


@dataclass
class Running:
    """A storage whose ``run`` is active, with the deliveries it made."""

    storage: Storage
    inbox: Inbox


@asynccontextmanager
async def running(storage: Storage) -> AsyncIterator[Running]:
    """Run ``storage`` (as a ChannelApp would) for the block."""
    inbox = Inbox()
    async with anyio.create_task_group() as group:
        await group.start(storage.run, inbox)
        yield Running(storage, inbox)
        group.cancel_scope.cancel()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_storage(backend: str, request: pytest.FixtureRequest) -> Iterator[object]:
    """A factory: each call is another process's view of one shared storage."""
    if backend == "memory":
        shared = MemoryStorage()
        yield lambda: shared
    else:
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        yield lambda: RedisStorage(url, prefix=prefix)


@pytest.fixture
async def storage(make_storage) -> AsyncIterator[Running]:  # type: ignore[no-untyped-def]
    """The storage under test, running."""
    async with running(make_storage()) as first:
        yield first


@pytest.fixture
async def peer(make_storage) -> AsyncIterator[Running]:  # type: ignore[no-untyped-def]
    """The same storage as seen from another process, running."""
    async with running(make_storage()) as second:
        yield second
