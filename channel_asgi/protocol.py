"""The inLive envelope, as msgspec Structs, and the encoders and decoders built once.

Publish bodies are a tagged union on ``type``, so msgspec's own errors name the bad field
("Expected `str`, got `int` - at `$.widget_key`"). ``message`` travels as ``msgspec.Raw``: it is
validated as JSON once and then copied into the outgoing envelope byte for byte, never decoded.

An event's id is assigned by the storage *after* the envelope is encoded, so retained broadcasts are
stored without it and :func:`with_id` splices ``"id"`` in front when they are framed; that keeps the
one encode per event and lets any process frame a stored event the same way.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Final

import msgspec

from .errors import BadRequest
from .numbers import check_json, fits
from .ranges import MediaRange, range_of_message

__all__ = [
    "WS_PING",
    "Envelope",
    "Outline",
    "decode_envelope",
    "decode_outline",
    "decode_publish",
    "encode",
    "encode_event",
    "for_channel",
    "skip_undecodable",
    "with_id",
]

#: The keepalive text frame of an idle WebSocket (SSE's ``: ping``): a ``type`` no client acts on.
WS_PING: Final = '{"type":"ping"}'

#: The publish types a client may send.
PUBLISH_TYPES: Final = frozenset({"broadcast", "private", "request", "webhook"})

_NonNegative = Annotated[float, msgspec.Meta(ge=0.0)]


class _PublishBody(msgspec.Struct, tag_field="type", kw_only=True):
    """Fields every publish body may carry; unknown fields are ignored."""

    widget_key: str | msgspec.UnsetType = msgspec.UNSET
    timestamp: _NonNegative = 0.0


class BroadcastBody(_PublishBody, tag="broadcast"):
    """``type: broadcast``: deliver to every subscriber and retain in history."""

    message: msgspec.Raw


class PrivateBody(_PublishBody, tag="private"):
    """``type: private``: deliver to one user's connections on the channel."""

    message: msgspec.Raw
    to_user_id: str


class RequestBody(_PublishBody, tag="request"):
    """``type: request``: send the retained broadcasts to the sending connection.

    Its ``message`` (``range_message`` here, so that hooks still see a request without one)
    matters only when it asks for a range of the archive (:class:`RangeRequestBody`).
    """

    range_message: msgspec.Raw = msgspec.field(default=msgspec.Raw(b"null"), name="message")


class RangeRequestBody(RequestBody, tag="request", kw_only=True):
    """A ``request`` whose ``message`` asks for a range of the archive by media time.

    Never decoded as such: :func:`decode_publish` makes it from a :class:`RequestBody`.
    """

    range: MediaRange


class WebhookBody(_PublishBody, tag="webhook"):
    """``type: webhook``: POST the envelope to ``message.url``."""

    message: msgspec.Raw
    url: str = ""  # filled in from ``message.url`` after decoding


PublishBody = BroadcastBody | PrivateBody | RequestBody | WebhookBody


def publish_type(body: PublishBody) -> str:
    """Return the ``type`` tag of a decoded publish body."""
    return str(body.__struct_config__.tag)


_publish_decoder: Final[msgspec.json.Decoder[PublishBody]] = msgspec.json.Decoder(PublishBody)


def decode_publish(body: bytes) -> PublishBody:
    """Decode and validate a publish body.

    Raises:
        BadRequest: the body is not UTF-8 JSON, a field is missing or of the wrong type, the
            ``type`` is unknown, or ``message`` is null. The message names the field.
        UnprocessableEntity: the body is JSON, but a number anywhere in it breaks the number
            rule (SPEC 6.1); this comes before any schema error. The message names the path.

    A ``request`` whose ``message`` asks for a range of the archive comes back as a
    :class:`RangeRequestBody` (a bad range is a 400 naming the field, ``$.message.from``).
    """
    try:
        if not body.isascii():  # msgspec skips Raw values without checking their UTF-8
            body.decode("utf-8")
        decoded = _publish_decoder.decode(body)
    except UnicodeDecodeError:
        raise BadRequest("Body is not valid UTF-8") from None
    except msgspec.ValidationError as exc:
        check_json(body)  # "Number out of range" is a 422 (a bad number anywhere comes first)
        raise BadRequest(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"Malformed JSON body: {exc}") from None
    except RecursionError:
        raise BadRequest("JSON is nested too deeply") from None
    if not fits(body):  # message is relayed raw: its numbers must read the same everywhere
        check_json(body)
    if isinstance(decoded, RequestBody):
        wanted = range_of_message(decoded.range_message)
        if wanted is None:
            return decoded
        return RangeRequestBody(
            widget_key=decoded.widget_key,
            timestamp=decoded.timestamp,
            range_message=decoded.range_message,
            range=wanted,
        )
    raw = decoded.message
    if len(raw) == 4 and bytes(raw) == b"null":
        raise BadRequest("`message` must not be null - at `$.message`")
    if 10 in body or 13 in body:  # a line break somewhere (an int test is a fast memchr)
        decoded.message = _without_line_breaks(raw)
    if isinstance(decoded, PrivateBody):
        if not decoded.to_user_id:
            raise BadRequest("`to_user_id` must not be empty - at `$.to_user_id`")
    elif isinstance(decoded, WebhookBody):
        decoded.url = _webhook_url(decoded.message)
    return decoded


class _WebhookTarget(msgspec.Struct):
    url: str


_webhook_decoder: Final = msgspec.json.Decoder(_WebhookTarget)


def _webhook_url(message: msgspec.Raw) -> str:
    try:
        return _webhook_decoder.decode(message).url
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "`$" in text:
            raise BadRequest(text.replace("`$", "`$.message")) from None
        raise BadRequest(f"{text} - at `$.message`") from None


