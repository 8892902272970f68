"""API keys: random, shown once, stored as an HMAC-SHA256 under the provider's secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "sk-ftaas-"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str, secret: bytes) -> str:
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + 4]
