"""The Storage conformance suite: every behaviour a backend must have, as pytest tests.

``MemoryStorage`` and ``RedisStorage`` both pass it; a third-party backend runs the same suite
from its own tests by importing it and defining a fixture, ``make_storage``: a factory whose
every call returns a view of *one shared* storage as another process would see it (for a backend
with a server, a new client of the same server and key prefix)::

    # test_my_storage.py
    import pytest

    from channel_asgi.storage.conformance import *  # noqa: F403 - the suite's tests and fixtures


    @pytest.fixture
    def make_storage():
        return lambda: MyStorage("my://server", prefix="conformance-test")


    @pytest.fixture
    def make_unreachable_storage():
        return lambda: MyStorage("my://127.0.0.1:1", prefix="conformance-test")  # nobody there

``make_unreachable_storage`` is the other fixture a backend defines: a factory of instances that
cannot reach their backend, for the tests of failures (skipped without it; a backend that cannot
be unreachable may define it to ``pytest.skip`` with its reason). A shared backend also defines
``make_lapsing_storage``: a factory of views of the same store as ``make_storage``'s, whose
presence lease is short (a few seconds at most); the suite never runs them, so their lease is
never renewed, as for a process that died (skipped without it; a backend whose processes cannot
die apart from it, like ``MemoryStorage``, may ``pytest.skip``). The rules the tests check are
those of ``channel_asgi.storage.base``.

The tests are async and need pytest with anyio's plugin (``anyio_backend`` selects the event
loop). This module imports pytest, so only test code should import it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import anyio
import msgspec
import pytest

from .. import clock as edge_clock
from .base import (
    Delivery,
    Storage,
    StorageChannelClosed,
    StorageNoReply,
    StorageUnreachable,
    StorageUserBanned,
    decode_delivery,
    encode_delivery,
)

#: How long any single wait in the suite may take, in seconds.
WAIT: Final = 10.0

pytestmark = pytest.mark.anyio

__all__ = [
    "WAIT",
    "Inbox",
    "Running",
    "elapse",
    "lapsing_storage",
    "peer",
    "pytestmark",
    "running",
    "storage",
    "test_a_ban_ends_at_its_until",
    "test_a_ban_on_a_channel_holds_in_every_process",
    "test_a_ban_on_every_channel_and_its_unban",
    "test_a_bucket_is_shared_by_every_process",
    "test_a_bucket_refills_at_its_rate",
    "test_a_delivery_to_every_channel_reaches_every_process",
    "test_a_join_without_a_user_counts_but_is_listed_by_no_one",
    "test_a_process_whose_lease_lapsed_drops_out_of_presence",
    "test_a_resume_or_a_page_from_a_deleted_id_goes_on_after_it",
    "test_a_second_listen_returns_and_deliveries_flow",
    "test_an_unreachable_backend_fails_with_storage_unreachable",
    "test_append_by_a_banned_author_is_refused",
    "test_append_delivers_to_every_listening_process",
    "test_append_returns_distinct_ids_in_publication_order",
    "test_append_to_a_closed_channel_is_refused",
    "test_archive_is_apart_from_history",
    "test_archive_is_shared_by_every_process",
    "test_archive_keeps_its_size_evicting_the_oldest_media_time",
    "test_archive_orders_by_timestamp_then_publication",
    "test_archive_pages_step_over_deleted_broadcasts",
    "test_archive_pages_with_after_across_equal_timestamps",
    "test_archive_range_after_an_id_it_does_not_hold_is_refused",
    "test_archive_range_is_half_open",
    "test_archive_range_of_an_unknown_channel_is_empty",
    "test_arguments_out_of_range_are_value_errors",
    "test_backends_implement_the_protocol",
    "test_channel_names_with_every_allowed_character",
    "test_close_and_open_span_processes",
    "test_closed_state_reaches_every_process",
    "test_delete_event_of_an_archived_broadcast_out_of_history",
    "test_delete_event_of_an_id_not_held_is_false",
    "test_delete_event_removes_it_from_history_and_archive",
    "test_deliveries_round_trip_through_the_codec",
    "test_delivery_stops_after_the_last_unlisten",
    "test_history_after_a_retained_id_is_recovered",
    "test_history_after_an_unknown_id_is_not_recovered",
    "test_history_after_the_newest_id_is_recovered_and_empty",
    "test_history_is_per_channel",
    "test_history_keeps_only_the_newest",
    "test_history_of_an_unknown_channel_is_empty",
    "test_history_pages_with_limit_and_after",
    "test_history_ttl_ignores_old_broadcasts",
    "test_is_connected_spans_processes",
    "test_large_and_unusual_payloads_round_trip",
    "test_ping_returns_while_the_backend_is_reachable",
    "test_presence_counts_each_users_connections_across_processes",
    "test_presence_drops_connections_that_left",
    "test_presence_is_announced_once_per_interval_across_processes",
    "test_presence_totals_carry_the_viewer_count",
    "test_request_deliveries_cross_processes",
    "test_run_signals_started_once_and_deliveries_flow_after_it",
    "test_run_starts_while_the_backend_is_unreachable",
    "test_send_and_append_keep_their_order",
    "test_send_delivers_without_retaining",
    "test_slow_mode_is_once_per_interval",
    "test_unlisten_leaves_other_processes_listening",
    "test_viewer_count_spans_processes",
    "unreachable_storage",
]


@dataclass
class Inbox:
    """What a storage delivered to one process."""

    deliveries: list[Delivery] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, count: int, channel: str | None = None) -> list[Delivery]:
        """Wait until ``count`` deliveries (of ``channel``) arrived; return them."""
        return await self.wait_until(lambda got: len(got) >= count, channel)

    async def wait_until(
        self, done: Callable[[list[Delivery]], bool], channel: str | None = None
    ) -> list[Delivery]:
        """Wait until ``done`` holds for the deliveries (of ``channel``); return them."""
        with anyio.fail_after(WAIT):
            while True:
                got = [d for d in self.deliveries if channel is None or d.channel == channel]
                if done(got):
                    return got
                await self.changed.wait()


@dataclass
class Running:
    """A storage whose ``run`` is active, with the deliveries it made."""

    storage: Storage
    inbox: Inbox


@asynccontextmanager
async def running(storage: Storage) -> AsyncIterator[Running]:
    """Run ``storage`` (as a ChannelApp would) for the block."""
    inbox = Inbox()
    async with anyio.create_task_group() as group:
        await group.start(storage.run, inbox)
        yield Running(storage, inbox)
        group.cancel_scope.cancel()


@pytest.fixture
def elapse() -> Callable[[float], Awaitable[None]]:
    """Let ``seconds`` pass for the storage under test (its ttl, intervals and buckets).

    This default waits in real time: a backend judged by its server's clock (``RedisStorage``
    reads Redis's ``TIME``) cannot be moved from the test. A backend whose clock the test
    controls overrides this fixture to move that clock instead, and waits for nothing (the
    ``MemoryStorage`` tests do).
    """
    return anyio.sleep


@pytest.fixture
async def storage(make_storage: Callable[[], Storage]) -> AsyncIterator[Running]:
    """The storage under test, running."""
    async with running(make_storage()) as first:
        yield first


@pytest.fixture
async def peer(make_storage: Callable[[], Storage]) -> AsyncIterator[Running]:
    """The same storage as seen from another process, running."""
    async with running(make_storage()) as second:
        yield second


@pytest.fixture
def unreachable_storage(
    make_storage: Callable[[], Storage], request: pytest.FixtureRequest
) -> Storage:
    """``make_unreachable_storage()``, not running; the tests using it skip without that fixture.

    It asks for ``make_storage`` only to be set up like it (parametrised alike, for one).
    """
    try:
        make: Callable[[], Storage] = request.getfixturevalue("make_unreachable_storage")
    except pytest.FixtureLookupError:
        pytest.skip("no make_unreachable_storage fixture: define one to test how the backend fails")
    return make()


@pytest.fixture
def lapsing_storage(make_storage: Callable[[], Storage], request: pytest.FixtureRequest) -> Storage:
    """``make_lapsing_storage()``, never run: a process that died; skipped without that fixture."""
    try:
        make: Callable[[], Storage] = request.getfixturevalue("make_lapsing_storage")
    except pytest.FixtureLookupError:
        pytest.skip("no make_lapsing_storage fixture: define one to test presence leases")
    return make()


def payload(n: int) -> bytes:
    return b'{"stream_id":"c","message":' + str(n).encode() + b',"type":"broadcast"}'


async def test_backends_implement_the_protocol(storage: Running) -> None:
    """Both backends are Storage instances (the runtime-checkable Protocol)."""
    assert isinstance(storage.storage, Storage)


async def test_append_returns_distinct_ids_in_publication_order(storage: Running) -> None:
    """Ids are unique and history keeps the order they were appended in."""
    ids = [await storage.storage.append("c", payload(n), keep=100) for n in range(50)]
    assert len(set(ids)) == 50
    history = await storage.storage.history("c")
    assert [event.id for event in history.events] == ids
    assert [event.payload for event in history.events] == [payload(n) for n in range(50)]
    assert history.recovered is None


async def test_history_keeps_only_the_newest(storage: Running) -> None:
    """keep bounds the retained broadcasts; the oldest are evicted."""
    ids = [await storage.storage.append("c", payload(n), keep=3) for n in range(6)]
    assert [e.id for e in (await storage.storage.history("c")).events] == ids[3:]


async def test_history_after_a_retained_id_is_recovered(storage: Running) -> None:
    """after= a retained id returns exactly what followed it."""
    ids = [await storage.storage.append("c", payload(n), keep=10) for n in range(5)]
    history = await storage.storage.history("c", after=ids[1])
    assert history.recovered is True
    assert [e.id for e in history.events] == ids[2:]


async def test_history_after_the_newest_id_is_recovered_and_empty(storage: Running) -> None:
    """The newest id is recovered even when nothing is retained."""
    newest = await storage.storage.append("c", payload(0), keep=0)
    history = await storage.storage.history("c", after=newest)
    assert (history.recovered, history.events) == (True, [])


@pytest.mark.parametrize("after", ["evicted", "unknown", "0-1", "garbage"])
async def test_history_after_an_unknown_id_is_not_recovered(storage: Running, after: str) -> None:
    """An evicted or unknown id gives every retained broadcast and recovered False."""
    ids = [await storage.storage.append("c", payload(n), keep=2) for n in range(4)]
    if after == "evicted":
        after = ids[0]
    history = await storage.storage.history("c", after=after)
    assert history.recovered is False
    assert [e.id for e in history.events] == ids[2:]


async def test_history_pages_with_limit_and_after(storage: Running) -> None:
    """limit returns the oldest that qualify; paging with after covers all, once, in order."""
    ids = [await storage.storage.append("c", payload(n), keep=100) for n in range(10)]
    first = await storage.storage.history("c", limit=4)
    assert ([e.id for e in first.events], first.recovered) == (ids[:4], None)
    seen: list[str] = []
    after: str | None = None
    for _ in range(10):  # bounded: 10 events in pages of 3 take 4 pages
        page = await storage.storage.history("c", after=after, limit=3)
        assert after is None or page.recovered is True
        seen += [e.id for e in page.events]
        if len(page.events) < 3:
            break
        after = page.events[-1].id
    assert seen == ids
    assert (await storage.storage.history("c", limit=0)).events == []
    evicted = await storage.storage.history("c", after="0-1", limit=2)
    assert ([e.id for e in evicted.events], evicted.recovered) == (ids[:2], False)


async def test_history_of_an_unknown_channel_is_empty(storage: Running) -> None:
    """No history is an empty list; resuming on it is not recovered."""
    assert (await storage.storage.history("never")).events == []
    assert (await storage.storage.history("never", after="1-0")).recovered is False


async def test_history_ttl_ignores_old_broadcasts(
    storage: Running, elapse: Callable[[float], Awaitable[None]]
) -> None:
    """Broadcasts older than ttl are not returned."""
    await storage.storage.append("c", payload(0), keep=10, ttl=0.3)
    await elapse(0.5)
    fresh = await storage.storage.append("c", payload(1), keep=10, ttl=0.3)
    assert [e.id for e in (await storage.storage.history("c", ttl=0.3)).events] == [fresh]


async def test_history_is_per_channel(storage: Running) -> None:
    """Channels do not share history."""
    await storage.storage.append("a", payload(1), keep=10)
    await storage.storage.append("b", payload(2), keep=10)
    assert [e.payload for e in (await storage.storage.history("a")).events] == [payload(1)]


async def test_append_delivers_to_every_listening_process(storage: Running, peer: Running) -> None:
    """A broadcast reaches this process and the others, with its id, in order."""
    await storage.storage.listen("c")
    await peer.storage.listen("c")
    ids = [await storage.storage.append("c", payload(n), keep=100) for n in range(100)]
    for running in (storage, peer):
        got = await running.inbox.wait_for(100, "c")
        assert [(d.kind, d.id, d.payload) for d in got] == [
            ("event", event_id, payload(n)) for n, event_id in enumerate(ids)
        ]
    await storage.storage.unlisten("c")
    await peer.storage.unlisten("c")


async def test_send_delivers_without_retaining(storage: Running, peer: Running) -> None:
    """send() reaches every listening process with every field, and is not history."""
    await peer.storage.listen("c")
    delivery = Delivery(
        "c", "event", b'{"x":1}', to_user="u", to_connection="k", exclude_connection="e"
    )
    await storage.storage.send(delivery)
    assert (await peer.inbox.wait_for(1, "c"))[0] == delivery
    assert (await storage.storage.history("c")).events == []
    await peer.storage.unlisten("c")


async def test_a_delivery_to_every_channel_reaches_every_process(
    storage: Running, peer: Running
) -> None:
    """send() to "*" reaches every running process, this one too, whatever it listens to."""
    await peer.storage.listen("c")
    delivery = Delivery("*", "end", b'{"status":"banned"}', to_user="u")
    await storage.storage.send(delivery)
    for running in (storage, peer):
        assert await running.inbox.wait_for(1, "*") == [delivery]
    await peer.storage.unlisten("c")


async def test_request_deliveries_cross_processes(storage: Running, peer: Running) -> None:
    """A request addressed to a connection reaches the process that holds it."""
    await peer.storage.listen("c")
    await storage.storage.send(Delivery("c", "request", to_connection="conn-1"))
    got = (await peer.inbox.wait_for(1, "c"))[0]
    assert (got.kind, got.to_connection) == ("request", "conn-1")
    await peer.storage.unlisten("c")


async def test_delivery_stops_after_the_last_unlisten(storage: Running) -> None:
    """After unlisten nothing of the channel is delivered, until it is listened to again."""
    first = await storage.storage.append("c", payload(0), keep=100)  # before listen: not delivered
    await storage.storage.listen("c")
    second = await storage.storage.append("c", payload(1), keep=100)
    await storage.inbox.wait_for(1, "c")
    await storage.storage.unlisten("c")
    await storage.storage.append("c", payload(2), keep=100)
    await storage.storage.send(Delivery("c", "event", payload(3)))
    await storage.storage.listen("c")
    last = await storage.storage.append("c", payload(4), keep=100)
    # Deliveries of a channel keep their order: any delivered while unlistened comes before.
    got = await storage.inbox.wait_until(lambda got: any(d.id == last for d in got), "c")
    assert [d.id for d in got] == [second, last], (first, got)
    await storage.storage.unlisten("c")


async def test_unlisten_leaves_other_processes_listening(storage: Running, peer: Running) -> None:
    """One process's unlisten stops nothing in another process that listens to the channel."""
    await storage.storage.listen("c")
    await peer.storage.listen("c")
    await storage.storage.unlisten("c")
    event_id = await storage.storage.append("c", payload(1), keep=10)
    assert [d.id for d in await peer.inbox.wait_for(1, "c")] == [event_id]
    await peer.storage.unlisten("c")


