"""Garbage in: random and malformed publish bodies never get a 5xx nor kill the server.

Hypothesis does not drive async tests, so the server runs in a child process (``server_process``)
and each test talks to it with a synchronous ``httpx.Client``; the ``@given`` function is defined
inside the test body, after the server is up, so one server serves every example of a test.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from .helpers import WAIT, publish, subscribe

if TYPE_CHECKING:
    from .conftest import ServerProcess

StartServer = Callable[..., "ServerProcess"]

WIDGET_KEY: Final = "6b9f652a-garbage-key"
SECRET: Final = "garbage-secret-" + "0123456789abcdef" * 2
CHANNEL: Final = "garbage"
UVICORN_FACTORY: Final = [
    "-m",
    "uvicorn",
    "channel_asgi.cli:create_app",
    "--factory",
    "--port",
    "{port}",
    "--log-level",
    "warning",
]

# About 300 examples in all, repeatable in CI, and no .hypothesis directory.
FUZZ: Final = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(autouse=True, scope="module")
def _hypothesis_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep Hypothesis's caches (character tables) out of the working tree."""
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


def _options(**values: Any) -> dict[str, str]:
    options = {"widget_keys": [WIDGET_KEY], "secret": SECRET, **values}
    return {"CHANNEL_ASGI_CLI_OPTIONS": json.dumps(options)}


