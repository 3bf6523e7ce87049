"""Which addresses webhooks may reach, and that a POST connects only to an address that was checked.

Nothing here resolves or contacts a public host: the rule is tried on literal addresses and on
`localhost`, and names that "resolve publicly" come from a stand-in resolver and are never dialled.
"""

from __future__ import annotations

import asyncio
import base64
import time
from ipaddress import ip_address
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from modelbay.core import webhook_targets
from modelbay.core.deliveries import DELIVERIES, Deliveries, new_delivery
from modelbay.core.errors import InvalidInput
from modelbay.core.webhook_client import WebhookClient
from modelbay.core.webhook_targets import (
    ALLOW_SETTING,
    RefusedTarget,
    check_endpoint,
    parse_endpoint,
    refusal,
)
from modelbay.core.webhooks import Webhooks, post_signed
from modelbay.store.db import Database
from modelbay.store.tables import DeliveryRow
from tests.compat.datature.receiver import running_receiver
from tests.core.test_deliveries import a_node, open_store

pytestmark = pytest.mark.timeout(60)

SECRET = base64.b64encode(b"k" * 32).decode()


@pytest.mark.parametrize(("address", "kind"), [
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("::1", "loopback"),
    ("169.254.169.254", "link-local"),  # the cloud metadata service
    ("169.254.0.1", "link-local"),
    ("fe80::1", "link-local"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("fec0::1", "site-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("100.64.0.1", "non-public"),  # shared address space (carrier-grade NAT)
    # IPv6 ways of writing a refused IPv4 address are judged by that address.
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
    ("2002:c0a8:101::", "private"),  # 6to4 of 192.168.1.1
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("::7f00:1", "reserved"),  # IPv4-compatible (deprecated) form of 127.0.0.1
])
def test_refused_addresses_are_named_by_kind(address: str, kind: str) -> None:
    assert refusal(ip_address(address)) == kind


@pytest.mark.parametrize("address", [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "172.32.0.1", "192.169.0.1", "11.0.0.1",
    "2606:4700:4700::1111", "2a00:1450::1", "::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::808:808",
])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ip_address(address)) is None


@pytest.mark.parametrize("endpoint", [
    "http://[::1", "http://[::1]:99999/", "http://:80/", "http:///x", "not a url", "ftp://10.0.0.1/x",
    "file:///etc/passwd", "", "http://" + "a" * 2000 + ".com/", None, 42,
])
def test_malformed_endpoints_are_invalid_input(endpoint: object) -> None:
    with pytest.raises(InvalidInput) as raised:
        check_endpoint(endpoint, allow_private=True)
    assert not isinstance(raised.value, RefusedTarget)


def test_an_endpoint_is_parsed_as_the_client_connects() -> None:
    assert parse_endpoint("https://[::1]/x") == ("https", "::1", 443)
    assert parse_endpoint("http://2130706433/") == ("http", "2130706433", 80)
    assert parse_endpoint("http://münchen.example:8080/") == ("http", "xn--mnchen-3ya.example", 8080)


@pytest.mark.parametrize(("endpoint", "said"), [
    ("http://127.0.0.1:9/x", "host 127.0.0.1 is a loopback address"),
    ("http://localhost:9/x", "host localhost resolves to a loopback address"),
    ("http://[::1]:9/", "host ::1 is a loopback address"),
    ("http://0.0.0.0:9/", "host 0.0.0.0 is an unspecified address"),
    ("http://[::]:9/", "host :: is an unspecified address"),
    ("http://2130706433/", "host 2130706433 resolves to a loopback address 127.0.0.1"),  # 127.0.0.1 as one integer
    ("http://0x7f000001/", "resolves to a loopback address 127.0.0.1"),
    ("http://127.1/", "resolves to a loopback address 127.0.0.1"),
    ("http://169.254.169.254/latest/meta-data/", "is a link-local address"),
    ("https://10.0.0.1/", "host 10.0.0.1 is a private address"),
    ("http://[fd00::1]/", "is a private address"),
    ("http://[::ffff:127.0.0.1]/", "is a loopback address"),
    ("http://[::ffff:a9fe:a9fe]/", "host ::ffff:a9fe:a9fe is a link-local address"),  # 169.254.169.254 mapped
])
def test_refused_endpoints_say_why_and_name_the_setting(endpoint: str, said: str) -> None:
    with pytest.raises(RefusedTarget) as raised:
        check_endpoint(endpoint, allow_private=False)
    assert said in raised.value.message and f"{ALLOW_SETTING}=true" in raised.value.message
    assert check_endpoint(endpoint, allow_private=True) == endpoint  # the operator may allow them


def test_a_name_that_resolves_anywhere_refused_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook_targets, "resolve", lambda host, port: ["93.184.216.34", "10.1.2.3"])
    with pytest.raises(RefusedTarget, match="resolves to a private address 10.1.2.3"):
        check_endpoint("https://split.test/hook", allow_private=False)
    monkeypatch.setattr(webhook_targets, "resolve", lambda host, port: ["93.184.216.34"])
    assert check_endpoint("https://public.test/hook", allow_private=False) == "https://public.test/hook"


