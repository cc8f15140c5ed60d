"""The per-process hub: framing once, targeting, the opening backlog, heartbeats, slow readers,
and counting the local listeners of a channel."""

from __future__ import annotations

from typing import Any, cast

import anyio

from channel_asgi import sse
from channel_asgi.connection import Framing
from channel_asgi.hub import HEARTBEAT_TICKS, Hub
from channel_asgi.mailbox import SEND_HISTORY, Close, Mailbox
from channel_asgi.protocol import WS_PING
from channel_asgi.scheduler import WriteScheduler
from channel_asgi.storage import Delivery, Storage


class ListenLog:
    """A storage stand-in that records listen and unlisten calls (and can hold them)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.gate: anyio.Event | None = None

    async def listen(self, channel: str) -> None:
        self.calls.append(("listen", channel))
        if self.gate is not None:
            await self.gate.wait()

    async def unlisten(self, channel: str) -> None:
        self.calls.append(("unlisten", channel))
        if self.gate is not None:
            await self.gate.wait()


def new_hub(storage: Any = None) -> Hub:
    return Hub(cast(Storage, storage or ListenLog()), WriteScheduler())


def subscriber(
    connection: str = "c1",
    user: str | None = "u1",
    framing: Framing = Framing.SSE,
    limit: int = 1 << 20,
) -> Mailbox:
    return Mailbox("ch", connection, user, framing, limit)


def live(hub: Hub, *subs: Mailbox) -> None:
    for sub in subs:
        hub.attach(sub)
        hub.activate(sub)


def queued(sub: Mailbox) -> list[object]:
    return sub.pending()


def test_a_broadcast_is_framed_once_and_shared_by_every_sse_subscriber() -> None:
    """Every SSE mailbox holds the very same bytes object."""
    hub = new_hub()
    subs = [subscriber(f"c{n}", f"u{n}") for n in range(3)]
    live(hub, *subs)
    hub.dispatch(Delivery("ch", "event", b'{"type":"broadcast"}', "1-0"))
    frames = [queued(sub)[0] for sub in subs]
    assert frames[0] == sse.event(b'{"id":"1-0","type":"broadcast"}', "1-0")
    assert all(frame is frames[0] for frame in frames)


def test_private_goes_to_the_user_and_the_sender_once_each() -> None:
    """to_user's connections and to_connection get it; a connection that is both gets it once."""
    hub = new_hub()
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
    hub = new_hub()
    joiner, other = subscriber("j", "u1"), subscriber("o", "u2")
    live(hub, joiner, other)
    hub.dispatch(Delivery("ch", "event", b"{}", exclude_connection="j"))
    assert (len(queued(joiner)), len(queued(other))) == (0, 1)


def test_backlog_drops_only_the_broadcasts_the_replay_held() -> None:
    """Private and system events that arrived while opening survive the trim, in order."""
    hub = new_hub()
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


def broadcast_ids(sub: Mailbox) -> list[str]:
    """The ids of the SSE broadcasts queued for ``sub``, in order."""
    frames = [bytes(frame) for frame in queued(sub)]  # type: ignore[call-overload]
    return [frame.split(b"id: ")[1].split(b"\n")[0].decode() for frame in frames]


def test_replayed_broadcasts_that_arrive_after_going_live_are_not_delivered_again() -> None:
    """Issue 14 (a resume across a restart on Redis): the history read answered before the
    pub/sub message, so the replayed broadcast came again, live."""
    hub = new_hub()
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
    hub = new_hub()
    sub = subscriber()
    hub.attach(sub)
    hub.activate(sub, replayed=["1-0", "2-0"])
    hub.dispatch(Delivery("ch", "event", b'{"type":"system"}'))  # no id: always delivered
    for event_id in ("3-0", "1-0", "4-0"):
        hub.dispatch(Delivery("ch", "event", b"{}", event_id))
    assert len(queued(sub)) == 4


