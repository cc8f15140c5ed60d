"""Identity tokens for the negotiate flow: JWT HS256 signed with the app's ``secret``.

A host's own login route calls ``channels.issue_token(user_id)`` and hands the token to the page,
which subscribes with ``?token=`` (or ``Authorization: Bearer``); the stream then runs as that
user. Any service holding the secret can mint the same tokens with a JWT library: HS256, ``aud``
``"channel_asgi"``, ``sub`` the user id, ``exp`` and ``iat``, and optionally ``channels``, the
channel names or patterns (``chats/{id}``) the token is limited to.

The time claims (``exp``, ``nbf``, ``iat``) are checked here against :mod:`channel_asgi.clock`,
the clock that issues them, rather than by PyJWT, which reads the wall clock itself. The checks
and their messages are PyJWT's own.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Final

import jwt

from . import clock
from .errors import Forbidden, Unauthorized
from .patterns import pattern_matches

__all__ = ["AUDIENCE", "IdentityTokens"]

AUDIENCE: Final = "channel_asgi"
_ALGORITHM: Final = "HS256"


class IdentityTokens:
    """Issue and verify identity tokens.

    Args:
        secret: the HMAC key (the app's ``secret``; at least 32 bytes is advisable).
    """

    def __init__(self, secret: str | bytes) -> None:
        self._key = secret.encode() if isinstance(secret, str) else bytes(secret)

    def issue(
        self, user_id: str, *, channels: Iterable[str] | None = None, ttl: float = 3600.0
    ) -> str:
        """Return a token that makes a subscribe run as ``user_id``.

        Args:
            user_id: the ``sub`` claim.
            channels: limit the token to these channel names or patterns.
            ttl: seconds until it expires.
        """
        if not isinstance(user_id, str) or not user_id:
            raise ValueError(f"user_id must be a non-empty string, got {user_id!r}")
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        now = int(clock.time())
        claims: dict[str, Any] = {
            "sub": user_id,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + max(1, round(ttl)),
        }
        if channels is not None:
            if isinstance(channels, str):
                raise TypeError("channels must be a list of names or patterns, not one string")
            claims["channels"] = list(channels)
        with warnings.catch_warnings():
            # The app warns once about a short secret; PyJWT would warn on every call.
            warnings.simplefilter("ignore")
            return jwt.encode(claims, self._key, algorithm=_ALGORITHM)

    def verify(self, token: str, channel: str) -> str:
        """Return the user id of a valid token for ``channel``.

        Raises:
            Unauthorized: forged, tampered, expired, not yet valid, another algorithm (``none``
                included), another audience, or a missing ``exp``/``aud``/``sub``.
            Forbidden: valid, but limited to other channels.
        """
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                claims = jwt.decode(
                    token,
                    self._key,
                    algorithms=[_ALGORITHM],
                    audience=AUDIENCE,
                    # The signature, the audience and the required claims; the times below.
                    options={
                        "require": ["exp", "aud", "sub"],
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                    },
                )
            _check_times(claims, clock.time())
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Identity token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"Invalid identity token: {exc}") from None
        user_id = claims.get("sub")
        if not isinstance(user_id, str) or not user_id:
            raise Unauthorized("Invalid identity token: sub must be a non-empty string")
        allowed = claims.get("channels")
        if allowed is not None:
            if not isinstance(allowed, list) or not all(isinstance(c, str) for c in allowed):
                raise Unauthorized("Invalid identity token: channels must be a list of strings")
            if not any(pattern_matches(entry, channel) is not None for entry in allowed):
                raise Forbidden("Identity token is not valid for this channel")
        return user_id


def _check_times(claims: dict[str, Any], now: float) -> None:
    """Raise what PyJWT raises for a bad ``iat``, ``nbf`` or ``exp`` at ``now`` (no leeway)."""
    if "iat" in claims and _seconds(claims, "iat", jwt.InvalidIssuedAtError, "Issued At") > now:
        raise jwt.ImmatureSignatureError("The token is not yet valid (iat)")
    if "nbf" in claims and _seconds(claims, "nbf", jwt.DecodeError, "Not Before") > now:
        raise jwt.ImmatureSignatureError("The token is not yet valid (nbf)")
    if _seconds(claims, "exp", jwt.DecodeError, "Expiration Time") <= now:
        raise jwt.ExpiredSignatureError("Signature has expired")


def _seconds(claims: dict[str, Any], name: str, error: type[Exception], label: str) -> int:
    """Return the time claim ``name`` as whole seconds, or raise ``error`` as PyJWT words it."""
    try:
        return int(claims[name])
    except (ValueError, TypeError, OverflowError):
        raise error(f"{label} claim ({name}) must be an integer.") from None
