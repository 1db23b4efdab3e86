"""Requests made on a user's behalf (webhooks) go to public addresses only.

A URL a user stores could otherwise make the platform reach what only it can reach: its own
Redis, PostgreSQL or API on loopback, a cloud metadata service (169.254.169.254), hosts of the
private network. A host is refused when any address it resolves to is not global (loopback,
private, link-local, shared, reserved, multicast, unspecified), unless the administrator
allows it: TP_ALLOWED_NETWORKS names networks (CIDR) that may be reached, and
TP_ALLOW_PRIVATE_URLS allows loopback and private networks, never link-local ones (the cloud
metadata services) unless they are named.

The check runs when the URL is stored and again before each request, and a request goes to the
address the check resolved (`pin`): a name that resolves to a public address for the check and
to an inward one for the connection (DNS rebinding) reaches nothing inward.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Refused(Exception):
    """A URL the platform must not call; the message never names its path or query."""


def _resolve(url: str) -> tuple[str, list[Address]]:
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise Refused("the URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError, UnicodeError):
        raise Refused(f"{host} does not resolve") from None
    addresses = [ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]) for *_, sockaddr in found]
    if not addresses:
        raise Refused(f"{host} does not resolve")
    return host, addresses


def _allowed(address: Address, allow_private: bool, networks: Sequence[Network]) -> bool:
    if any(address in network for network in networks):
        return True
    if address.is_multicast or address.is_unspecified:
        return False
    if address.is_global:
        return True
    return (
        allow_private
        and (address.is_loopback or address.is_private)
        and not (address.is_link_local)
    )


def networks_of(cidrs: Sequence[str]) -> list[Network]:
    """The allow-listed networks, parsed (ValueError names a malformed one)."""
    return [ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip()]


def check(url: str, *, allow_private: bool = False, allowed: Sequence[str] = ()) -> list[Address]:
    """The addresses of this http(s) URL's host, or Refused when one of them is internal and
    not allowed."""
    host, addresses = _resolve(url)
    networks = networks_of(allowed)
    for address in addresses:
        if not _allowed(address, allow_private, networks):
            raise Refused(f"{host} is an internal address ({address})")
    return addresses


def internal_reason(url: str) -> str | None:
    """Why a request to this http(s) URL must not be made by default, or None when every
    address of its host is public. Never names the URL's path or query (they may hold a token)."""
    try:
        check(url)
    except Refused as refused:
        return str(refused)
    return None


@dataclass(frozen=True)
class Pinned:
    """A request's target, resolved once: connect to `url` (the address), say `host`."""

    url: str
    host: str  # the Host header
    sni_hostname: str | None  # the name TLS sends and verifies (https)

    @property
    def headers(self) -> dict[str, str]:
        """The request's headers: the name the URL gave."""
        return {"Host": self.host}

    @property
    def extensions(self) -> dict[str, str]:
        """httpx's request extensions: TLS speaks to and verifies the URL's name."""
        return {"sni_hostname": self.sni_hostname} if self.sni_hostname else {}


def pin(url: str, *, allow_private: bool = False, allowed: Sequence[str] = ()) -> Pinned:
    """Resolve once, check every address, and name the first as the one to connect to."""
    addresses = check(url, allow_private=allow_private, allowed=allowed)
    parts = urlsplit(url)
    address = addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    userinfo, _, host = parts.netloc.rpartition("@")
    netloc = (
        (f"{userinfo}@" if userinfo else "") + literal + (f":{parts.port}" if parts.port else "")
    )
    sni = parts.hostname if parts.scheme == "https" else None
    return Pinned(
        url=urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)),
        host=host,
        sni_hostname=sni,
    )