def test_request_reaches_only_its_connection_as_an_instruction() -> None:
    """A request delivery queues SEND_HISTORY for the named connection."""
    hub = new_hub()
    one, two = subscriber("c1"), subscriber("c2", "u2")
    live(hub, one, two)
    hub.dispatch(Delivery("ch", "request", to_connection="c2"))
    assert (queued(one), queued(two)) == ([], [SEND_HISTORY])


def test_end_closes_every_mailbox_after_the_end_event() -> None:
    """The end event is queued, then the mailbox is closed for good."""
    hub = new_hub()
    sub = subscriber()
    live(hub, sub)
    hub.dispatch(Delivery("ch", "end", b'{"type":"end"}'))
    assert sub.closed is Close.END
    assert len(queued(sub)) == 1
    hub.dispatch(Delivery("ch", "event", b"{}"))
    assert len(queued(sub)) == 1


def test_an_end_addressed_to_a_user_ends_only_that_users_mailboxes() -> None:
    """A ban's end: the user's connections get it and close; the others stay open, untouched."""
    hub = new_hub()
    mallory1, mallory2, alice = (
        subscriber("m1", "mallory"),
        subscriber("m2", "mallory", Framing.TEXT),
        subscriber("a", "alice"),
    )
    live(hub, mallory1, mallory2, alice)
    hub.dispatch(Delivery("ch", "end", b'{"type":"end"}', to_user="mallory"))
    assert (mallory1.closed, mallory2.closed, alice.closed) == (Close.END, Close.END, None)
    assert queued(mallory1) == [sse.event(b'{"type":"end"}')]
    assert queued(mallory2) == ['{"type":"end"}']
    assert queued(alice) == []


def test_a_disconnect_closes_the_users_mailboxes_writing_nothing() -> None:
    """A disconnect: no event, a close that says "reconnect if you like"; opening ones too."""
    hub = new_hub()
    mallory, opening, alice = (
        subscriber("m1", "mallory"),
        subscriber("m2", "mallory"),
        subscriber("a", "alice"),
    )
    live(hub, mallory, alice)
    hub.attach(opening)
    hub.dispatch(Delivery("ch", "event", b"{}", "1-0"))
    hub.dispatch(Delivery("ch", "disconnect", to_user="mallory"))
    assert (mallory.closed, alice.closed) == (Close.DISCONNECT, None)
    assert len(queued(mallory)) == 1  # what was queued before is still written
    hub.activate(opening)
    assert opening.closed is Close.DISCONNECT
    assert len(queued(opening)) == 1


def test_a_delivery_to_every_channel_reaches_each_channel_of_the_user_as_its_own() -> None:
    """ "*": every room where the user has a connection (live or opening), with its stream_id."""
    hub = new_hub()
    on_a = Mailbox("a", "m1", "mallory", Framing.TEXT, 1 << 20)
    opening_on_b = Mailbox("b/c", "m2", "mallory", Framing.TEXT, 1 << 20)
    alice = Mailbox("a", "a1", "alice", Framing.TEXT, 1 << 20)
    elsewhere = Mailbox("d", "a2", "alice", Framing.TEXT, 1 << 20)
    live(hub, on_a, alice, elsewhere)
    hub.attach(opening_on_b)
    end = b'{"stream_id":"*","message":{"status":"banned"},"type":"end"}'
    hub.dispatch(Delivery("*", "end", end, to_user="mallory"))
    assert queued(on_a) == ['{"stream_id":"a","message":{"status":"banned"},"type":"end"}']
    assert on_a.closed is Close.END
    hub.activate(opening_on_b)
    assert queued(opening_on_b) == [
        '{"stream_id":"b/c","message":{"status":"banned"},"type":"end"}'
    ]
    assert opening_on_b.closed is Close.END
    assert (queued(alice), queued(elsewhere), alice.closed, elsewhere.closed) == (
        [],
        [],
        None,
        None,
    )


