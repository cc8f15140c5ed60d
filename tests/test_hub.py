"""The per-process hub: framing once, targeting, the opening backlog, heartbeats, slow readers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from channel_asgi import sse
from channel_asgi.hub import HEARTBEAT_TICKS, SLICE_CHECK, WAKE_GAP, WRITE_SLICE, Hub
from channel_asgi.mailbox import REQUEST, Close, Resume, Subscriber, Transport
from channel_asgi.storage import Delivery


def subscriber(
    connection: str = "c1",
    user: str | None = "u1",
    transport: Transport = Transport.SSE,
    limit: int = 1 << 20,
) -> Subscriber:
    return Subscriber("ch", connection, user, transport, limit)


def live(hub: Hub, *subs: Subscriber) -> None:
    for sub in subs:
        hub.attach(sub)
        hub.activate(sub)


def queued(sub: Subscriber) -> list[object]:
    return list(sub._items)


def slow_parked_crowd(
    hub: Hub, on_write: Callable[[str, bytes], None]
) -> tuple[list[Subscriber], list[object]]:
    """Two slices' worth of live, parked subscribers whose direct writes block the loop (each
    takes 2 * WRITE_SLICE / SLICE_CHECK) and then call ``on_write(connection id, body)``."""
    subs = [subscriber(f"c{n}", f"u{n}") for n in range(2 * SLICE_CHECK)]
    live(hub, *subs)

    def slow_writer(name: str) -> Callable[[bytes], Coroutine[Any, Any, None]]:
        async def write(body: bytes) -> None:  # SLICE_CHECK of these fill more than a slice
            time.sleep(2 * WRITE_SLICE / SLICE_CHECK)  # noqa: ASYNC251 - a write blocks the loop
            on_write(name, body)

        return write

    parked: list[object] = []
    for sub in subs:
        sub.direct = slow_writer(sub.connection_id)
        parked.append(sub.until_ready())
    return subs, parked


def test_a_broadcast_is_framed_once_and_shared_by_every_sse_subscriber() -> None:
    """Every SSE mailbox holds the very same bytes object."""
    hub = Hub()
    subs = [subscriber(f"c{n}", f"u{n}") for n in range(3)]
    live(hub, *subs)
    hub.dispatch(Delivery("ch", "event", b'{"type":"broadcast"}', "1-0"))
    frames = [queued(sub)[0] for sub in subs]
    assert frames[0] == sse.event(b'{"id":"1-0","type":"broadcast"}', "1-0")
    assert all(frame is frames[0] for frame in frames)


def test_private_goes_to_the_user_and_the_sender_once_each() -> None:
    """to_user's connections and to_connection get it; a connection that is both gets it once."""
    hub = Hub()
    alice1, alice2, bob, carol = (
        subscriber("a1", "alice"),
        subscriber("a2", "alice"),
        subscriber("b", "bob"),
        subscriber("c", "carol"),
    )
    live(hub, alice1, alice2, bob, carol)
    hub.dispatch(Delivery("ch", "event", b"{}", to_user="alice", to_connection="b"))
    assert [len(queued(s)) for s in (alice1, alice2, bob, carol)] == [1, 1, 1, 0]
    hub.dispatch(Delivery("ch", "event", b"{}", to_user="bob", to_connection="b"))
    assert len(queued(bob)) == 2


def test_excluded_connection_does_not_get_its_own_join() -> None:
    """exclude_connection skips exactly that connection."""
    hub = Hub()
    joiner, other = subscriber("j", "u1"), subscriber("o", "u2")
    live(hub, joiner, other)
    hub.dispatch(Delivery("ch", "event", b"{}", exclude_connection="j"))
    assert (len(queued(joiner)), len(queued(other))) == (0, 1)


def test_backlog_drops_only_the_broadcasts_the_replay_held() -> None:
    """Private and system events that arrived while opening survive the trim, in order."""
    hub = Hub()
    sub = subscriber()
    hub.attach(sub)
    hub.dispatch(Delivery("ch", "event", b'{"n":"system"}'))
    hub.dispatch(Delivery("ch", "event", b'{"n":"a"}', "1-0"))
    hub.dispatch(Delivery("ch", "event", b'{"n":"private"}', to_user="u1"))
    hub.dispatch(Delivery("ch", "event", b'{"n":"b"}', "2-0"))
    hub.activate(sub, replayed=["1-0"])
    frames = [bytes(frame) for frame in queued(sub)]  # type: ignore[call-overload]
    names = [frame.split(b'"n":"')[1].split(b'"')[0] for frame in frames]
    assert names == [b"system", b"private", b"b"]


def broadcast_ids(sub: Subscriber) -> list[str]:
    """The ids of the SSE broadcasts queued for ``sub``, in order."""
    frames = [bytes(frame) for frame in queued(sub)]  # type: ignore[call-overload]
    return [frame.split(b"id: ")[1].split(b"\n")[0].decode() for frame in frames]


