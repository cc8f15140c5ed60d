"""Media-time ranges: what a reader of a channel's archive asks for, checked once.

A range is ``from <= timestamp < to`` (either end may be left open), at most ``limit``
broadcasts (``DEFAULT_LIMIT``, at most ``MAX_LIMIT``), and ``after``, the id of the last
broadcast of the previous page. It comes from three places, each with its own way of naming what
is wrong:

- a ``request`` publish whose ``message`` is an object with any of ``from``, ``to``, ``limit``
  and ``after`` (:func:`range_of_message`; any other ``message`` leaves the request its seed
  meaning, the live history). Errors name the field as msgspec does: ``$.message.from``;
- the query of ``GET /history/{channel}`` (:func:`range_of_query`). Errors name the parameter;
- ``channels.history()`` (:func:`checked_range`): ``ValueError``/``TypeError``.

Bounds are media times, finite numbers >= 0 like the ``timestamp`` of a publish; ``from``
greater than ``to`` is refused rather than read as an empty range (it is a client's mistake).
A range travels to the process that holds the requesting connection encoded with
:func:`encode_range` (MessagePack), as the payload of a ``request`` delivery.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Final

import msgspec

from .errors import BadRequest

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MediaRange",
    "checked_range",
    "decode_range",
    "encode_range",
    "range_of_message",
    "range_of_query",
]

#: Broadcasts in a page when the reader does not say.
DEFAULT_LIMIT: Final = 200
#: The most broadcasts a page may hold.
MAX_LIMIT: Final = 1000

_RANGE_KEYS: Final = (b'"from"', b'"to"', b'"limit"', b'"after"')


class MediaRange(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A checked range of a channel's archive.

    Attributes:
        start: the earliest media time, inclusive; None: from the first.
        end: the media time where the range stops, exclusive; None: to the last.
        limit: the most broadcasts to return, 1 to ``MAX_LIMIT``.
        after: continue after this event id (the last of the previous page), or None.
    """

    start: float | None = None
    end: float | None = None
    limit: int = DEFAULT_LIMIT
    after: str | None = None


_Time = Annotated[float, msgspec.Meta(ge=0.0)]
_Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)]


class _RangeMessage(msgspec.Struct):
    """The ``message`` of a range request, as sent; a field left out is UNSET."""

    start: _Time | msgspec.UnsetType | None = msgspec.field(default=msgspec.UNSET, name="from")
    end: _Time | msgspec.UnsetType | None = msgspec.field(default=msgspec.UNSET, name="to")
    limit: _Limit | msgspec.UnsetType = msgspec.UNSET
    after: str | msgspec.UnsetType | None = msgspec.UNSET


_message_decoder: Final = msgspec.json.Decoder(_RangeMessage)
_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(MediaRange)


def range_of_message(message: msgspec.Raw) -> MediaRange | None:
    """Return the range a ``request`` publish's ``message`` asks for; None: the live history.

    Args:
        message: the raw ``message`` (``null`` when the body had none), already valid JSON.

    Raises:
        BadRequest: a range field of the wrong type or out of bounds, or ``from`` > ``to``;
            the message names the field (``$.message.limit``).
    """
    data = bytes(message)
    if not data.startswith(b"{") or not any(key in data for key in _RANGE_KEYS):
        return None  # cheap tests first: the seed's request has no message at all
    try:
        sent = _message_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc).replace("`$", "`$.message")) from None
    fields = (sent.start, sent.end, sent.limit, sent.after)
    if all(value is msgspec.UNSET for value in fields):
        return None  # an object without a range field ("from" was only in a string)
    start = None if isinstance(sent.start, msgspec.UnsetType) else sent.start
    end = None if isinstance(sent.end, msgspec.UnsetType) else sent.end
    if start is not None and end is not None and start > end:
        raise BadRequest(
            f"`from` ({start:g}) must not be greater than `to` ({end:g}) - at `$.message.from`"
        )
    limit = DEFAULT_LIMIT if isinstance(sent.limit, msgspec.UnsetType) else sent.limit
    after = None if isinstance(sent.after, msgspec.UnsetType) else sent.after or None
    return MediaRange(start, end, limit, after)


def range_of_query(params: Mapping[str, str]) -> MediaRange:
    """Return the range the query of ``GET /history/{channel}`` asks for.

    ``from``, ``to``, ``limit`` and ``after`` are each optional (an empty value counts as
    left out); other parameters are ignored.

    Raises:
        BadRequest: a bad ``from``, ``to`` or ``limit``, or ``from`` > ``to``; the message names
            the parameter.
    """
    start = _time_param(params, "from")
    end = _time_param(params, "to")
    if start is not None and end is not None and start > end:
        raise BadRequest(
            f"Query parameter `from` ({start:g}) must not be greater than `to` ({end:g})"
        )
    text = params.get("limit") or ""
    limit = DEFAULT_LIMIT
    if text:
        try:
            limit = int(text)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(
                f"Query parameter `limit` must be an integer from 1 to {MAX_LIMIT}, got {text!r}"
            )
    return MediaRange(start, end, limit, params.get("after") or None)


def _time_param(params: Mapping[str, str], name: str) -> float | None:
    text = params.get(name) or ""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise BadRequest(
            f"Query parameter `{name}` must be a media time in seconds (a finite number >= 0), "
            f"got {text!r}"
        )
    return value


def checked_range(
    start: float | None, end: float | None, limit: int, after: str | None
) -> MediaRange:
    """Return the range of a ``channels.history()`` call.

    Raises:
        TypeError: a bound that is not a number, a ``limit`` that is not an int, or an
            ``after`` that is not a str.
        ValueError: a bound that is not finite or is negative, ``start`` > ``end``, or a
            ``limit`` outside 1 to ``MAX_LIMIT``.
    """
    for name, value in (("start", start), ("end", end)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number of seconds or None, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if start is not None and end is not None and start > end:
        raise ValueError(f"start ({start!r}) must not be greater than end ({end!r})")
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, got {limit!r}")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be from 1 to {MAX_LIMIT}, got {limit!r}")
    if after is not None and not isinstance(after, str):
        raise TypeError(f"after must be an event id (a str) or None, got {after!r}")
    return MediaRange(
        None if start is None else float(start),
        None if end is None else float(end),
        limit,
        after or None,
    )


def encode_range(wanted: MediaRange) -> bytes:
    """Encode a range for a ``request`` delivery's payload."""
    return _encoder.encode(wanted)


def decode_range(data: bytes) -> MediaRange:
    """Decode what :func:`encode_range` made.

    Raises:
        msgspec.DecodeError: ``data`` is not an encoded range (it is a ``ValueError``).
    """
    return _decoder.decode(data)
