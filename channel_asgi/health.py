"""``GET {prefix}/health``: 200 while the storage answers, 503 while it cannot be reached.

For a load balancer's health check or an orchestrator's readiness probe: the check is one
``Storage.ping`` (a ``PING`` to Redis; nothing for the memory storage), bounded by
:data:`HEALTH_TIMEOUT`, so a worker that cannot reach Redis is taken out of rotation rather
than answering 503 to every subscribe and publish.
"""

from __future__ import annotations

from typing import Final

import anyio

from .errors import StorageUnavailable
from .http import Headers, Receive, Scope, Send, send_json
from .protocol import Reply, encode
from .storage.base import Storage, StorageError

__all__ = ["HEALTH_TIMEOUT", "HealthRoute"]

#: Seconds the storage may take to answer a health check (then it is a 503).
HEALTH_TIMEOUT: Final = 3.0

_OK: Final = encode(Reply(200, "ok"))
_NO_STORE: Final = (b"cache-control", b"no-store")


class HealthRoute:
    """Serve ``GET {prefix}/health`` for one app.

    Args:
        storage: the app's storage.
    """

    methods: Final = ("GET", "OPTIONS")

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def serve(
        self,
        scope: Scope,
        headers: Headers,
        receive: Receive,
        send: Send,
        channel: str,
        reply_headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Answer 200 ``{"code": 200, "message": "ok"}`` if the storage answers in time.

        Raises:
            StorageUnavailable: the storage cannot be reached, or did not answer in time (503,
                with ``Retry-After``).
        """
        try:
            with anyio.fail_after(HEALTH_TIMEOUT):
                await self._storage.ping()
        except TimeoutError:
            raise StorageUnavailable(
                f"The storage did not answer within {HEALTH_TIMEOUT} s"
            ) from None
        except StorageError as exc:  # whatever the storage says, the check failed: a 503
            raise StorageUnavailable(str(exc)) from exc
        await send_json(send, 200, _OK, [_NO_STORE, *reply_headers])
