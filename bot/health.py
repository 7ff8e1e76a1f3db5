"""Health endpoints for orchestrators, on a port of their own (`ZENNBOT_HEALTH_PORT`, off by default).

`GET /healthz` answers 200 while the process serves requests (liveness). `GET /readyz` answers
200 when the database can be written (a heartbeat row in its own transaction, which also rolls
back a store connection found inside a stale transaction) and a browser can be had (connected,
or connectable), else 503.
The body says which check failed, never why: the details (which may name hosts) go to the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from agent.browser import BrowserPool
from bot.store import Store

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[None]]
CHECK_TIMEOUT = 10.0  # seconds per check; a check that hangs counts as failed


def readiness_checks(store: Store, browser: BrowserPool) -> dict[str, Check]:
    return {"database": store.ping, "browser": browser.check}


class HealthServer:
    """`async with HealthServer({"database": check, ...}, host, port) as health:` then `health.url`.
    A check is a coroutine function that raises when its part is not ready."""

    def __init__(self, checks: dict[str, Check], host: str = "127.0.0.1", port: int = 0) -> None:
        self.checks = checks
        self.host = host
        self.port = port
        self.url = ""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        log.info("health endpoints on port %d (/healthz, /readyz)", port)

    async def close(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        names = list(self.checks)
        results = await asyncio.gather(*(self._run(name) for name in names))
        report = dict(zip(names, results))
        ready = all(result == "ok" for result in results)
        return web.json_response({"status": "ok" if ready else "not ready", **report}, status=200 if ready else 503)

    async def _run(self, name: str) -> str:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await self.checks[name]()
        except Exception as exc:  # any failure means "not ready"; the reason goes to the log
            log.warning("readiness: %s failed: %s", name, exc or type(exc).__name__)
            return "failed"
        return "ok"
