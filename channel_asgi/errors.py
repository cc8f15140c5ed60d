"""The errors channel_asgi raises, and the HTTP status each one answers with.

Every refusal the server gives is one of these; ``app.py`` turns them into the JSON reply
``{"code": <status>, "message": <text>}`` with the same HTTP status::

    ChannelError(status, message)
    ├── BadRequest            400  malformed JSON, a wrong field, a bad channel name
    ├── Unauthorized          401  missing, forged, tampered or expired token
    ├── Forbidden             403  widget key, another channel's token, not authorised
    ├── NotFound              404  unknown path
    │   └── ChannelClosed     404  closed channel
    ├── MethodNotAllowed      405  carries ``allow`` for the ``Allow`` header
    ├── RequestTimeout        408  the body did not arrive within ``body_timeout``
    ├── Gone                  410  a ``request`` whose connection has closed
    ├── PayloadTooLarge       413  body over ``max_body_bytes``
    ├── UnsupportedMediaType  415  body is not JSON
    ├── UnprocessableEntity   422  a number out of range (also a ``ValueError``)
    ├── TooManyRequests       429  carries ``retry_after`` seconds
    │   └── TooManyConnections  429  over ``max_connections_per_ip`` open connections
    ├── StorageUnavailable    503  the storage backend cannot be reached: nothing was applied
    ├── StorageTimeout        504  the storage got the change but never answered: it may
    │                              have been applied
    └── Reject                any  raised by an ``on_publish`` hook to refuse a message

``ChannelError`` itself carries the statuses of hooks and webhooks: 500 (a hook failed), 502 (the
webhook could not be reached) and 504 (a hook or the webhook took too long).

Storage backends know nothing of HTTP: they raise the storage-level errors of
``channel_asgi.storage.base`` (``StorageUnreachable``, ``StorageNoReply``,
``StorageChannelClosed``), and :func:`http_error` is the one place that turns them into the
refusals above, :class:`StorageUnavailable` (503, with ``Retry-After``), :class:`StorageTimeout`
(504) and :class:`ChannelClosed` (404). The routes apply it where they answer, and the server-side
API (``channels.publish()`` and the rest) through :func:`maps_storage_errors`, so that its callers
keep catching ``channel_asgi.StorageUnavailable``. Each of those three refusals is also a subclass
of the storage-level error it stands for: ``except StorageUnreachable`` catches an outage from a
storage call and from the server-side API alike, and a backend written before the storage-level
errors existed (raising ``StorageUnavailable`` itself) still satisfies the protocol.
"""

from __future__ import annotations

import functools
import typing  # as a module: this module's public names are its errors (tests/test_public_api)
from collections import abc

from .storage import base as storage_base

__all__ = [
    "BadRequest",
    "ChannelClosed",
    "ChannelError",
    "Forbidden",
    "Gone",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "Reject",
    "RequestTimeout",
    "StorageTimeout",
    "StorageUnavailable",
    "TooManyConnections",
    "TooManyRequests",
    "Unauthorized",
    "UnprocessableEntity",
    "UnsupportedMediaType",
    "http_error",
    "maps_storage_errors",
]

_P = typing.ParamSpec("_P")
_T = typing.TypeVar("_T")
_Method = abc.Callable[_P, abc.Coroutine[typing.Any, typing.Any, _T]]


class ChannelError(Exception):
    """A refusal with an HTTP status and a message a user can act on.

    Args:
        status: the HTTP status code of the reply.
        message: what went wrong, in one sentence.
    """

    status: int = 500

    def __init__(self, status: int | None = None, message: str = "") -> None:
        if status is not None:
            self.status = status
        self.message = message or type(self).__name__
        # Not super(): the storage-level bases of some subclasses take arguments of their own.
        Exception.__init__(self, self.status, self.message)

    @property
    def code(self) -> int:
        """The HTTP status, under the name the wire protocol gives it."""
        return self.status

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class _Fixed(ChannelError):
    """A ChannelError whose status is fixed by its class."""

    def __init__(self, message: str = "") -> None:
        super().__init__(None, message)


class BadRequest(_Fixed):
    """The request is malformed: bad JSON, a wrong or missing field, a bad channel name."""

    status = 400


class Unauthorized(_Fixed):
    """The token is missing, forged, tampered with or expired."""

    status = 401


class Forbidden(_Fixed):
    """The request is understood but not allowed."""

    status = 403


class NotFound(_Fixed):
    """No such route, or the channel is closed (:class:`ChannelClosed`)."""

    status = 404