async def test_a_second_listen_returns_and_deliveries_flow(storage: Running) -> None:
    """listen of a channel already listened to returns (a no-op); deliveries keep flowing."""
    await storage.storage.listen("c")
    with anyio.fail_after(WAIT):
        await storage.storage.listen("c")
    event_id = await storage.storage.append("c", payload(1), keep=10)
    assert [d.id for d in await storage.inbox.wait_for(1, "c")] == [event_id]
    await storage.storage.unlisten("c")


async def test_send_and_append_keep_their_order(storage: Running, peer: Running) -> None:
    """Interleaved sends and appends on one channel arrive in the order they were made."""
    await storage.storage.listen("c")
    await peer.storage.listen("c")
    made: list[tuple[str | None, bytes]] = []
    for n in range(12):
        if n % 3 == 1:
            await storage.storage.send(Delivery("c", "event", payload(n)))
            made.append((None, payload(n)))
        else:
            made.append((await storage.storage.append("c", payload(n), keep=100), payload(n)))
    for running in (storage, peer):
        got = await running.inbox.wait_for(len(made), "c")
        assert [(d.id, d.payload) for d in got] == made
    await storage.storage.unlisten("c")
    await peer.storage.unlisten("c")


class _Started:
    """A ``task_status`` that counts its ``started()`` calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.event = anyio.Event()

    def started(self, value: Any = None) -> None:
        self.calls += 1
        self.event.set()


async def test_run_signals_started_once_and_deliveries_flow_after_it(
    make_storage: Callable[[], Storage],
) -> None:
    """run calls task_status.started() once; after it, listen makes deliveries flow."""
    storage = make_storage()
    inbox = Inbox()
    status = _Started()
    async with anyio.create_task_group() as group:
        group.start_soon(partial(storage.run, inbox, task_status=status))
        with anyio.fail_after(WAIT):
            await status.event.wait()
        await storage.listen("c")
        event_id = await storage.append("c", payload(1), keep=10)
        assert [(d.kind, d.id) for d in await inbox.wait_for(1, "c")] == [("event", event_id)]
        await storage.unlisten("c")
        assert status.calls == 1
        group.cancel_scope.cancel()


async def test_deliveries_round_trip_through_the_codec() -> None:
    """encode_delivery and decode_delivery carry every field of every kind."""
    for delivery in (
        Delivery("c", "event", b'{"x":1}', "1-0"),
        Delivery("c", "event", b"{}", to_user="u", to_connection="k", exclude_connection="e"),
        Delivery("c", "request", to_connection="k"),
        Delivery("c", "end", b'{"type":"end"}'),
        Delivery("*", "end", b'{"type":"end"}', to_user="u"),
        Delivery("c", "disconnect", to_user="u"),
    ):
        assert decode_delivery(encode_delivery(delivery)) == delivery
    for malformed in (b"not msgpack", msgspec.msgpack.encode(["c", "broadcast", b"{}"])):
        with pytest.raises(ValueError):  # msgspec.DecodeError, a ValueError
            decode_delivery(malformed)


_CALLS: Final[dict[str, Callable[[Storage], Awaitable[object]]]] = {
    "append": lambda s: s.append("c", payload(1), keep=10),
    "send": lambda s: s.send(Delivery("c", "event", payload(1))),
    "send to every channel": lambda s: s.send(Delivery("*", "end", payload(1), to_user="u")),
    "history": lambda s: s.history("c"),
    "join": lambda s: s.join("c", "k"),
    "join with a user": lambda s: s.join("c", "k", "u"),
    "leave": lambda s: s.leave("c", "k"),
    "viewer_count": lambda s: s.viewer_count("c"),
    "presence": lambda s: s.presence("c"),
    "is_connected": lambda s: s.is_connected("k"),
    "coalesce_presence": lambda s: s.coalesce_presence("c", 1, 0, interval=1.0),
    "close_channel": lambda s: s.close_channel("c", b"{}"),
    "open_channel": lambda s: s.open_channel("c"),
    "is_closed": lambda s: s.is_closed("c"),
    "ping": lambda s: s.ping(),
    "append archived": lambda s: s.append("c", payload(1), keep=10, archive=10, timestamp=1.0),
    "archive_range": lambda s: s.archive_range("c", start=0.0, end=9.0, after="1-0"),
    "delete_event": lambda s: s.delete_event("c", "1-0"),
    "ban": lambda s: s.ban("c", "u", until=None),
    "unban": lambda s: s.unban("c", "u"),
    "is_banned": lambda s: s.is_banned("c", "u"),
    "take_token": lambda s: s.take_token("k", rate=1.0, burst=1.0),
}


@pytest.mark.parametrize("call", list(_CALLS))
async def test_an_unreachable_backend_fails_with_storage_unreachable(
    unreachable_storage: Storage, call: str
) -> None:
    """Each call to a backend that cannot be reached raises StorageUnreachable, nothing else."""
    with anyio.fail_after(WAIT), pytest.raises(StorageUnreachable) as raised:
        await _CALLS[call](unreachable_storage)
    assert not isinstance(raised.value, StorageNoReply)  # nothing was sent: nothing happened


async def test_run_starts_while_the_backend_is_unreachable(unreachable_storage: Storage) -> None:
    """run signals started although the backend is down; listen then raises StorageUnreachable."""
    with anyio.fail_after(WAIT):
        async with running(unreachable_storage) as live:
            with pytest.raises(StorageUnreachable):
                await live.storage.listen("c")
            with pytest.raises(StorageUnreachable):
                await live.storage.append("c", payload(1), keep=10)


async def test_viewer_count_spans_processes(storage: Running, peer: Running) -> None:
    """join and leave return the count across processes, the new connection included."""
    assert await storage.storage.join("v", "a") == 1
    assert await peer.storage.join("v", "b") == 2
    assert await storage.storage.viewer_count("v") == 2
    assert await peer.storage.leave("v", "b") == 1
    assert await storage.storage.leave("v", "a") == 0
    assert await peer.storage.viewer_count("v") == 0


async def test_is_connected_spans_processes(storage: Running, peer: Running) -> None:
    """A connection joined in one process is connected as seen from another."""
    await peer.storage.join("v", "conn-9")
    assert await storage.storage.is_connected("conn-9")
    await peer.storage.leave("v", "conn-9")
    assert not await storage.storage.is_connected("conn-9")
    assert not await storage.storage.is_connected("never")


async def test_presence_counts_each_users_connections_across_processes(
    storage: Running, peer: Running
) -> None:
    """presence maps each user to their live connections in every process, any user id."""
    odd = "ü:ser/1 with spaces"
    assert await storage.storage.join("p", "a1", "alice") == 1
    assert await peer.storage.join("p", "a2", "alice") == 2
    assert await peer.storage.join("p", "a3", "alice") == 3
    assert await storage.storage.join("p", "b1", odd) == 4
    for running in (storage, peer):
        assert await running.storage.presence("p") == {"alice": 3, odd: 1}
    assert await storage.storage.presence("other") == {}
    for connection_id, owner in (("a1", storage), ("a2", peer), ("a3", peer), ("b1", storage)):
        await owner.storage.leave("p", connection_id)


async def test_presence_drops_connections_that_left(storage: Running, peer: Running) -> None:
    """A leave takes one connection off its user; a user with none left is absent."""
    await storage.storage.join("p", "a1", "alice")
    await peer.storage.join("p", "a2", "alice")
    await peer.storage.join("p", "b1", "bob")
    await storage.storage.join("q", "a3", "alice")  # another channel: apart
    assert await peer.storage.leave("p", "a2") == 2
    assert await storage.storage.presence("p") == {"alice": 1, "bob": 1}
    await storage.storage.leave("p", "a1")
    assert await peer.storage.presence("p") == {"bob": 1}
    await peer.storage.leave("p", "b1")
    assert await storage.storage.presence("p") == {}
    assert await peer.storage.presence("q") == {"alice": 1}
    await storage.storage.leave("q", "a3")
    assert await peer.storage.presence("q") == {}


async def test_a_join_without_a_user_counts_but_is_listed_by_no_one(storage: Running) -> None:
    """join's user_id is optional: such a connection is a viewer that presence does not list."""
    await storage.storage.join("p", "k1")
    await storage.storage.join("p", "k2", "u")
    assert await storage.storage.viewer_count("p") == 2
    assert await storage.storage.presence("p") == {"u": 1}
    await storage.storage.leave("p", "k1")
    assert await storage.storage.presence("p") == {"u": 1}
    await storage.storage.leave("p", "k2")
    assert await storage.storage.viewer_count("p") == 0


