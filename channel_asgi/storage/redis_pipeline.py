"""Automatic pipelining for ``RedisStorage``: one pipeline in flight, the next one filling up.

Every Redis call of the storage (script or plain command) is queued and answered through a
future. A single task sends the queue as one pipeline; calls made while that pipeline is in
flight go together in the next one. At light load a call leaves at the end of the loop iteration
that made it; under load a round trip carries many calls, and consecutive calls marked with the
same script and arguments (appends to one channel) become one script call.

Scripts run by ``EVALSHA``; a ``NOSCRIPT`` reply (Redis restarted, or its scripts were flushed)
loads them again and retries those calls once (Redis refused them: nothing ran).

A failure settles every call of the pipeline, with one of two errors, by where it happened:

- before the commands were written (no connection, connection refused, the connect handshake or
  the health-check ``PING`` timed out, loading a script failed): nothing reached Redis, and
  every call fails with :class:`~channel_asgi.storage.base.StorageUnreachable` (the app's 503,
  safe to retry);
- once the commands were being written (a write error, then no reply: a read timeout, a reset):
  Redis may have run them. Calls that change something fail with
  :class:`~channel_asgi.storage.base.StorageNoReply` (the app's 504, "may have been applied");
  reads fail with ``StorageUnreachable``, since running a read again changes nothing.

This is why the pipeline talks to a pooled connection itself rather than through redis-py's
``Pipeline``: it must know whether the bytes left, and it must never send them twice (a client
configured with retries would run an append again after a read timeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .base import StorageError, StorageNoReply, StorageUnreachable

__all__ = ["AutoPipeline", "Call", "unavailable"]


class _NoReply(Exception):
    """The commands were (being) written to Redis and no reply came: they may have run."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@contextmanager
def unavailable(action: str) -> Iterator[None]:
    """Map every Redis or socket failure to StorageUnreachable."""
    from redis.exceptions import RedisError

    try:
        yield
    except (RedisError, OSError) as exc:
        raise StorageUnreachable(f"Redis is unavailable ({action}): {exc}") from exc


class Call:
    """A Redis call waiting for its pipeline."""

    __slots__ = ("args", "future", "item", "name", "source", "writes")

    def __init__(
        self,
        name: str,
        args: tuple[Any, ...],
        source: str = "",
        *,
        item: tuple[Any, ...] | None = None,
        writes: bool = True,
    ) -> None:
        self.name = name  #: the command, or the script's name
        self.args = args
        self.source = source  #: a script's Lua source ("" for a plain command)
        #: Consecutive queued calls with an item (a tuple of values), the same script and the
        #: same arguments run as one script call, their items' values appended to the
        #: arguments; it replies with a list, one result per call.
        self.item = item
        #: Whether it changes something in Redis (then a lost reply "may have been applied").
        self.writes = writes
        self.future: asyncio.Future[Any]

    def joins(self, other: Call) -> bool:
        """Whether this call can be merged into ``other``, the call queued before it."""
        return (
            self.item is not None
            and other.item is not None
            and self.source == other.source
            and self.args == other.args
        )

    def settle(self, result: Any) -> None:
        """Give the caller its result (an exception: Redis failed, see the module docstring)."""
        if self.future.done():
            return
        if isinstance(result, _NoReply) and self.writes:
            result = StorageNoReply(
                f"Redis did not answer ({self.name}): {result}; "
                "it may have been applied, check before retrying"
            )
        elif isinstance(result, _NoReply):
            result = StorageUnreachable(f"Redis did not answer ({self.name}): {result}")
        if isinstance(result, Exception):
            if not isinstance(result, StorageError):
                result = StorageUnreachable(f"Redis is unavailable ({self.name}): {result}")
            self.future.set_exception(result)
        else:
            self.future.set_result(result)


