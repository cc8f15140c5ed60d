"""Running an app's background work: from lifespan, from ``async with``, or on first use.

Hosts do not forward ``lifespan`` to mounted apps, so a ``ChannelApp`` mounted in FastAPI or wrapped
around Django starts itself on its first request: it creates one task on the running asyncio loop
that owns a task group for the background work, and that task ends when the loop shuts down. Under
the lifespan protocol or ``async with channels:`` the work runs in the caller's task instead.

Uvicorn waits for open responses to finish before it stops, and SSE responses never finish on
their own, so :func:`server_is_exiting` lets the app notice that uvicorn has been asked to stop
(its signal handler is a bound method of the server, whose ``should_exit`` flag it reads without
changing it; under gunicorn, also the worker's ``alive``, which gunicorn's SIGQUIT clears) and
end its streams; the browsers reconnect to whichever process is still up. Granian waits the same
way but keeps its state out of reach, so there the app wraps granian's handlers
(:func:`watch_exit_signals`): the wrapper notes the signal and asks the app to end its streams,
then calls granian's, unchanged. In that order because granian drops its WebSockets as soon as
its own handler has run: the close frames have to be on their way first.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine
from threading import get_ident
from types import FrameType, TracebackType
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup, TaskStatus

from . import clock
from .errors import ChannelError

__all__ = ["Runner", "asyncio_loop", "run_every", "server_is_exiting", "watch_exit_signals"]

logger = logging.getLogger("channel_asgi")

Background = Callable[..., Coroutine[Any, Any, None]]

_EXIT_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
_signalled = False  # a handler of watch_exit_signals saw SIGTERM or SIGINT
_watching = False
_on_exit: list[Callable[[], object]] = []  # called by those handlers, before the server's


def server_is_exiting() -> bool:
    """Return True once the server that installed the SIGTERM/SIGINT handler is shutting down."""
    if _signalled:
        return True
    for signum in _EXIT_SIGNALS:
        try:
            handler: Any = signal.getsignal(signum)
        except ValueError:  # pragma: no cover - not the main interpreter
            return False
        server = getattr(handler, "__self__", None)
        if server is None:
            continue
        if getattr(server, "should_exit", False) is True:
            return True
        # Gunicorn's uvicorn worker: SIGQUIT (what gunicorn sends on SIGINT to the master) only
        # clears the worker's ``alive``; the worker is the owner of uvicorn's notify callback.
        notify = getattr(getattr(server, "config", None), "callback_notify", None)
        if getattr(getattr(notify, "__self__", None), "alive", True) is False:
            return True
    return False


def watch_exit_signals(on_exit: Callable[[], object] | None = None) -> bool:
    """Note SIGTERM and SIGINT for :func:`server_is_exiting`, before the server's own handlers.

    Each Python-level handler the server installed is replaced by one that notes the signal,
    calls ``on_exit`` (and those of earlier calls), and then calls the server's, with the same
    arguments, whatever ``on_exit`` did; a signal the server left to the default action or
    ignores is left alone. Safe to call more than once.

    Args:
        on_exit: called in the signal handler, in the main thread; it should only schedule
            work (``loop.call_soon_threadsafe``), as any signal handler should.

    Returns:
        Whether the handlers are in place (False outside the main thread, where Python does not
        allow installing them, or where the server has no Python handler to follow).
    """
    global _watching
    if threading.current_thread() is not threading.main_thread():
        return False
    if on_exit is not None:
        _on_exit.append(on_exit)
    if _watching:
        return True
    for signum in _EXIT_SIGNALS:
        previous = signal.getsignal(signum)
        if callable(previous):
            signal.signal(signum, _before(previous))
            _watching = True
    return _watching


def _before(previous: Callable[[int, FrameType | None], Any]) -> Callable[..., None]:
    def note_exit(signum: int, frame: FrameType | None) -> None:
        global _signalled
        _signalled = True
        try:
            for callback in _on_exit:
                _call_quietly(callback, signum)
        finally:
            previous(signum, frame)

    return note_exit


def _call_quietly(callback: Callable[[], object], signum: int) -> None:
    try:
        callback()
    except Exception:  # the server's handler runs whatever happens here
        logger.exception("Failed to end the streams on signal %d", signum)


class Runner:
    """Run ``background`` (a function taking ``task_status``) for as long as the app is up.

    Args:
        background: starts the background tasks, calls ``task_status.started()`` and then runs
            until cancelled.
    """

    def __init__(self, background: Background) -> None:
        self._background = background
        self._group: TaskGroup | None = None
        self._ready: anyio.Event | None = None
        self._is_ready = False  # ``_ready.is_set()``, read on every request without a call
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0  # the thread that runs ``_loop``
        self._task: asyncio.Task[None] | None = None
        self._stop: anyio.Event | None = None

    @property
    def running(self) -> bool:
        """Whether the background work is up in the current event loop."""
        return self._is_ready and self._in_its_loop()

    def _in_its_loop(self) -> bool:
        # Whether the loop it started in is the one running in this thread (or none was
        # recorded). Cheaper than asking asyncio, which makes a getpid system call on Python
        # 3.11: this runs on every request.
        loop = self._loop
        return loop is None or (self._thread == get_ident() and loop.is_running())

    def _forget_closed_loop(self) -> None:
        """Drop state left by an event loop that has stopped (tests run many loops)."""
        loop = self._loop
        if loop is None or self._in_its_loop():
            return
        if loop.is_running():
            raise RuntimeError("A ChannelApp serves one event loop at a time")
        self._group = self._ready = self._error = self._task = self._stop = None
        self._is_ready = False
        self._loop = None

    async def __aenter__(self) -> Runner:
        """Start the background work in the current task (lifespan, ``async with``)."""
        self._forget_closed_loop()
        if self._ready is not None:
            raise RuntimeError("The ChannelApp is already running")
        self._loop = asyncio_loop()
        self._thread = get_ident()
        self._ready = anyio.Event()
        group = anyio.create_task_group()
        await group.__aenter__()
        try:
            await group.start(self._background)
        except BaseException as exc:
            group.cancel_scope.cancel()
            await group.__aexit__(type(exc), exc, exc.__traceback__)
            self._ready = None
            raise
        self._group = group
        self._set_ready(self._ready)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the background work started by :meth:`__aenter__`."""
        group, self._group = self._group, None
        self._ready, self._is_ready = None, False
        if group is not None:
            group.cancel_scope.cancel()
            await group.__aexit__(exc_type, exc, tb)

    async def ensure_started(self) -> None:
        """Start the background work on first use, in a task of its own (asyncio only)."""
        if self.running:
            return
        self._forget_closed_loop()
        if self._ready is None:
            loop = asyncio_loop()
            if loop is None:  # a 500 whose message says what to do, not a traceback
                raise ChannelError(
                    500,
                    "A ChannelApp starts itself only on asyncio; under another event loop "
                    "(trio), serve it with lifespan or use 'async with channels:'",
                )
            self._loop = loop
            self._thread = get_ident()
            self._ready = anyio.Event()
            self._stop = anyio.Event()
            self._task = loop.create_task(self._own_task(self._ready, self._stop))
        await self._ready.wait()
        if self._error is not None:
            error, self._error = self._error, None
            self._ready = self._task = self._stop = None
            self._is_ready = False
            raise RuntimeError("The ChannelApp could not start") from error

    async def _own_task(self, ready: anyio.Event, stop: anyio.Event) -> None:
        try:
            async with anyio.create_task_group() as group:
                await group.start(self._background)
                self._set_ready(ready)
                await stop.wait()
                group.cancel_scope.cancel()
        except Exception as exc:
            self._error = exc
            self._set_ready(ready)

    def _set_ready(self, ready: anyio.Event) -> None:
        ready.set()
        self._is_ready = ready is self._ready

    async def aclose(self) -> None:
        """Stop background work that :meth:`ensure_started` started."""
        task, stop = self._task, self._stop
        self._task = self._stop = self._ready = None
        self._is_ready = False
        if stop is not None and task is not None:
            stop.set()
            await task


def asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """Return the running asyncio event loop, or None on another one (trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # another event loop (trio)
        return None


async def run_every(
    interval: float,
    tick: Callable[[], Any],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``tick`` (sync or async) every ``interval`` seconds until cancelled."""
    task_status.started()
    while True:
        await clock.sleep(interval)
        result = tick()
        if isinstance(result, Awaitable):
            await result
