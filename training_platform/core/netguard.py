"""Requests made on a user's behalf (webhooks) go to public addresses only.

A URL a user stores could otherwise make the platform reach what only it can reach: its own
Redis, PostgreSQL or API on loopback, a cloud metadata service (169.254.169.254), hosts of the
private network. A host is refused when any address it resolves to is not global (loopback,
private, link-local, shared, reserved, multicast, unspecified), unless the administrator
allows private addresses (TP_ALLOW_PRIVATE_URLS). The check runs when the URL is stored and
again before each request, so a name that later resolves inward is refused then too.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


def internal_reason(url: str) -> str | None:
    """Why a request to this http(s) URL must not be made, or None when every address of its
    host is public. Never names the URL's path or query (they may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return "the URL has no host"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError, UnicodeError):
        return f"{host} does not resolve"
    for *_, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if not address.is_global or address.is_multicast:
            return f"{host} is an internal address ({address})"
    return None
