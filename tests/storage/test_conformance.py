"""The Storage protocol, as every backend must honour it (memory and Redis here)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest

from channel_asgi.storage.conformance import *  # noqa: F403 - the suite's tests and fixtures

from ..helpers import FakeClock


def test_every_test_of_the_suite_is_exported() -> None:
    """A backend's tests import the suite with ``*``: a test left out of ``__all__`` never runs."""
    from channel_asgi.storage import conformance

    tests = {name for name in dir(conformance) if name.startswith("test_")}
    assert tests <= set(conformance.__all__)


@pytest.fixture  # type: ignore[no-redef]  # the suite's waits in real time; memory's clock moves
def elapse(backend: str, request: pytest.FixtureRequest) -> Callable[[float], Awaitable[None]]:
    """Memory: move the test's clock, waiting for nothing. Redis judges time by its own clock
    (``TIME``), which no test can move: there time really passes."""
    if backend != "memory":
        return anyio.sleep
    clock: FakeClock = request.getfixturevalue("clock")

    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    return advance