def test_a_delivery_to_every_channel_without_a_payload_is_applied_as_it_is() -> None:
    """A disconnect to "*" has no envelope to rename: each of the user's rooms closes theirs."""
    hub = new_hub()
    on_a = Mailbox("a", "m1", "mallory", Framing.SSE, 1 << 20)
    on_b = Mailbox("b", "m2", "mallory", Framing.SSE, 1 << 20)
    alice = Mailbox("a", "a1", "alice", Framing.SSE, 1 << 20)
    live(hub, on_a, on_b, alice)
    hub.dispatch(Delivery("*", "disconnect", to_user="mallory"))
    assert (on_a.closed, on_b.closed, alice.closed) == (Close.DISCONNECT, Close.DISCONNECT, None)
    assert queued(on_a) == queued(on_b) == []


def test_heartbeat_pings_only_after_a_whole_quiet_interval() -> None:
    """A ping after HEARTBEAT_TICKS quiet ticks; any event restarts the count."""
    hub = new_hub()
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


def test_heartbeat_pings_idle_websockets_with_a_ping_frame_and_server_side_not_at_all() -> None:
    """Issue 19: a WebSocket gets ``{"type":"ping"}`` on the SSE schedule; a listener nothing."""
    hub = new_hub()
    ws = subscriber("w", framing=Framing.TEXT)
    listener = subscriber("l", None, framing=Framing.JSON)
    live(hub, ws, listener)
    for _ in range(HEARTBEAT_TICKS):
        hub.heartbeat()
    assert queued(ws) == queued(listener) == []
    hub.heartbeat()
    assert queued(ws) == [WS_PING]
    assert queued(listener) == []


def test_overflowing_mailbox_closes_as_slow_and_interrupts_its_writer() -> None:
    """Past its byte limit a mailbox is closed, emptied and its writer interrupted."""
    hub = new_hub()
    slow, fine = subscriber("s", limit=100), subscriber("f", "u2")
    interrupted: list[bool] = []
    slow.interrupt_with(lambda: interrupted.append(True))
    live(hub, slow, fine)
    for _ in range(5):
        hub.dispatch(Delivery("ch", "event", b"x" * 40))
    assert slow.closed is Close.SLOW
    assert queued(slow) == []
    assert interrupted == [True]
    assert len(queued(fine)) == 5


def test_text_and_json_transports_get_the_payload_with_its_id() -> None:
    """WebSocket mailboxes get str, server-side ones bytes, both with the id."""
    hub = new_hub()
    text, raw = subscriber("t", "u1", Framing.TEXT), subscriber("r", None, Framing.JSON)
    live(hub, text, raw)
    hub.dispatch(Delivery("ch", "event", b'{"type":"broadcast"}', "5-1"))
    assert queued(text) == ['{"id":"5-1","type":"broadcast"}']
    assert queued(raw) == [b'{"id":"5-1","type":"broadcast"}']


def test_a_collected_backlog_names_its_broadcasts_until_the_connection_goes_live() -> None:
    """backlog_ids tells the replay where the live events begin; once live it is empty."""
    hub = new_hub()
    sub = subscriber()
    hub.attach(sub)
    hub.dispatch(Delivery("ch", "event", b"{}", "7-0"))
    hub.dispatch(Delivery("ch", "event", b"{}"))
    assert hub.backlog_ids(sub) == {"7-0"}
    hub.activate(sub)
    assert hub.backlog_ids(sub) == frozenset()
    assert list(hub.mailboxes("ch")) == [sub]
    hub.detach(sub)
    assert list(hub.mailboxes()) == []


def test_a_backlog_past_the_limit_closes_the_opening_connection_as_slow() -> None:
    """A connection whose replay takes long, on a busy channel, is cut before it goes live."""
    hub = new_hub()
    sub = subscriber(limit=100)
    hub.attach(sub)
    for n in range(3):
        hub.dispatch(Delivery("ch", "event", b"x" * 40, f"{n}-0"))
    assert sub.closed is Close.SLOW
    hub.activate(sub)
    assert queued(sub) == []


