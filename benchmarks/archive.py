"""Archive range reads: a page from a 100k-broadcast archive against one from a 1k archive.

A chat replay reads a recorded stream's chat a page at a time (``GET /history``, range
requests), so a page must cost the same whatever the length of the recording: a range query is
O(log n + k) (issue 16). This measures ``Storage.archive_range`` itself, in this process, for
``MemoryStorage`` and ``RedisStorage`` (the machine's Redis, under a key prefix of its own,
deleted afterwards):

* two channels are filled through ``Storage.append(..., archive=N, timestamp=t)``, as
  ``ChannelApp`` fills them, with ``--small`` and ``--big`` broadcasts of ~200 bytes, 0.05 s of
  media time apart (a busy chat: 20 messages a second, in media-time order as during a live
  stream; no live history is kept, ``keep=0``);
* then each channel is read ``--repeats`` times at each of ``--offsets`` media times spread over
  it, a page of ``--page`` broadcasts from there (``start=t``, ``limit=page``), and every read is
  timed;
* the figure is the median read of each archive, and the ratio big / small. Goal: at most 2x.

Usage (from the repository root, after ``scripts/setup``)::

    .venv/bin/python benchmarks/archive.py              # both storages, as run.py does
    .venv/bin/python benchmarks/archive.py --no-redis   # MemoryStorage only

``benchmarks/run.py`` runs the same part in its full run and alone with ``--archive-only``
(``archive_part`` and ``archive_table`` below).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, Final

from channel_asgi.storage import MemoryStorage, RedisStorage
from channel_asgi.storage.base import Storage

#: Media time between two archived broadcasts, seconds.
SPACING: Final = 0.05
#: Appends in flight while filling (RedisStorage pipelines concurrent calls).
FILL_BATCH: Final = 500
STORAGES: Final = {"memory": "MemoryStorage", "redis": "RedisStorage"}
GOAL: Final = 2.0


def payload(n: int) -> bytes:
    """An encoded broadcast envelope of about 200 bytes."""
    return (
        b'{"stream_id":"vod/bench","author_id":"u-%d","to_user_id":"","message":{"text":"%s"},'
        b'"timestamp":%.2f,"type":"broadcast","widget_key":""}' % (n, b"x" * 80, n * SPACING)
    )


async def fill(storage: Storage, channel: str, count: int) -> float:
    """Archive ``count`` broadcasts on ``channel``; return how many seconds it took."""
    started = time.perf_counter()
    for first in range(0, count, FILL_BATCH):
        await asyncio.gather(
            *(
                storage.append(
                    channel, payload(n), keep=0, archive=count, timestamp=round(n * SPACING, 2)
                )
                for n in range(first, min(first + FILL_BATCH, count))
            )
        )
    return time.perf_counter() - started


async def time_pages(
    storage: Storage, channel: str, count: int, page: int, offsets: int
) -> list[float]:
    """Read a page at each of ``offsets`` media times; return the µs each read took."""
    last = max(count - page, 0)  # every offset has a whole page after it
    starts = [round(last * i / max(offsets - 1, 1)) * SPACING for i in range(offsets)]
    await storage.archive_range(channel, start=starts[0], limit=page)  # warm up (connections)
    samples: list[float] = []
    for start in starts:
        began = time.perf_counter()
        found = await storage.archive_range(channel, start=start, limit=page)
        samples.append((time.perf_counter() - began) * 1e6)
        if len(found.events) != min(page, count):
            raise RuntimeError(f"a page at {start} s held {len(found.events)} broadcasts")
    return samples


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median_us": statistics.median(samples),
        "low_us": min(samples),
        "high_us": max(samples),
        "reads": len(samples),
    }


async def measure(
    make: Callable[[], Storage], small: int, big: int, page: int, offsets: int, repeats: int
) -> dict[str, Any]:
    """Fill a small and a big archive on a new storage, and time their pages."""
    storage = make()
    try:
        filled = {
            "small": await fill(storage, "vod/small", small),
            "big": await fill(storage, "vod/big", big),
        }
        # Alternate the two, so that drift in the machine hits both alike.
        small_runs: list[float] = []
        big_runs: list[float] = []
        for _ in range(repeats):
            small_runs += await time_pages(storage, "vod/small", small, page, offsets)
            big_runs += await time_pages(storage, "vod/big", big, page, offsets)
    finally:
        close = getattr(storage, "aclose", None)
        if close is not None:
            await close()
    result = {"small": summary(small_runs), "big": summary(big_runs), "fill_s": filled}
    result["ratio"] = result["big"]["median_us"] / result["small"]["median_us"]
    return result


def drop_redis_keys(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (the archive has no ttl)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def archive_part(
    *,
    small: int = 1_000,
    big: int = 100_000,
    page: int = 200,
    offsets: int = 9,
    repeats: int = 5,
    redis_url: str | None = "redis://127.0.0.1:6379/0",
) -> dict[str, Any]:
    """Measure both storages (``redis_url`` None: memory only); return the part's results."""
    started = time.monotonic()
    storages: dict[str, Any] = {}
    storages["memory"] = asyncio.run(measure(MemoryStorage, small, big, page, offsets, repeats))
    say("memory", storages["memory"])
    if redis_url is not None:
        prefix = f"bench-archive-{secrets.token_hex(4)}"
        try:
            storages["redis"] = asyncio.run(
                measure(
                    lambda: RedisStorage(redis_url, prefix=prefix),
                    small,
                    big,
                    page,
                    offsets,
                    repeats,
                )
            )
        finally:
            drop_redis_keys(redis_url, prefix)
        say("redis", storages["redis"])
    params = {
        "small": small,
        "big": big,
        "page": page,
        "offsets": offsets,
        "repeats": repeats,
        "seconds": round(time.monotonic() - started),
    }
    return {"params": params, "storages": storages}


