"""Signed URLs: the upload URL of a code version takes its archive without any auth header,
so it carries its own proof (an HMAC over method, path and expiry) and an expiry."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

from modelbay.core.errors import Forbidden

#: How long a signed upload or download URL stays valid.
URL_LIFETIME_S = 3600


class Signer:
    def __init__(self, secret: str) -> None:
        # A key of its own, derived from the admin secret: a leaked URL reveals nothing of it.
        self._key = hmac.new(secret.encode(), b"modelbay signed urls", hashlib.sha256).digest()

    def _signature(self, method: str, path: str, expires: int) -> str:
        message = f"{method}\n{path}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, method: str, base_url: str, path: str, lifetime_s: int = URL_LIFETIME_S) -> str:
        """A full URL for `method` on `path`, valid for `lifetime_s` seconds."""
        expires = int(time.time()) + lifetime_s
        query = urlencode({"expires": expires, "signature": self._signature(method, path, expires)})
        return f"{base_url.rstrip('/')}{path}?{query}"

    def check(self, method: str, path: str, expires: str | None, signature: str | None) -> None:
        """Raises `Forbidden` unless the signature matches and has not expired."""
        if not expires or not signature or not expires.isdigit():
            raise Forbidden("This URL is not signed")
        if not hmac.compare_digest(self._signature(method, path, int(expires)), signature):
            raise Forbidden("The signature of this URL does not match")
        if int(expires) < time.time():
            raise Forbidden("This signed URL has expired")