async def test_a_process_whose_lease_lapsed_drops_out_of_presence(
    storage: Running, lapsing_storage: Storage
) -> None:
    """A process that stops renewing its lease (it died) leaves presence and the counts."""
    await storage.storage.join("p", "alive", "u")
    await lapsing_storage.join("p", "dead-1", "u")
    await lapsing_storage.join("p", "dead-2", "w")
    assert await storage.storage.presence("p") == {"u": 2, "w": 1}

    async def lapsed() -> bool:
        return await storage.storage.presence("p") == {"u": 1}

    await _eventually(lapsed)  # the lease itself is a real wait, by the backend's clock
    assert await storage.storage.viewer_count("p") == 1
    assert not await storage.storage.is_connected("dead-2")
    assert await storage.storage.is_connected("alive")
    await storage.storage.leave("p", "alive")


async def test_close_and_open_span_processes(storage: Running, peer: Running) -> None:
    """close_channel marks it closed everywhere and delivers end; open_channel undoes it."""
    await peer.storage.listen("c")
    kept = await storage.storage.append("c", payload(1), keep=10)
    await storage.storage.close_channel("c", b'{"type":"end"}')
    assert await peer.storage.is_closed("c")
    deliveries = await peer.inbox.wait_for(2, "c")
    assert (deliveries[-1].kind, deliveries[-1].payload) == ("end", b'{"type":"end"}')
    await peer.storage.open_channel("c")
    assert not await storage.storage.is_closed("c")
    assert [e.id for e in (await storage.storage.history("c")).events] == [kept]
    await peer.storage.unlisten("c")


