"""Automatic pipelining for ``RedisStorage``: one pipeline in flight, the next one filling up.

Every Redis call of the storage (script or plain command) is queued and answered through a
future. A single task sends the queue as one pipeline; calls made while that pipeline is in
flight go together in the next one. At light load a call leaves at the end of the loop iteration
that made it; under load a round trip carries many calls, and consecutive calls marked with the
same script and arguments (appends to one channel) become one script call.

Scripts run by ``EVALSHA``; a ``NOSCRIPT`` reply (Redis restarted, or its scripts were flushed)
loads them again and retries those calls once. Any failure settles every call of the pipeline
with :class:`~channel_asgi.errors.StorageUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import StorageUnavailable

__all__ = ["AutoPipeline", "Call", "unavailable"]


@contextmanager
def unavailable(action: str) -> Iterator[None]:
    """Map every Redis or socket failure to StorageUnavailable."""
    from redis.exceptions import RedisError

    try:
        yield
    except (RedisError, OSError) as exc:
        raise StorageUnavailable(f"Redis is unavailable ({action}): {exc}") from exc


class Call:
    """A Redis call waiting for its pipeline."""

    __slots__ = ("args", "future", "item", "name", "source")

    def __init__(
        self, name: str, args: tuple[Any, ...], source: str = "", *, item: bytes | None = None
    ) -> None:
        self.name = name  #: the command, or the script's name
        self.args = args
        self.source = source  #: a script's Lua source ("" for a plain command)
        #: Consecutive queued calls with an item, the same script and the same arguments run
        #: as one script call, their items appended to the arguments; it replies with a list,
        #: one result per call.
        self.item = item

    def joins(self, other: Call) -> bool:
        """Whether this call can be merged into ``other``, the call queued before it."""
        return (
            self.item is not None
            and other.item is not None
            and self.source == other.source
            and self.args == other.args
        )
        self.future: asyncio.Future[Any]

    def settle(self, result: Any) -> None:
        """Give the caller its result (an exception means Redis is unavailable)."""
        if self.future.done():
            return
        if isinstance(result, Exception):
            if not isinstance(result, StorageUnavailable):
                result = StorageUnavailable(f"Redis is unavailable ({self.name}): {result}")
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

    def script(self, name: str, source: str, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        """Run a Lua script in the next pipeline; return its reply (awaitable)."""
        return self.queue(Call(name, (len(keys), *keys, *args), source))

    def command(self, name: str, *args: Any) -> Awaitable[Any]:
        """Run a plain command in the next pipeline; return its reply (awaitable)."""
        return self.queue(Call(name, args))

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
                except StorageUnavailable as exc:
                    results = [exc] * len(batch)
                for call, result in zip(batch, results, strict=True):
                    call.settle(result)
        finally:  # normally nothing is left; cancelled (the loop stops): nobody waits forever
            self._sender = None
            stranded, self._calls = [*batch, *self._calls], []
            for call in stranded:
                call.settle(StorageUnavailable("Redis storage is closing"))

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
        with unavailable(batch[0].name):
            replies = await self._pipeline(groups)
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:  # Redis restarted or flushed its scripts: load them again, once
                self._shas.clear()
                again = await self._pipeline([groups[i] for i in missing])
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
        client: Any = self._client()
        for source in {group[0].source for group in groups} - self._shas.keys() - {""}:
            self._shas[source] = await client.script_load(source)
        async with client.pipeline(transaction=False) as pipe:
            for group in groups:
                first = group[0]
                args = first.args
                if first.item is not None:
                    args += tuple(call.item for call in group)
                if first.source:
                    pipe.execute_command("EVALSHA", self._shas[first.source], *args)
                else:
                    pipe.execute_command(first.name, *args)
            return list(await pipe.execute(raise_on_error=False))
