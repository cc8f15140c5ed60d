"""The Storage protocol, as every backend must honour it (memory and Redis here)."""

from __future__ import annotations

from channel_asgi.storage.conformance import *  # noqa: F403 - the suite's tests and fixtures