def say(name: str, result: dict[str, Any]) -> None:
    print(
        f"archive {name}: {result['small']['median_us']:.0f} µs per page of the small archive, "
        f"{result['big']['median_us']:.0f} µs of the big one ({result['ratio']:.2f}x)",
        file=sys.stderr,
        flush=True,
    )


def _count(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def archive_table(part: dict[str, Any]) -> str:
    """The "Archive range reads" section of the results: what runs, and a row per storage."""
    params = part["params"]
    small, big = _count(params["small"]), _count(params["big"])
    lines = ["### Archive range reads", ""]
    if "separate" in part:
        lines += [
            f"Measured by `benchmarks/run.py --archive-only` on {part['separate']}, apart from "
            "the rows above.",
            "",
        ]
    lines += [
        f"`Storage.archive_range` in the benchmark's process (`benchmarks/archive.py`): a page of "
        f"{params['page']} broadcasts from a channel archive of {params['big']:,} broadcasts "
        f"against one of {params['small']:,}, ~200 bytes each, {SPACING:g} s of media time "
        f"apart; {params['repeats']} reads at each of {params['offsets']} media times spread "
        "over each archive, the two archives in turn. The figure is the median read, with the "
        f"range of the reads. Goal: a page of the {big} archive costs at most {GOAL:g}x one of "
        f"the {small} archive (a range query is O(log n + k)).",
        "",
        f"| storage | µs per page, {small} archive (range) | µs per page, {big} archive (range) "
        f"| {big} / {small} | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for key, result in part["storages"].items():
        low, high = result["small"], result["big"]
        ratio = result["ratio"]
        lines.append(
            f"| {STORAGES.get(key, key)} | {low['median_us']:.0f} ({low['low_us']:.0f} to "
            f"{low['high_us']:.0f}) | {high['median_us']:.0f} ({high['low_us']:.0f} to "
            f"{high['high_us']:.0f}) | {ratio:.2f}x | <= {GOAL:g}x | "
            f"{'yes' if ratio <= GOAL else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--small", type=int, default=1_000, help="broadcasts, small archive")
    parser.add_argument("--big", type=int, default=100_000, help="broadcasts, big archive")
    parser.add_argument("--page", type=int, default=200, help="broadcasts per page")
    parser.add_argument("--offsets", type=int, default=9, help="media times read in each")
    parser.add_argument("--repeats", type=int, default=5, help="reads at each media time")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    part = archive_part(
        small=args.small,
        big=args.big,
        page=args.page,
        offsets=args.offsets,
        repeats=args.repeats,
        redis_url=None if args.no_redis else args.redis,
    )
    print(archive_table(part))


if __name__ == "__main__":
    main()