async def test_large_and_unusual_payloads_round_trip(storage: Running, peer: Running) -> None:
    """Payload bytes come back exactly, large or with odd bytes, in history and delivery."""
    await peer.storage.listen("c")
    big = b'{"m":"' + b"x" * (1024 * 1024) + b'"}'
    odd = '{"m":"é\\n\\u0000 ☃"}'.encode()
    ids = [await storage.storage.append("c", data, keep=10) for data in (big, odd)]
    assert [e.payload for e in (await storage.storage.history("c")).events] == [big, odd]
    got = await peer.inbox.wait_for(2, "c")
    assert [(d.id, d.payload) for d in got] == list(zip(ids, (big, odd), strict=True))
    await peer.storage.unlisten("c")


async def test_channel_names_with_every_allowed_character(storage: Running) -> None:
    """Channel names use A-Z a-z 0-9 _ - . : @ / freely."""
    channel = "Aa0_-.:@/x" * 20
    event_id = await storage.storage.append(channel, payload(1), keep=5)
    assert [e.id for e in (await storage.storage.history(channel)).events] == [event_id]
    assert await storage.storage.join(channel, "k", "u") == 1
    assert await storage.storage.presence(channel) == {"u": 1}
    assert await storage.storage.leave(channel, "k") == 0


async def test_presence_is_announced_once_per_interval_across_processes(
    storage: Running, peer: Running, elapse: Callable[[float], Awaitable[None]]
) -> None:
    """Joins and leaves from every process add up; one process announces them per interval."""
    first = await storage.storage.coalesce_presence("big", 3, 0, interval=0.5)
    assert first is not None
    assert (first.joined, first.left) == (3, 0)
    assert await peer.storage.coalesce_presence("big", 2, 1, interval=0.5) is None
    assert await storage.storage.coalesce_presence("big", 0, 0, interval=0.5) is None
    await elapse(0.6)
    later = await peer.storage.coalesce_presence("big", 0, 0, interval=0.5)
    assert later is not None
    assert (later.joined, later.left) == (2, 1)
    await elapse(0.6)
    assert await storage.storage.coalesce_presence("big", 0, 0, interval=0.5) is None


