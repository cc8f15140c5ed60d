"""The inLive envelope: decoding publish bodies, their 400s, and encoding outgoing events."""

from __future__ import annotations

import json

import msgspec
import pytest

from channel_asgi.errors import BadRequest, UnprocessableEntity
from channel_asgi.protocol import (
    BroadcastBody,
    Envelope,
    PrivateBody,
    PublishBody,
    RequestBody,
    WebhookBody,
    decode_envelope,
    decode_publish,
    encode_event,
    publish_type,
    with_id,
)

#: The envelope example of SPEC section 2, verbatim: its key order is the wire order.
SPEC_ENVELOPE = """
{"stream_id": "1", "author_id": "u-1", "to_user_id": "", "message": {}, "timestamp": 2365.123,
 "type": "broadcast", "widget_key": ""}
"""

EXTRA = '"unknown": {"nested": [1, 2]}, "author_id": "spoofed", "stream_id": "other", "id": "9"'


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def message_of(decoded: PublishBody) -> object:
    assert isinstance(decoded, (BroadcastBody, PrivateBody, WebhookBody))
    return json.loads(bytes(decoded.message))


@pytest.mark.parametrize(
    ("raw", "expected_type", "expected_class"),
    [
        (
            '{"type": "broadcast", "message": {"text": "hi"}, "widget_key": "k", %s}',
            "broadcast",
            BroadcastBody,
        ),
        (
            '{"type": "private", "message": "psst", "to_user_id": "u-2", "widget_key": "k", %s}',
            "private",
            PrivateBody,
        ),
        ('{"type": "request", "widget_key": "k", %s}', "request", RequestBody),
        (
            '{"type": "webhook", "message": {"url": "https://a.example/h"}, "widget_key": "k", %s}',
            "webhook",
            WebhookBody,
        ),
    ],
    ids=["broadcast", "private", "request", "webhook"],
)
def test_decode_publish_accepts_each_type_and_ignores_unknown_fields(
    raw: str, expected_type: str, expected_class: type[PublishBody]
) -> None:
    """Every publish type decodes to its Struct; extra fields are ignored, not refused."""
    decoded = decode_publish((raw % EXTRA).encode())
    assert type(decoded) is expected_class
    assert publish_type(decoded) == expected_type
    assert decoded.widget_key == "k"
    assert decoded.timestamp == 0.0


def test_decoded_fields_keep_their_values() -> None:
    """A private body keeps its message, addressee, widget key and timestamp."""
    decoded = decode_publish(
        body(type="private", message=[1, "two"], to_user_id="u-2", widget_key="k", timestamp=12.5)
    )
    assert isinstance(decoded, PrivateBody)
    assert message_of(decoded) == [1, "two"]
    assert decoded.to_user_id == "u-2"
    assert decoded.widget_key == "k"
    assert decoded.timestamp == 12.5


@pytest.mark.parametrize("timestamp", [0, 7, 2365.123, 1e300], ids=str)
def test_timestamp_accepts_non_negative_numbers_including_integers(timestamp: float) -> None:
    """``timestamp`` is any finite number >= 0; integers are accepted as floats."""
    decoded = decode_publish(body(type="broadcast", message=1, timestamp=timestamp))
    assert decoded.timestamp == float(timestamp)
    assert isinstance(decoded.timestamp, float)


