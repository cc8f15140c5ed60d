"""The direct write (``fastpath``): its fence, its hand-over, its fallback, and both paths live."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from channel_asgi import ChannelApp, fastpath

from .helpers import WAIT, subscribe


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    fastpath.set_enabled(True)
    yield
    fastpath.set_enabled(True)


def _named(function: Any, module: str, qualname: str) -> Any:
    function.__module__ = module
    function.__qualname__ = qualname
    return function


def _uvicorn_send() -> Any:
    async def send(message: Any) -> None:
        return None

    return _named(send, "uvicorn.protocols.http.httptools_impl", "RequestResponseCycle.send")


def _wrapper(module: str, qualname: str, send: Any) -> Any:
    async def wrapped(message: Any) -> None:
        await send(message)

    return _named(wrapped, module, qualname)


SERVER_ERRORS = ("starlette.middleware.errors", "ServerErrorMiddleware.__call__.<locals>._send")


def test_the_fence_admits_uvicorn_directly_and_through_starlettes_wrappers() -> None:
    """uvicorn's send, bare or inside the wrappers a FastAPI mount adds, gets a direct write."""
    send = _uvicorn_send()
    assert fastpath.direct_send(send) is not None
    assert fastpath.direct_send(_wrapper(*SERVER_ERRORS, send)) is not None
    inner = _wrapper(
        "starlette._exception_handler",
        "wrap_app_handling_exceptions.<locals>.wrapped_app.<locals>.sender",
        _wrapper(*SERVER_ERRORS, send),
    )
    assert fastpath.direct_send(inner) is not None


def test_the_fence_refuses_every_other_send() -> None:
    """An unknown send, an unknown wrapper, or a known wrapper of an unknown send: none."""

    async def other(message: Any) -> None:
        return None

    assert fastpath.direct_send(other) is None
    unknown = _wrapper("my.middleware", "wrap.<locals>.send", _uvicorn_send())
    assert fastpath.direct_send(unknown) is None
    assert fastpath.direct_send(_wrapper(*SERVER_ERRORS, other)) is None
    deep = _uvicorn_send()
    for _ in range(10):  # more wrappers than any host nests
        deep = _wrapper(*SERVER_ERRORS, deep)
    assert fastpath.direct_send(deep) is None


def test_the_fence_refuses_versions_outside_the_tested_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A uvicorn outside VERSIONS gets no direct write."""
    monkeypatch.setitem(fastpath.VERSIONS, "uvicorn", ((0, 1), (0, 2)))
    monkeypatch.setattr(fastpath._state, "versions", {})
    assert fastpath.direct_send(_uvicorn_send()) is None


def test_a_turned_off_fast_path_gives_no_direct_write() -> None:
    fastpath.set_enabled(False)
    assert fastpath.direct_send(_uvicorn_send()) is None


async def test_a_send_that_waits_is_finished_by_the_task_that_awaits_its_resume() -> None:
    """The suspended coroutine resumes in the writer's task and returns its value there."""
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[int] = loop.create_future()
    ran_in: list[asyncio.Task[Any] | None] = []

    async def send(message: Any) -> None:
        await gate
        ran_in.append(asyncio.current_task())

    rest = fastpath.step(send, [b"x"])
    assert rest is not None

    async def writer() -> None:
        await rest

    task = loop.create_task(writer())
    await asyncio.sleep(0)
    gate.set_result(1)
    with anyio.fail_after(WAIT):
        await task
    assert ran_in == [task]


async def test_cancelling_the_writer_cancels_the_send_it_finishes() -> None:
    """Cancellation passes into the suspended send (a slow consumer's writer is interrupted)."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []

    async def send(message: Any) -> None:
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    rest = fastpath.step(send, [b"x"])
    assert rest is not None

    async def writer() -> None:
        await rest

    task = loop.create_task(writer())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]


async def test_a_client_gone_is_raised_and_leaves_direct_writes_on() -> None:
    async def send(message: Any) -> None:
        raise OSError("gone")

    with pytest.raises(OSError, match="gone"):
        fastpath.step(send, [b"x"])
    assert fastpath.enabled()


async def test_any_other_failure_turns_direct_writes_off_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def send(message: Any) -> None:
        raise RuntimeError("unexpected")

    with caplog.at_level(logging.WARNING, "channel_asgi"), pytest.raises(RuntimeError):
        fastpath.step(send, [b"x"])
    assert not fastpath.enabled()
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "Direct writes are off" in caplog.records[0].getMessage()


def _host(mounted: bool, channels: ChannelApp) -> Any:
    return Starlette(routes=[Mount("/c", app=channels)]) if mounted else channels


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "writer-only"])
@pytest.mark.parametrize("mounted", [False, True], ids=["bare", "mounted"])
async def test_every_event_arrives_in_order_on_both_paths(
    serve, client: httpx.AsyncClient, direct: bool, mounted: bool
) -> None:
    """Bare and mounted, with direct writes on and off: every event, once, in order."""
    fastpath.set_enabled(direct)
    channels = ChannelApp()
    base = await serve(_host(mounted, channels))
    prefix = f"{base}/c" if mounted else base
    before = fastpath.written()
    async with (
        subscribe(client, f"{prefix}/subscribe/order") as one,
        subscribe(client, f"{prefix}/subscribe/order") as two,
    ):
        await one.stream.until("system")  # the second one's join
        for n in range(60):
            await channels.publish("order", {"n": n})
        for sub in (one, two):
            got = [(await sub.stream.until("broadcast")).json["message"]["n"] for _ in range(60)]
            assert got == list(range(60))
    assert (fastpath.written() > before) is direct


async def test_a_failed_direct_write_ends_that_stream_and_the_others_fall_back(
    serve,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After the first failure, every writer writes for itself and nothing else is lost."""
    channels = ChannelApp()
    base = await serve(channels)
    real_step = fastpath.step
    failures: list[int] = []

    def failing_once(send: Any, frames: list[Any]) -> Any:
        if not failures:
            failures.append(1)
            fastpath.disable("a test failure")
            raise RuntimeError("a test failure")
        return real_step(send, frames)

    async with subscribe(client, f"{base}/subscribe/f") as first:
        async with subscribe(client, f"{base}/subscribe/f") as second:
            await first.stream.until("system")
            monkeypatch.setattr("channel_asgi.mailbox.step", failing_once)
            with caplog.at_level(logging.WARNING, "channel_asgi"):
                for n in range(20):
                    await channels.publish("f", {"n": n})
                survivor = None
                for sub in (first, second):
                    try:
                        got = [
                            (await sub.stream.until("broadcast")).json["message"]["n"]
                            for _ in range(20)
                        ]
                    except (httpx.HTTPError, StopAsyncIteration, AssertionError):
                        continue
                    assert got == list(range(20))
                    survivor = sub
            assert survivor is not None
    assert failures == [1]
    assert not fastpath.enabled()
    assert any("Direct writes are off" in r.getMessage() for r in caplog.records)
