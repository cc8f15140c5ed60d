"""channel_asgi bare or mounted in FastAPI, with its direct write as it is, off or forced on.

The "Mounted app and direct write" rows of ``benchmarks/run.py`` serve this factory on uvicorn,
every variant with the same uvicorn options::

    python -m uvicorn benchmarks.mounts_app:create --factory --port 8000 ...

Chosen by environment variables:

* ``CHANNEL_ASGI_CLI_OPTIONS``: the app's options, as ``channel-asgi serve`` passes them;
* ``CHANNEL_ASGI_BENCH_MOUNT``: ``bare`` (the ChannelApp itself, as ``channel-asgi serve``) or
  ``fastapi`` (``FastAPI().mount("/channel", channels)``, the README's first example);
* ``CHANNEL_ASGI_BENCH_DIRECT_WRITE``: ``as-is``, ``off`` or ``forced``. On code with the fenced
  direct write (``channel_asgi.fastpath``, which serves mounted apps too), ``off`` turns it off
  (``fastpath.set_enabled(False)``) and ``forced`` is refused. On older code with the direct
  write of ``channel_asgi.stream``: ``off`` makes ``stream._direct_writer`` return None, so the
  hub never writes for a parked connection, and ``forced`` makes it accept any ``send``,
  Starlette's wrappers included, so a mounted app gets the direct write too.

Benchmark-only, like ``unchecked.py``: never a way to run the library. On code that has no
direct write (no ``channel_asgi.stream._direct_writer``), ``off`` serves the app as it is, and
``forced`` refuses to start. ``python -m benchmarks.mounts_app --probe`` prints, as JSON, which
channel_asgi this interpreter imports and which direct write it has.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Coroutine
from types import ModuleType
from typing import Any

from channel_asgi.cli import create_app

#: Where the ChannelApp is mounted in the FastAPI app (the load client's paths start with it).
PREFIX = "/channel"


def _stream_module() -> ModuleType | None:
    """The module that holds ``_direct_writer``, or None when this code has no direct write."""
    try:
        module = importlib.import_module("channel_asgi.stream")
    except ImportError:
        return None
    return module if callable(getattr(module, "_direct_writer", None)) else None


def _no_direct_writer(send: Any) -> None:
    return None


def _any_send_writer(send: Any) -> Callable[[bytes], Coroutine[Any, Any, None]]:
    """What ``_direct_writer`` returns for uvicorn's own ``send``, for any ``send`` at all."""

    def start(body: bytes) -> Coroutine[Any, Any, None]:
        message = {"type": "http.response.body", "body": body, "more_body": True}
        coroutine: Coroutine[Any, Any, None] = send(message)
        return coroutine

    return start


def _fastpath_module() -> ModuleType | None:
    """``channel_asgi.fastpath`` (the fenced direct write), or None when this code has none."""
    try:
        module = importlib.import_module("channel_asgi.fastpath")
    except ImportError:
        return None
    return module if callable(getattr(module, "set_enabled", None)) else None


def direct_write_kind() -> str:
    """``fenced`` (``channel_asgi.fastpath``, mounted apps too), ``stream`` (bare uvicorn only,
    ``channel_asgi.stream._direct_writer``) or ``none``."""
    if _fastpath_module() is not None:
        return "fenced"
    return "stream" if _stream_module() is not None else "none"


def set_direct_write(mode: str) -> None:
    """Turn the direct write ``off``, ``forced`` on, or leave it ``as-is``."""
    if mode not in ("as-is", "off", "forced"):
        raise SystemExit(f"CHANNEL_ASGI_BENCH_DIRECT_WRITE: as-is, off or forced, not {mode!r}")
    fenced = _fastpath_module()
    if fenced is not None:
        if mode == "forced":
            raise SystemExit("the fenced direct write serves mounted apps as it is: no forcing")
        if mode == "off":
            fenced.set_enabled(False)
        return
    stream = _stream_module()
    if mode == "as-is" or (mode == "off" and stream is None):
        return
    if stream is None:
        raise SystemExit("this channel_asgi has no direct write to force on")
    # _pump looks _direct_writer up at each connection
    stream._direct_writer = _no_direct_writer if mode == "off" else _any_send_writer  # type: ignore[attr-defined]


def create() -> Any:
    """The app uvicorn serves (``--factory``)."""
    set_direct_write(os.environ.get("CHANNEL_ASGI_BENCH_DIRECT_WRITE", "as-is"))
    channels = create_app()
    mount = os.environ.get("CHANNEL_ASGI_BENCH_MOUNT", "bare")
    if mount == "bare":
        return channels
    if mount != "fastapi":
        raise SystemExit(f"CHANNEL_ASGI_BENCH_MOUNT: bare or fastapi, not {mount!r}")
    from fastapi import FastAPI

    app = FastAPI()
    app.mount(PREFIX, channels)
    return app


def probe() -> dict[str, Any]:
    """Which channel_asgi is imported here, and whether it has the direct write."""
    import channel_asgi

    return {"file": channel_asgi.__file__, "direct_write": direct_write_kind()}


if __name__ == "__main__":
    if sys.argv[1:] != ["--probe"]:
        raise SystemExit("usage: python -m benchmarks.mounts_app --probe")
    print(json.dumps(probe()))
