"""What the app can tell of the ASGI server that runs it, and what it does about each one.

ASGI does not name the server, so the app recognises it once, on its first connection, by where
the ``receive`` and ``send`` callables it is given come from (a host such as Starlette wraps
``send`` but passes ``receive`` on as it is), and failing that by the server's modules in the
process. What each one needs from the app:

- **uvicorn** (and gunicorn's uvicorn workers): nothing here; ``lifecycle.server_is_exiting``
  reads its state.
- **granian** sends no ``lifespan.shutdown`` while a response is open and waits for every one to
  end, and an SSE response never ends on its own: on SIGTERM it would wait forever. The app wraps
  granian's handlers for SIGTERM and SIGINT (see ``lifecycle.watch_exit_signals``), so it sees
  the signal and ends its streams, as it does under uvicorn.
- **hypercorn** stops its workers with a ``multiprocessing`` event, not a signal (``quart run``
  and ``hypercorn.asyncio.serve`` with a ``shutdown_trigger`` of their own), then waits
  ``graceful_timeout`` (3 s) for open responses and cancels them. In every case it first sets
  the ``terminated`` event of the worker's context, a local of its ``worker_serve``:
  :class:`HypercornWatch` finds that coroutine among the loop's tasks and reads the event (it
  never sets it), so the app ends its streams at once instead of being cut.
- **daphne** cancels every application task as its reactor stops, then drops every connection.
  The app adds a reactor trigger (``addSystemEventTrigger("before", "shutdown")``, see
  :func:`on_reactor_shutdown`), which runs just after daphne's own, before the cancellations
  arrive: it ends the streams and holds the reactor until the connections have finished (a
  connection whose stream the app ended finishes writing it before it gives in to the
  cancellation, ``writer.run_connection``).
- **daphne**'s ``send`` never waits: it buffers every write in its own memory, so a client that
  stops reading cannot be seen through ASGI, and no mailbox ever fills. The app logs this once,
  and ends each SSE stream once it has written ``max_buffer_bytes`` of live events; the browser
  reconnects after ``retry`` and resumes from history with ``Last-Event-ID``, losing nothing. A
  reader that stalled then costs daphne that much memory at most, instead of everything sent to
  it. (Daphne's own WebSocket keepalive closes a WebSocket that stops answering its pings.)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Final

from .http import Receive, Send

__all__ = [
    "DAPHNE",
    "GRANIAN",
    "HYPERCORN",
    "UNPACED",
    "HypercornWatch",
    "identify",
    "on_reactor_shutdown",
    "warn_unpaced",
]

logger = logging.getLogger("channel_asgi")

GRANIAN: Final = "granian"
DAPHNE: Final = "daphne"
HYPERCORN: Final = "hypercorn"
_KNOWN: Final = ("uvicorn", HYPERCORN, GRANIAN, DAPHNE)
#: Servers whose ``send`` never waits for the client (an unknown server is assumed to wait).
UNPACED: Final = frozenset({DAPHNE})


def identify(receive: Receive, send: Send) -> str:
    """Return the name of the server that passed these callables, or ``""`` if unknown."""
    for callable_ in (receive, send):
        name = _package_of(callable_)
        if name in _KNOWN:
            return name
    if "daphne.server" in sys.modules:
        reactor = sys.modules.get("twisted.internet.reactor")
        if getattr(reactor, "running", False):  # imported is not enough: running is
            return DAPHNE
    if "granian._granian" in sys.modules:
        return GRANIAN
    if "hypercorn.asyncio.run" in sys.modules and _worker_context() is not None:
        return HYPERCORN  # a mounted app: receive is a queue's get, send the host's wrapper
    return ""


def _package_of(callable_: Any) -> str:
    """The top-level package of the object a bound method (or a partial of one) belongs to."""
    if isinstance(callable_, functools.partial):
        callable_ = callable_.func
    owner = getattr(callable_, "__self__", None)
    if owner is None:
        return ""
    return type(owner).__module__.partition(".")[0]


def warn_unpaced(name: str, max_buffer_bytes: int) -> None:
    """Say once, at start, what a server whose ``send`` never waits means for slow readers."""
    logger.warning(
        "Served by %s, whose send never waits (it buffers every write in its own memory): a "
        "client that stops reading cannot be seen. Each SSE stream ends after %d bytes of live "
        "events (max_buffer_bytes) and the client resumes from history; see docs/servers.md",
        name,
        max_buffer_bytes,
    )


#: How many times :class:`HypercornWatch` looks for the worker's context before it gives up.
_SEARCHES: Final = 40
#: How deep it follows a task's chain of awaited coroutines (``quart run``: two).
_DEPTH: Final = 8


class HypercornWatch:
    """Tell whether the hypercorn worker serving this process has begun to stop.

    Calling it returns whether the worker context's ``terminated`` event is set. Until the
    context is found (hypercorn makes it after the lifespan's startup) each call looks for it,
    at most ``_SEARCHES`` times: a process that imported hypercorn without serving with it
    pays for a few looks, then nothing.
    """

    __slots__ = ("_context", "_searches")

    def __init__(self) -> None:
        self._context: Any = None
        self._searches = 0

    def __call__(self) -> bool:
        context = self._context
        if context is None:
            if self._searches >= _SEARCHES:
                return False
            self._searches += 1
            context = self._context = _worker_context()
            if context is None:
                return False
        return bool(context.terminated.is_set())


def _worker_context() -> Any:
    """The ``context`` of hypercorn's running ``worker_serve`` on this loop, or None."""
    code = getattr(
        getattr(sys.modules.get("hypercorn.asyncio.run"), "worker_serve", None), "__code__", None
    )
    if code is None:
        return None
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:  # no running asyncio loop (trio)
        return None
    for task in tasks:
        coro: Any = task.get_coro()
        for _ in range(_DEPTH):
            if getattr(coro, "cr_code", None) is code:
                frame = coro.cr_frame
                context = None if frame is None else frame.f_locals.get("context")
                if callable(getattr(getattr(context, "terminated", None), "is_set", None)):
                    return context
                break
            coro = getattr(coro, "cr_await", None)
            if coro is None:
                break
    return None


def on_reactor_shutdown(stop: Callable[[], Coroutine[Any, Any, None]]) -> bool:
    """Call ``stop()`` as daphne's Twisted reactor begins to stop; wait for what it returns.

    ``stop`` runs in the reactor's ``before shutdown`` phase, right after daphne's own trigger
    has cancelled every application task (the cancellations arrive after it returns). The
    reactor goes on to the ``during`` phase, where Twisted drops every connection, once the
    coroutine it returned is done. Daphne's own trigger cannot be relied on to wait: with a
    WebSocket open it fails with a ``KeyError`` and waits for nothing (daphne 4.2).

    Returns:
        Whether the trigger is in place (False without a running reactor).
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    add_trigger = getattr(reactor, "addSystemEventTrigger", None)
    if add_trigger is None or not getattr(reactor, "running", False):
        return False
    from twisted.internet.defer import Deferred

    def before_shutdown() -> Any:
        return Deferred.fromFuture(asyncio.ensure_future(stop()))

    add_trigger("before", "shutdown", before_shutdown)
    return True