def test_widget_key_is_optional() -> None:
    """Without ``widget_keys`` configured a publish need not carry one."""
    assert decode_publish(body(type="broadcast", message=1)).widget_key is msgspec.UNSET


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        pytest.param(
            b'{"type": "broadcast", "message": 1, "widget_key": 5}',
            "`$.widget_key`",
            id="widget_key-int",
        ),
        pytest.param(
            b'{"type": "broadcast", "message": 1, "widget_key": ["k"]}',
            "`$.widget_key`",
            id="widget_key-array",
        ),
        pytest.param(
            b'{"type": "broadcast", "message": 1, "timestamp": "1"}',
            "`$.timestamp`",
            id="timestamp-string",
        ),
        pytest.param(
            b'{"type": "broadcast", "message": 1, "timestamp": true}',
            "`$.timestamp`",
            id="timestamp-bool",
        ),
        pytest.param(
            b'{"type": "broadcast", "message": 1, "timestamp": -0.5}',
            "`$.timestamp`",
            id="timestamp-negative",
        ),
        pytest.param(
            b'{"type": "private", "message": 1, "to_user_id": 3}',
            "`$.to_user_id`",
            id="to_user_id-int",
        ),
        pytest.param(
            b'{"type": "private", "message": 1, "to_user_id": ""}',
            "`$.to_user_id`",
            id="to_user_id-empty",
        ),
        pytest.param(
            b'{"type": "private", "message": 1}',
            "`to_user_id`",
            id="to_user_id-missing",
        ),
        pytest.param(b'{"type": "broadcast"}', "`message`", id="message-missing"),
        pytest.param(b'{"type": "private", "to_user_id": "u"}', "`message`", id="private-msg"),
        pytest.param(b'{"type": "webhook"}', "`message`", id="webhook-message-missing"),
        pytest.param(b'{"type": "broadcast", "message": null}', "`$.message`", id="message-null"),
        pytest.param(
            b'{"type": "webhook", "message": null}', "`$.message`", id="webhook-message-null"
        ),
        pytest.param(b'{"message": 1}', "`type`", id="type-missing"),
        pytest.param(b'{"type": "nope", "message": 1}', "`$.type`", id="type-unknown"),
        pytest.param(b'{"type": 1, "message": 1}', "`$.type`", id="type-int"),
        pytest.param(b"[]", "object", id="not-an-object"),
    ],
)
def test_bad_publish_body_is_400_naming_the_field(raw: bytes, names: str) -> None:
    """Each schema error is a BadRequest whose message says which field is wrong."""
    with pytest.raises(BadRequest) as caught:
        decode_publish(raw)
    assert caught.value.status == 400
    assert names in caught.value.message


def test_an_infinite_timestamp_is_422_not_400() -> None:
    """A number outside the rule is a 422 (SPEC 6.1), even in a field with a schema error."""
    with pytest.raises(UnprocessableEntity) as caught:
        decode_publish(b'{"type": "broadcast", "message": 1, "timestamp": 1e999}')
    assert caught.value.status == 422
    assert "`$.timestamp`" in caught.value.message


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"not json", id="text"),
        pytest.param(b'{"type": "broadcast", "message": NaN}', id="nan-literal"),
        pytest.param(b'{"type": "broadcast", "message": 1, "timestamp": NaN}', id="nan-stamp"),
        pytest.param(b'{"type": "broadcast", "message": 1}{}', id="trailing-data"),
        pytest.param(b'{"type": "broadcast", "message": [1,]}', id="trailing-comma"),
        pytest.param(b"null", id="null"),
    ],
)
def test_malformed_json_is_400(raw: bytes) -> None:
    """A body that is not one JSON object is a BadRequest."""
    with pytest.raises(BadRequest) as caught:
        decode_publish(raw)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "message",
    [
        b'{"a"\n:\n[1,\r2]}',
        b"[\r\n1,\r\n2\r\n]",
        b'\n"text"\n',
        b'{"s": "line\\nbreak\\r", "t":\n"\xc3\xa9"}',
        b'{\n"deep": {\n"deeper": [\n{"x": 1.5}\n]\n}\n}',
    ],
    ids=["lf-and-cr", "crlf", "around-a-string", "escaped-in-strings", "nested"],
)
def test_line_breaks_between_tokens_are_removed_from_the_message(message: bytes) -> None:
    """A message with raw CR/LF whitespace is re-encoded compactly and keeps its value."""
    raw = b'{"type": "broadcast",\r\n "message": ' + message + b',\n "widget_key": "k"}'
    decoded = decode_publish(raw)
    assert isinstance(decoded, BroadcastBody)
    cleaned = bytes(decoded.message)
    assert b"\n" not in cleaned
    assert b"\r" not in cleaned
    assert json.loads(cleaned) == json.loads(message)


