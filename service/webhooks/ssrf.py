"""Which addresses a webhook may reach: a caller's CallBack URL is untrusted input.

Only http and https. Loopback, link-local (which holds 169.254.169.254 and the other cloud
metadata addresses), unspecified and multicast addresses are refused unless an operator opened a
range (``CIRELAY_WEBHOOK_ALLOWED_NETWORKS``). The check applies to the address actually connected
to: ``GuardedResolver`` hands aiohttp only addresses that pass, so aiohttp connects to the address
that was checked and a DNS answer that changes between the check and the connection (rebinding)
changes nothing. IP literals never reach a resolver in aiohttp, so ``refusal`` checks them first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Metadata services outside the link-local range: Alibaba Cloud's (in the CGNAT range) and AWS's
# IPv6 one (in fd00::/8).
_METADATA = (ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254"))
# How long intake waits for a CallBack's host to resolve before it lets the send-time check decide.
INTAKE_RESOLVE_SECONDS = 2.0


class DestinationRefused(OSError):
    """The destination is not allowed; an ``OSError`` so that aiohttp passes it through as the
    cause of its connection error."""


def parse_networks(text: str) -> tuple[Network, ...]:
    """``CIRELAY_WEBHOOK_ALLOWED_NETWORKS``: comma-separated CIDRs; ValueError names a bad one."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"{part!r} is not a CIDR network") from None
    return tuple(networks)


class AddressPolicy:
    def __init__(self, allowed: Sequence[Network] = ()) -> None:
        self._allowed = tuple(allowed)

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be reached, or None when it may."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self._allowed):
            return None
        for refused, kind in (
            (address.is_loopback, "loopback"),
            (address.is_link_local or address in _METADATA, "link-local or metadata"),
            (address.is_unspecified, "unspecified"),
            (address.is_multicast, "multicast"),
        ):
            if refused:
                return f"{kind} address {address}"
        return None

    def url_refusal(self, url: str) -> str | None:
        """What is wrong with ``url`` before any lookup: scheme, host, an IP literal refused."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- raises ValueError on a port out of range
        except ValueError as exc:
            return f"is not a valid URL: {exc}"
        if parts.scheme not in ("http", "https"):
            return "must be an http or https URL"
        if not parts.hostname:
            return "must name a host"
        address = _literal(parts.hostname)
        if address is not None:
            refused = self.refusal(address)
            return None if refused is None else f"is refused: {refused}"
        return None

    async def check(self, url: str) -> str | None:
        """``url_refusal``, then the host's addresses as DNS gives them now. A name that does
        not resolve now is not refused here: the check when sending decides."""
        problem = self.url_refusal(url)
        if problem is not None:
            return problem
        host = urlsplit(url).hostname or ""
        if _literal(host) is not None:
            return None
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM),
                INTAKE_RESOLVE_SECONDS,
            )
        except (OSError, TimeoutError):
            return None
        for info in infos:
            refused = self.refusal(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
            if refused is not None:
                return f"is refused: {host} resolves to {refused}"
        return None


class GuardedResolver(AbstractResolver):
    """A resolver that drops every refused address and fails when none is left."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed, refusals = [], []
        for result in results:
            refused = self._policy.refusal(ipaddress.ip_address(result["host"]))
            if refused is None:
                allowed.append(result)
            else:
                refusals.append(refused)
        if not allowed:
            raise DestinationRefused(
                f"{host.rstrip('.')} resolves only to refused addresses: {'; '.join(refusals)}"
            )
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def origin_of(url: str) -> str:
    """``scheme://host:port``: deliveries to one origin share a concurrency limit and a breaker."""
    parts = urlsplit(url)
    port: Any = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"