class AutoPipeline:
    """Queue Redis calls and send them in pipelines, one in flight at a time.

    Args:
        client: returns the ``redis.asyncio.Redis`` client to send with.
    """

    def __init__(self, client: Callable[[], Any]) -> None:
        self._client = client
        self._shas: dict[str, str] = {}  # script source -> its SHA1, once loaded
        self._calls: list[Call] = []  # waiting for the next pipeline
        self._sender: asyncio.Task[None] | None = None  # sends the pipelines, one at a time

    def forget_scripts(self) -> None:
        """Load the scripts again before their next use (the client was replaced)."""
        self._shas.clear()

    def script(
        self, name: str, source: str, keys: list[str], args: list[Any], *, writes: bool = True
    ) -> Awaitable[Any]:
        """Run a Lua script in the next pipeline; return its reply (awaitable).

        ``writes=False`` marks a script that only reads (a lost reply is then a 503).
        """
        return self.queue(Call(name, (len(keys), *keys, *args), source, writes=writes))

    def command(self, name: str, *args: Any, writes: bool = True) -> Awaitable[Any]:
        """Run a plain command in the next pipeline; return its reply (awaitable)."""
        return self.queue(Call(name, args, writes=writes))

    def queue(self, call: Call) -> asyncio.Future[Any]:
        """Queue a call for the next pipeline (automatic pipelining).

        One pipeline is in flight at a time. Calls made meanwhile wait for it and then go
        together in the next one, so under load a round trip carries many calls (publishes;
        joins and leaves when a crowd comes or goes), and at light load nothing waits.
        """
        loop = asyncio.get_running_loop()
        call.future = loop.create_future()
        sender = self._sender
        if sender is not None and sender.get_loop() is not loop:  # left by a loop now gone
            sender, self._calls = None, []
        self._calls.append(call)
        if sender is None:
            self._sender = loop.create_task(self._send_calls())
        return call.future

    async def _send_calls(self) -> None:
        batch: list[Call] = []
        try:
            await asyncio.sleep(0)  # let the rest of this loop iteration's calls join
            while self._calls:
                batch, self._calls = self._calls, []
                try:
                    results = await self._execute(batch)
                except (StorageUnreachable, _NoReply) as exc:
                    results = [exc] * len(batch)
                for call, result in zip(batch, results, strict=True):
                    call.settle(result)
        finally:  # normally nothing is left; cancelled (the loop stops): nobody waits forever
            self._sender = None
            stranded, self._calls = [*batch, *self._calls], []
            for call in stranded:
                call.settle(StorageUnreachable("Redis storage is closing"))

    async def _execute(self, batch: list[Call]) -> list[Any]:
        """Send a batch in one pipeline; return one result (or exception) per call.

        Consecutive appends to the same channel become one script call, so a burst of
        broadcasts is also one pub/sub message for every process to read.
        """
        from redis.exceptions import NoScriptError

        groups: list[list[Call]] = []
        for call in batch:
            if groups and call.joins(groups[-1][0]):
                groups[-1].append(call)
            else:
                groups.append([call])
        with unavailable(batch[0].name):  # a _NoReply passes through: it is no RedisError
            replies = await self._pipeline(groups)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # Redis restarted or flushed its scripts: load them again, once
            self._shas.clear()
            try:
                with unavailable(groups[missing[0]][0].name):
                    again = await self._pipeline([groups[i] for i in missing])
            except (StorageUnreachable, _NoReply) as exc:  # the others' replies stand
                again = [exc] * len(missing)
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        results: list[Any] = []
        for group, reply in zip(groups, replies, strict=True):
            if group[0].item is None:
                results.append(reply)
            elif isinstance(reply, list):  # one id per merged call
                results += reply
            else:  # an error, or the channel is closed: the same for all of them
                results += [reply] * len(group)
        return results

    async def _pipeline(self, groups: list[list[Call]]) -> list[Any]:
        """Send one pipeline; return one reply (or error reply) per group.

        Raises:
            RedisError, OSError: nothing was written to Redis.
            _NoReply: the commands were being written, and then something failed.
        """
        client: Any = self._client()
        for source in {group[0].source for group in groups} - self._shas.keys() - {""}:
            self._shas[source] = await client.script_load(source)
        commands: list[tuple[Any, ...]] = []
        for group in groups:
            first = group[0]
            args = first.args
            if first.item is not None:
                args += tuple(value for call in group for value in call.item or ())
            if first.source:
                commands.append(("EVALSHA", self._shas[first.source], *args))
            else:
                commands.append((first.name, *args))
        from redis.exceptions import RedisError

        pool = client.connection_pool
        try:  # connected, or it raised: nothing sent
            connection = await pool.get_connection()
        except TypeError:  # redis-py before 5.3 wants a command name (later ones warn)
            connection = await pool.get_connection("PIPELINE")
        try:
            await connection.check_health()  # a PING when idle: its failure sent nothing either
            packed = connection.pack_commands(commands)
            try:
                await connection.send_packed_command(packed, check_health=False)
                return [await _read_reply(connection) for _ in commands]
            except BaseException as exc:
                # A reply may still be on its way: this connection must never be read again.
                await connection.disconnect(nowait=True)
                if isinstance(exc, (RedisError, OSError)):
                    raise _NoReply(exc) from exc
                raise
        finally:
            await pool.release(connection)


async def _read_reply(connection: Any) -> Any:
    """Read one reply; an error reply (Redis refused that command only) is returned, not raised."""
    from redis.exceptions import ResponseError

    try:
        return await connection.read_response()
    except ResponseError as error:
        return error
