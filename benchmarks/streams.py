"""One stream of many channels: connect time, server memory, and the id line, for N channels.

A stream of several channels (``GET /subscribe?channel=...``) joins every channel before its
first byte, so its connect time grows with N; its server memory is one mailbox plus, per channel,
a room entry, a presence entry and an ``Opening``; and each broadcast carries an ``id:`` line with
a cursor per channel seen. This measures all three on a real server (``channel-asgi``'s app under
uvicorn, a child process on loopback, ``MemoryStorage`` or the machine's Redis):

* **connect**: from the request to the last of the N ``init`` events, median of ``--repeats``;
* **memory**: the server's RSS before and after opening ``--connections`` streams of N channels,
  divided by the streams and by the channel-connections;
* **id line**: the length of the ``id:`` line once every channel has delivered one broadcast
  (what each further broadcast costs the stream in bytes);
* **WebSocket connect**: the same as connect, for one ``/ws?channel=...`` socket of N channels.

Usage (from the repository root, after ``scripts/setup``)::

    .venv/bin/python benchmarks/streams.py                  # N = 10, 100, 1000 on memory
    .venv/bin/python benchmarks/streams.py --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx

SECRET = "streams-benchmark-secret-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _start(options: dict[str, object]) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = [
        sys.executable, "-m", "uvicorn", "channel_asgi.cli:create_app", "--factory",
        "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    env = {**os.environ, "CHANNEL_ASGI_CLI_OPTIONS": json.dumps(options)}
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if _answers(port):
            return process, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("the server did not start")


@asynccontextmanager
async def _stream(
    http: httpx.AsyncClient, base: str, names: list[str]
) -> AsyncIterator[tuple[float, dict[str, str], AsyncIterator[str]]]:
    """Open a stream of ``names``; yield (seconds to the last init, tokens, its line iterator)."""
    query = "&".join(f"channel={name}" for name in names)
    started = time.perf_counter()
    async with http.stream("GET", f"{base}/subscribe?{query}", timeout=120) as response:
        response.raise_for_status()
        lines = response.aiter_lines()
        tokens: dict[str, str] = {}
        async for line in lines:
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["type"] == "init":
                    tokens[event["stream_id"]] = event["message"]["token"]
                    if len(tokens) == len(names):
                        break
        yield time.perf_counter() - started, tokens, lines


async def measure_ws(base: str, n: int, repeats: int) -> float:
    """Median milliseconds from the handshake to the last of ``n`` inits on ``/ws?channel=``."""
    import websockets

    times = []
    for repeat in range(repeats):
        query = "&".join(f"channel=w{repeat}-c{k}" for k in range(n))
        started = time.perf_counter()
        url = "ws" + base[len("http") :] + f"/ws?{query}"
        async with websockets.connect(url, open_timeout=120, max_size=None) as ws:
            inits = 0
            while inits < n:
                if json.loads(await ws.recv())["type"] == "init":
                    inits += 1
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def measure(base: str, pid: int, n: int, connections: int, repeats: int) -> dict[str, float]:
    """Return the figures for streams of ``n`` channels."""
    limits = httpx.Limits(max_connections=connections + 8)
    async with httpx.AsyncClient(trust_env=False, limits=limits) as http:
        times = []
        for repeat in range(repeats):
            names = [f"r{repeat}-c{k}" for k in range(n)]
            async with _stream(http, base, names) as (seconds, _, _lines):
                times.append(seconds)
        await asyncio.sleep(0.5)
        before = _rss(pid)
        async with AsyncExitStack() as stack:
            for index in range(connections):
                names = [f"m{index}-c{k}" for k in range(n)]
                await stack.enter_async_context(_stream(http, base, names))
            await asyncio.sleep(0.5)
            after = _rss(pid)
        names = [f"id-c{k}" for k in range(n)]
        async with _stream(http, base, names) as (_, tokens, lines):
            for name in names:
                reply = await http.post(
                    f"{base}/publish/{name}",
                    params={"token": tokens[name]},
                    json={"type": "broadcast", "message": "x"},
                )
                reply.raise_for_status()
            seen = 0
            id_line = ""
            async for line in lines:
                if line.startswith("id: "):
                    id_line = line
                    seen += 1
                    if seen == n:
                        break
    per_stream = (after - before) / connections
    return {
        "channels": n,
        "connect_ms": statistics.median(times) * 1000,
        "rss_per_stream_kib": per_stream / 1024,
        "rss_per_channel_kib": per_stream / n / 1024,
        "id_line_bytes": len(id_line) + 1,
        "ws_connect_ms": await measure_ws(base, n, repeats),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--redis", default=None, help="a Redis URL (default: MemoryStorage)")
    args = parser.parse_args()
    options: dict[str, object] = {
        "secret": SECRET,
        "max_channels_per_connection": max(args.channels),
        "max_connections_per_ip": 100_000,
    }
    if args.redis:
        options.update(redis=args.redis, redis_prefix=f"bench-{uuid.uuid4().hex[:8]}")
    process, base = _start(options)
    try:
        print("storage", "redis" if args.redis else "memory")
        print(
            f"{'N':>6} {'connect ms':>11} {'KiB/stream':>11} {'KiB/channel':>12} {'id: bytes':>10}"
            f" {'WS connect ms':>14}"
        )
        for n in args.channels:
            connections = max(4, args.connections * 10 // max(n, 10))
            row = await measure(base, process.pid, n, connections, args.repeats)
            print(
                f"{n:>6} {row['connect_ms']:>11.1f} {row['rss_per_stream_kib']:>11.1f} "
                f"{row['rss_per_channel_kib']:>12.2f} {row['id_line_bytes']:>10.0f}"
                f" {row['ws_connect_ms']:>14.1f}"
            )
    finally:
        process.terminate()
        process.wait(timeout=10)
        if args.redis:
            import redis

            client = redis.Redis.from_url(args.redis)
            prefix = str(options["redis_prefix"])
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()


if __name__ == "__main__":
    asyncio.run(main())
