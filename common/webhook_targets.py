"""Where a webhook may be sent: the URL rules and the SSRF guard.

A job's ``webhook`` must be an ``http``/``https`` URL of at most 2,048 characters with a host.
The address it reaches must be public: loopback, private, link-local (cloud metadata at
169.254.169.254 included), CGNAT, multicast, reserved and unspecified addresses are refused, as is
an IPv4-mapped IPv6 address of any of them, unless a network in ``DARKROOM_WEBHOOK_ALLOW_NETS``
holds it (internal receivers, allowed on purpose). A literal address is checked at submit (422);
a name is resolved once by the notifier, which then connects to the address it checked (no second
lookup for DNS rebinding to change), and records the delivery as ``blocked`` if any address the
name has is refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

MAX_URL_CHARS = 2048
SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses the name has (tests inject one that answers private ranges).
Resolver = Callable[[str, int], Awaitable[list[str]]]


class BadWebhookUrl(ValueError):
    """The URL is not one a webhook can go to; the message says why."""


def parse(url: str) -> SplitResult:
    """The URL's parts, or ``BadWebhookUrl``: an http(s) URL with a host, 2,048 chars at most."""
    if len(url) > MAX_URL_CHARS:
        raise BadWebhookUrl(f"at most {MAX_URL_CHARS} characters; got {len(url)}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises on a port out of range or not a number
    except ValueError as exc:
        raise BadWebhookUrl(f"not a URL: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise BadWebhookUrl("must start with https:// or http://")
    if not parts.hostname:
        raise BadWebhookUrl("has no host")
    if any(c.isspace() for c in url):
        raise BadWebhookUrl("contains white space")
    return parts


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def parse_nets(values: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(value.strip(), strict=False) for value in values if value.strip()]


def refusal(address: IPAddress, allowed: Sequence[Network]) -> str | None:
    """Why ``address`` may not receive webhooks, or ``None`` when it may."""
    if any(address in net for net in allowed if net.version == address.version):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        mapped = refusal(address.ipv4_mapped, allowed)
        return None if mapped is None else f"{address} maps {address.ipv4_mapped}: {mapped}"
    for kind in ("loopback", "link_local", "multicast", "reserved", "unspecified", "private"):
        if getattr(address, f"is_{kind}"):
            return f"{address} is a {kind.replace('_', '-')} address"
    if not address.is_global:  # CGNAT (100.64.0.0/10) and the other special-purpose blocks
        return f"{address} is not a public address"
    return None


def check_literal(url: str, allowed: Sequence[Network]) -> None:
    """At submit: a URL whose host is a refused address is a ``BadWebhookUrl``; names pass here
    and are checked by the notifier when it resolves them."""
    parts = parse(url)
    address = literal_address(parts.hostname or "")
    if address is not None and (why := refusal(address, allowed)) is not None:
        raise BadWebhookUrl(f"{why}; such receivers need DARKROOM_WEBHOOK_ALLOW_NETS")


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Target:
    """Where to connect for a URL: the checked address, and the name to keep for Host and SNI."""

    url: str
    host: str
    port: int
    address: IPAddress

    @property
    def connect_url(self) -> str:
        """The URL with the checked address in place of the name (path and query kept)."""
        parts = urlsplit(self.url)
        netloc = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return parts._replace(netloc=f"{netloc}:{self.port}").geturl()

    @property
    def host_header(self) -> str:
        parts = urlsplit(self.url)
        default = DEFAULT_PORTS[parts.scheme]
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


class Blocked(Exception):
    """The URL's host is, or resolves to, an address webhooks may not reach."""


class Guard:
    """Resolves a webhook's host once and checks every address it has."""

    def __init__(self, allowed: Sequence[Network], resolver: Resolver = system_resolver) -> None:
        self._allowed = list(allowed)
        self._resolver = resolver

    async def target(self, url: str) -> Target:
        """``Blocked`` for a refused address; ``OSError`` when the name does not resolve (a
        failure worth retrying: DNS may be down for a moment)."""
        parts = parse(url)
        host = parts.hostname or ""
        port = parts.port or DEFAULT_PORTS[parts.scheme]
        literal = literal_address(host)
        found = [str(literal)] if literal is not None else await self._resolver(host, port)
        if not found:
            raise OSError(f"{host} has no address")
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in found]
        for address in addresses:
            if (why := refusal(address, self._allowed)) is not None:
                raise Blocked(f"{host} resolves to {why}" if literal is None else why)
        return Target(url=url, host=host, port=port, address=addresses[0])