async def test_presence_totals_carry_the_viewer_count(storage: Running, peer: Running) -> None:
    """The announcement's viewer_count counts every process's connections."""
    await storage.storage.join("big", "a")
    await peer.storage.join("big", "b")
    totals = await peer.storage.coalesce_presence("big", 2, 0, interval=0.2)
    assert totals is not None
    assert totals.viewer_count == 2
    await storage.storage.leave("big", "a")
    await peer.storage.leave("big", "b")


async def test_append_to_a_closed_channel_is_refused(storage: Running, peer: Running) -> None:
    """A broadcast to a channel another process closed is neither stored nor delivered."""
    await storage.storage.listen("shut")
    await peer.storage.close_channel("shut", b'{"type":"end"}')
    with pytest.raises(StorageChannelClosed) as refused:
        await storage.storage.append("shut", b"{}", keep=10)
    assert refused.value.channel == "shut"
    assert (await storage.storage.history("shut")).events == []
    end = await storage.inbox.wait_for(1, "shut")  # the end, and no broadcast after it
    assert [d.kind for d in end] == ["end"]
    await peer.storage.open_channel("shut")
    await _eventually(lambda: _not(storage.storage.is_closed("shut")))
    reopened = await storage.storage.append("shut", b"{}", keep=10)
    got = await storage.inbox.wait_for(2, "shut")
    assert [(d.kind, d.id) for d in got] == [("end", None), ("event", reopened)]
    await storage.storage.unlisten("shut")


async def test_closed_state_reaches_every_process(storage: Running, peer: Running) -> None:
    """is_closed follows close and open made by another process."""
    await peer.storage.close_channel("c2", b"{}")
    await _eventually(lambda: storage.storage.is_closed("c2"))
    await peer.storage.open_channel("c2")
    await _eventually(lambda: _not(storage.storage.is_closed("c2")))


# -- the archive (base.Archive) ------------------------------------------------------------------


