"""What MemoryStorage promises beyond the conformance suite."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest

from channel_asgi import ChannelApp
from channel_asgi.storage import History, MemoryStorage, StorageChannelClosed
from channel_asgi.storage.conformance import WAIT, running
from channel_asgi.storage.memory import _CHANNEL_BYTES, _EVENT_BYTES
from channel_asgi.storage.memory_archive import ARCHIVED_BYTES

from ..helpers import FakeClock, subscribe


async def test_a_later_process_does_not_recognise_an_earlier_ones_ids() -> None:
    """A browser that resumes against a restarted process gets ``recovered`` false, not a
    replay from a wrong point, although the new process numbers its events afresh."""
    before = MemoryStorage()
    kept = [await before.append("c", b'{"n":%d}' % n, keep=10) for n in range(3)]
    await anyio.sleep(0.002)  # ids carry the storage's start time in milliseconds
    after = MemoryStorage()
    fresh = [await after.append("c", b'{"n":%d}' % n, keep=10) for n in range(5)]
    assert not set(kept) & set(fresh)
    history = await after.history("c", after=kept[1])
    assert history.recovered is False
    assert [event.id for event in history.events] == fresh


class Clock:
    """A monotonic clock the test moves by hand (the storage never sleeps on it)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def body(n: int, size: int = 100) -> bytes:
    return b'{"n":%d,"pad":"%s"}' % (n, b"x" * size)


def recount(storage: MemoryStorage) -> int:
    """What the storage's counted bytes should be, summed from scratch."""
    total = 0
    for state in storage._channels.values():
        events = list(state.events or ())
        archived = [] if state.archive is None else state.archive._entries
        if events or archived or (state.last_id is not None and not state.live):
            total += _CHANNEL_BYTES
        total += sum(len(e.payload) + len(e.id) + _EVENT_BYTES for e, _ in events)
        for entry in archived:  # a deleted broadcast leaves its id
            kept = len(entry) if isinstance(entry, str) else len(entry.payload) + len(entry.id)
            total += kept + ARCHIVED_BYTES
    return total


async def fill(storage: MemoryStorage, channel: str, count: int, **options: Any) -> list[str]:
    return [await storage.append(channel, body(n), keep=100, **options) for n in range(count)]


async def test_a_channel_left_with_no_history_keeps_only_its_newest_id_until_it_expires() -> None:
    """Issue 14: a channel nobody watches that retains nothing costs one counted id, then goes."""
    clock = Clock()
    storage = MemoryStorage(clock=clock)
    newest = {}
    for n in range(500):
        await storage.listen(f"room-{n}")
        await storage.join(f"room-{n}", f"c{n}")
        newest[n] = await storage.append(f"room-{n}", body(n), keep=0, ttl=5.0)
        await storage.leave(f"room-{n}", f"c{n}")
        await storage.unlisten(f"room-{n}")
    assert storage.history_bytes == 500 * _CHANNEL_BYTES  # counted against the budget
    assert await storage.history("room-7", after=newest[7]) == History([], True)
    clock.now += 6
    assert storage.sweep() is False
    assert (storage.channel_count, storage.history_bytes) == (0, 0)
    await storage.listen("watched")
    await storage.join("watched", "c")
    await storage.leave("watched", "c")
    await storage.unlisten("watched")
    assert storage.channel_count == 0


async def test_expired_history_is_freed_without_touching_the_channel() -> None:
    """Issue 14: once history_ttl has passed, the sweep frees the history and drops the channel."""
    clock = Clock()
    storage = MemoryStorage(clock=clock)
    for n in range(200):
        await storage.join(f"room-{n}", f"c{n}")
        await storage.append(f"room-{n}", body(n), keep=100, ttl=10.0)
        await storage.leave(f"room-{n}", f"c{n}")
    clock.now += 8
    await storage.append("mixed", body(1), keep=100, ttl=10.0)
    clock.now += 1
    await storage.append("mixed", body(2), keep=100, ttl=10.0)
    one_event = storage.history_bytes
    assert storage.channel_count == 201
    clock.now += 1.5  # the 200 rooms expired; "mixed" keeps both
    assert storage.sweep() is False
    assert storage.channel_count == 1
    clock.now += 8  # the first of "mixed" expired, not the second
    storage.sweep()
    assert 0 < storage.history_bytes < one_event / 200
    assert storage.history_bytes == recount(storage)
    clock.now += 1
    storage.sweep()
    assert (storage.channel_count, storage.history_bytes) == (0, 0)


async def test_the_sweep_visits_a_bounded_batch_per_call() -> None:
    """One sweep frees at most a batch of channels and says when more is due."""
    clock = Clock()
    storage = MemoryStorage(clock=clock)
    for n in range(2500):
        await storage.append(f"room-{n}", body(n), keep=10, ttl=1.0)
    clock.now += 2
    assert storage.sweep() is True
    assert storage.channel_count == 1500
    assert storage.sweep() is True
    assert storage.sweep() is False
    assert storage.channel_count == 0


