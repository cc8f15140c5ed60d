"""Storage backends: where history, presence and cross-process delivery live.

``base`` holds the protocols every backend follows (:class:`Storage`, which includes
:class:`Presence`, :class:`Archive`, :class:`Moderation` and :class:`Limits`), the errors they
raise and the types they take and return; ``conformance`` is the test suite that checks a
backend against them.

``RedisStorage`` imports without the ``redis`` package installed; constructing it without the
``redis`` extra raises an ``ImportError`` that says what to install.
"""

from __future__ import annotations

from .base import (
    Archive,
    ArchivePage,
    Deliver,
    Delivery,
    DeliveryKind,
    History,
    Limits,
    Moderation,
    Presence,
    PresenceTotals,
    Storage,
    StorageChannelClosed,
    StorageError,
    StorageNoReply,
    StorageUnreachable,
    StorageUserBanned,
    StoredEvent,
    decode_delivery,
    encode_delivery,
)
from .memory import MemoryStorage
from .redis import RedisStorage

__all__ = [
    "Archive",
    "ArchivePage",
    "Deliver",
    "Delivery",
    "DeliveryKind",
    "History",
    "Limits",
    "MemoryStorage",
    "Moderation",
    "Presence",
    "PresenceTotals",
    "RedisStorage",
    "Storage",
    "StorageChannelClosed",
    "StorageError",
    "StorageNoReply",
    "StorageUnreachable",
    "StorageUserBanned",
    "StoredEvent",
    "decode_delivery",
    "encode_delivery",
]
