"""A mock Slack Web API on 127.0.0.1 (after bolt-python's tests/mock_web_api_server): records
every call and answers as Slack does; plus helpers that sign requests as Slack signs them."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

from bot.bench.local_server import LocalServer

BOT_USER = "UBOT"
TEAM = "T1"


class MockSlackApi(LocalServer):
    """The Web API (`POST /api/{method}`), a `response_url` endpoint, and a Socket Mode
    WebSocket (`apps.connections.open` hands out its URL)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.responses: list[dict] = []  # what response_url received
        self.acks: list[dict] = []  # what Socket Mode clients sent back
        self.too_long_over: int | None = None  # answer msg_too_long for longer markdown_text
        self.reject_token = False
        self.rate_limit_posts = 0  # answer this many chat.postMessage calls with HTTP 429
        self._ts = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_post("/respond/{token}", self._respond)
        app.router.add_get("/link", self._socket_mode)
        super().__init__(app)

    def named(self, method: str) -> list[dict]:
        return [args for name, args in self.calls if name == method]

    @property
    def socket_clients(self) -> int:
        return sum(1 for ws in self._sockets if not ws.closed)

    async def push(self, kind: str, payload: dict) -> str:
        """Send a Socket Mode envelope (e.g. "events_api", "slash_commands"); returns its id."""
        envelope_id = f"env-{next(self._ts)}"
        for ws in self._sockets:
            if not ws.closed:
                await ws.send_json({"envelope_id": envelope_id, "type": kind, "payload": payload,
                                    "accepts_response_payload": kind != "events_api", "retry_attempt": 0})
        return envelope_id

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        raw = await request.text()
        args = json.loads(raw or "{}") if request.content_type == "application/json" else dict(parse_qsl(raw))
        args = {**dict(request.query), **args}
        self.calls.append((method, args))
        if method == "auth.test" and self.reject_token:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if method == "auth.test":
            return web.json_response({"ok": True, "user_id": BOT_USER, "bot_id": "BBOT", "team_id": TEAM,
                                      "user": "zennbot", "team": "Test"})
        if method == "apps.connections.open":
            return web.json_response({"ok": True, "url": self.url.replace("http://", "ws://") + "/link"})
        if method == "chat.postMessage" and self.rate_limit_posts:
            self.rate_limit_posts -= 1
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "1"})
        if method in ("chat.postMessage", "chat.update"):
            text = args.get("markdown_text") or args.get("text") or ""
            if self.too_long_over is not None and len(text) > self.too_long_over:
                return web.json_response({"ok": False, "error": "msg_too_long"})
            ts = args.get("ts") or f"1700000000.{next(self._ts):06d}"
            return web.json_response({"ok": True, "channel": args.get("channel"), "ts": ts})
        return web.json_response({"ok": True})

    async def _respond(self, request: web.Request) -> web.Response:
        self.responses.append(await request.json())
        return web.Response(text="ok")

    async def _socket_mode(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_json({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A1"},
                            "debug_info": {"host": "fake", "approximate_connection_time": 3600}})
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                self.acks.append(json.loads(message.data))
        return ws


def signed_headers(secret: str, body: str, content_type: str, timestamp: int | None = None) -> dict:
    ts = str(timestamp or int(time.time()))
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}", "Content-Type": content_type}


def event_body(event: dict, event_id: str) -> str:
    return json.dumps({"type": "event_callback", "team_id": TEAM, "api_app_id": "A1", "event_id": event_id,
                       "event_time": int(time.time()), "event": event, "token": "legacy"})


async def eventually(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
