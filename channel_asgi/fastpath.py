"""The direct write: SSE batches written for parked writers without waking their tasks.

Every live connection has a writer task, parked in its mailbox while there is nothing to write.
Waking it costs a task switch per batch per connection, and under load, when batches come
hundreds of times a second to thousands of connections, those switches are a large part of the
work. This module writes such batches from one task instead: the write scheduler wakes a slice
of mailboxes, each one whose writer has a direct write queues itself here, and one task of this
module (created per slice, on the running loop) calls the server's ``send`` for each of them.

A ``send`` coroutine nearly always completes without waiting. When one waits (the server's flow
control waits for the client to drain), the suspended coroutine is handed to the connection's
own writer, which finishes it in its own task (:class:`Resume`) and carries on as usual; the
writer stays parked, and so cannot write, while a direct write of its connection runs. An error
of ``send`` (the client has gone) is raised in the writer, as if its own ``send`` had raised it.

**The fence.** Stepping a server's coroutine from another task than the connection's is sound
only for a ``send`` that neither looks at the current task nor at context variables. So the
direct write is used only for :data:`SERVERS`' ``send`` (uvicorn's HTTP protocols), reached
directly or through the wrappers that Starlette and FastAPI put around ``send`` when they mount
the app (:data:`WRAPPERS`), at versions in :data:`VERSIONS` (those the test suite runs). Any
other ``send`` gets no direct write, and its connection's writer does all its writing. The
first time a direct write fails otherwise than by a client that has gone, a WARNING says so and
the direct write is turned off in the process for good: that connection's writer gets the error
(its stream ends and the client resumes from history), and every other writer wakes as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Generator
from importlib import metadata
from typing import TYPE_CHECKING, Any, Final, cast

from .scheduler import SLICE_CHECK, WRITE_SLICE

if TYPE_CHECKING:
    from .http import Send
    from .mailbox import Mailbox

__all__ = [
    "SERVERS",
    "VERSIONS",
    "WRAPPERS",
    "DirectWriter",
    "Resume",
    "direct_send",
    "disable",
    "enabled",
    "set_enabled",
    "step",
    "written",
]

logger = logging.getLogger("channel_asgi")

#: The ``send`` methods a direct write may step: (module, qualified name).
SERVERS: Final = frozenset(
    {
        ("uvicorn.protocols.http.httptools_impl", "RequestResponseCycle.send"),
        ("uvicorn.protocols.http.h11_impl", "RequestResponseCycle.send"),
    }
)
#: The ``send`` wrappers it may step through, each holding the ``send`` it wraps as ``send``.
WRAPPERS: Final = frozenset(
    {
        ("starlette.middleware.errors", "ServerErrorMiddleware.__call__.<locals>._send"),
        (
            "starlette._exception_handler",
            "wrap_app_handling_exceptions.<locals>.wrapped_app.<locals>.sender",
        ),
    }
)
#: Distribution -> (lowest version, first version not allowed), as (major, minor) tuples.
VERSIONS: Final = {"uvicorn": ((0, 30), (1, 0)), "starlette": ((0, 37), (2, 0))}

#: The most wrappers looked through (a host app nests a few at most).
_MAX_DEPTH: Final = 8


class _State:
    on = True
    written = 0
    versions: dict[str, bool] = {}  # noqa: RUF012 - one process-wide cache


_state: Final = _State()


def enabled() -> bool:
    """Whether direct writes are on in this process (they go off for good on a failure)."""
    return _state.on


def set_enabled(on: bool) -> None:
    """Turn direct writes on or off in this process, for connections opened from now on.

    For tests and benchmarks that compare the two paths; an app never needs it.
    """
    _state.on = on


def disable(reason: str) -> None:
    """Turn direct writes off in this process, saying why in a WARNING (once)."""
    if _state.on:
        _state.on = False
        logger.warning("Direct writes are off from now on: %s", reason)


def direct_send(send: Send) -> Send | None:
    """Return ``send`` if an SSE connection served through it may have direct writes, else None.

    None unless direct writes are on and ``send`` passes the fence (see the module docstring).
    """
    return send if _state.on and _fenced(send) else None


def _fenced(send: Any) -> bool:
    for _ in range(_MAX_DEPTH):
        function = getattr(send, "__func__", send)
        where = (getattr(function, "__module__", None), getattr(function, "__qualname__", None))
        if where in SERVERS:
            return _allowed("uvicorn")
        if where not in WRAPPERS or not _allowed("starlette"):
            return False
        code, cells = function.__code__, function.__closure__ or ()
        if "send" not in code.co_freevars:
            return False
        send = cells[code.co_freevars.index("send")].cell_contents
    return False


def _allowed(distribution: str) -> bool:
    allowed = _state.versions.get(distribution)
    if allowed is None:
        low, high = VERSIONS[distribution]
        try:
            found = _major_minor(metadata.version(distribution))
        except (metadata.PackageNotFoundError, ValueError):
            found = None
        allowed = _state.versions[distribution] = found is not None and low <= found < high
        if not allowed:
            logger.debug("No direct writes through %s %s", distribution, found)
    return allowed


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or "0")


class DirectWriter:
    """Write the batches of the mailboxes queued here, from one task per batch of them.

    The task writes in slices of about ``WRITE_SLICE`` seconds, handing the loop back between
    two (publishes and storage replies go on meanwhile), as the write scheduler's wake-ups do;
    the scheduler waits for :meth:`busy` to end before it counts a batch's writes as done.

    Args:
        clock: measures the slices (seconds).
    """

    __slots__ = ("_clock", "_due", "_task")

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._due: list[Mailbox] = []
        self._task: asyncio.Task[None] | None = None

    def busy(self) -> bool:
        """Whether writes are queued or under way."""
        return self._task is not None

    def queue(self, mailbox: Mailbox) -> None:
        """Write ``mailbox``'s batch soon, from this writer's task."""
        self._due.append(mailbox)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        clock = self._clock
        try:
            while self._due:
                due, self._due = self._due, []
                began = clock()
                for index, mailbox in enumerate(due, 1):
                    if mailbox.write_directly():
                        _state.written += 1
                    if index % SLICE_CHECK == 0 and clock() - began >= WRITE_SLICE:
                        await asyncio.sleep(0)  # the loop serves what arrived meanwhile
                        began = clock()
        finally:
            self._task = None
            if self._due:  # cancelled (the loop is closing): wake them as usual
                due, self._due = self._due, []
                for mailbox in due:
                    mailbox.wake_writer()


def written() -> int:
    """How many batches were written directly in this process (for tests and metrics)."""
    return _state.written


def step(send: Send, frames: list[Any]) -> Resume | None:
    """Send ``frames`` as one body chunk; run ``send`` until it completes (None) or waits (what
    finishes it).

    Raises:
        OSError: the client has gone (what ``send`` raises then).
        Exception: anything else ``send`` raised; direct writes are then off.
    """
    message = {"type": "http.response.body", "body": b"".join(frames), "more_body": True}
    coroutine = cast("Coroutine[Any, Any, None]", send(message))  # the fence's sends are coroutines
    try:
        yielded = coroutine.send(None)
    except StopIteration:
        return None
    except OSError:
        raise
    except Exception as exc:
        disable(f"a direct write raised {exc!r}")
        raise
    return Resume(coroutine, yielded)


class Resume:
    """Await the rest of a ``send`` coroutine that a direct write started and that waits.

    The connection's writer awaits it: the future the coroutine waits for is handed to the
    writer's task, and the coroutine resumes there where it stopped.
    """

    __slots__ = ("_coroutine", "_yielded")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coroutine = coroutine
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, yielded = self._coroutine, self._yielded
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # noqa: PERF203 - rare: cancellation passes in
                try:
                    yielded = coroutine.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coroutine.send(sent)
                except StopIteration as stop:
                    return stop.value
