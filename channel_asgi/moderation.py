"""Moderation: deleting a broadcast, banning a user, ending a user's connections.

Each action is a storage change followed by one delivery that every process holding the
channel's connections acts on (``hub``):

- ``delete_message``: ``Storage.delete_event``, then a ``system`` event
  ``{"status": "deleted", "id"}`` to the channel, on the path join and leave events take;
- ``ban``: ``Storage.ban``, then an ``end`` event ``{"status": "banned"}`` addressed to the user
  (``to_user``), which ends only that user's connections; a ban on ``"*"`` goes to ``"*"``,
  and each process's hub gives it to every channel where the user has a connection;
- ``disconnect``: a ``disconnect`` delivery addressed to the user: the connections close with
  nothing written (an SSE response completes, a WebSocket closes with 4000), and the client may
  reconnect. How many there were is read from ``Storage.presence`` just before: every process's
  connections are there, and a reply from each process would need to know how many processes
  there are.

A ban is enforced where a user acts, by the storage:

- a broadcast, in its append (``Storage.append(author=…)``): atomic with it and no round trip
  of its own, for every user, anonymous ones included (a banned anonymous id may still hold its
  publish token);
- the other publish types and WebSocket frames, and a broadcast that ``on_publish`` hooks are to
  see, by asking (:meth:`Moderator.refuse_banned`) once the body is read;
- a subscribe and ``GET /history`` by an identified user, by asking; a subscribe after the
  connection listens to the channel, so a ban made while it opens reaches it as a delivery and
  one made before is found. An anonymous subscriber's id is new on each subscribe: no ban can
  be on it yet.

There is no cache of bans in the process: a cache learnt from deliveries would let a publish
through on a worker the news had not reached yet, and nothing the banned user sends after the
ban may be delivered.
"""

from __future__ import annotations

from typing import Final

from . import clock
from .errors import http_error
from .protocol import ModerationMessage, encode, encode_event
from .storage.base import Delivery, Storage, StorageUserBanned

__all__ = ["EVERY_CHANNEL", "Moderator"]

#: The channel name of a ban on every channel.
EVERY_CHANNEL: Final = "*"

_BANNED: Final = encode({"status": "banned"})


class Moderator:
    """The moderation actions of one app, on its storage.

    Args:
        storage: bans, history and delivery to every process.
    """

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def refuse_banned(self, channel: str, user_id: str) -> None:
        """Raise :class:`Forbidden` (403) while ``user_id`` is banned from ``channel`` or ``"*"``.

        Raises:
            Forbidden: the user is banned.
            StorageError: the storage cannot say (503, or 504).
        """
        if await self._storage.is_banned(channel, user_id):
            raise http_error(StorageUserBanned(channel, user_id))

    async def delete_message(self, channel: str, event_id: str) -> bool:
        """Remove a broadcast from history and archive; tell the subscribers if it was there."""
        if not await self._storage.delete_event(channel, event_id):
            return False
        message = encode(ModerationMessage("deleted", event_id))
        await self._storage.send(
            Delivery(channel, "event", encode_event("system", channel, message))
        )
        return True

    async def ban(self, channel: str, user_id: str, seconds: float | None) -> None:
        """Ban ``user_id`` from ``channel`` (or ``"*"``), then end their live connections."""
        until = None if seconds is None else clock.time() + seconds
        await self._storage.ban(channel, user_id, until=until)
        end = encode_event("end", channel, _BANNED)  # for "*", each hub names its channels
        await self._storage.send(Delivery(channel, "end", end, to_user=user_id))

    async def unban(self, channel: str, user_id: str) -> None:
        """Lift the ban of ``user_id`` on ``channel`` (or ``"*"``)."""
        await self._storage.unban(channel, user_id)

    async def disconnect(self, channel: str, user_id: str) -> int:
        """End ``user_id``'s connections on ``channel`` in every process; they may reconnect.

        Returns:
            How many live connections the user had there (``Storage.presence``, every
            process), read just before they were told to close.
        """
        count = (await self._storage.presence(channel)).get(user_id, 0)
        # Sent even when none was counted: a connection still opening gets it in its backlog.
        await self._storage.send(Delivery(channel, "disconnect", to_user=user_id))
        return count
