"""Which URLs and addresses the bot may fetch.

Strangers give the bot URLs, and the bot runs next to private services. Every request (the
browser's, through `agent.proxy`, and the Zenn JSON client's, through the same proxy) is checked
here against the addresses its host resolves to at the moment of the request.

`BlockedUrl.reason` is the short sentence shown to the user; the detail goes to the log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

MAX_URL_LENGTH = 2048
# ASCII that RFC 3986 never allows unencoded in a URL. '<', '>' and '|' would carry markup into a
# chat message that shows the URL (Slack's <!channel>, <url|label>; Discord's <url>); '\\' is
# read as '/' by browsers but not by urlsplit.
_UNSAFE_ASCII = frozenset('<>"`{}|\\^')
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedUrl(Exception):
    """A URL or address the bot refuses to fetch. `reason` is safe to show to users."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    literal_ip: IPAddress | None


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


@dataclass(frozen=True)
class UrlPolicy:
    """The rules. `trusted_addresses` exists for tests only: addresses treated as public."""

    allowed_hosts: tuple[str, ...] = ()
    allow_private_network: bool = False
    trusted_addresses: frozenset[IPAddress] = field(default_factory=frozenset)
    resolver: Resolver = system_resolver

    def check_url(self, url: str) -> Target:
        """Check a URL's form without touching the network. Raises `BlockedUrl`."""
        if len(url) > MAX_URL_LENGTH:
            raise BlockedUrl("that link is too long to read", f"{len(url)} characters")
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise BlockedUrl("that does not look like a valid link", str(exc)) from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise BlockedUrl("only http and https links can be read", f"scheme {scheme or 'none'!r}")
        unsafe = next((c for c in url.strip() if _unsafe(c)), None)
        if unsafe is not None:
            raise BlockedUrl(f"that link has a character links must percent-encode ({_name(unsafe)})",
                             escape_url(url.strip()))
        if parts.username is not None or parts.password is not None:
            raise BlockedUrl("links with a user name or password are not read")
        host = normalize_host(parts.hostname or "")
        if not host:
            raise BlockedUrl("that link has no host name")
        if self.allowed_hosts and not host_matches(host, self.allowed_hosts):
            raise BlockedUrl("that site is not on this bot's list of allowed sites", host)
        literal = parse_ip_literal(host)
        if literal is not None:
            self.check_address(literal, host)
        return Target(scheme, host, port or (443 if scheme == "https" else 80), literal)

    def check_address(self, ip: IPAddress, host: str = "") -> None:
        """Raise `BlockedUrl` unless `ip` is an address the bot may connect to."""
        if self.allow_private_network or ip in self.trusted_addresses:
            return
        reason = refusal_reason(ip)
        if reason:
            raise BlockedUrl(reason, f"{host or ip} -> {ip}")

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Resolve `host` and return its addresses, all of them checked. Raises `BlockedUrl`."""
        literal = parse_ip_literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = [ipaddress.ip_address(a.split("%")[0]) for a in await self.resolver(host, port)]
            except (OSError, ValueError, UnicodeError) as exc:
                raise BlockedUrl("that host name could not be found", f"{host}: {exc}") from None
        if not addresses:
            raise BlockedUrl("that host name could not be found", host)
        for ip in addresses:  # every address, or DNS with one public and one private answer slips by
            self.check_address(ip, host)
        return addresses

    async def check(self, url: str) -> Target:
        """Check a URL's form and what its host resolves to now."""
        target = self.check_url(url)
        await self.resolve(target.host, target.port)
        return target


def _unsafe(char: str) -> bool:
    """Whitespace, control and format characters (zero-width, bidi overrides) and `_UNSAFE_ASCII`."""
    return char in _UNSAFE_ASCII or char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Zs")


def _name(char: str) -> str:
    return f"'{char}'" if char.isprintable() and not char.isspace() else f"U+{ord(char):04X}"


def escape_url(url: str) -> str:
    """`url` with every character `check_url` refuses percent-encoded (as a browser sends a link
    a page wrote with spaces or '<'). For URLs a page gave (redirects, next-page links), and for
    showing a refused URL without the markup it carries."""
    return "".join(quote(c, safe="") if _unsafe(c) else c for c in url)


def normalize_host(host: str) -> str:
    """The host as a browser sees it: percent-decoded, NFKC (full-width digits), lower case."""
    host = unicodedata.normalize("NFKC", unquote(host)).strip().lower()
    return host.removesuffix(".") if host.endswith(".") and host != "." else host


def host_matches(host: str, allowed: Iterable[str]) -> bool:
    return any(host == a.lower() or host.endswith("." + a.lower()) for a in allowed)


def parse_ip_literal(host: str) -> IPAddress | None:
    """An IP address written in any form a browser accepts, or None for a domain name.

    Browsers read `2130706433`, `0x7f.1` and `0177.0.0.1` as 127.0.0.1 (WHATWG URL, IPv4 parser).
    """
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    parts = host.split(".")
    if parts and parts[-1] == "":
        parts.pop()
    if not parts or len(parts) > 4:
        return None
    numbers = []
    for part in parts:
        number = _parse_ipv4_number(part)
        if number is None:
            return None
        numbers.append(number)
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise BlockedUrl("that does not look like a valid address", host)
    value = numbers[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(numbers[:-1]))
    return ipaddress.IPv4Address(value)


def _parse_ipv4_number(part: str) -> int | None:
    try:
        if part[:2].lower() == "0x":
            return int(part[2:] or "0", 16)
        if len(part) > 1 and part.startswith("0"):
            return int(part[1:], 8)
        return int(part, 10) if part.isascii() and part.isdigit() else None
    except ValueError:
        return None


def refusal_reason(ip: IPAddress) -> str | None:
    """Why the bot must not connect to `ip`, in words for the user; None when it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return refusal_reason(embedded)
    if ip.is_loopback:
        return "that address points at the bot's own machine"
    if ip.is_link_local:
        return "that address is a link-local or cloud metadata address"
    if ip.is_unspecified:
        return "that address is not a real destination"
    if ip.is_multicast:
        return "that address is a multicast address"
    if ip.is_private or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT):
        return "that address is on a private network"
    if ip.is_reserved or not ip.is_global:
        return "that address is not a public internet address"
    return None
