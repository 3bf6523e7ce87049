"""Where webhooks may POST: public addresses only, unless the operator allows private ones.

A project owner chooses a webhook's endpoint and the server POSTs to it, so without a rule any
project could make the server reach its own loopback, the cloud metadata service or the private
network behind it (server-side request forgery). The rule is checked when an endpoint is set and
again on every new connection: the host is resolved once, every address it resolves to is
checked, and the connection is made to a checked address. A name that resolves elsewhere by the
time of sending (DNS rebinding) is therefore caught where it matters. The webhook client
(`webhook_client`) makes that check for each connection it opens, so every POST (deliveries and
`:test`) goes through it; redirects are never followed (a 3xx is a failed delivery).
"""

from __future__ import annotations

import functools
import socket
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address
from typing import Any

import yarl

from modelbay.core.errors import InvalidInput

#: The setting that lifts the rule (tests, and receivers on the operator's own network).
ALLOW_SETTING = "MODELBAY_WEBHOOK_ALLOW_PRIVATE_TARGETS"

MAX_ENDPOINT_CHARS = 2000

_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = IPv6Network("64:ff9b::/96")

Address = IPv4Address | IPv6Address


class RefusedTarget(InvalidInput):
    """Raised when an endpoint's host is, or resolves to, an address webhooks may not reach."""


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: Address) -> str | None:
    """What kind of address `address` is when webhooks may not reach it ("loopback", ...), else None."""
    if isinstance(address, IPv6Address) and (inner := _embedded_ipv4(address)) is not None:
        if (kind := refusal(inner)) is not None:
            return kind
        if address.ipv4_mapped is not None or address in _NAT64:
            return None  # only a way of writing the IPv4 address, judged above
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, IPv6Address) and address.is_site_local:
        return "site-local"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "non-public"  # e.g. 100.64.0.0/10, shared address space
    return None


def parse_endpoint(endpoint: Any) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL with a host, as the client will connect; else `InvalidInput`."""
    url, port = _endpoint_url(endpoint)
    return url.scheme, url.raw_host, port


def _endpoint_url(endpoint: Any) -> tuple[yarl.URL, int]:
    """`endpoint` parsed as the client will connect to it, and its port; else `InvalidInput`."""
    if not isinstance(endpoint, str) or not endpoint or len(endpoint) > MAX_ENDPOINT_CHARS:
        raise InvalidInput(f"The webhook endpoint must be an http or https URL of at most {MAX_ENDPOINT_CHARS} "
                           "characters")
    try:
        url = yarl.URL(endpoint)  # the client's own parser
        port = url.port
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"The webhook endpoint is not a valid URL: {exc}") from exc
    if url.scheme not in _DEFAULT_PORTS or not url.raw_host:
        raise InvalidInput("The webhook endpoint must be an http or https URL with a host")
    port = port or _DEFAULT_PORTS[url.scheme]
    if not 0 < port < 65536:
        raise InvalidInput(f"The webhook endpoint's port {port} is out of range")
    return url, port


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the resolver's order (blocking: call in a thread)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (UnicodeError, ValueError) as exc:  # e.g. an empty label ("a..b"): not a name at all
        raise socket.gaierror(f"not a valid host name ({exc})") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def checked_addresses(host: str, port: int, *, allow_private: bool) -> list[str]:
    """Resolve `host` and check every address; raises `RefusedTarget`, or `OSError` if it does not
    resolve. Blocking: call in a thread."""
    addresses = resolve(host, port)
    if not allow_private:
        for text in addresses:
            kind = refusal(ip_address(text.partition("%")[0]))  # drop an IPv6 scope ("fe80::1%eth0")
            if kind is not None:
                what = f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} address"
                where = f"is {what}" if _literal(host) == ip_address(text) else f"resolves to {what} {text}"
                raise RefusedTarget(f"The webhook endpoint's host {host} {where}; set {ALLOW_SETTING}=true "
                                    "to allow private targets")
    return addresses


@functools.lru_cache(maxsize=1024)
def parsed_endpoint(endpoint: str) -> tuple[yarl.URL, int]:
    """`endpoint` parsed as the client connects to it, and its port; remembered, as the same endpoint
    is POSTed to once per item of a job. Raises `InvalidInput`."""
    return _endpoint_url(endpoint)


def _literal(host: str) -> Address | None:
    """The address `host` spells, when it is an IP address rather than a name."""
    try:
        return ip_address(host)
    except ValueError:
        return None


def check_endpoint(endpoint: Any, *, allow_private: bool) -> str:
    """`endpoint` when it is an http(s) URL whose host may be reached; raises `InvalidInput` (a
    `RefusedTarget` for a refused address). Resolves the host unless private targets are allowed,
    so it blocks: call in a thread."""
    _, host, port = parse_endpoint(endpoint)
    if not allow_private:
        try:
            checked_addresses(host, port, allow_private=False)
        except OSError as exc:
            raise InvalidInput(f"The webhook endpoint's host {host} does not resolve: {exc}") from exc
    return endpoint


