"""Publish tokens: HMAC-SHA256 signed, expiring, bound to a channel, a user and a connection.

A token is ``<claims>.<signature>``, both base64url without padding; the claims are a compact JSON
array. Any process that holds the same secret verifies a token another process issued, which is what
lets a browser subscribe on one worker and publish on another.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
from typing import Final

import msgspec

from . import clock
from .errors import Forbidden, Unauthorized

__all__ = ["PublishClaims", "TokenSigner"]

_CONTEXT: Final = b"channel_asgi.publish.v1."
_CACHE_SIZE: Final = 4096


class PublishClaims(msgspec.Struct, array_like=True, frozen=True):
    """What a publish token proves.

    Attributes:
        channel: the channel it may publish to.
        user_id: the user it publishes as.
        connection_id: the subscribe connection it was issued on.
        expires: expiry, in Unix seconds.
        anonymous: whether the user was anonymous when it subscribed.
    """

    channel: str
    user_id: str
    connection_id: str
    expires: float
    anonymous: bool


_encode_claims: Final = msgspec.json.Encoder().encode
_decode_claims: Final = msgspec.json.Decoder(PublishClaims).decode


def _b64encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64decode(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


class TokenSigner:
    """Issue and verify publish tokens.

    Args:
        secret: the HMAC key shared by every process that serves the same channels.
        ttl: how long a token stays valid, in seconds.
    """

    def __init__(self, secret: str | bytes, ttl: float = 86400.0) -> None:
        if not isinstance(secret, (str, bytes)):
            raise TypeError(f"secret must be a str or bytes, got {type(secret).__name__}")
        if not secret:
            raise ValueError("secret must not be empty")
        if not math.isfinite(ttl) or ttl <= 0:
            raise ValueError(f"token ttl must be a finite number > 0, got {ttl!r}")
        self._key = secret.encode() if isinstance(secret, str) else bytes(secret)
        self.ttl = ttl
        # Tokens already verified: a page publishes many times with one token.
        self._verified: dict[str, PublishClaims] = {}

    def _sign(self, body: bytes) -> bytes:
        return _b64encode(hmac.digest(self._key, _CONTEXT + body, "sha256"))

    def issue(self, channel: str, user_id: str, connection_id: str, *, anonymous: bool) -> str:
        """Return a token that lets ``user_id`` publish to ``channel`` from ``connection_id``."""
        claims = PublishClaims(channel, user_id, connection_id, clock.time() + self.ttl, anonymous)
        body = _b64encode(_encode_claims(claims))
        return (body + b"." + self._sign(body)).decode()

    def verify(self, token: str | None, channel: str | None) -> PublishClaims:
        """Check ``token`` and return its claims.

        Args:
            channel: the channel it must be for, or None for any (a stream's change names its
                stream by the token of any of its channels).

        Raises:
            Unauthorized: the token is missing, malformed, forged, tampered with or expired.
            Forbidden: the token is valid but for another channel.
        """
        if not token:
            raise Unauthorized("Missing token; pass the token from the init event as ?token=")
        claims = self._verified.get(token)
        if claims is None:
            claims = self._check_signature(token)
            if len(self._verified) >= _CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = claims
        if claims.expires < clock.time():
            raise Unauthorized("Token expired; subscribe again for a new one")
        if channel is not None and claims.channel != channel:
            raise Forbidden("Token was issued for another channel")
        return claims

    def _check_signature(self, token: str) -> PublishClaims:
        try:
            raw = token.encode("ascii")
            body, signature = raw.split(b".")
        except (UnicodeEncodeError, ValueError):
            raise Unauthorized("Malformed token") from None
        if not hmac.compare_digest(signature, self._sign(body)):
            raise Unauthorized("Invalid token signature")
        try:
            return _decode_claims(_b64decode(body))
        except (binascii.Error, ValueError, msgspec.DecodeError):
            raise Unauthorized("Malformed token") from None
