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

from aiohttp import web

BOT_USER = "UBOT"
TEAM = "T1"


class MockSlackApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.responses: list[dict] = []  # what response_url received
        self.too_long_over: int | None = None  # answer msg_too_long for longer markdown_text
        self._ts = itertools.count(1)
        self.url = ""
        self._runner: web.AppRunner | None = None

    def named(self, method: str) -> list[dict]:
        return [args for name, args in self.calls if name == method]

    async def __aenter__(self) -> MockSlackApi:
        async def api(request: web.Request) -> web.Response:
            method = request.match_info["method"]
            raw = await request.text()
            if request.content_type == "application/json":
                args = json.loads(raw or "{}")
            else:
                args = dict(parse_qsl(raw))
            args = {**dict(request.query), **args}
            self.calls.append((method, args))
            if method == "auth.test":
                return web.json_response({"ok": True, "user_id": BOT_USER, "bot_id": "BBOT", "team_id": TEAM,
                                          "user": "zennbot", "team": "Test"})
            if method in ("chat.postMessage", "chat.update"):
                text = args.get("markdown_text") or args.get("text") or ""
                if self.too_long_over is not None and len(text) > self.too_long_over:
                    return web.json_response({"ok": False, "error": "msg_too_long"})
                ts = args.get("ts") or f"1700000000.{next(self._ts):06d}"
                return web.json_response({"ok": True, "channel": args.get("channel"), "ts": ts})
            return web.json_response({"ok": True})

        async def respond(request: web.Request) -> web.Response:
            self.responses.append(await request.json())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/api/{method}", api)
        app.router.add_post("/respond/{token}", respond)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


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
