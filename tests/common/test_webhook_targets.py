"""The SSRF guard's rules. The resolver is injected: a name that "resolves" to a private or
metadata address is refused without a packet sent anywhere (the guard only looks up and checks;
nothing here opens a connection)."""

from __future__ import annotations

import pytest

from common.webhook_targets import (
    BadWebhookUrl,
    Blocked,
    Guard,
    check_literal,
    parse,
    parse_nets,
    refusal,
)
from common.webhook_targets import literal_address as ip

LOOPBACK = parse_nets(["127.0.0.0/8", "::1/128"])


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # CGNAT
        "224.0.0.1",  # multicast
        "240.0.0.1",  # reserved
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "ff02::1",
    ],
)
def test_internal_addresses_are_refused(address: str) -> None:
    found = ip(address)
    assert found is not None and refusal(found, []) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    found = ip(address)
    assert found is not None and refusal(found, []) is None


def test_an_allow_list_lets_internal_receivers_in_on_purpose() -> None:
    allowed = parse_nets(["10.1.0.0/16"])
    assert refusal(ip("10.1.2.3"), allowed) is None  # type: ignore[arg-type]
    assert refusal(ip("10.2.0.1"), allowed) is not None  # type: ignore[arg-type]
    assert refusal(ip("::ffff:10.1.2.3"), allowed) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "example.com/hook",
        "https://",
        "http://exa mple.com/",
        "https://example.com:99999/",
        "https://example.com/" + "a" * 2048,
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(BadWebhookUrl):
        parse(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]:8080/",
        "https://127.0.0.1/",
        "http://[::1]/",
    ],
)
def test_literal_internal_addresses_are_refused_at_submit(url: str) -> None:
    with pytest.raises(BadWebhookUrl, match="DARKROOM_WEBHOOK_ALLOW_NETS"):
        check_literal(url, [])


def test_names_pass_the_submit_check_and_wait_for_the_notifier() -> None:
    check_literal("https://hooks.example.com/darkroom", [])
    check_literal("http://127.0.0.1:9000/hook", LOOPBACK)


async def test_a_name_that_resolves_to_a_private_address_is_blocked() -> None:
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return {
            "metadata.example": ["169.254.169.254"],
            "mixed.example": ["93.184.215.14", "10.0.0.7"],
            "public.example": ["93.184.215.14", "2606:4700::1"],
        }[host]

    guard = Guard([], resolver)
    with pytest.raises(Blocked, match="link-local"):
        await guard.target("http://metadata.example/latest")
    # One refused address among public ones is enough: DNS can hand out any of them.
    with pytest.raises(Blocked, match="private"):
        await guard.target("https://mixed.example/hook")
    target = await guard.target("https://public.example:8443/hook?x=1")
    assert asked[-1] == ("public.example", 8443)
    # It connects to the address it checked, and keeps the name for Host (and SNI).
    assert target.connect_url == "https://93.184.215.14:8443/hook?x=1"
    assert target.host_header == "public.example:8443"


async def test_a_literal_address_is_not_looked_up() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        raise AssertionError("no lookup for a literal address")

    with pytest.raises(Blocked):
        await Guard([], resolver).target("http://[::ffff:127.0.0.1]/")
    target = await Guard(LOOPBACK, resolver).target("http://127.0.0.1:9000/hook")
    assert target.connect_url == "http://127.0.0.1:9000/hook" and target.host_header == (
        "127.0.0.1:9000"
    )