class ChannelClosed(NotFound, storage_base.StorageChannelClosed):
    """The channel was closed (``close_channel``) and not opened again.

    Args:
        channel: the closed channel.
    """

    def __init__(self, channel: str) -> None:
        super().__init__(f"Channel {channel!r} is closed")
        self.channel = channel


class MethodNotAllowed(_Fixed):
    """The route exists but not for this method."""

    status = 405

    def __init__(self, allow: tuple[str, ...], message: str = "") -> None:
        super().__init__(message or f"Method not allowed; use {', '.join(allow)}")
        self.allow = allow


class RequestTimeout(_Fixed):
    """The request body did not arrive within ``body_timeout``; the connection is closed."""

    status = 408


class Gone(_Fixed):
    """The connection a ``request`` was meant for has closed."""

    status = 410


class PayloadTooLarge(_Fixed):
    """The body is larger than ``max_body_bytes``."""

    status = 413


class UnsupportedMediaType(_Fixed):
    """The body is not declared as JSON."""

    status = 415


class UnprocessableEntity(_Fixed, ValueError):
    """A number in the body is outside what every reader reads alike (SPEC 6.1).

    Also a ``ValueError``: ``channels.publish()`` raises it for such a message, as it does for
    other bad arguments.
    """

    status = 422


class TooManyRequests(_Fixed):
    """A rate limit was exceeded; retry after ``retry_after`` seconds."""

    status = 429

    def __init__(self, retry_after: int, message: str = "") -> None:
        super().__init__(message or f"Rate limit exceeded; retry after {retry_after} s")
        self.retry_after = retry_after


class TooManyConnections(TooManyRequests):
    """The client's address already holds ``max_connections_per_ip`` open connections.

    Args:
        limit: the limit, for the message.
        retry_after: the seconds after which trying again makes sense.
    """

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(
            retry_after,
            f"Too many open connections from this address (max_connections_per_ip={limit}, "
            "per server process); close one before opening another",
        )
        self.limit = limit


class StorageUnavailable(_Fixed, storage_base.StorageUnreachable):
    """The storage backend cannot be reached; nothing was stored or delivered.

    Retrying is safe: the call never reached the backend (or only read from it).
    """

    status = 503


class StorageTimeout(_Fixed, storage_base.StorageNoReply):
    """The storage received a change but no reply came: it may have been applied.

    Raised when the command left for the backend and then the connection timed out or broke
    before the answer (Redis paused, a network partition). A broadcast may have been stored and
    delivered, so a blind retry may deliver it twice; check the channel's history (a ``request``,
    or a resume) before publishing it again. Not a :class:`StorageUnavailable`, whose promise
    that nothing happened does not hold here.
    """

    status = 504


class Reject(ChannelError):
    """Raised by an ``on_publish`` hook to refuse a message with a status of its choice.

    Args:
        status: the HTTP status of the reply (400-599).
        message: the reply's ``message``.
    """

    def __init__(self, status: int, message: str) -> None:
        if not 400 <= status <= 599:
            raise ValueError(
                f"Reject status must be an HTTP error status (400-599), got {status!r}"
            )
        super().__init__(status, message)


def http_error(exc: ChannelError | storage_base.StorageError) -> ChannelError:
    """Return the refusal that answers ``exc``: a storage failure's, or ``exc`` itself.

    The one place where storage-level errors become HTTP ones: ``StorageChannelClosed`` is a
    404 (:class:`ChannelClosed`), ``StorageUserBanned`` a 403 (:class:`Forbidden`),
    ``StorageNoReply`` a 504 (:class:`StorageTimeout`), and ``StorageUnreachable`` or any other
    ``StorageError`` a 503 (:class:`StorageUnavailable`, whose reply carries ``Retry-After``).
    The message is the storage's, but a ban's, which names nobody. A ``ChannelError``
    (already a refusal) is returned as it is.
    """
    if isinstance(exc, ChannelError):
        return exc
    if isinstance(exc, storage_base.StorageChannelClosed):
        return ChannelClosed(exc.channel)
    if isinstance(exc, storage_base.StorageUserBanned):
        return Forbidden("You are banned from this channel")
    if isinstance(exc, storage_base.StorageNoReply):
        return StorageTimeout(str(exc))
    return StorageUnavailable(str(exc))


def maps_storage_errors(method: _Method[_P, _T]) -> _Method[_P, _T]:
    """Decorate an async API method to raise :func:`http_error`'s refusal for a storage error.

    The storage's error stays attached as the refusal's ``__cause__``.
    """

    @functools.wraps(method)
    async def mapped(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await method(*args, **kwargs)
        except storage_base.StorageError as exc:
            if isinstance(exc, ChannelError):  # already a refusal
                raise
            raise http_error(exc) from exc

    return mapped