class _SyncEvents:
    """Parse a synchronous SSE response into JSON events, with a bounded total wait."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()

    def next(self, timeout: float = WAIT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        data: list[str] = []
        for line in self.lines:  # each read is bounded by the client's read timeout
            if time.monotonic() > deadline:
                raise TimeoutError("no complete event in time")
            if line == "":
                if data:
                    event: dict[str, Any] = json.loads("\n".join(data))
                    return event
                continue
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value[1:] if value.startswith(" ") else value)
        raise EOFError("stream ended")

    def until(self, type_: str, timeout: float = WAIT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = self.next(max(deadline - time.monotonic(), 0.0))
            if event["type"] == type_:
                return event


@contextmanager
def _sync_subscribe(http: httpx.Client, url: str) -> Iterator[tuple[_SyncEvents, dict[str, Any]]]:
    """Open ``GET url`` as SSE and read its ``init`` event."""
    with http.stream("GET", url) as response:
        assert response.status_code == 200, response.read()
        events = _SyncEvents(response)
        init = events.next()
        assert init["type"] == "init", init
        yield events, init


@dataclass
class Target:
    """A running server, a client, and tokens to publish with."""

    server: ServerProcess
    http: httpx.Client
    token: str
    other_channel_token: str

    @property
    def url(self) -> str:
        return f"{self.server.base}/publish/{CHANNEL}"

    def post(
        self,
        body: bytes,
        *,
        content_type: str | None = "application/json",
        token: str | None = None,
        bearer: bool = False,
    ) -> httpx.Response:
        token = self.token if token is None else token
        headers = {} if content_type is None else {"content-type": content_type}
        params: dict[str, str] = {}
        if bearer:
            headers["authorization"] = f"Bearer {token}"
        elif token:
            params["token"] = token
        return self.http.post(self.url, content=body, headers=headers, params=params)


@contextmanager
def _target(start: StartServer, **options: Any) -> Iterator[Target]:
    """Start a server, keep a subscriber open on the channel, and hand out its token."""
    server = start(UVICORN_FACTORY, _options(**options))
    with ExitStack() as stack:
        http = stack.enter_context(httpx.Client(trust_env=False, timeout=WAIT))
        # The holder stays connected (and never reads) so that `request` bodies reach a live
        # connection and valid broadcasts have somewhere to go.
        _, init = stack.enter_context(_sync_subscribe(http, f"{server.base}/subscribe/{CHANNEL}"))
        with _sync_subscribe(http, f"{server.base}/subscribe/{CHANNEL}-other") as (_, other):
            other_token = other["message"]["token"]
        yield Target(server, http, init["message"]["token"], other_token)


def _assert_json_reply(reply: httpx.Response) -> dict[str, Any]:
    """Check the reply is below 500 and is ``{"code": <status>, "message": str}``."""
    body: dict[str, Any] = reply.json()
    assert body["code"] == reply.status_code, body
    assert isinstance(body["message"], str), body
    assert set(body) <= {"code", "message", "id"}, body
    assert reply.headers["content-type"].startswith("application/json")
    # No webhook_urls are configured, so no webhook leaves the server: no 502/504 either.
    assert reply.status_code < 500, body
    return body


def _assert_still_serving(target: Target) -> None:
    """The process is alive, a fresh subscribe gets init, and a valid publish reaches it."""
    server, http = target.server, target.http
    assert server.process.poll() is None, server.output()
    channel = f"after-{uuid.uuid4().hex}"
    with _sync_subscribe(http, f"{server.base}/subscribe/{channel}") as (events, init):
        reply = http.post(
            f"{server.base}/publish/{channel}",
            params={"token": init["message"]["token"]},
            json={"type": "broadcast", "message": {"still": "alive"}, "widget_key": WIDGET_KEY},
        )
        assert reply.status_code == 200, reply.text
        assert events.until("broadcast")["message"] == {"still": "alive"}
    assert "Traceback" not in server.output(), server.output()


# -- strategies ------------------------------------------------------------------------------

TYPES: Final = st.sampled_from(
    ["broadcast", "private", "request", "webhook", "garbage", "", "BROADCAST", "init", "system"]
)
# JSON texts a generator of Python values would never write: huge and odd numbers, bad escapes.
ODD_SCALARS: Final = st.sampled_from(
    [
        "1" + "0" * 400,
        "-" + "9" * 5000,
        "1e400",
        "-1e400",
        "1e-400",
        "18446744073709551616",
        "-9223372036854775809",
        "0.1e99999",
        "-0",
        "1E+2",
        '"\\ud800"',
        '"\\u0000"',
        '"\\x41"',
        "NaN",
        "Infinity",
        "undefined",
        "'single'",
        "01",
        ".5",
        "+1",
        "tru",
        '"unterminated',
    ]
)
SCALARS: Final = st.one_of(
    st.sampled_from(["null", "true", "false"]),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.text(max_size=20).map(lambda s: json.dumps(s, ensure_ascii=False)),
    ODD_SCALARS,
)


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _object(items: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in items) + "}"


JSON_TEXT: Final = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5).map(_array),
        st.lists(st.tuples(st.text(max_size=8), children), max_size=5).map(_object),
    ),
    max_leaves=25,
)
# Valid JSON values (numbers as large as 10**400 included) for fields that must parse.
VALID_JSON: Final = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),  # the number rule (SPEC 6.1): ODD_SCALARS go past it
        st.sampled_from([2**64 - 1, -(2**63)]),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=15,
).map(lambda value: json.dumps(value, ensure_ascii=False))
# Values that are right for each field, so that some bodies get past the first checks.
RIGHT_VALUES: Final = {
    "type": st.one_of(st.sampled_from(["broadcast", "private", "request", "webhook"]), TYPES).map(
        json.dumps
    ),
    "message": st.one_of(
        VALID_JSON.filter(lambda text: text != "null"),
        st.just('{"url": "http://127.0.0.1:1/hook"}'),
    ),
    "widget_key": st.sampled_from([json.dumps(WIDGET_KEY)] * 3 + ['"not-the-key"']),
    "to_user_id": st.text(min_size=1, max_size=20).map(json.dumps),
    "timestamp": st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(json.dumps),
}
EXTRA_FIELDS: Final = st.sampled_from(["stream_id", "author_id", "id", "url", "ref", ""])


@st.composite
def envelopes(draw: st.DrawFn) -> str:
    """A right envelope of a random type, then a few fields dropped, garbled, added or repeated."""
    fields = {name: draw(value) for name, value in RIGHT_VALUES.items()}
    mutation = "none"
    for _ in range(draw(st.integers(0, 4))):
        mutation = draw(st.sampled_from(["drop", "garble", "add", "repeat"]))
        name = draw(st.sampled_from(sorted(fields))) if fields else "type"
        if mutation == "drop":
            fields.pop(name, None)
        elif mutation == "garble":
            fields[name] = draw(JSON_TEXT)
        elif mutation == "add":
            fields[draw(EXTRA_FIELDS)] = draw(JSON_TEXT)
    items = list(fields.items())
    if items and mutation == "repeat":
        items.append((items[0][0], draw(JSON_TEXT)))  # a duplicate key
    return _object(draw(st.permutations(items)))


WRONG_VALUES: Final = {
    "message": st.sampled_from(["null", None]),  # None: the field is left out
    "widget_key": st.one_of(
        st.integers().map(str),
        st.sampled_from(["null", "true", "1.5", "[]", "{}", f'["{WIDGET_KEY}"]']),
    ),
    "to_user_id": st.one_of(
        st.integers().map(str), st.sampled_from(["null", "false", "[]", '{"id": "u"}', None])
    ),
    "timestamp": st.one_of(
        st.floats(max_value=-1e-9, allow_infinity=False).map(json.dumps),
        st.sampled_from(["true", "false", "null", '"12.5"', '""', "[]", "{}"]),
    ),
}


@st.composite
def wrong_field_bodies(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """A broadcast or private body with one or more required fields of a wrong type or missing."""
    type_ = draw(st.sampled_from(["broadcast", "private"]))
    fields = {
        "message": draw(VALID_JSON.filter(lambda text: text != "null")),
        "widget_key": json.dumps(WIDGET_KEY),
        "timestamp": draw(RIGHT_VALUES["timestamp"]),
    }
    if type_ == "private":
        fields["to_user_id"] = draw(RIGHT_VALUES["to_user_id"])
    bad = draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, unique=True))
    items = [("type", json.dumps(type_))]
    for name, value in fields.items():
        wrong = draw(WRONG_VALUES[name]) if name in bad else value
        if wrong is not None:
            items.append((name, wrong))
    order = draw(st.permutations(items))
    return _object(list(order)).encode(), bad


@st.composite
def deep_bodies(draw: st.DrawFn) -> tuple[bytes, bool]:
    """Deeply nested JSON; returns the body and whether it is a small, valid broadcast."""
    depth = draw(st.one_of(st.integers(1, 100_000), st.sampled_from([998, 999, 1000, 1001])))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"a":', "}]")]))
    inner = draw(st.sampled_from(["1", '"x"', "\n1\n", "", "null"]))
    balanced = draw(st.integers(0, 4)) > 0
    closers = depth if balanced else draw(st.integers(0, depth + 3))
    nested = opener * depth + inner + closer * closers
    where = draw(st.sampled_from(["message", "message", "whole", "widget_key", "timestamp"]))
    if where == "whole":
        return nested.encode(), False
    fields = {"type": '"broadcast"', "message": "1", "widget_key": json.dumps(WIDGET_KEY)}
    fields[where] = nested
    valid = where == "message" and balanced and depth <= 100 and inner not in ("", "null")
    return _object(list(fields.items())).encode(), valid


INVALID_UTF8: Final = st.sampled_from(
    [
        b"\xff",
        b"\xfe",
        b"\x80",
        b"\xc3\x28",
        b"\xc0\xaf",
        b"\xe2\x82",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
    ]
)


@st.composite
def invalid_utf8_bodies(draw: st.DrawFn) -> bytes:
    """A valid broadcast or private body with invalid UTF-8 spliced in somewhere."""
    message = draw(st.one_of(st.text(max_size=30), st.dictionaries(st.text(max_size=5), st.text())))
    body: dict[str, Any] = {"type": "broadcast", "message": message, "widget_key": WIDGET_KEY}
    if draw(st.booleans()):
        body.update(type="private", to_user_id=draw(st.text(min_size=1, max_size=10)))
    encoded = json.dumps(body, ensure_ascii=False).encode()
    at = draw(st.integers(0, len(encoded)))
    return encoded[:at] + draw(INVALID_UTF8) + encoded[at:]


# Content types the SPEC decides: application/json or application/*+json, any charset.
KNOWN_CONTENT_TYPES: Final = {
    "application/json": True,
    "application/json; charset=utf-8": True,
    "application/json;charset=latin-1": True,
    "APPLICATION/JSON": True,
    "application/ld+json": True,
    "application/cloudevents+json; charset=UTF-8": True,
    "text/plain": False,
    "text/json": False,
    "text/html; charset=utf-8": False,
    "application/x-www-form-urlencoded": False,
    "multipart/form-data; boundary=xyz": False,
    "application/jsonx": False,
    "application/xml": False,
    "": False,
}
HEADER_TEXT: Final = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60
)


# -- tests -----------------------------------------------------------------------------------


def test_arbitrary_bytes_as_a_publish_body_never_get_a_5xx(server_process: StartServer) -> None:
    """Random bytes, bare or after a valid-looking prefix, get a JSON 4xx and the server lives."""
    prefixes = st.sampled_from(
        [b"", b"{", b'{"type":"broadcast","widget_key":"' + WIDGET_KEY.encode() + b'","message":'],
    )
    with _target(server_process) as target:

        @settings(FUZZ, max_examples=50)
        @given(prefix=prefixes, tail=st.one_of(st.binary(max_size=2000), st.text().map(str.encode)))
        def check(prefix: bytes, tail: bytes) -> None:
            _assert_json_reply(target.post(prefix + tail))

        check()
        _assert_still_serving(target)


def test_random_json_bodies_never_get_a_5xx(server_process: StartServer) -> None:
    """Random JSON (huge numbers, odd escapes, any shape, with or without a type) is never a 5xx."""
    with _target(server_process) as target:

        @settings(FUZZ, max_examples=90)
        @given(body=st.one_of(envelopes(), envelopes(), JSON_TEXT))
        def check(body: str) -> None:
            _assert_json_reply(target.post(body.encode("utf-8", "surrogatepass")))

        check()
        _assert_still_serving(target)


def test_required_fields_of_a_wrong_type_are_400_naming_the_field(
    server_process: StartServer,
) -> None:
    """A null or missing message, a non-string widget_key or to_user_id, a bad timestamp: 400."""
    with _target(server_process) as target:

        @settings(FUZZ, max_examples=60)
        @given(case=wrong_field_bodies())
        def check(case: tuple[bytes, list[str]]) -> None:
            body, bad = case
            reply = target.post(body)
            message = _assert_json_reply(reply)["message"]
            assert reply.status_code == 400, (body, message)
            assert any(name in message for name in bad), (bad, message)

        check()
        _assert_still_serving(target)


def test_deeply_nested_bodies_never_get_a_5xx(server_process: StartServer) -> None:
    """Nesting up to 100000 levels, balanced or not, anywhere in the body: never a 5xx."""
    # A body limit large enough that the deepest bodies reach the JSON decoder.
    with _target(server_process, max_body_bytes=1 << 20) as target:

        @settings(FUZZ, max_examples=40)
        @given(case=deep_bodies())
        def check(case: tuple[bytes, bool]) -> None:
            body, valid = case
            reply = target.post(body)
            _assert_json_reply(reply)
            if valid:
                assert reply.status_code == 200, reply.text
            else:
                assert reply.status_code in (200, 400), reply.text

        check()
        _assert_still_serving(target)


def test_invalid_utf8_in_an_otherwise_valid_body_is_400(server_process: StartServer) -> None:
    """Bytes that are not UTF-8, anywhere in a valid body, make it a 400."""
    with _target(server_process) as target:

        @settings(FUZZ, max_examples=30)
        @given(body=invalid_utf8_bodies())
        def check(body: bytes) -> None:
            reply = target.post(body)
            _assert_json_reply(reply)
            assert reply.status_code == 400, (body, reply.text)

        check()
        _assert_still_serving(target)


def test_random_content_types_and_tokens_get_415_401_or_403(server_process: StartServer) -> None:
    """Non-JSON content types are 415; missing, random, tampered tokens 401; other channels' 403."""
    body = json.dumps({"type": "broadcast", "message": "hi", "widget_key": WIDGET_KEY}).encode()
    with _target(server_process) as target:
        good = target.token
        tampered = st.integers(0, len(good) - 1).flatmap(
            lambda at: (
                st.sampled_from("ABCabc019-_.")
                .filter(lambda char: char != good[at])
                .map(lambda char: good[:at] + char + good[at + 1 :])
            )
        )
        tokens = st.one_of(
            st.just(("valid", good)),
            st.just(("other-channel", target.other_channel_token)),
            st.tuples(st.just("bad"), st.one_of(HEADER_TEXT, tampered, st.text(max_size=40))),
            st.just(("bad", good + "x")),
            st.just(("bad", good.split(".")[0])),
        )
        content_types = st.one_of(
            st.sampled_from(sorted(KNOWN_CONTENT_TYPES)).map(
                lambda ct: (ct, KNOWN_CONTENT_TYPES[ct])
            ),
            st.just((None, False)),
            HEADER_TEXT.map(lambda ct: (ct, None)),  # undecided: only the shape is checked
        )

        @settings(FUZZ, max_examples=40)
        @given(content=content_types, token=tokens, bearer=st.booleans())
        def check(
            content: tuple[str | None, bool | None], token: tuple[str, str], bearer: bool
        ) -> None:
            content_type, is_json = content
            kind, value = token
            # A header value is printable ASCII without surrounding whitespace.
            bearer = (
                bearer and value.isascii() and value.isprintable() and value == value.strip() != ""
            )
            reply = target.post(body, content_type=content_type, token=value, bearer=bearer)
            _assert_json_reply(reply)
            if is_json is None:
                return
            expected = {"valid": 200, "other-channel": 403, "bad": 401}[kind] if is_json else 415
            assert reply.status_code == expected, (content_type, kind, value, reply.text)

        check()
        _assert_still_serving(target)


