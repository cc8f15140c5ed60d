"""Publish tokens: round trip, forgery, tampering, expiry, channel binding, constant-time check."""

from __future__ import annotations

import hmac
import string
from collections.abc import Callable

import pytest

from channel_asgi.errors import Forbidden, Unauthorized
from channel_asgi.http import request_token
from channel_asgi.tokens import PublishClaims, TokenSigner

from .helpers import FakeClock

SECRET = "s3cret-for-tests"
TTL = 60.0
B64URL = string.ascii_letters + string.digits + "-_"


@pytest.fixture
def signer(clock: FakeClock) -> TokenSigner:
    """A signer on the stopped clock: its tokens expire when the test advances it."""
    return TokenSigner(SECRET, ttl=TTL)


def issue(signer: TokenSigner, channel: str = "chats/1") -> str:
    return signer.issue(channel, "u-1", "conn-1", anonymous=False)


def replace_char(token: str, index: int) -> str:
    """Return ``token`` with the character at ``index`` swapped for another base64url one."""
    original = token[index]
    replacement = next(c for c in B64URL if c != original)
    return token[:index] + replacement + token[index + 1 :]


def test_token_round_trips_its_claims(signer: TokenSigner, clock: FakeClock) -> None:
    """Verifying a fresh token returns exactly the claims it was issued with."""
    token = signer.issue("chats/1", "ü-1", "conn-1", anonymous=True)
    assert signer.verify(token, "chats/1") == PublishClaims(
        channel="chats/1",
        user_id="ü-1",
        connection_id="conn-1",
        expires=clock.time() + TTL,
        anonymous=True,
    )


def test_token_is_two_base64url_halves(signer: TokenSigner) -> None:
    """A token is ``<claims>.<signature>``, URL-safe without padding, so it fits in ``?token=``."""
    claims, signature = issue(signer).split(".")
    assert claims
    assert signature
    assert set(claims + signature) <= set(B64URL)


def test_token_from_another_secret_is_401(clock: FakeClock) -> None:
    """A token signed with another key is refused as unauthorised."""
    forged = issue(TokenSigner("another-secret", ttl=TTL))
    with pytest.raises(Unauthorized) as caught:
        TokenSigner(SECRET, ttl=TTL).verify(forged, "chats/1")
    assert caught.value.status == 401


@pytest.mark.parametrize("half", ["claims", "signature"])
def test_tampering_with_any_single_character_is_401(signer: TokenSigner, half: str) -> None:
    """Changing any one character of either half of a token makes it unauthorised."""
    token = issue(signer)
    dot = token.index(".")
    positions = range(dot) if half == "claims" else range(dot + 1, len(token))
    for index in positions:
        tampered = replace_char(token, index)
        with pytest.raises(Unauthorized) as caught:
            signer.verify(tampered, "chats/1")
        assert caught.value.status == 401, (index, tampered)


def test_claims_spliced_onto_another_tokens_signature_are_401(signer: TokenSigner) -> None:
    """The signature of one token does not vouch for the claims of another."""
    alice = signer.issue("chats/1", "alice", "conn-a", anonymous=False)
    mallory = signer.issue("chats/1", "mallory", "conn-m", anonymous=False)
    spliced = alice.split(".")[0] + "." + mallory.split(".")[1]
    with pytest.raises(Unauthorized):
        signer.verify(spliced, "chats/1")


@pytest.mark.parametrize(
    ("age", "valid"),
    [
        pytest.param(0.0, True, id="fresh"),
        pytest.param(TTL - 0.001, True, id="just-before-expiry"),
        pytest.param(TTL + 0.001, False, id="just-after-expiry"),
        pytest.param(TTL * 1000, False, id="long-expired"),
    ],
)
def test_token_expires_after_its_ttl(
    signer: TokenSigner, clock: FakeClock, age: float, valid: bool
) -> None:
    """A token verifies until ``ttl`` seconds after issue, then is 401 saying it expired."""
    token = issue(signer)
    clock.advance(age)
    if valid:
        assert signer.verify(token, "chats/1").user_id == "u-1"
        return
    with pytest.raises(Unauthorized) as caught:
        signer.verify(token, "chats/1")
    assert caught.value.status == 401
    assert "expired" in caught.value.message.lower()


def test_valid_token_for_another_channel_is_403(signer: TokenSigner) -> None:
    """A genuine, unexpired token used on another channel is forbidden, not unauthorised."""
    token = issue(signer, "chats/1")
    with pytest.raises(Forbidden) as caught:
        signer.verify(token, "chats/2")
    assert caught.value.status == 403


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda: issue(TokenSigner("another-secret", ttl=TTL)), id="forged"),
        pytest.param(lambda: replace_char(issue(TokenSigner(SECRET, ttl=TTL)), 0), id="tampered"),
    ],
)
def test_invalid_token_for_another_channel_is_401_not_403(
    clock: FakeClock, make_token: Callable[[], str]
) -> None:
    """The channel check only happens once the signature is valid, so it reveals nothing."""
    with pytest.raises(Unauthorized):
        TokenSigner(SECRET, ttl=TTL).verify(make_token(), "chats/2")