def test_message_without_line_breaks_is_kept_byte_for_byte() -> None:
    """A message that needs no cleaning travels exactly as the client sent it."""
    message = b'{ "spaced" : [1, 2.50, "caf\\u00e9"] }'
    decoded = decode_publish(b'{"type": "broadcast", "message": ' + message + b"}")
    assert isinstance(decoded, BroadcastBody)
    assert bytes(decoded.message) == message


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"type": "broadcast", "message": "\xff"}', id="in-message"),
        pytest.param(b'{"type": "broadcast", "message": {"k\xfe": 1}}', id="in-message-key"),
        pytest.param(b'{"type": "broadcast", "message": 1, "x": "\x80"}', id="in-unknown-field"),
        pytest.param(b'{"type": "broadcast", "message": 1, "widget_key": "\xc3"}', id="truncated"),
        pytest.param(b'{"type": "broadcast", "message": "\xc0\xaf"}', id="overlong"),
        pytest.param(b'{"type": "broadcast", "message": "\xed\xa0\x80"}', id="surrogate"),
        pytest.param(b'{"type": "broadcast", "message": 1, "widget_key": "k"}\xff', id="trailing"),
        pytest.param(b'{"type": "broadcast", "message": "\n\xff"}', id="with-a-line-break"),
        pytest.param(b'\xef\xbb\xbf{"type": "request"}\xf8', id="after-a-bom"),
    ],
)
def test_invalid_utf8_anywhere_is_400(raw: bytes) -> None:
    """A body that is not valid UTF-8 is refused, wherever the bad bytes are."""
    with pytest.raises(BadRequest) as caught:
        decode_publish(raw)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"[" * 100_000, id="top-level-arrays"),
        pytest.param(b'{"a":' * 100_000, id="top-level-objects"),
        pytest.param(
            b'{"type": "broadcast", "message": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            id="in-message",
        ),
        pytest.param(
            b'{"type": "broadcast", "message": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001,
            id="objects-in-message",
        ),
        pytest.param(
            b'{"type": "broadcast", "message": ' + b"[\n" * 100_000 + b"]" * 100_000 + b"}",
            id="in-message-with-line-breaks",
        ),
        pytest.param(
            b'{"type": "request", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            id="in-unknown-field",
        ),
    ],
)
def test_very_deep_nesting_is_400_never_a_recursion_error(raw: bytes) -> None:
    """Pathologically nested JSON is a BadRequest, not a RecursionError (a 500)."""
    with pytest.raises(BadRequest) as caught:
        decode_publish(raw)
    assert caught.value.status == 400


@pytest.mark.parametrize("depth", [100, 500, 900, 990, 1000, 1010, 2000])
def test_nesting_near_the_limit_is_accepted_or_400(depth: int) -> None:
    """Around the nesting limit, with line breaks to clean, decoding succeeds or is a 400."""
    message = b"[\n" * depth + b"]" * depth
    try:
        decoded = decode_publish(b'{"type": "broadcast", "message": ' + message + b"}")
    except BadRequest as exc:
        assert exc.status == 400
    else:
        assert isinstance(decoded, BroadcastBody)
        assert bytes(decoded.message) == b"[" * depth + b"]" * depth


def test_with_id_puts_id_first_and_keeps_the_rest_byte_for_byte() -> None:
    """Splicing the event id in front leaves the encoded envelope untouched after it."""
    payload = encode_event("broadcast", "chats/1", b'{"text":"hi \\"you\\""}', author_id="u-1")
    framed = with_id(payload, "1700000000000-7")
    prefix = b'{"id":"1700000000000-7",'
    assert framed.startswith(prefix)
    assert framed[len(prefix) :] == payload[1:]
    decoded = json.loads(framed)
    assert next(iter(decoded)) == "id"
    assert decoded == {"id": "1700000000000-7", **json.loads(payload)}


