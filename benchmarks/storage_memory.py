"""What ``MemoryStorage`` keeps: bytes per abandoned channel, and RSS under a history flood.

Two measurements, the figures of ``docs/storage.md`` ("Memory bounds"):

* **bytes per idle channel** (in this process, with ``tracemalloc``): ``--channels`` fresh
  channels each get a viewer, one ~200-byte broadcast and the viewer's leave, as a page that
  opens a channel, says one thing and goes away. Measured with history kept (no ttl), with
  ``history_ttl`` after the ttl has passed and a sweep ran (the storage's clock is moved, no real
  waiting), and with no broadcast at all;
* **RSS under a flood**: ``channel-asgi serve`` in a child process; one anonymous client takes a
  publish token per channel (subscribe, read ``init``, disconnect) and publishes ``--messages``
  broadcasts of ~65 KB to each of ``--flood-channels`` channels. The server's resident set size
  is read from ``/proc`` before and after, for each ``--max-history-bytes`` given (``none``: the
  option is not passed, the default applies).

Usage (from the repository root, after ``scripts/setup``)::

    .venv/bin/python benchmarks/storage_memory.py
    .venv/bin/python benchmarks/storage_memory.py --max-history-bytes none 67108864
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import httpx

from channel_asgi.storage import MemoryStorage

PAYLOAD = (
    b'{"stream_id":"c","author_id":"u-1","to_user_id":"","message":{"text":"%s"},' % (b"x" * 120)
    + b'"timestamp":0.0,"type":"broadcast","widget_key":""}'
)


class Clock:
    """A clock the measurement moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _storage(clock: Clock) -> Any:
    try:
        return MemoryStorage(clock=clock)  # type: ignore[call-arg]
    except TypeError:  # a MemoryStorage from before the memory bounds
        return MemoryStorage()


async def _idle_channels(channels: int, *, ttl: float | None, broadcast: bool) -> float:
    clock = Clock()
    storage = _storage(clock)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(channels):
        name = f"room-{n}"
        await storage.join(name, f"conn-{n}")
        if broadcast:
            await storage.append(name, PAYLOAD, keep=1000, ttl=ttl)
        await storage.leave(name, f"conn-{n}")
    if ttl is not None:
        clock.now += ttl + 1
        sweep = getattr(storage, "sweep", None)
        while sweep is not None and sweep():
            pass
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / channels


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _token(client: httpx.AsyncClient, base: str, channel: str) -> str:
    async with client.stream("GET", f"{base}/subscribe/{channel}") as reply:
        async for line in reply.aiter_lines():
            if line.startswith("data:"):
                return str(json.loads(line[5:])["message"]["token"])
    raise RuntimeError("no init event")


async def _flood(base: str, channels: int, messages: int) -> None:
    body = json.dumps({"type": "broadcast", "message": "y" * 65000, "widget_key": ""})
    async with httpx.AsyncClient(trust_env=False, timeout=30.0) as client:
        for c in range(channels):
            channel = f"flood-{c}"
            token = await _token(client, base, channel)
            url = f"{base}/publish/{channel}?token={token}"
            headers = {"content-type": "application/json"}
            for _ in range(0, messages, 20):
                replies = await asyncio.gather(
                    *(client.post(url, content=body, headers=headers) for _ in range(20))
                )
                assert all(r.status_code == 200 for r in replies), replies[0].text


def _flood_rss(budget: str, channels: int, messages: int) -> tuple[int, int]:
    port = _free_port()
    command = [sys.executable, "-m", "channel_asgi", "serve", "--port", str(port)]
    command += ["--no-access-log", "--log-level", "warning"]
    if budget != "none":
        command += ["--max-history-bytes", budget]
    server = subprocess.Popen(command, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        before = _rss(server.pid)
        asyncio.run(_flood(base, channels, messages))
        time.sleep(1.0)  # let the sweep and the allocator settle
        return before, _rss(server.pid)
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, default=20000)
    parser.add_argument("--flood-channels", type=int, default=3)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--max-history-bytes", nargs="*", default=["none", str(64 * 2**20)])
    args = parser.parse_args()
    for label, ttl, broadcast in (
        ("one broadcast, kept (no ttl)", None, True),
        ("one broadcast, history_ttl passed", 60.0, True),
        ("no broadcast", None, False),
    ):
        per = asyncio.run(_idle_channels(args.channels, ttl=ttl, broadcast=broadcast))
        print(f"idle channel, {label}: {per:.0f} bytes per channel")
    for budget in args.max_history_bytes:
        before, after = _flood_rss(budget, args.flood_channels, args.messages)
        mib = 2**20
        print(
            f"flood {args.flood_channels} x {args.messages} x 65 KB, max_history_bytes={budget}: "
            f"RSS {before / mib:.0f} MiB -> {after / mib:.0f} MiB"
        )


if __name__ == "__main__":
    main()