def test_replayed_broadcasts_that_arrive_after_going_live_are_not_delivered_again() -> None:
    """Issue 14 (a resume across a restart on Redis): the history read answered before the
    pub/sub message, so the replayed broadcast came again, live."""
    hub = Hub()
    sub, other = subscriber("c1"), subscriber("c2", "u2")
    live(hub, other)
    hub.attach(sub)
    hub.dispatch(Delivery("ch", "event", b"{}", "1-0"))  # in the replay and in the backlog
    hub.activate(sub, replayed=["1-0", "2-0", "3-0"])  # 2-0 and 3-0 are still on their way
    for event_id in ("2-0", "3-0", "4-0", "5-0"):
        hub.dispatch(Delivery("ch", "event", b"{}", event_id))
    assert broadcast_ids(sub) == ["4-0", "5-0"]
    assert broadcast_ids(other) == ["1-0", "2-0", "3-0", "4-0", "5-0"]


def test_a_broadcast_the_replay_did_not_hold_ends_the_catching_up() -> None:
    """The last replayed broadcast reached this process before it listened: the first new
    broadcast says the replay is complete, and later ones are never held back."""
    hub = Hub()
    sub = subscriber()
    hub.attach(sub)
    hub.activate(sub, replayed=["1-0", "2-0"])
    hub.dispatch(Delivery("ch", "event", b'{"type":"system"}'))  # no id: always delivered
    for event_id in ("3-0", "1-0", "4-0"):
        hub.dispatch(Delivery("ch", "event", b"{}", event_id))
    assert len(queued(sub)) == 4


def test_request_reaches_only_its_connection_as_an_instruction() -> None:
    """A request delivery queues REQUEST for the named connection."""
    hub = Hub()
    one, two = subscriber("c1"), subscriber("c2", "u2")
    live(hub, one, two)
    hub.dispatch(Delivery("ch", "request", to_connection="c2"))
    assert (queued(one), queued(two)) == ([], [REQUEST])


def test_end_closes_every_mailbox_after_the_end_event() -> None:
    """The end event is queued, then the mailbox is closed for good."""
    hub = Hub()
    sub = subscriber()
    live(hub, sub)
    hub.dispatch(Delivery("ch", "end", b'{"type":"end"}'))
    assert sub.closed is Close.END
    assert len(queued(sub)) == 1
    hub.dispatch(Delivery("ch", "event", b"{}"))
    assert len(queued(sub)) == 1


def test_heartbeat_pings_only_after_a_whole_quiet_interval() -> None:
    """A ping after HEARTBEAT_TICKS quiet ticks; any event restarts the count."""
    hub = Hub()
    sub = subscriber()
    live(hub, sub)
    for _ in range(HEARTBEAT_TICKS):
        hub.heartbeat()
    assert queued(sub) == []
    hub.heartbeat()
    assert queued(sub) == [sse.PING]
    hub.dispatch(Delivery("ch", "event", b"{}"))
    for _ in range(HEARTBEAT_TICKS):
        hub.heartbeat()
    assert queued(sub)[-1] != sse.PING


def test_overflowing_mailbox_closes_as_slow_and_interrupts_its_writer() -> None:
    """Past its byte limit a subscriber is closed, emptied and its writer interrupted."""
    hub = Hub()
    slow, fine = subscriber("s", limit=100), subscriber("f", "u2")
    interrupted: list[bool] = []
    slow.interrupt = lambda: interrupted.append(True)
    live(hub, slow, fine)
    for _ in range(5):
        hub.dispatch(Delivery("ch", "event", b"x" * 40))
    assert slow.closed is Close.SLOW
    assert queued(slow) == []
    assert interrupted == [True]
    assert len(queued(fine)) == 5


def test_text_and_json_transports_get_the_payload_with_its_id() -> None:
    """WebSocket-style subscribers get str, server-side ones bytes, both with the id."""
    hub = Hub()
    text, raw = subscriber("t", "u1", Transport.TEXT), subscriber("r", None, Transport.JSON)
    live(hub, text, raw)
    hub.dispatch(Delivery("ch", "event", b'{"type":"broadcast"}', "5-1"))
    assert queued(text) == ['{"id":"5-1","type":"broadcast"}']
    assert queued(raw) == [b'{"id":"5-1","type":"broadcast"}']


async def test_resume_finishes_a_write_that_suspended_outside_a_task() -> None:
    """A coroutine started by the hub and suspended is finished by the awaiting writer."""
    loop = asyncio.get_running_loop()
    drained = loop.create_future()

    async def write() -> str:
        await drained  # as a server's send waits for the client to drain
        return "written"

    coroutine = write()
    yielded = coroutine.send(None)
    assert yielded is drained

    async def writer() -> str:
        return str(await Resume(coroutine, yielded))

    task = asyncio.ensure_future(writer())
    await asyncio.sleep(0)
    drained.set_result(None)
    assert await task == "written"