async def archived(
    storage: Storage, channel: str, stamps: list[float], size: int = 100
) -> list[str]:
    """Broadcast one message per timestamp, archived; return their ids."""
    return [
        await storage.append(channel, payload(n), keep=10, archive=size, timestamp=stamp)
        for n, stamp in enumerate(stamps)
    ]


def by_media_time(stamps: list[float], ids: list[str]) -> list[str]:
    """The ids in archive order: by timestamp, then publication (a stable sort)."""
    return [event_id for _, event_id in sorted(zip(stamps, ids, strict=True), key=lambda p: p[0])]


async def test_archive_orders_by_timestamp_then_publication(storage: Running) -> None:
    """The archive is in media-time order; equal timestamps keep their publication order."""
    stamps = [5.0, 1.0, 3.0, 1.0, 5.0, 0.0, 3.0, 1.0]
    ids = await archived(storage.storage, "vod", stamps)
    page = await storage.storage.archive_range("vod")
    assert [e.id for e in page.events] == by_media_time(stamps, ids)
    payloads = dict(zip(ids, (payload(n) for n in range(len(ids))), strict=True))
    assert [e.payload for e in page.events] == [payloads[e.id] for e in page.events]
    assert page.more is False


async def test_archive_keeps_its_size_evicting_the_oldest_media_time(storage: Running) -> None:
    """Past its size the archive drops the lowest timestamp first (equal ones: the earliest)."""
    stamps = [10.0, 2.0, 7.0, 2.0, 1.0, 9.0]
    ids = await archived(storage.storage, "vod", stamps, size=3)
    kept = [ids[2], ids[5], ids[0]]  # 7.0, 9.0, 10.0
    assert [e.id for e in (await storage.storage.archive_range("vod")).events] == kept
    await archived(storage.storage, "vod", [0.5], size=3)  # older than all: not kept
    assert [e.id for e in (await storage.storage.archive_range("vod")).events] == kept
    ties = await archived(storage.storage, "ties", [4.0, 4.0, 4.0, 4.0], size=2)
    assert [e.id for e in (await storage.storage.archive_range("ties")).events] == ties[2:]


async def test_archive_is_apart_from_history(storage: Running) -> None:
    """keep bounds the history, not the archive; only appends with archive and timestamp count."""
    ids = await archived(storage.storage, "c", [float(n) for n in range(5)])
    await storage.storage.append("c", payload(5), keep=10)
    await storage.storage.append("c", payload(6), keep=10, archive=100)
    await storage.storage.append("c", payload(7), keep=10, timestamp=7.0)
    last = await storage.storage.append("c", payload(8), keep=2, archive=100, timestamp=8.0)
    assert [e.id for e in (await storage.storage.history("c")).events][-1] == last
    assert len((await storage.storage.history("c")).events) == 2
    assert [e.id for e in (await storage.storage.archive_range("c")).events] == [*ids, last]


async def test_archive_is_shared_by_every_process(storage: Running, peer: Running) -> None:
    """What one process archives, another reads, in the same order."""
    stamps = [3.0, 1.0, 2.0]
    ids = await archived(storage.storage, "vod", stamps)
    page = await peer.storage.archive_range("vod")
    assert [e.id for e in page.events] == by_media_time(stamps, ids)


async def test_archive_range_is_half_open(storage: Running) -> None:
    """start is inclusive, end exclusive; an empty or inverted range has nothing."""
    stamps = [0.0, 1.0, 1.5, 2.0, 2.0, 3.0]
    ids = await archived(storage.storage, "vod", stamps)

    async def read(start: float | None = None, end: float | None = None) -> list[str]:
        page = await storage.storage.archive_range("vod", start=start, end=end)
        return [e.id for e in page.events]

    assert await read(start=1.0, end=2.0) == ids[1:3]
    assert await read(start=2.0) == ids[3:]
    assert await read(end=1.0) == ids[:1]
    assert await read(start=-5.0, end=100.0) == ids
    assert await read(start=1.2, end=1.9) == ids[2:3]
    assert await read(end=0.0) == []
    assert await read(start=3.0, end=3.0) == []
    assert await read(start=5.0, end=1.0) == []


async def test_archive_pages_with_after_across_equal_timestamps(storage: Running) -> None:
    """Pages chained by after cover the range once, in order, though most share one timestamp."""
    stamps = [1.0] * 10 + [0.5] + [1.0] * 10 + [2.0] * 4 + [0.25]
    ids = await archived(storage.storage, "vod", stamps)
    expected = [i for s, i in zip(stamps, ids, strict=True) if 0.5 <= s < 2.0]
    expected = by_media_time([s for s in stamps if 0.5 <= s < 2.0], expected)
    for limit in (1, 3, 7, len(expected)):
        seen: list[str] = []
        after: str | None = None
        for _ in range(len(expected) + 1):  # bounded: one page per event at most
            page = await storage.storage.archive_range(
                "vod", start=0.5, end=2.0, limit=limit, after=after
            )
            assert len(page.events) <= limit
            seen += [e.id for e in page.events]
            if not page.more:
                break
            after = page.events[-1].id
        assert seen == expected, limit
    whole = await storage.storage.archive_range("vod", start=0.5, end=2.0, limit=len(expected))
    assert whole.more is False  # exactly a page, and nothing after it


async def test_archive_range_of_an_unknown_channel_is_empty(storage: Running) -> None:
    """A channel that archived nothing has an empty page, and no more."""
    page = await storage.storage.archive_range("never")
    assert (page.events, page.more) == ([], False)


@pytest.mark.parametrize("after", ["unknown", "garbage", "0-1", "evicted", "unarchived"])
async def test_archive_range_after_an_id_it_does_not_hold_is_refused(
    storage: Running, after: str
) -> None:
    """after must be an event of the archive: else ValueError (the app's 400)."""
    ids = await archived(storage.storage, "vod", [1.0, 2.0, 3.0], size=2)
    unarchived = await storage.storage.append("vod", payload(9), keep=10)
    after = {"evicted": ids[0], "unarchived": unarchived}.get(after, after)
    with pytest.raises(ValueError, match="after"):
        await storage.storage.archive_range("vod", after=after)
    with pytest.raises(ValueError, match="after"):
        await storage.storage.archive_range("never", after=after)