def _flood(token: str, other_token: str) -> list[tuple[int, str, bytes, dict[str, str]]]:
    """Twenty kinds of refused publish, ten of each: (expected status, token, body, headers)."""
    as_json = {"content-type": "application/json"}
    key = WIDGET_KEY

    def body(n: int, **fields: Any) -> bytes:
        return json.dumps({"type": "broadcast", "widget_key": key, **fields}).encode()

    makers: list[Callable[[int], tuple[int, str, bytes, dict[str, str]]]] = [
        lambda n: (400, token, body(n, message=f"garbage-{n}")[:-1], as_json),
        lambda n: (400, token, body(n, message=f"garbage-{n}", widget_key=5), as_json),
        lambda n: (400, token, body(n, message=None, note=f"garbage-{n}"), as_json),
        lambda n: (400, token, body(n, message=f"garbage-{n}", type="garbage"), as_json),
        lambda n: (400, token, body(n, message=f"garbage-{n}", timestamp=-1), as_json),
        lambda n: (400, token, body(n, message=f"garbage-{n}", timestamp="1"), as_json),
        lambda n: (400, token, body(n, message=f"garbage-{n}", type="private"), as_json),
        lambda n: (
            400,
            token,
            f'{{"type":"broadcast","message":"garbage-{n}\xff"}}'.encode("latin-1"),
            as_json,
        ),
        lambda n: (
            400,
            token,
            b'{"type":"broadcast","message":' + b"[" * 5000 + b"]" * 5000 + b"}",
            as_json,
        ),
        lambda n: (400, token, f"[{body(n, message=f'garbage-{n}').decode()}]".encode(), as_json),
        lambda n: (401, token + "x", body(n, message=f"garbage-{n}"), as_json),
        lambda n: (401, "", body(n, message=f"garbage-{n}"), as_json),
        lambda n: (401, token[::-1], body(n, message=f"garbage-{n}"), as_json),
        lambda n: (403, other_token, body(n, message=f"garbage-{n}"), as_json),
        lambda n: (403, token, body(n, message=f"garbage-{n}", widget_key="wrong"), as_json),
        lambda n: (
            403,
            token,
            json.dumps({"type": "broadcast", "message": f"garbage-{n}"}).encode(),
            as_json,
        ),
        lambda n: (413, token, body(n, message=f"garbage-{n}" + "x" * 70_000), as_json),
        lambda n: (415, token, body(n, message=f"garbage-{n}"), {"content-type": "text/plain"}),
        lambda n: (415, token, body(n, message=f"garbage-{n}"), {}),
        lambda n: (
            415,
            token,
            body(n, message=f"garbage-{n}"),
            {"content-type": "application/jsonx"},
        ),
    ]
    return [makers[n % len(makers)](n) for n in range(200)]


