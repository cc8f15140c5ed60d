"""The app's background work: starting it, failing to start, and seeing the server exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from channel_asgi import ChannelApp, StorageUnavailable
from channel_asgi.storage.memory import MemoryStorage

from .helpers import WAIT

SECRET = "l" * 40


class BrokenStorage(MemoryStorage):
    """A storage whose delivery loop fails before it starts (a backend that cannot connect)."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    async def run(self, deliver: Any, *, task_status: Any = None) -> None:
        self.attempts += 1
        raise ConnectionError("the backend is down")


async def test_a_start_that_fails_is_reported_and_tried_again_on_next_use() -> None:
    storage = BrokenStorage()
    channels = ChannelApp(secret=SECRET, storage=storage)
    with pytest.raises(RuntimeError, match="could not start") as caught:
        await channels.publish("room", "hello")
    assert isinstance(caught.value.__cause__, BaseException)
    with pytest.raises(RuntimeError, match="could not start"):
        await channels.publish("room", "hello")
    assert storage.attempts == 2  # not a cached failure: the next use starts again
    await channels.aclose()


async def test_async_with_raises_the_start_failure_and_leaves_the_app_stopped() -> None:
    storage = BrokenStorage()
    channels = ChannelApp(secret=SECRET, storage=storage)
    with pytest.raises(BaseException) as caught:
        async with channels:
            pytest.fail("the block ran although the app did not start")
    assert "the backend is down" in repr(caught.value)
    async with ChannelApp(secret=SECRET) as working:  # another app starts as usual
        assert await working.publish("room", "hello")


async def test_an_app_runs_once_at_a_time() -> None:
    channels = ChannelApp(secret=SECRET)
    async with channels:
        with pytest.raises(RuntimeError, match="already running"):
            async with channels:
                pass  # pragma: no cover


def test_exit_signals_are_seen_and_the_server_handler_still_runs() -> None:
    """watch_exit_signals notes the signal and calls back first, then the server's handler."""
    script = textwrap.dedent(
        """
        import os, signal
        from channel_asgi import lifecycle

        seen = []
        signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(("server", signum)))
        assert not lifecycle.server_is_exiting()
        assert lifecycle.watch_exit_signals(lambda: seen.append(("app", 0)))
        assert lifecycle.watch_exit_signals()  # a second call changes nothing
        lifecycle.watch_exit_signals(lambda: 1 / 0)  # a failing callback stops nothing
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [("app", 0), ("server", signal.SIGTERM)], seen
        assert lifecycle.server_is_exiting()
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert "ZeroDivisionError" in result.stderr  # logged, not raised


def test_a_gunicorn_worker_asked_to_quit_is_seen_as_exiting() -> None:
    """Issue 19: gunicorn's SIGQUIT only clears the uvicorn worker's ``alive``."""
    script = textwrap.dedent(
        """
        import signal, types
        from channel_asgi import lifecycle

        class Server:  # what uvicorn's Server offers: should_exit, config.callback_notify
            should_exit = False
            def __init__(self):
                self.config = types.SimpleNamespace(callback_notify=Worker().notify)
            def handle_exit(self, signum, frame):
                self.should_exit = True
        class Worker:
            alive = True
            def notify(self):
                pass
        server = Server()
        signal.signal(signal.SIGTERM, server.handle_exit)
        assert not lifecycle.server_is_exiting()
        server.config.callback_notify.__self__.alive = False
        assert lifecycle.server_is_exiting()
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


class HistoryDown(MemoryStorage):
    """A storage that cannot read history (a backend that fails mid-way)."""

    async def history(self, channel: str, **options: Any) -> Any:
        raise StorageUnavailable("history is down")


async def test_a_server_side_subscribe_that_fails_leaves_nothing_behind() -> None:
    storage = HistoryDown()
    channels = ChannelApp(secret=SECRET, storage=storage)
    async with channels:
        with pytest.raises(StorageUnavailable):
            async with channels.subscribe("room", last_event_id="0-0"):
                pytest.fail("subscribed without history")  # pragma: no cover
        assert storage.channel_count == 0  # listened, then unlistened: nothing kept
        assert await channels.viewer_count("room") == 0
