"""API keys and per-key rate limits of the gateway (pure: no I/O).

Keys: settings hold the SHA-256 hex digests of the accepted keys, never the keys; a request's
``Authorization: Bearer <key>`` is hashed and compared (constant time) with each. A key is known in logs and
metrics only by its position in the settings' list (``key#2``), never by anything derived from the key itself.

Rate limits: one token bucket per key (Anderson's token bucket, as in every API gateway): ``burst`` tokens, refilled
at ``rate`` tokens per second; a request takes one token or is refused with the seconds until one is there
(``Retry-After``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def key_hash(key: str) -> str:
    """SHA-256 hex digest of an API key (what the settings hold)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> tuple[str, str]:
    """A new random API key (``rs-`` and 43 URL-safe characters) and its SHA-256 hex digest."""
    key = "rs-" + secrets.token_urlsafe(32)
    return key, key_hash(key)


class ApiKeys:
    """The accepted keys, by hash.

    Args:
        hashes: SHA-256 hex digests (64 hex characters each, any case).
        allow_anonymous: accept requests without a key (as ``anonymous``).

    Raises:
        ValueError: a hash is not 64 hex characters.
    """

    def __init__(self, hashes: Sequence[str], allow_anonymous: bool = False) -> None:
        norm = [h.strip().lower() for h in hashes]
        bad = [i for i, h in enumerate(norm) if len(h) != 64 or any(c not in "0123456789abcdef" for c in h)]
        if bad:
            raise ValueError(f"API key hashes at positions {bad} are not SHA-256 hex digests (64 hex characters)")
        self.hashes = norm
        self.allow_anonymous = allow_anonymous

    def identify(self, authorization: str | None) -> str | None:
        """The name of the key a request presents (``key#N``), ``anonymous`` when allowed without one, else None.

        Args:
            authorization: the ``Authorization`` header (``Bearer <key>``), or None.
        """
        key = ""
        if authorization:
            scheme, _, value = authorization.partition(" ")
            key = value.strip() if scheme.lower() == "bearer" else ""
        if not key:
            return "anonymous" if self.allow_anonymous else None
        digest = key_hash(key)
        found = None
        for i, h in enumerate(self.hashes):  # all compared: the time does not tell which matched
            if hmac.compare_digest(digest, h):
                found = f"key#{i}"
        return found


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key name.

    Args:
        rate: tokens added per second.
        burst: bucket size (tokens); 0 = ``rate`` rounded up (one second's worth).
        clock: monotonic seconds.
    """

    def __init__(self, rate: float, burst: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.burst = float(burst or math.ceil(rate))
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, name: str) -> float:
        """Take one token for ``name``: 0.0 when granted, else the seconds until a token is there."""
        now = self.clock()
        b = self._buckets.get(name)
        if b is None:
            b = self._buckets[name] = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
        b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / self.rate
