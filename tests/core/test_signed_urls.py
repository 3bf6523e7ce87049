import pytest

from modelbay.core.errors import Forbidden
from modelbay.core.signed_urls import UrlSigner

SIGNER = UrlSigner(b"k" * 32)
NOW_MS = 1_800_000_000_000


def test_a_url_signed_for_a_method_and_path_passes_until_it_expires() -> None:
    signature = SIGNER.signature("PUT", "/upload/1", NOW_MS + 1000)

    SIGNER.check("PUT", "/upload/1", str(NOW_MS + 1000), signature, now_ms=NOW_MS)
    with pytest.raises(Forbidden, match="expired"):
        SIGNER.check("PUT", "/upload/1", str(NOW_MS + 1000), signature, now_ms=NOW_MS + 1000)


@pytest.mark.parametrize(("method", "path"), [("GET", "/upload/1"), ("PUT", "/upload/2")])
def test_the_signature_covers_the_method_and_the_path(method: str, path: str) -> None:
    signature = SIGNER.signature("PUT", "/upload/1", NOW_MS + 1000)
    with pytest.raises(Forbidden, match="does not match"):
        SIGNER.check(method, path, str(NOW_MS + 1000), signature, now_ms=NOW_MS)


@pytest.mark.parametrize("expires", [None, "", "soon", "²", "1" * 5000, "-5"])
def test_an_expiry_that_is_not_a_plain_number_is_refused_not_a_crash(expires: str | None) -> None:
    with pytest.raises(Forbidden, match="not signed"):
        SIGNER.check("PUT", "/upload/1", expires, "0" * 64, now_ms=NOW_MS)
