"""What the app can tell of the ASGI server that runs it, and what it does about each one.

ASGI does not name the server, so the app recognises it once, on its first connection, by where
the ``receive`` and ``send`` callables it is given come from (a host such as Starlette wraps
``send`` but passes ``receive`` on as it is), and failing that by the server's modules in the
process. Most servers need nothing from the app; two do:

- **granian** sends no ``lifespan.shutdown`` while a response is open and waits for every one to
  end, and an SSE response never ends on its own: on SIGTERM it would wait forever. The app adds
  a handler after granian's own for SIGTERM and SIGINT (see ``lifecycle.watch_exit_signals``),
  so it sees the signal and ends its streams, as it does under uvicorn.
- **daphne**'s ``send`` never waits: it buffers every write in its own memory, so a client that
  stops reading cannot be seen through ASGI, and no mailbox ever fills. The app logs this once,
  and ends each SSE stream once it has written ``max_buffer_bytes`` of live events; the browser
  reconnects after ``retry`` and resumes from history with ``Last-Event-ID``, losing nothing. A
  reader that stalled then costs daphne that much memory at most, instead of everything sent to
  it. (Daphne's own WebSocket keepalive closes a WebSocket that stops answering its pings.)
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Final

from .http import Receive, Send

__all__ = ["DAPHNE", "GRANIAN", "UNPACED", "identify", "warn_unpaced"]

logger = logging.getLogger("channel_asgi")

GRANIAN: Final = "granian"
DAPHNE: Final = "daphne"
_KNOWN: Final = ("uvicorn", "hypercorn", GRANIAN, DAPHNE)
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