def test_expired_token_for_another_channel_is_401_not_403(
    signer: TokenSigner, clock: FakeClock
) -> None:
    """An expired token is refused as expired whatever channel it names."""
    token = issue(signer, "chats/1")
    clock.advance(TTL + 1)
    with pytest.raises(Unauthorized, match=r"(?i)expired"):
        signer.verify(token, "chats/2")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("no-dot", id="one-half"),
        pytest.param("a.b.c", id="three-parts"),
        pytest.param(".", id="two-empty-halves"),
        pytest.param("é.signature", id="non-ascii-claims"),
        pytest.param("claims.sïgnature", id="non-ascii-signature"),
        pytest.param("claims.signature\u2028", id="unicode-line-separator"),
        pytest.param("\x00.\x00", id="nul-bytes"),
    ],
)
def test_missing_or_malformed_token_is_401(signer: TokenSigner, token: str | None) -> None:
    """Anything that is not a well-formed signed token is refused as unauthorised."""
    with pytest.raises(Unauthorized) as caught:
        signer.verify(token, "chats/1")
    assert caught.value.status == 401


def test_non_ascii_character_in_a_valid_token_is_401(signer: TokenSigner) -> None:
    """A real token with one character replaced by a non-ASCII one is 401, not a crash."""
    token = issue(signer)
    for index in (0, token.index(".") + 1, len(token) - 1):
        with pytest.raises(Unauthorized):
            signer.verify(token[:index] + "é" + token[index + 1 :], "chats/1")


@pytest.mark.parametrize(
    ("secret", "ttl"),
    [
        pytest.param("", TTL, id="empty-str-secret"),
        pytest.param(b"", TTL, id="empty-bytes-secret"),
        pytest.param(SECRET, 0.0, id="zero-ttl"),
        pytest.param(SECRET, -1.0, id="negative-ttl"),
        pytest.param(SECRET, float("nan"), id="nan-ttl"),
        pytest.param(SECRET, float("inf"), id="infinite-ttl"),
    ],
)
def test_bad_constructor_arguments_raise_value_error(secret: str | bytes, ttl: float) -> None:
    """An empty secret, or a ttl that is not a finite positive number, is refused at once."""
    with pytest.raises(ValueError):
        TokenSigner(secret, ttl=ttl)


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(5, id="int"),
        pytest.param(["secret"], id="list"),
    ],
)
def test_secret_of_the_wrong_type_raises_type_error(secret: object) -> None:
    """A secret that is neither str nor bytes is a TypeError (an int is not a key of zero bytes)."""
    with pytest.raises(TypeError):
        TokenSigner(secret, ttl=TTL)  # type: ignore[arg-type]


def test_str_and_bytes_secrets_are_the_same_key(signer: TokenSigner) -> None:
    """A str secret is its UTF-8 bytes, so processes may configure either form."""
    token = issue(signer)
    assert TokenSigner(SECRET.encode(), ttl=TTL).verify(token, "chats/1").user_id == "u-1"


@pytest.mark.parametrize("tampered", [False, True], ids=["genuine", "tampered"])
def test_signature_is_compared_with_hmac_compare_digest(
    signer: TokenSigner, monkeypatch: pytest.MonkeyPatch, tampered: bool
) -> None:
    """Every verification compares signatures in constant time, whether they match or not."""
    calls: list[tuple[bytes | str, bytes | str]] = []
    original = hmac.compare_digest

    def recording_compare_digest(a: bytes | str, b: bytes | str) -> bool:
        calls.append((a, b))
        return original(a, b)  # type: ignore[arg-type]

    token = issue(signer)
    if tampered:
        token = replace_char(token, len(token) - 1)
    monkeypatch.setattr(hmac, "compare_digest", recording_compare_digest)
    if tampered:
        with pytest.raises(Unauthorized):
            signer.verify(token, "chats/1")
    else:
        signer.verify(token, "chats/1")
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("query", "headers", "expected"),
    [
        (b"token=abc", {}, "abc"),
        (b"x=1&token=abc&y=2", {}, "abc"),
        (b"mytoken=no&token=yes", {}, "yes"),
        (b"token=&token=second", {}, "second"),
        (b"mytoken=no", {}, None),
        (b"token=a%2Bb+c", {}, "a+b c"),
        (b"", {b"authorization": b"Bearer from-header"}, "from-header"),
        (b"token=query", {b"authorization": b"Bearer from-header"}, "query"),
        (b"", {b"authorization": b"Basic xyz"}, None),
    ],
)
def test_the_token_comes_from_the_query_else_a_bearer_header(
    query: bytes, headers: dict[bytes, bytes], expected: str | None
) -> None:
    assert request_token({"query_string": query}, headers) == expected