def _without_line_breaks(raw: msgspec.Raw) -> msgspec.Raw:
    """Return ``raw`` on one line (it goes on one ``data:`` line).

    JSON strings escape their own line breaks, so any left are whitespace between tokens, which
    re-encoding drops.
    """
    data = bytes(raw)
    if b"\n" in data or b"\r" in data:
        return msgspec.Raw(msgspec.json.encode(msgspec.json.decode(data)))
    return raw


class WebhookData(msgspec.Struct, kw_only=True):
    """The envelope a webhook receives as CloudEvent ``data`` (no ``widget_key``)."""

    stream_id: str
    author_id: str
    to_user_id: str = ""
    message: msgspec.Raw
    timestamp: float = 0.0
    type: str = "webhook"


class _Outgoing(msgspec.Struct, kw_only=True):
    """The envelope as it goes to subscribers, in the field order of the inLive examples."""

    stream_id: str
    author_id: str = "0"
    to_user_id: str = ""
    message: msgspec.Raw
    timestamp: float = 0.0
    type: str
    widget_key: str = ""


class Envelope(msgspec.Struct, kw_only=True):
    """A decoded event, as server-side subscribers and the Python client see it.

    Attributes:
        type: ``broadcast``, ``private``, ``request``, ``system``, ``init`` or ``end``.
        id: the event id of a retained broadcast, else None.
        stream_id: the channel.
        author_id: the user who published it (``"0"`` for the server).
        to_user_id: the addressee of a private message, else ``""``.
        message: the JSON value published.
        timestamp: the video time in seconds (0 for server events).
    """

    type: str
    id: str | None = None
    stream_id: str = ""
    author_id: str = "0"
    to_user_id: str = ""
    message: Any = None
    timestamp: float = 0.0


_encoder: Final = msgspec.json.Encoder()
encode: Final = _encoder.encode
_envelope_decoder: Final = msgspec.json.Decoder(Envelope)
decode_envelope: Final = _envelope_decoder.decode


class Outline(msgspec.Struct):
    """What can still be read of an event that does not decode as an :class:`Envelope`.

    ``message`` stays raw JSON, so a number no reader can hold (one this server refuses, but
    an older server or another implementation may have relayed) does not stop the rest.
    """

    type: str = ""
    id: str | None = None
    message: msgspec.Raw = msgspec.Raw(b"null")


_outline_decoder: Final = msgspec.json.Decoder(Outline)


def decode_outline(data: bytes | str) -> Outline | None:
    """Return the outline of an encoded event, or None when it is not even a JSON object."""
    try:
        return _outline_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None


def skip_undecodable(
    log: logging.Logger, channel: str, data: bytes | str, exc: Exception, *, where: str = ""
) -> str | None:
    """Log an event that does not decode, as a warning naming its id; return that id (if any).

    Readers skip such an event and count its id as seen (SPEC 6.1), so it is never replayed.
    """
    outline = decode_outline(data)
    event_id = None if outline is None else outline.id
    log.warning(
        "Skipped event %s%s on %r: it cannot be decoded (%s)",
        event_id or "(no id)",
        where,
        channel,
        exc,
    )
    return event_id


def encode_event(
    type: str,
    channel: str,
    message: msgspec.Raw | bytes,
    *,
    author_id: str = "0",
    to_user_id: str = "",
    timestamp: float = 0.0,
) -> bytes:
    """Encode one outgoing envelope (without ``id``) to JSON bytes."""
    raw = message if isinstance(message, msgspec.Raw) else msgspec.Raw(message)
    return _encoder.encode(
        _Outgoing(
            stream_id=channel,
            author_id=author_id,
            to_user_id=to_user_id,
            message=raw,
            timestamp=timestamp,
            type=type,
        )
    )


def with_id(payload: bytes, event_id: str) -> bytes:
    """Return the encoded envelope ``payload`` with ``"id"`` as its first field."""
    return b'{"id":' + _encoder.encode(event_id) + b"," + payload[1:]


_EVERY_CHANNEL: Final = b'{"stream_id":"*",'


def for_channel(payload: bytes, channel: str) -> bytes:
    """Return an envelope :func:`encode_event` made for channel ``"*"``, as one of ``channel``.

    News for every channel (a ban on ``"*"``) is encoded once, and each process's hub gives it
    the ``stream_id`` of each channel it reaches (``stream_id`` is always the channel). Any
    other payload is returned as it is.
    """
    if not payload.startswith(_EVERY_CHANNEL):
        return payload
    return b'{"stream_id":' + _encoder.encode(channel) + b"," + payload[len(_EVERY_CHANNEL) :]


class Reply(msgspec.Struct, omit_defaults=True):
    """The JSON reply to a publish, and to every refusal."""

    code: int
    message: str
    id: str | None = None
    status: int | None = None  #: the upstream status of a webhook call


class InitMessage(msgspec.Struct, omit_defaults=True):
    """``message`` of the ``init`` event."""

    user_id: str
    token: str
    viewer_count: int
    recovered: bool | None = None


class PresenceMessage(msgspec.Struct):
    """``message`` of a ``system`` join or leave event."""

    status: str
    user_id: str
    viewer_count: int


class ModerationMessage(msgspec.Struct):
    """``message`` of the ``system`` event of a deleted broadcast (``status`` "deleted")."""

    status: str
    id: str


class CountMessage(msgspec.Struct):
    """``message`` of the ``system`` count event that replaces join/leave on large channels."""

    status: str
    viewer_count: int
    joined: int
    left: int