_BAD_ARGUMENTS: Final[dict[str, Callable[[Storage], Awaitable[object]]]] = {
    "limit=0": lambda s: s.archive_range("c", limit=0),
    "limit=-1": lambda s: s.archive_range("c", limit=-1),
    "start=nan": lambda s: s.archive_range("c", start=math.nan),
    "end=inf": lambda s: s.archive_range("c", end=math.inf),
    "timestamp=nan": lambda s: s.append("c", payload(1), keep=10, archive=5, timestamp=math.nan),
    "until=nan": lambda s: s.ban("c", "u", until=math.nan),
    "rate=0": lambda s: s.take_token("k", rate=0.0, burst=1.0),
    "rate=inf": lambda s: s.take_token("k", rate=math.inf, burst=1.0),
    "burst=0.5": lambda s: s.take_token("k", rate=1.0, burst=0.5),
    "burst=nan": lambda s: s.take_token("k", rate=1.0, burst=math.nan),
}


@pytest.mark.parametrize("call", list(_BAD_ARGUMENTS))
async def test_arguments_out_of_range_are_value_errors(storage: Running, call: str) -> None:
    """What base.py says a call refuses raises ValueError, and changes nothing."""
    with pytest.raises(ValueError):
        await _BAD_ARGUMENTS[call](storage.storage)
    assert (await storage.storage.history("c")).events == []
    assert not await storage.storage.is_banned("c", "u")
    assert await storage.storage.take_token("k", rate=1.0, burst=1.0) == 0.0


# -- moderation (base.Moderation) ----------------------------------------------------------------


async def test_delete_event_removes_it_from_history_and_archive(
    storage: Running, peer: Running
) -> None:
    """A deleted broadcast is gone for every process: history, resume and archive."""
    ids = await archived(storage.storage, "c", [0.0, 1.0, 2.0, 3.0])
    assert await storage.storage.delete_event("c", ids[1]) is True
    for running in (storage, peer):
        assert [e.id for e in (await running.storage.history("c")).events] == [*ids[:1], *ids[2:]]
        resumed = await running.storage.history("c", after=ids[0])
        assert ([e.id for e in resumed.events], resumed.recovered) == (ids[2:], True)
        page = await running.storage.archive_range("c")
        assert [e.id for e in page.events] == [*ids[:1], *ids[2:]]


async def test_a_resume_or_a_page_from_a_deleted_id_goes_on_after_it(storage: Running) -> None:
    """The deleted id still marks its place: a resume recovers, and a page continues after it."""
    ids = await archived(storage.storage, "c", [0.0, 1.0, 1.0, 2.0])
    await storage.storage.delete_event("c", ids[1])
    resumed = await storage.storage.history("c", after=ids[1])
    assert ([e.id for e in resumed.events], resumed.recovered) == (ids[2:], True)
    page = await storage.storage.archive_range("c", after=ids[1])
    assert [e.id for e in page.events] == ids[2:]
    await storage.storage.delete_event("c", ids[3])  # the newest
    newest = await storage.storage.history("c", after=ids[3])
    assert (newest.events, newest.recovered) == ([], True)


async def test_archive_pages_step_over_deleted_broadcasts(storage: Running) -> None:
    """Deleted broadcasts take no room in a page; more is False when only deleted ones follow."""
    ids = await archived(storage.storage, "c", [float(n) for n in range(6)])
    for gone in (ids[1], ids[2], ids[5]):
        await storage.storage.delete_event("c", gone)
    first = await storage.storage.archive_range("c", limit=2)
    assert ([e.id for e in first.events], first.more) == ([ids[0], ids[3]], True)
    second = await storage.storage.archive_range("c", limit=2, after=ids[3])
    assert ([e.id for e in second.events], second.more) == ([ids[4]], False)


async def test_delete_event_of_an_archived_broadcast_out_of_history(storage: Running) -> None:
    """A broadcast the history evicted but the archive holds is deleted from the archive."""
    ids = [
        await storage.storage.append("c", payload(n), keep=1, archive=10, timestamp=float(n))
        for n in range(3)
    ]
    assert await storage.storage.delete_event("c", ids[0]) is True
    assert [e.id for e in (await storage.storage.archive_range("c")).events] == ids[1:]
    assert [e.id for e in (await storage.storage.history("c")).events] == ids[2:]


@pytest.mark.parametrize("event_id", ["deleted", "unknown", "garbage", "0-1", "99999999999-0"])
async def test_delete_event_of_an_id_not_held_is_false(storage: Running, event_id: str) -> None:
    """An id neither the history nor the archive holds deletes nothing and answers False."""
    ids = await archived(storage.storage, "c", [1.0, 2.0])
    await storage.storage.delete_event("c", ids[0])
    event_id = ids[0] if event_id == "deleted" else event_id
    assert await storage.storage.delete_event("c", event_id) is False
    assert await storage.storage.delete_event("other", ids[1]) is False
    assert [e.id for e in (await storage.storage.history("c")).events] == ids[1:]


async def test_a_ban_on_a_channel_holds_in_every_process(storage: Running, peer: Running) -> None:
    """A ban is for that user on that channel, seen by every process, until unban."""
    await storage.storage.ban("c", "u")
    for running in (storage, peer):
        assert await running.storage.is_banned("c", "u")
        assert not await running.storage.is_banned("c", "v")
        assert not await running.storage.is_banned("d", "u")
    await peer.storage.unban("c", "u")
    assert not await storage.storage.is_banned("c", "u")
    await storage.storage.unban("c", "nobody")  # not banned: nothing happens