@pytest.mark.parametrize("event_id", ["0", "1-0", "a:b", 'needs "escaping" \\'])
def test_with_id_encodes_the_id_as_a_json_string(event_id: str) -> None:
    """The id is a JSON string, escaped if it has to be."""
    framed = with_id(encode_event("broadcast", "c", b"1"), event_id)
    assert json.loads(framed)["id"] == event_id


def test_encode_event_field_order_matches_the_spec_envelope() -> None:
    """Outgoing envelopes list their fields in the order of the SPEC's example."""
    spec_order = list(json.loads(SPEC_ENVELOPE))
    assert spec_order == [
        "stream_id",
        "author_id",
        "to_user_id",
        "message",
        "timestamp",
        "type",
        "widget_key",
    ]
    encoded = encode_event("broadcast", "1", b"{}", author_id="u-1", timestamp=2365.123)
    assert list(json.loads(encoded)) == spec_order
    assert json.loads(encoded) == json.loads(SPEC_ENVELOPE)


def test_encode_event_is_compact_and_never_echoes_a_widget_key() -> None:
    """The encoded event is one line of compact JSON whose widget_key is empty."""
    encoded = encode_event(
        "private", "c", msgspec.Raw(b'{"a":[1,2]}'), author_id="u-1", to_user_id="u-2"
    )
    assert encoded == (
        b'{"stream_id":"c","author_id":"u-1","to_user_id":"u-2","message":{"a":[1,2]},'
        b'"timestamp":0.0,"type":"private","widget_key":""}'
    )


def test_encode_event_defaults_are_those_of_a_server_event() -> None:
    """Without author, addressee or timestamp, an event is from ``"0"`` at time 0."""
    decoded = json.loads(encode_event("system", "c", b'{"status":"join"}'))
    assert decoded["author_id"] == "0"
    assert decoded["to_user_id"] == ""
    assert decoded["timestamp"] == 0


@pytest.mark.parametrize("event_id", [None, "1700000000000-0"], ids=["without-id", "with-id"])
def test_envelope_decodes_an_event_with_and_without_id(event_id: str | None) -> None:
    """``decode_envelope`` reads what subscribers receive, with ``id`` only on broadcasts."""
    payload = encode_event("broadcast", "chats/1", b'{"text":"hi"}', author_id="u-1", timestamp=1.5)
    if event_id is not None:
        payload = with_id(payload, event_id)
    envelope = decode_envelope(payload)
    assert envelope == Envelope(
        type="broadcast",
        id=event_id,
        stream_id="chats/1",
        author_id="u-1",
        to_user_id="",
        message={"text": "hi"},
        timestamp=1.5,
    )


def test_envelope_ignores_the_widget_key_and_unknown_fields() -> None:
    """An envelope decodes from a seed's JSON, including fields it does not model."""
    envelope = decode_envelope(SPEC_ENVELOPE.encode())
    assert envelope.type == "broadcast"
    assert envelope.id is None
    assert envelope.author_id == "u-1"
    assert envelope.message == {}


@pytest.mark.parametrize(
    ("decoded", "tag"),
    [
        (BroadcastBody(message=msgspec.Raw(b"1")), "broadcast"),
        (PrivateBody(message=msgspec.Raw(b"1"), to_user_id="u"), "private"),
        (RequestBody(), "request"),
        (WebhookBody(message=msgspec.Raw(b"{}")), "webhook"),
    ],
    ids=["broadcast", "private", "request", "webhook"],
)
def test_publish_type_returns_the_tag(decoded: PublishBody, tag: str) -> None:
    """``publish_type`` names the type of a decoded body as it appears on the wire."""
    assert publish_type(decoded) == tag