async def test_a_watched_channel_whose_history_expired_keeps_its_viewers() -> None:
    """Expiry frees a watched channel's history; its viewers and live delivery go on."""
    clock = Clock()
    storage = MemoryStorage(clock=clock)
    async with running(storage) as live:
        await storage.listen("live")
        await storage.join("live", "c1")
        await storage.listen("live")  # as the app does for its connections
        await fill(storage, "live", 3, ttl=5.0)
        clock.now += 6
        storage.sweep()
        assert storage.history_bytes == 0
        assert await storage.viewer_count("live") == 1
        fresh = await storage.append("live", body(9), keep=100, ttl=5.0)
        assert [d.id for d in await live.inbox.wait_for(4, "live")][-1] == fresh
        assert [e.id for e in (await storage.history("live")).events] == [fresh]


async def test_over_the_budget_the_least_recently_used_idle_channels_go_first() -> None:
    """Issue 14: past max_history_bytes, the idle channel used longest ago is dropped whole."""
    probe = MemoryStorage()
    await fill(probe, "p", 5)
    per_channel = probe.history_bytes
    budget = 3 * per_channel + per_channel // 4  # room for ids a digit longer
    storage = MemoryStorage(max_history_bytes=budget)
    ids = {name: await fill(storage, name, 5) for name in ("a", "b", "c")}
    await storage.history("a")  # a read is a use: "b" is now the least recently used
    ids["d"] = await fill(storage, "d", 5)
    assert storage.history_bytes <= budget
    assert (await storage.history("b")).events == []
    for name in ("a", "c", "d"):
        assert [e.id for e in (await storage.history(name)).events] == ids[name]
    assert storage.history_bytes == recount(storage)


async def test_watched_channels_are_evicted_last_and_keep_working() -> None:
    """Channels with viewers or listeners lose history only when no idle one is left."""
    probe = MemoryStorage()
    await fill(probe, "p", 10)
    budget = 2 * probe.history_bytes + probe.history_bytes // 4  # ids a digit longer
    storage = MemoryStorage(max_history_bytes=budget)
    async with running(storage) as live:
        await storage.join("viewed", "c1")
        await storage.listen("viewed")  # as the app does for its connections
        await storage.listen("listened")
        viewed = await fill(storage, "viewed", 10)
        await fill(storage, "idle", 5)
        listened = await fill(storage, "listened", 10)  # over: "idle" goes, not the others
        assert "idle" not in storage._channels
        assert [e.id for e in (await storage.history("viewed")).events] == viewed
        more = await fill(storage, "listened", 5)  # only watched ones left: oldest go first
        assert storage.history_bytes <= budget
        kept = [e.id for e in (await storage.history("viewed")).events]
        assert kept == viewed[len(viewed) - len(kept) :] and len(kept) < 10
        assert [e.id for e in (await storage.history("listened")).events] == listened + more
        assert await storage.viewer_count("viewed") == 1
        got = await live.inbox.wait_for(15, "listened")  # delivery needs a listener
        assert [d.id for d in got] == listened + more
        assert storage.history_bytes == recount(storage)


async def test_a_resume_from_an_evicted_channel_is_not_recovered() -> None:
    """Issue 14: after eviction a resume says recovered false and replays what is retained."""
    probe = MemoryStorage()
    await fill(probe, "p", 5)
    storage = MemoryStorage(max_history_bytes=2 * probe.history_bytes)
    old = await fill(storage, "gone", 5)
    await fill(storage, "other", 5)
    await fill(storage, "third", 5)  # "gone" is evicted whole
    for after in (old[2], old[-1]):
        assert await storage.history("gone", after=after) == History([], False)
    new = await fill(storage, "gone", 2)  # used again: ids go on from the one counter
    assert min(new, key=_order) == new[0] and _order(new[0]) > _order(old[-1])
    history = await storage.history("gone", after=old[-1])
    assert (history.recovered, [e.id for e in history.events]) == (False, new)


async def test_a_subscriber_resuming_on_an_evicted_channel_is_told_recovered_false(
    serve: Callable[..., Awaitable[str]], client: httpx.AsyncClient
) -> None:
    """Issue 14: over the budget, a resume gets ``recovered: false``, never a silent gap."""
    storage = MemoryStorage(max_history_bytes=2 * _CHANNEL_BYTES + 4 * 400)
    channels = ChannelApp(storage=storage)
    base = await serve(channels)
    gone = await channels.publish("gone", {"n": 1})
    kept = [await channels.publish("kept", {"n": n}) for n in range(2)]
    await channels.publish("other", {"n": 3})  # past the budget: "gone" was used longest ago
    assert gone is not None and "gone" not in storage._channels
    for channel, last, recovered in (("gone", gone, False), ("kept", kept[0], True)):
        headers = {"Last-Event-ID": str(last)}
        async with subscribe(client, f"{base}/subscribe/{channel}", headers=headers) as sub:
            assert sub.init["message"]["recovered"] is recovered
            if recovered:
                assert (await sub.stream.until("broadcast")).id == kept[1]