async def test_a_ban_on_every_channel_and_its_unban(storage: Running, peer: Running) -> None:
    """A ban on "*" holds on every channel; each ban is lifted on its own."""
    await storage.storage.ban("*", "u")
    await storage.storage.ban("c", "u")
    assert await peer.storage.is_banned("any/channel", "u")
    assert await peer.storage.is_banned("*", "u")
    await peer.storage.unban("*", "u")
    assert await storage.storage.is_banned("c", "u")  # its own ban stands
    assert not await storage.storage.is_banned("any/channel", "u")
    await storage.storage.ban("*", "u")
    await storage.storage.unban("c", "u")
    assert await storage.storage.is_banned("c", "u")  # by the ban on "*"


class _StoppedClock:
    """``channel_asgi.clock.time``, stopped at a whole second, moved by the test."""

    def __init__(self) -> None:
        self.now = float(int(edge_clock.time()))

    def __call__(self) -> float:
        return self.now


async def test_a_ban_ends_at_its_until(
    storage: Running, peer: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """until is Unix seconds by channel_asgi.clock.time(); a later ban replaces an earlier one."""
    clock = _StoppedClock()
    monkeypatch.setattr(edge_clock, "time", clock)
    start = clock.now
    await storage.storage.ban("c", "u", until=start + 60)
    await storage.storage.ban("*", "w", until=start + 30)
    clock.now = start + 59.5
    assert await peer.storage.is_banned("c", "u")
    assert not await peer.storage.is_banned("c", "w")
    clock.now = start + 60
    assert not await peer.storage.is_banned("c", "u")
    assert not await storage.storage.is_banned("c", "u")
    await storage.storage.ban("c", "u")  # until unban ...
    await storage.storage.ban("c", "u", until=start + 100)  # ... replaced by a shorter one
    assert await peer.storage.is_banned("c", "u")
    await storage.storage.ban("c", "u", until=start)  # already past: lifts it
    assert not await peer.storage.is_banned("c", "u")
    clock.now = start + 10**6
    await storage.storage.ban("c", "x", until=start + 10**7)
    assert await peer.storage.is_banned("c", "x")


async def test_append_by_a_banned_author_is_refused(
    storage: Running, peer: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """append(author=...) checks the author's bans (the channel's and "*") with the append.

    A refused broadcast is neither stored, archived nor delivered; appends queued together
    keep their order whichever of them are refused; an ended ban refuses nothing.
    """
    clock = _StoppedClock()
    monkeypatch.setattr(edge_clock, "time", clock)
    await storage.storage.listen("c")
    await peer.storage.ban("c", "u")
    await peer.storage.ban("*", "w", until=clock.now + 30)
    for author in ("u", "w"):
        for archive in (0, 10):
            with pytest.raises(StorageUserBanned) as refused:
                await storage.storage.append(
                    "c", payload(0), keep=10, archive=archive, timestamp=5.0, author=author
                )
            assert (refused.value.channel, refused.value.user_id) == ("c", author)
    authors = ["v", "u", None, "w", "v"]
    outcomes: dict[int, str | None] = {}

    async def publish(n: int) -> None:
        try:
            outcomes[n] = await storage.storage.append(
                "c", payload(n), keep=10, archive=10, timestamp=1.0 + n, author=authors[n]
            )
        except StorageUserBanned:
            outcomes[n] = None

    async with anyio.create_task_group() as group:  # queued together (one script on Redis)
        for n in range(len(authors)):
            group.start_soon(publish, n)
    kept = [n for n in range(len(authors)) if outcomes[n] is not None]
    assert kept == [0, 2, 4]
    got = await storage.inbox.wait_for(3, "c")
    assert sorted((d.id, d.payload) for d in got) == sorted((outcomes[n], payload(n)) for n in kept)
    history = await peer.storage.history("c")
    assert [event.payload for event in history.events] == [payload(n) for n in kept]
    page = await peer.storage.archive_range("c")
    assert [event.payload for event in page.events] == [payload(n) for n in kept]
    clock.now += 30  # w's ban has ended
    assert await storage.storage.append("c", payload(9), keep=10, author="w")
    await storage.storage.unlisten("c")


# -- limits (base.Limits) ------------------------------------------------------------------------


async def test_a_bucket_is_shared_by_every_process(storage: Running, peer: Running) -> None:
    """Processes spend one bucket together; once empty each is told how long to wait."""
    hour = 3600.0
    assert await storage.storage.take_token("slow:c:u", rate=1 / hour, burst=2) == 0.0
    assert await peer.storage.take_token("slow:c:u", rate=1 / hour, burst=2) == 0.0
    for running in (storage, peer, storage):  # a refusal spends nothing: the wait stays
        wait = await running.storage.take_token("slow:c:u", rate=1 / hour, burst=2)
        assert hour - 60 < wait <= hour
    assert await peer.storage.take_token("slow:c:v", rate=1 / hour, burst=2) == 0.0


async def test_slow_mode_is_once_per_interval(storage: Running, peer: Running) -> None:
    """rate=1/N, burst=1: one action, then a wait of up to N seconds, in any process."""
    assert await storage.storage.take_token("k", rate=1 / 30, burst=1) == 0.0
    wait = await peer.storage.take_token("k", rate=1 / 30, burst=1)
    assert 25 < wait <= 30


async def test_a_bucket_refills_at_its_rate(
    storage: Running, elapse: Callable[[float], Awaitable[None]]
) -> None:
    """The wait is at most 1/rate for one token, and a token comes back in that time."""
    assert await storage.storage.take_token("fast", rate=50.0, burst=1) == 0.0
    wait = await storage.storage.take_token("fast", rate=50.0, burst=1)
    assert 0 < wait <= 1 / 50
    await elapse(wait * 1.5)
    assert await storage.storage.take_token("fast", rate=50.0, burst=1) == 0.0


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def _eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait until ``check()`` is true: another process's change arrives asynchronously."""
    with anyio.fail_after(WAIT):
        while not await check():  # noqa: ASYNC110 - the state lives in another process
            await anyio.sleep(0.01)


async def test_ping_returns_while_the_backend_is_reachable(storage: Running) -> None:
    """ping returns None, promptly, and changes nothing (the channel stays unknown)."""
    with anyio.fail_after(WAIT):
        await storage.storage.ping()
        assert (await storage.storage.history("pinged")).events == []
        assert not await storage.storage.is_closed("pinged")