def test_a_host_that_is_no_name_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="host a..b does not resolve: not a valid host name"):
        check_endpoint("http://a..b/", allow_private=False)


def test_a_name_that_does_not_resolve_is_invalid_input(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    monkeypatch.setattr(webhook_targets, "resolve", fail)
    with pytest.raises(InvalidInput, match="host nowhere.test does not resolve"):
        check_endpoint("https://nowhere.test/", allow_private=False)


# --- the connection ----------------------------------------------------------------------------


def test_a_post_connects_to_the_address_resolved_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The name is resolved by the check and the connection made to that address: the client never
    resolves `receiver.test` itself (the system resolver does not know it)."""
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(webhook_targets, "resolve", resolve)

    async def post(port: int) -> tuple[int, str | None]:
        async with WebhookClient(allow_private=True) as client:
            attempt = await post_signed(client, f"http://receiver.test:{port}/hook", SECRET, b"{}")
            return attempt.status_code, attempt.error

    with running_receiver() as receiver:
        assert asyncio.run(post(receiver.port)) == (200, None)
        assert [r.headers["host"] for r in receiver.received] == [f"receiver.test:{receiver.port}"]
    assert calls == ["receiver.test"]


def test_a_name_rebound_to_loopback_after_the_check_is_refused_when_sending(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: public when the webhook is made, loopback when the delivery is sent. The
    delivery fails at once (no retries) with the reason, and nothing reaches the loopback receiver."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # the first is only checked, never dialled
    monkeypatch.setattr(webhook_targets, "resolve", lambda host, port: next(answers))
    db = open_store(tmp_path)
    with running_receiver() as receiver:
        [row] = asyncio.run(deliver_once(db, f"http://rebind.test:{receiver.port}/hook", receiver.secret))
        assert receiver.received == []
    assert (row.status, row.attempts, row.response_code) == ("failed", 1, None)
    assert "host rebind.test resolves to a loopback address 127.0.0.1" in (row.last_error or "")
    db.close()


async def deliver_once(db: Database, endpoint: str, secret: str) -> list[DeliveryRow]:
    async with WebhookClient(allow_private=False) as client:
        hook = Webhooks(db, client).create("p", "h", endpoint, secret, 5, 50)
        with db.write() as session:
            session.execute(insert(DELIVERIES), [new_delivery(hook.id, b'{"n":1}')])
        worker = Deliveries(db, client, a_node(db))
        worker.start()
        deadline = time.monotonic() + 10
        try:
            while True:
                with db.read() as session:
                    rows = list(session.scalars(select(DeliveryRow)))
                if all(r.status != "pending" for r in rows):
                    return rows
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        finally:
            await worker.close()


def test_a_redirect_is_not_followed() -> None:
    """A 3xx is a failed attempt: the client never goes where the receiver points."""
    with running_receiver() as elsewhere, running_receiver(redirect_to=elsewhere.url) as redirecting:
        async def post() -> tuple[bool, int, str | None]:
            async with WebhookClient(allow_private=True) as client:
                attempt = await post_signed(client, redirecting.url, redirecting.secret, b"{}")
                return attempt.ok, attempt.status_code, attempt.error

        assert asyncio.run(post()) == (False, 307, "The endpoint answered 307")
        assert len(redirecting.received) == 1 and elsewhere.received == []
