"""Signed URLs: a path plus an expiry time, authenticated by an HMAC, for callers without a token.

Self-contained on purpose: any dialect that hands out upload URLs can use it.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from modelbay.core.decimals import is_decimal
from modelbay.core.errors import Forbidden


class UrlSigner:
    """Signs `(method, path, expiry)` and checks a signature against them."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def signature(self, method: str, path: str, expires_ms: int) -> str:
        message = f"{method.upper()}\n{path}\n{expires_ms}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def query(self, method: str, path: str, expires_ms: int) -> str:
        """The query string that makes `path` usable until `expires_ms` (epoch ms)."""
        return f"expires={expires_ms}&signature={self.signature(method, path, expires_ms)}"

    def check(self, method: str, path: str, expires: str | None, signature: str | None,
              now_ms: int | None = None) -> None:
        """Raises `Forbidden` for a missing, tampered or expired signature."""
        if not expires or not signature or not is_decimal(expires):
            raise Forbidden("This URL is not signed")
        expected = self.signature(method, path, int(expires))
        if not hmac.compare_digest(expected, signature):
            raise Forbidden("The signature of this URL does not match")
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        if int(expires) <= now_ms:
            raise Forbidden("This URL has expired")