async def test_a_concurrent_flood_of_garbage_delivers_only_the_valid_broadcasts(
    server_process: StartServer, client: httpx.AsyncClient
) -> None:
    """200 refused publishes sent at once, with 10 valid ones among them: only those 10 arrive."""
    server = server_process(UVICORN_FACTORY, _options())
    base = server.base
    url = f"{base}/publish/{CHANNEL}"
    async with subscribe(client, f"{base}/subscribe/{CHANNEL}-other") as other:
        other_token = other.token
    async with subscribe(client, f"{base}/subscribe/{CHANNEL}") as sub:
        flood = _flood(sub.token, other_token)
        received: list[Any] = []

        async def listen() -> None:
            while True:
                event = await sub.stream.next()
                assert "garbage-" not in event.data, event.data
                if event.type == "broadcast":
                    if event.json["message"] == "end":
                        return
                    received.append(event.json["message"])

        async def refused(
            expected: int, token: str, content: bytes, headers: dict[str, str]
        ) -> None:
            params = {"token": token} if token else {}
            reply = await client.post(url, content=content, headers=headers, params=params)
            _assert_json_reply(reply)
            assert reply.status_code == expected, (expected, content[:100], reply.text)

        async def valid(n: int) -> None:
            body = {"type": "broadcast", "message": {"valid": n}, "widget_key": WIDGET_KEY}
            reply = await publish(client, url, sub.token, body)
            assert reply.status_code == 200, reply.text

        with anyio.fail_after(4 * WAIT):
            async with anyio.create_task_group() as listening:
                listening.start_soon(listen)
                async with anyio.create_task_group() as sending:
                    for n, request in enumerate(flood):
                        if n % 20 == 10:
                            sending.start_soon(valid, n // 20)
                        sending.start_soon(refused, *request)
                end = {"type": "broadcast", "message": "end", "widget_key": WIDGET_KEY}
                assert (await publish(client, url, sub.token, end)).status_code == 200

    assert sorted(message["valid"] for message in received) == list(range(10)), received
    assert len(received) == 10
    assert server.process.poll() is None
    assert "Traceback" not in server.output(), server.output()
