"""An aiohttp application served on a loopback address, for the benchmark and the tests."""

from __future__ import annotations

from aiohttp import web


class LocalServer:
    """`async with LocalServer(app) as server:` then `server.url` (http://127.0.0.1:PORT)."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1") -> None:
        self.app = app
        self.host = host
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self):
        # A short shutdown timeout: some test pages never finish their answer on purpose.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, 0).start()
        self.url = f"http://{self.host}:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