async def test_resume_passes_cancellation_into_the_suspended_write() -> None:
    """Interrupting the writer cancels the write it was finishing."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []

    async def write() -> None:
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    coroutine = write()
    resume = Resume(coroutine, coroutine.send(None))

    async def writer() -> None:
        await resume

    task = asyncio.ensure_future(writer())
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]
    assert task.cancelled()


async def test_busy_batches_wait_as_long_as_their_writes_took_and_single_events_do_not() -> None:
    """The wake-up policy: one event per batch leaves soon; several make the next batch wait."""
    hub = Hub()
    sub = subscriber()
    live(hub, sub)
    writes: list[bytes] = []

    async def slow_write(body: bytes) -> None:  # a direct write to a slow socket: 30 ms
        time.sleep(0.03)  # noqa: ASYNC251 - the write blocks the loop, as a real one does
        writes.append(body)

    sub.direct = slow_write
    parked = sub.until_ready()  # the writer waits: the hub writes for it

    async def written(count: int) -> None:
        for _ in range(500):
            if len(writes) >= count:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"{len(writes)} writes, expected {count}")

    def event(n: int) -> Delivery:
        return Delivery("ch", "event", b'{"n":%d}' % n, f"{n}-0")

    hub.dispatch(event(1))  # light load: one event per batch
    await written(1)
    await asyncio.sleep(0.01)  # the flush's bookkeeping runs after the writes
    assert hub._gap == WAKE_GAP

    for n in (2, 3, 4):  # a burst: one batch of three, which took 30 ms to write
        hub.dispatch(event(n))
    await written(2)
    assert writes[1].count(b"data:") == 3
    await asyncio.sleep(0.01)  # the flush's bookkeeping
    assert hub._gap >= 0.03  # as long as those writes took (they slept 30 ms), not WAKE_GAP
    hub.dispatch(event(5))  # so the next batch is scheduled that long after them
    assert hub._flush_at == pytest.approx(hub._writes_done + hub._gap)
    await written(3)
    assert parked is sub._waiter  # every write was made without waking the writer


async def test_a_long_batch_of_writes_lets_the_loop_in_and_what_arrives_joins_the_rest() -> None:
    """Writes are made in slices of about WRITE_SLICE: between two slices the loop serves what
    arrived (here an event), and that event leaves in the same write as the first one for the
    connections the batch had not reached yet."""
    hub = Hub()
    log: list[str] = []
    writes: dict[str, list[bytes]] = {}

    def wrote(name: str, body: bytes) -> None:
        writes[name].append(body)
        log.append(name)

    subs, parked = slow_parked_crowd(hub, wrote)
    for sub in subs:
        writes[sub.connection_id] = []

    def event(n: int) -> Delivery:
        return Delivery("ch", "event", b'{"n":%d}' % n, f"{n}-0")

    def second() -> None:
        log.append("dispatch")
        hub.dispatch(event(2))

    hub.dispatch(event(1))  # the flush runs at the end of this iteration...
    asyncio.get_running_loop().call_soon(second)  # ...and this right after its first slice
    for _ in range(200):
        if all(writes.values()) and sum(map(len, writes.values())) >= len(subs) + SLICE_CHECK:
            break
        await asyncio.sleep(0.005)
    assert log.index("dispatch") == SLICE_CHECK  # the first slice, then the loop's turn
    first, rest = subs[:SLICE_CHECK], subs[SLICE_CHECK:]
    for sub in first:  # written before the second event: it goes in the next batch
        assert [body.count(b"data:") for body in writes[sub.connection_id]] == [1, 1]
    for sub in rest:  # not reached yet: both events in one write
        assert [body.count(b"data:") for body in writes[sub.connection_id]] == [2]
    assert [sub._waiter for sub in subs] == parked  # all written without waking a writer


async def test_a_connection_closed_between_two_slices_is_skipped_and_the_batch_goes_on() -> None:
    """A connection that closes while a batch is half written gets no write; the others do, and
    the next batch is written as usual."""
    hub = Hub()
    writes: dict[str, int] = {}

    def wrote(name: str, body: bytes) -> None:
        writes[name] += body.count(b"data:")

    subs, _ = slow_parked_crowd(hub, wrote)
    writes.update((sub.connection_id, 0) for sub in subs)
    gone = subs[-1]

    def close_one() -> None:
        gone.close(Close.GONE)
        hub.detach(gone)

    hub.dispatch(Delivery("ch", "event", b"{}", "1-0"))
    asyncio.get_running_loop().call_soon(close_one)  # runs between the two slices
    for _ in range(200):
        if sum(writes.values()) >= len(subs) - 1:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.01)
    assert writes == {sub.connection_id: int(sub is not gone) for sub in subs}
    hub.dispatch(Delivery("ch", "event", b"{}", "2-0"))
    for _ in range(200):
        if sum(writes.values()) >= 2 * (len(subs) - 1):
            break
        await asyncio.sleep(0.005)
    assert writes == {sub.connection_id: 2 * int(sub is not gone) for sub in subs}
