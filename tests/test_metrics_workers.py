"""``channel-asgi serve --workers 2 --metrics``: a scrape adds up every worker's counts.

Which worker accepts a connection is the kernel's choice, so the test opens subscribers until
both workers hold some, reads each worker's own multi-process files to see that they do, and
checks that one scrape (answered by either worker) gives the sums.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from .helpers import WAIT, Subscriber, eventually, eventually_blocking, publish, subscribe
from .test_metrics import Samples, parse, scrape, value

SECRET = "workers-metrics-secret-" + "0" * 20
MAX_SUBSCRIBERS = 24
PUBLISHES = 12


def command(redis_url: str, prefix: str) -> list[str]:
    """``channel-asgi serve`` with two workers and metrics, on the shared Redis."""
    return [
        "-m", "channel_asgi", "serve", "--port", "{port}", "--workers", "2", "--metrics",
        "--redis", redis_url, "--redis-prefix", prefix, "--secret", SECRET,
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip


def per_worker(directory: Path) -> dict[int, Samples]:
    """Each worker's own samples (pid -> samples), read from its files alone."""
    pids = {int(path.stem.rsplit("_", 1)[1]) for path in directory.glob("*.db")}
    found: dict[int, Samples] = {}
    for pid in pids:
        with tempfile.TemporaryDirectory() as alone:
            for path in directory.glob(f"*_{pid}.db"):
                shutil.copy(path, alone)
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=alone)
            found[pid] = parse(generate_latest(registry).decode())
    return found


def holding(directory: Path) -> dict[int, float]:
    """pid -> the SSE connections that worker reports (as of its last flush)."""
    return {
        pid: value(samples, "channel_asgi_connections", transport="sse")
        for pid, samples in per_worker(directory).items()
    }


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as opened:
        yield opened


@pytest.mark.slow
async def test_a_scrape_of_two_workers_adds_up_every_workers_counts(
    server_process, redis_url: str, redis_prefix: str, tmp_path: Path, stack: AsyncExitStack
) -> None:
    """M subscribers on both workers, N publishes through both: one scrape has the sums."""
    # TMPDIR: where the command makes its multi-process directory, for the test to look into.
    server = server_process(command(redis_url, redis_prefix), env={"TMPDIR": str(tmp_path)})
    base = server.base
    directory = eventually_blocking(lambda: next(tmp_path.glob("channel-asgi-metrics-*"), None))
    await eventually(lambda: len(list(directory.glob("gauge_livesum_*.db"))), lambda n: n == 2)

    # Each subscriber on a connection of its own; open them until both workers hold some.
    subscribers: list[Subscriber] = []
    while len(subscribers) < 2 or len([n for n in holding(directory).values() if n]) < 2:
        assert len(subscribers) < MAX_SUBSCRIBERS, f"one worker took them all: {holding(directory)}"
        http = await stack.enter_async_context(httpx.AsyncClient(trust_env=False, timeout=WAIT))
        subscribers.append(await stack.enter_async_context(subscribe(http, f"{base}/subscribe/w")))
        for earlier in subscribers[:-1]:  # every join delivered before the next subscriber
            assert (await earlier.stream.until("system")).json["message"]["status"] == "join"
        await eventually(lambda: sum(holding(directory).values()) == len(subscribers))
    m = len(subscribers)

    for n in range(PUBLISHES):  # a new connection each: either worker answers
        async with httpx.AsyncClient(trust_env=False, timeout=WAIT) as once:
            body = {"type": "broadcast", "message": n}
            reply = await publish(once, f"{base}/publish/w", subscribers[n % m].token, body)
            assert reply.status_code == 200, reply.text
    for sub in subscribers:
        for _ in range(PUBLISHES):
            await sub.stream.until("broadcast")

    expected = {
        ("channel_asgi_connections", "sse"): m,
        ("channel_asgi_channels", ""): 2,  # the sum over workers of the channels each one serves
        ("channel_asgi_publishes_total", "broadcast"): PUBLISHES,
        ("channel_asgi_deliveries_total", ""): m * PUBLISHES + m * (m - 1) // 2,
        ("channel_asgi_subscribes_total", "sse"): m,
        ("channel_asgi_publish_seconds_count", ""): PUBLISHES,
    }

    def totals(samples: Samples) -> dict[tuple[str, str], float]:
        return {
            (name, kind): value(samples, name, **({"transport": kind} if kind == "sse" else {}))
            if name != "channel_asgi_publishes_total"
            else value(samples, name, type=kind, code="200")
            for name, kind in expected
        }

    async with httpx.AsyncClient(trust_env=False, timeout=WAIT) as http:
        await eventually(lambda: scrape(http, base), lambda s: totals(s) == expected)
        for _ in range(4):  # whichever worker answers the scrape, it reads every worker's files
            assert totals(await scrape(http, base)) == expected
    workers = per_worker(directory)
    assert len(workers) == 2
    for key in expected:  # and each worker's own counts add up to those sums
        assert sum(totals(samples)[key] for samples in workers.values()) == expected[key]
    assert all(totals(s)[("channel_asgi_connections", "sse")] for s in workers.values())

    await stack.aclose()
    from .conftest import stop_server_process

    stop_server_process(server)
    assert not directory.exists(), "the command removes its multi-process directory"
