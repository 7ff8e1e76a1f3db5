"""Health endpoints, asked over real HTTP: /healthz while the process serves, /readyz only when
the database answers and a browser can be had."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket

import aiohttp

from bot.health import HealthServer, readiness_checks
from tests.fakes.discord import FakeDiscord
from tests.forkserver import start_zennbot
from tests.helpers import make_settings, reported_port, running


async def get(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.json()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_ready_when_database_and_browser_answer_not_ready_when_one_fails(tmp_path):
    async with running(make_settings(tmp_path)) as (runtime, _):
        checks = readiness_checks(runtime.store, runtime.browsing.browser)
        async with HealthServer(checks) as health:
            assert await get(health.url + "/healthz") == (200, {"status": "ok"})
            assert await get(health.url + "/readyz") == (200, {"status": "ok", "database": "ok", "browser": "ok"})
            await runtime.store.close()  # the database goes away
            assert await get(health.url + "/readyz") == (503, {"status": "not ready", "database": "failed",
                                                               "browser": "ok"})
            assert (await get(health.url + "/healthz"))[0] == 200  # alive, only not ready


async def test_not_ready_while_the_browser_service_cannot_be_reached(tmp_path):
    # Nothing listens on this port: the browser service is down.
    settings = make_settings(tmp_path, browser_ws_endpoint=f"ws://127.0.0.1:{free_port()}/pw")
    async with running(settings) as (runtime, _):
        async with HealthServer(readiness_checks(runtime.store, runtime.browsing.browser)) as health:
            status, body = await get(health.url + "/readyz")
    assert (status, body) == (503, {"status": "not ready", "database": "ok", "browser": "failed"})


async def test_zennbot_run_serves_health_on_its_own_port(tmp_path):
    async with FakeDiscord() as fake:
        process = await start_zennbot(
            "run", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={
                **os.environ, "ZENNBOT_DB": str(tmp_path / "x.db"), "GOOGLE_API_KEY": "k",
                "DISCORD_TOKEN": "t", "DISCORD_API_BASE_URL": fake.url + "/api/v10",
                "DISCORD_GATEWAY_URL": fake.url.replace("http", "ws") + "/gateway",
                "ZENNBOT_HEALTH_PORT": "0", "ZENNBOT_HEALTH_HOST": "127.0.0.1"})
        try:
            # Health starts before the adapters; stopping before the client is ready would hit a
            # shutdown race in discord.py's READY delay, which is not what this test is about.
            async with asyncio.timeout(120):  # a loaded machine starts Python slowly
                port = await reported_port(process.stderr, re.compile(rb"health endpoints on port (\d+)"))
                while b"Discord: logged in" not in await process.stderr.readline():
                    pass
            url = f"http://127.0.0.1:{port}"
            assert await get(url + "/healthz") == (200, {"status": "ok"})
            assert await get(url + "/readyz") == (200, {"status": "ok", "database": "ok", "browser": "ok"})
        finally:
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 30)
            err = (await process.stderr.read()).decode()
    assert code == 0, err
    assert "Traceback" not in err