def _order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


async def test_a_closed_channel_stays_closed_when_its_history_is_dropped() -> None:
    """The closed mark is kept apart from the history that the sweep and the budget drop."""
    clock = Clock()
    storage = MemoryStorage(clock=clock, max_history_bytes=10_000)
    await fill(storage, "shut", 3, ttl=1.0)
    await storage.close_channel("shut", b'{"type":"end"}')
    clock.now += 2
    storage.sweep()
    await fill(storage, "flood", 50)
    assert await storage.is_closed("shut")
    with pytest.raises(StorageChannelClosed):
        await storage.append("shut", body(0), keep=10)


async def test_run_sweeps_every_sweep_interval() -> None:
    """While ``run`` runs, expired channels go without any call into the storage."""
    clock = Clock()
    storage = MemoryStorage(clock=clock, sweep_interval=0.01)
    async with running(storage):
        await fill(storage, "c", 3, ttl=1.0)
        clock.now += 2
        with anyio.fail_after(WAIT):
            while storage.channel_count:
                await anyio.sleep(0.01)
    assert storage.history_bytes == 0


async def test_accounting_matches_a_recount_through_size_changes_and_eviction() -> None:
    """Counting per append stays exact when history sizes change, expire and are evicted."""
    clock = Clock()
    storage = MemoryStorage(clock=clock, max_history_bytes=40_000)
    await storage.join("seen", "c")
    for n in range(400):
        channel = f"room-{n % 13}" if n % 3 else "seen"
        keep = (n % 7) or 1
        await storage.append(channel, body(n, size=n % 300), keep=keep, ttl=30.0 if n % 2 else None)
        clock.now += 0.5
        if n % 50 == 0:
            storage.sweep()
        assert storage.history_bytes == recount(storage) <= 40_000