def test_close_all_closes_opening_and_live_mailboxes() -> None:
    """Stopping the app closes every mailbox, whether live or still opening."""
    hub = new_hub()
    opening, live_one = subscriber("o"), subscriber("l", "u2")
    hub.attach(opening)
    live(hub, live_one)
    hub.close_all(Close.SHUTDOWN)
    assert (opening.closed, live_one.closed) == (Close.SHUTDOWN, Close.SHUTDOWN)


async def test_the_storage_listens_once_per_channel_however_many_connections() -> None:
    """The first listener asks the storage, the last one to leave stops it; others only count."""
    storage = ListenLog()
    hub = new_hub(storage)
    for _ in range(3):
        await hub.listen("a")
    await hub.listen("b")
    assert storage.calls == [("listen", "a"), ("listen", "b")]
    assert hub.listening("a") == 3
    await hub.unlisten("a")
    await hub.unlisten("a")
    assert storage.calls == [("listen", "a"), ("listen", "b")]
    await hub.unlisten("a")
    await hub.unlisten("b")
    assert storage.calls[2:] == [("unlisten", "a"), ("unlisten", "b")]
    assert (hub.listening("a"), hub.listening("b")) == (0, 0)
    await hub.unlisten("a")  # one too many: nothing to stop
    assert len(storage.calls) == 4


async def test_concurrent_first_listeners_make_one_storage_call_and_all_wait_for_it() -> None:
    """A second connection that attaches while the first listen is in flight waits for it."""
    storage = ListenLog()
    storage.gate = anyio.Event()
    hub = new_hub(storage)
    done: list[int] = []

    async def listen(n: int) -> None:
        await hub.listen("a")
        done.append(n)

    async with anyio.create_task_group() as group:
        group.start_soon(listen, 1)
        group.start_soon(listen, 2)
        await anyio.wait_all_tasks_blocked()
        assert done == []  # both wait for the storage
        storage.gate.set()
    assert sorted(done) == [1, 2]
    assert storage.calls == [("listen", "a")]
    assert hub.listening("a") == 2


async def test_a_listen_during_the_last_unlisten_listens_again_after_it() -> None:
    """The storage sees unlisten, then listen, never the two at once or out of order."""
    storage = ListenLog()
    hub = new_hub(storage)
    await hub.listen("a")
    storage.gate = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(hub.unlisten, "a")
        await anyio.wait_all_tasks_blocked()
        group.start_soon(hub.listen, "a")
        await anyio.wait_all_tasks_blocked()
        assert storage.calls == [("listen", "a"), ("unlisten", "a")]
        storage.gate.set()
    assert storage.calls == [("listen", "a"), ("unlisten", "a"), ("listen", "a")]
    assert hub.listening("a") == 1


async def test_a_failed_first_listen_counts_nothing() -> None:
    """When the storage cannot listen, the channel is not counted, and a later listen retries."""

    class Failing(ListenLog):
        async def listen(self, channel: str) -> None:
            await super().listen(channel)
            if len(self.calls) == 1:
                raise OSError("down")

    storage = Failing()
    hub = new_hub(storage)
    try:
        await hub.listen("a")
    except OSError:
        pass
    assert hub.listening("a") == 0
    await hub.listen("a")
    assert storage.calls == [("listen", "a"), ("listen", "a")]
    assert hub.listening("a") == 1


def test_a_heartbeat_that_overflows_a_mailbox_closes_it_as_slow() -> None:
    """A ping counts against the limit like any event: past it the connection is cut."""
    hub = new_hub()
    sub = subscriber(limit=len(sse.PING))
    live(hub, sub)
    sub.put(b"x")
    for _ in range(HEARTBEAT_TICKS + 1):
        hub.heartbeat()
    assert sub.closed is Close.SLOW
