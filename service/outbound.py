"""The one gate for outbound http(s) requests: dataset checks, downloads, and any later webhook.

A URL's host is resolved once; every address it resolves to must be a public one (not loopback,
private, link-local, multicast, reserved, unspecified, shared or documentation space, nor an IPv6
form that embeds such an IPv4 address), unless ``IPROX_ALLOWED_HOSTS`` names the host or a
network holding the address. The request then goes to the address that was checked (the URL's
host is replaced by it; the Host header and TLS SNI keep the name), so a second DNS answer cannot
point it elsewhere (DNS rebinding). Redirects are followed here, by hand, each hop checked the
same way before anything connects to it.

Numeric host spellings (``2130706433``, ``0x7f000001``, ``0177.0.0.1``) are resolved by the
system's resolver exactly as a client library would resolve them, so they are checked as the
address they mean.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]
"""``resolve(host, port)`` -> the addresses (as text) the host name stands for."""

HTTP_SCHEMES = ("http", "https")
MAX_REDIRECTS = 5
_DEFAULT_PORTS = {"http": 80, "https": 443}
# IPv6 prefixes that carry an IPv4 address in their low 32 bits: NAT64 (RFC 6052) and the
# IPv4-compatible form. IPv4-mapped, 6to4 and Teredo have their own accessors.
_EMBEDS_V4 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("::/96"))


class OutboundRefused(ValueError):
    """The URL may not be fetched: its address is not public, or the URL itself is unusable."""


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host`` (what a client library would connect to)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise OutboundRefused(f"cannot resolve host {host!r} ({exc})") from None
    return [str(info[4][0]) for info in infos]


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        found += list(ip.teredo)
    found += [
        ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        for net in _EMBEDS_V4
        if ip in net and int(ip) > 1  # ::, ::1 are themselves refused below
    ]
    return found


def is_public(ip: IPAddress) -> bool:
    """True when ``ip`` is a globally routable unicast address, however it is spelt."""
    if (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    ):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:
            return False
        return all(is_public(v4) for v4 in _embedded_v4(ip))
    return True


def _parse_allowed(entries: Iterable[str]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    names: set[str] = set()
    nets: list[IPNetwork] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        try:
            nets.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(normal_host(entry))
    return frozenset(names), tuple(nets)


def normal_host(host: str) -> str:
    """Lower case, no trailing dot, no IPv6 brackets: ``LocalHost.`` and ``localhost`` match."""
    return host.strip().strip("[]").rstrip(".").lower()


@dataclass(frozen=True)
class Target:
    """A checked request target: connect to ``address``, speak to ``host``."""

    url: str  # as given
    host: str  # the name (or literal) from the URL, for Host and SNI
    address: IPAddress  # the checked address the connection goes to
    port: int

    @property
    def pinned_url(self) -> str:
        """The URL with its host replaced by the checked address."""
        parts = urlsplit(self.url)
        shown = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        netloc = f"{shown}:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))

    @property
    def host_header(self) -> str:
        parts = urlsplit(self.url)
        default = _DEFAULT_PORTS[parts.scheme]
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


class OutboundPolicy:
    """Which addresses outbound requests may reach. ``allowed`` entries are host names (matched
    exactly, case- and trailing-dot-insensitive) or networks (``127.0.0.1``, ``10.0.0.0/8``)."""

    def __init__(self, allowed: Iterable[str] = (), resolver: Resolver | None = None) -> None:
        self.allowed_names, self.allowed_networks = _parse_allowed(allowed)
        self.resolver: Resolver = resolver or system_resolver

    def _allowed(self, host: str, ip: IPAddress) -> bool:
        if host in self.allowed_names:
            return True
        return any(ip.version == net.version and ip in net for net in self.allowed_networks)

    def check(self, url: str) -> Target:
        """Resolve and check ``url``'s host; raises OutboundRefused. Every address the name
        resolves to must pass (a name that answers with one public and one private address is
        refused: which one a later lookup returns is up to whoever runs its DNS)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise OutboundRefused(f"not a valid URL ({exc})") from None
        if parts.scheme not in HTTP_SCHEMES:
            raise OutboundRefused(f"scheme {parts.scheme or '(none)'!r} is not http(s)")
        if parts.username is not None or parts.password is not None:
            raise OutboundRefused("credentials in the URL are not accepted")
        raw_host = parts.hostname
        if not raw_host:
            raise OutboundRefused("the URL has no host")
        host = normal_host(raw_host)
        port = port if port is not None else _DEFAULT_PORTS[parts.scheme]
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            found = self.resolver(host, port)
            try:
                addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
            except ValueError as exc:
                raise OutboundRefused(f"host {host!r} resolved to {exc}") from None
        if not addresses:
            raise OutboundRefused(f"host {host!r} resolves to no address")
        for ip in addresses:
            if not (is_public(ip) or self._allowed(host, ip)):
                raise OutboundRefused(
                    f"host {host!r} resolves to {ip}, which is not a public address "
                    "(IPROX_ALLOWED_HOSTS can allow it)"
                )
        return Target(url=url, host=host, address=addresses[0], port=port)


async def send_checked(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    policy: OutboundPolicy,
    *,
    max_redirects: int = MAX_REDIRECTS,
) -> httpx.Response:
    """Send ``method url`` through ``client`` (which must not follow redirects itself), every
    hop checked by ``policy`` and connected to by its checked address. Returns the final
    response, streaming: the caller reads and closes it. Raises OutboundRefused."""
    if client.follow_redirects:
        raise ValueError("the client must not follow redirects: send_checked checks each hop")
    for _ in range(max_redirects + 1):
        target = policy.check(url)
        extensions: dict[str, Any] = {}
        if urlsplit(url).scheme == "https":
            extensions["sni_hostname"] = target.host
        request = client.build_request(
            method, target.pinned_url, headers={"Host": target.host_header}, extensions=extensions
        )
        response = await client.send(request, stream=True)
        location = response.headers.get("location")
        if not (response.is_redirect and location):
            return response
        await response.aclose()
        url = urljoin(url, location)
        if response.status_code == 303 and method != "HEAD":
            method = "GET"
    raise OutboundRefused(f"more than {max_redirects} redirects")
