"""``MediaArchive``: one channel's archive in ``MemoryStorage``, sorted by (timestamp, sequence).

Two parallel lists kept sorted with ``bisect``: the keys, ``(timestamp, sequence)`` (the
sequence number of the event id, so equal timestamps keep publication order), and the entries.
A deleted broadcast leaves its id as its entry: its key stays, so a page that ended with it
goes on after it. A range read is two bisections and a walk over the page, O(log n + k). An
insert is a list insert, and an append when the media time only grows, as during a live
stream. An index from event id to key finds ``after`` and the broadcast to delete.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Final

from .base import ArchivePage, StoredEvent

__all__ = ["ARCHIVED_BYTES", "MediaArchive"]

#: Counted for each archived broadcast besides its payload and id: its key, its index entry
#: and its list slots.
ARCHIVED_BYTES: Final = 300


def _cost(entry: StoredEvent | str) -> int:
    if isinstance(entry, str):  # deleted: its id is left
        return len(entry) + ARCHIVED_BYTES
    return len(entry.payload) + len(entry.id) + ARCHIVED_BYTES


class MediaArchive:
    """Archived broadcasts of one channel, ordered by (timestamp, sequence)."""

    __slots__ = ("_entries", "_index", "_keys", "bytes")

    def __init__(self) -> None:
        self._keys: list[tuple[float, int]] = []
        self._entries: list[StoredEvent | str] = []
        self._index: dict[str, tuple[float, int]] = {}
        self.bytes = 0  #: what the entries cost, counted against the storage's budget

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, timestamp: float, sequence: int, event: StoredEvent, size: int) -> None:
        """Archive ``event``, then evict the first entries beyond ``size``."""
        key = (timestamp, sequence)
        keys = self._keys
        if not keys or keys[-1] < key:
            keys.append(key)
            self._entries.append(event)
        else:
            index = bisect_right(keys, key)
            keys.insert(index, key)
            self._entries.insert(index, event)
        self._index[event.id] = key
        self.bytes += _cost(event)
        if len(keys) > size:
            self.evict(len(keys) - size)

    def evict(self, count: int) -> None:
        """Forget the ``count`` first entries: the oldest media time."""
        for entry in self._entries[:count]:
            self.bytes -= _cost(entry)
            del self._index[entry if isinstance(entry, str) else entry.id]
        del self._keys[:count]
        del self._entries[:count]

    def delete(self, event_id: str) -> bool:
        """Drop the payload of an archived broadcast, keeping its place; False if not held."""
        key = self._index.get(event_id)
        if key is None:
            return False
        index = bisect_left(self._keys, key)
        entry = self._entries[index]
        if isinstance(entry, str):
            return False
        self._entries[index] = event_id
        self.bytes -= len(entry.payload)
        return True

    def page(
        self, start: float | None, end: float | None, limit: int, after: str | None
    ) -> ArchivePage:
        """Return the page ``Archive.archive_range`` describes (arguments already checked)."""
        keys = self._keys
        # Sequences are >= 0, so (t, -1) sorts before every key of timestamp t.
        low = 0 if start is None else bisect_left(keys, (start, -1))
        high = len(keys) if end is None else bisect_left(keys, (end, -1))
        if after is not None:
            key = self._index.get(after)
            if key is None:
                raise ValueError(f"after: {after!r} is not an event of this archive")
            low = max(low, bisect_right(keys, key))
        events: list[StoredEvent] = []
        for index in range(low, high):
            entry = self._entries[index]
            if isinstance(entry, str):
                continue
            if len(events) == limit:
                return ArchivePage(events, True)
            events.append(entry)
        return ArchivePage(events, False)
