"""A filtering HTTP proxy (on 127.0.0.1 by default) that all of the bot's web traffic goes through.

Every browser context is made with its proxy pointing here, so the page, every redirect hop, every
sub-resource, fetch/XHR, WebSocket and popup reaches the network only through `_connect`, which
resolves the host itself, refuses blocked addresses (`UrlPolicy`) and connects to the very
address it checked (no DNS rebinding between check and use). The Zenn JSON client uses it too.
Playwright's `page.route` alone would not do: it does not see redirect hops.

A browser service on another machine reaches the proxy at `advertised_host` (the proxy then
listens beyond loopback, e.g. on 0.0.0.0); it still demands its credentials from every client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import ipaddress
import secrets
from collections import deque
from urllib.parse import urlsplit

from agent.urlguard import BlockedUrl, UrlPolicy, normalize_host

log = logging.getLogger(__name__)

BLOCKED_HEADER = "X-Zennbot-Blocked"
_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "te",
               "trailer", "upgrade"}
_HEAD_LIMIT = 64 * 1024
_CONNECT_TIMEOUT = 10.0
_IDLE_TIMEOUT = 60.0


class GuardProxy:
    """`async with GuardProxy(policy) as proxy:` then use `proxy.url`.

    `host` and `port` are where it listens (port 0: any free one); `advertised_host` is the name
    or address its clients use to reach it, when that is not `host` (a wildcard `host` without
    one is reached at 127.0.0.1).
    """

    def __init__(self, policy: UrlPolicy, max_response_bytes: int | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, advertised_host: str | None = None) -> None:
        self.policy = policy
        self.max_response_bytes = max_response_bytes
        self.host = host
        self.port = port
        self.advertised_host = advertised_host
        # Only the bot's own clients may use the proxy, not any process on the machine.
        self.username = "zennbot"
        self.password = secrets.token_urlsafe(24)
        self._authorization = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        # Recent refusals by host: a refused HTTPS tunnel reaches the browser only as
        # ERR_TUNNEL_CONNECTION_FAILED, so the reader looks the reason up here.
        self.refusals: deque[tuple[str, str]] = deque(maxlen=256)

    def refusal_for(self, hosts: set[str]) -> str | None:
        """Why a request to one of `hosts` was refused lately, if one was."""
        hosts = {normalize_host(h) for h in hosts}
        return next((reason for host, reason in reversed(self.refusals) if host in hosts), None)

    @property
    def url(self) -> str:
        """The proxy as its clients, a remote browser included, reach it."""
        return self._url(self.advertised_host or self.host)

    @property
    def local_url(self) -> str:
        """The proxy as a client on the bot's own machine reaches it."""
        return self._url(self.host)

    def _url(self, host: str) -> str:
        assert self._server is not None, "proxy not started"
        port = self._server.sockets[0].getsockname()[1]
        host = host.strip("[]")
        return f"http://{_bracket('127.0.0.1' if _is_wildcard(host) else host)}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=_HEAD_LIMIT)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> GuardProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:  # the proxy is closing; end this connection quietly
            pass
        except Exception:  # a proxy bug must not take the bot down; it only fails this request
            log.exception("proxy request failed")
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _IDLE_TIMEOUT)
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        if not self._authorized(header_lines):
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b'Proxy-Authenticate: Basic realm="zennbot"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
            await writer.drain()
            return
        if method.upper() == "CONNECT":
            host, _, port = target.rpartition(":")
            try:
                upstream = await self._connect(host, int(port))
            except BlockedUrl as exc:
                self.refusals.append((normalize_host(host.strip("[]")), exc.reason))
                return await _refuse(writer, exc)
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
            await _relay(reader, writer, *upstream, limit=self.max_response_bytes)
            return

        parts = urlsplit(target)
        if parts.scheme.lower() != "http" or not parts.hostname:
            return await _refuse(writer, BlockedUrl("only http and https links can be read", target))
        try:
            upstream = await self._connect(parts.hostname, parts.port or 80)
        except BlockedUrl as exc:
            self.refusals.append((normalize_host(parts.hostname), exc.reason))
            return await _refuse(writer, exc)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        headers = [h for h in header_lines if h and h.split(":", 1)[0].strip().lower() not in _HOP_BY_HOP]
        up_reader, up_writer = upstream
        up_writer.write(f"{method} {path} {version}\r\n".encode("latin-1"))
        up_writer.write(("\r\n".join([*headers, "Connection: close"]) + "\r\n\r\n").encode("latin-1"))
        await up_writer.drain()
        await _relay(reader, writer, up_reader, up_writer, rewrite_response_head=True,
                     limit=self.max_response_bytes)

    def _authorized(self, header_lines: list[str]) -> bool:
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "proxy-authorization":
                return hmac.compare_digest(value.strip().encode(), self._authorization.encode())
        return False

    async def _connect(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host = normalize_host(host.strip("[]"))
        self.policy.check_url(f"http://{_bracket(host)}:{port}/")
        addresses = await self.policy.resolve(host, port)
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await asyncio.wait_for(asyncio.open_connection(str(address), port), _CONNECT_TIMEOUT)
            except (TimeoutError, OSError) as exc:
                last_error = exc
        raise ConnectionError(f"could not connect to {host}:{port}: {last_error}")


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _refuse(writer: asyncio.StreamWriter, exc: BlockedUrl) -> None:
    log.log(logging.INFO if "could not be found" in exc.reason else logging.WARNING, "blocked request: %s", exc)
    body = exc.reason.encode("utf-8")
    writer.write(
        b"HTTP/1.1 403 Forbidden\r\n"
        + f"{BLOCKED_HEADER}: {exc.reason}\r\n".encode("latin-1", "replace")
        + b"Content-Type: text/plain; charset=utf-8\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
        + body
    )
    await writer.drain()


async def _relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                 up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter,
                 rewrite_response_head: bool = False, limit: int | None = None) -> None:
    async def upstream_to_client() -> None:
        if rewrite_response_head:
            # Tell the browser this connection ends with the response, so it never sends a
            # second request (maybe for another host) down a pipe already bound to this one.
            head = await up_reader.readuntil(b"\r\n\r\n")
            status, *lines = head.decode("latin-1").split("\r\n")
            kept = [h for h in lines if h and h.split(":", 1)[0].strip().lower() not in _HOP_BY_HOP]
            client_writer.write(("\r\n".join([status, *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1"))
        await _pipe(up_reader, client_writer, limit)

    async def client_to_upstream() -> None:
        # A plain HTTP client is silent while the answer comes: only its closing counts.
        await _pipe(client_reader, up_writer, idle=None if rewrite_response_head else _IDLE_TIMEOUT)

    tasks = [asyncio.create_task(upstream_to_client()), asyncio.create_task(client_to_upstream())]
    try:
        # Either side closing ends the exchange: the response ended, or the client gave up on a
        # server that never ends its answer (then the server must see its connection close too).
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None = None,
                idle: float | None = _IDLE_TIMEOUT) -> None:
    """Copy until EOF, until nothing came for `idle` seconds, or until `limit` bytes have passed
    (then the connection is cut)."""
    passed = 0
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), idle)
        if not chunk:
            break
        passed += len(chunk)
        if limit is not None and passed > limit:
            log.info("response cut after %d bytes (limit %d)", passed, limit)
            break
        writer.write(chunk)
        await writer.drain()