@pytest.mark.parametrize(
    ("options", "error"),
    [
        pytest.param({"max_history_bytes": 0}, ValueError, id="budget-zero"),
        pytest.param({"max_history_bytes": 1.5}, TypeError, id="budget-float"),
        pytest.param({"max_history_bytes": True}, TypeError, id="budget-bool"),
        pytest.param({"sweep_interval": 0}, ValueError, id="interval-zero"),
        pytest.param({"sweep_interval": float("inf")}, ValueError, id="interval-inf"),
        pytest.param({"clock": 1.0}, TypeError, id="clock-not-callable"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], error: type[Exception]) -> None:
    """Each option is checked at construction, naming the bad value."""
    with pytest.raises(error, match="must be"):
        MemoryStorage(**options)


async def archive(storage: MemoryStorage, channel: str, count: int, **options: Any) -> list[str]:
    """Broadcast ``count`` archived messages, at media times 0, 1, 2...; return their ids."""
    options = {"keep": 100, "archive": 1000, **options}
    return [
        await storage.append(channel, body(n), timestamp=float(n), **options) for n in range(count)
    ]


async def archived(storage: MemoryStorage, channel: str) -> list[str]:
    return [e.id for e in (await storage.archive_range(channel, limit=10_000)).events]


async def test_an_idle_channel_over_the_budget_goes_with_its_archive() -> None:
    """The archive counts against max_history_bytes; an idle channel is dropped with it."""
    probe = MemoryStorage()
    await archive(probe, "p", 5, keep=0)
    per_channel = probe.history_bytes
    assert per_channel > 5 * (len(body(0)) + ARCHIVED_BYTES)
    storage = MemoryStorage(max_history_bytes=3 * per_channel + per_channel // 4)
    ids = {name: await archive(storage, name, 5, keep=0) for name in ("a", "b", "c")}
    await storage.archive_range("a")
    await storage.history("a")  # a use: "b" is now the least recently used
    ids["d"] = await archive(storage, "d", 5, keep=0)
    assert await archived(storage, "b") == []
    for name in ("a", "c", "d"):
        assert await archived(storage, name) == ids[name]
    assert storage.history_bytes == recount(storage)


async def test_a_watched_channel_over_the_budget_loses_history_then_its_oldest_media_time() -> None:
    """Only watched channels left: history goes first, then the archive's oldest media time."""
    probe = MemoryStorage()
    await archive(probe, "p", 10, keep=3)
    budget = probe.history_bytes + probe.history_bytes // 4  # ids a digit longer
    storage = MemoryStorage(max_history_bytes=budget)
    await storage.listen("live")
    ids = await archive(storage, "live", 10, keep=3)
    for n in range(10, 30):
        ids.append(await storage.append("live", body(n), keep=3, archive=1000, timestamp=n))
        kept = await archived(storage, "live")
        assert kept == ids[-len(kept) :]  # the oldest media time went first
        if len(kept) < len(ids):  # the archive lost some: no history was left to lose
            assert (await storage.history("live")).events == []
        assert storage.history_bytes == recount(storage) <= budget
    assert len(kept) < len(ids)
    await storage.unlisten("live")


async def test_accounting_matches_a_recount_with_archives_and_deletions() -> None:
    """Counting stays exact through archiving, archive size changes, evictions and deletes."""
    clock = Clock()
    storage = MemoryStorage(clock=clock, max_history_bytes=60_000)
    await storage.join("seen", "c")
    made: list[tuple[str, str]] = []
    for n in range(400):
        channel = f"room-{n % 11}" if n % 3 else "seen"
        event_id = await storage.append(
            channel,
            body(n, size=n % 200),
            keep=(n % 5) or 1,
            ttl=30.0 if n % 4 == 0 else None,
            archive=(n % 9) * 3,
            timestamp=float(n % 17),
        )
        made.append((channel, event_id))
        if n % 7 == 0:
            await storage.delete_event(*made[n // 2])
        clock.now += 0.5
        if n % 50 == 0:
            storage.sweep()
        assert storage.history_bytes == recount(storage) <= 60_000


async def test_a_deleted_archived_broadcast_frees_its_payload() -> None:
    """A deletion keeps only the id in the archive (for paging) and counts that alone."""
    storage = MemoryStorage()
    ids = await archive(storage, "c", 3, keep=0)
    before = storage.history_bytes
    assert await storage.delete_event("c", ids[1])
    assert before - storage.history_bytes == len(body(1))
    assert storage.history_bytes == recount(storage)


async def test_buckets_are_bounded_the_least_recently_used_forgotten_first(
    clock: FakeClock,
) -> None:
    """Past the bound the bucket used longest ago goes, and starts full again."""
    storage = MemoryStorage()
    storage._max_buckets = 2
    for key in ("a", "b"):
        assert await storage.take_token(key, rate=0.1, burst=1) == 0.0
    assert await storage.take_token("a", rate=0.1, burst=1) == 10.0  # refused: not a use
    assert await storage.take_token("c", rate=0.1, burst=1) == 0.0  # "a" is forgotten
    assert list(storage._buckets) == ["b", "c"]
    assert await storage.take_token("a", rate=0.1, burst=1) == 0.0


async def test_a_bucket_refills_by_the_edge_clock(clock: FakeClock) -> None:
    """MemoryStorage's buckets read channel_asgi.clock.monotonic(): the clock fixture moves them."""
    storage = MemoryStorage()
    assert await storage.take_token("k", rate=0.1, burst=2) == 0.0
    assert await storage.take_token("k", rate=0.1, burst=2) == 0.0
    assert await storage.take_token("k", rate=0.1, burst=2) == 10.0
    clock.advance(4)
    assert await storage.take_token("k", rate=0.1, burst=2) == pytest.approx(6.0)
    clock.advance(6)
    assert await storage.take_token("k", rate=0.1, burst=2) == 0.0
    clock.advance(1000)  # refills to burst, no further
    assert [await storage.take_token("k", rate=0.1, burst=2) for _ in range(3)][-1] > 0


async def test_ended_bans_are_forgotten(clock: FakeClock) -> None:
    """A ban call forgets the channel's ended bans, a check the ended one it finds."""
    storage = MemoryStorage()
    now = clock.time()
    await storage.ban("c", "u", until=now + 5)
    await storage.ban("c", "v", until=now + 100)
    await storage.ban("*", "w", until=now + 5)
    clock.advance(10)
    await storage.ban("c", "x")
    assert set(storage._bans["c"]) == {"v", "x"}
    assert not await storage.is_banned("d", "w")
    assert "*" not in storage._bans
    await storage.unban("c", "v")
    await storage.unban("c", "x")
    assert storage._bans == {}


async def test_an_archive_outlives_its_expired_history() -> None:
    """history_ttl frees the history; the archive, which has no ttl, keeps the channel."""
    clock = Clock()
    storage = MemoryStorage(clock=clock)
    ids = await archive(storage, "vod", 3, ttl=5.0)
    clock.now += 6
    assert storage.sweep() is False
    assert (await storage.history("vod")).events == []
    assert await archived(storage, "vod") == ids
    assert storage.history_bytes == recount(storage) > 0
