"""Remote browsers: the bot reads pages through Playwright's browser server (and Chromium's
DevTools protocol) started here with the system Chromium, the guard proxy still in the way of
every request, and a dropped service reconnected."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agent.browser import LAUNCH_ARGS, BrowserPool, PageLoadError, find_chromium
from agent.deadline import Deadline
from agent.urlguard import BlockedUrl
from bench.replica import ReplicaOptions, ReplicaServer
from bot.runtime import open_browsing
from tests.fakes.slack import eventually
from tests.fakes.web import CountingServer, hostile_routes
from tests.helpers import TRUSTED_REPLICA, make_settings

DEEPSEEK = "/asap/articles/34237ad87f8511"
TITLE = "DeepSeek-R1の論文読んだ？【勉強になるよ】"
CHROMIUM = find_chromium()
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium")


class BrowserServer:
    """The browser service of deploy/ (deploy/browser/start.py: Playwright's `launch-server` from
    the venv, so versions match) with the system Chromium on 127.0.0.1, in a process group of its
    own: killing only the Python wrapper would leave its node process running."""

    def __init__(self, tmp_path: Path) -> None:
        # A short TMPDIR: Chromium's sockets live there, and a Unix socket path has at most 107 bytes.
        self.tmp = tempfile.mkdtemp(prefix="zb-browser-")
        self.env = {**os.environ, "TMPDIR": self.tmp, "BROWSER_WS_PATH": "zennbot-test-" + "s" * 16,
                    "BROWSER_SERVER_HOST": "127.0.0.1", "BROWSER_SERVER_PORT": "0",
                    "CHROMIUM_PATH": CHROMIUM}
        self.endpoint = ""
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "deploy" / "browser" / "start.py"), env=self.env,
            stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        self.endpoint = line.decode().strip()
        match = re.fullmatch(rf"ws://127\.0\.0\.1:(\d+)/{self.env['BROWSER_WS_PATH']}", self.endpoint)
        assert match and (self.env["BROWSER_SERVER_PORT"] in ("0", match[1])), self.endpoint
        # Bound on port 0 the first time; a restart binds the port it reported (clients keep it).
        self.env["BROWSER_SERVER_PORT"] = match[1]

    def signal(self, sig: int) -> None:
        os.killpg(self.process.pid, sig)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.signal(signal.SIGKILL)
            await self.process.wait()


@asynccontextmanager
async def browser_server(tmp_path, **env: str):
    server = BrowserServer(tmp_path)
    server.env.update(env)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()
        shutil.rmtree(server.tmp, ignore_errors=True)


@asynccontextmanager
async def site():
    """The replica (its JSON API broken for the bot, so pages go through the browser) with the
    hostile pages, and the "private" server on 127.0.0.2 they aim at."""
    async with CountingServer() as private, ReplicaServer(
            ReplicaOptions(api_broken=True, extra_routes=hostile_routes(private.url))) as zenn:
        yield private, zenn


@asynccontextmanager
async def reading(tmp_path, zenn, **settings):
    # No local Chromium to fall back on: a launch would fail with "not installed".
    browsing = await open_browsing(make_settings(tmp_path, zenn.url, browser_executable="/nonexistent/chromium",
                                                 **settings), TRUSTED_REPLICA)
    try:
        yield browsing
    finally:
        await browsing.close()


async def test_reads_through_the_browser_server_and_reconnects_after_it_restarts(tmp_path):
    async with site() as (private, zenn), browser_server(tmp_path) as server:
        async with reading(tmp_path, zenn, browser_ws_endpoint=server.endpoint) as browsing:
            # the author page draws its list with JavaScript: the reader needs the browser for it
            page = await browsing.reader.read(zenn.url + "/asap")
            assert page.source == "browser" and TITLE in page.text

            # The service dies while a page is being read: that read fails with a clear
            # message (no hang), reads fail while it is down, and work again once it is back.
            in_flight = asyncio.create_task(browsing.browser.render(zenn.url + "/hostile/never-loads"))
            await eventually(lambda: "/hostile/never-loads" in zenn.hits)
            await server.kill()
            with pytest.raises(PageLoadError, match="the browser stopped while reading the page"):
                await in_flight
            with pytest.raises(PageLoadError, match="the browser service cannot be reached"):
                await browsing.browser.render(zenn.url + "/asap")
            await server.start()
            again = await browsing.browser.render(zenn.url + DEEPSEEK)
    assert again.title == TITLE
    assert private.hits == []


@pytest.mark.parametrize("query", ["", "?tls=1"])
async def test_private_targets_stay_refused_through_the_browser_server(tmp_path, query):
    # Even a service that tells Playwright to leave loopback out of the proxy (see the last test).
    loopback_off = {"PLAYWRIGHT_DISABLE_FORCED_CHROMIUM_PROXIED_LOOPBACK": "1"}
    async with site() as (private, zenn), browser_server(tmp_path, **loopback_off) as server:
        async with reading(tmp_path, zenn, browser_ws_endpoint=server.endpoint) as browsing:
            with pytest.raises(BlockedUrl, match="refused address: that address points at the bot's own machine"):
                await browsing.reader.read(zenn.url + "/hostile/redirect" + query)
            page = await browsing.reader.read(zenn.url + "/hostile/subresources")
            with pytest.raises(BlockedUrl):
                await browsing.reader.read(private.url + "/latest/meta-data/")
    assert "Harmless page" in page.text and "SECRET-INTERNAL-DATA" not in page.text
    # Chromium would go to loopback addresses directly if Playwright's per-context proxy left
    # them out (<-loopback>): nothing reached the "private" server, by any route.
    assert private.hits == []


async def test_a_frozen_browser_server_fails_reads_in_time_then_is_replaced(tmp_path):
    """A service that stops answering (SIGSTOP: the connection stays open, nothing comes back)
    would hang a read, since Playwright's timeouts run in the server."""
    async with site() as (private, zenn), browser_server(tmp_path) as server:
        pool = BrowserPool(TRUSTED_REPLICA, ws_endpoint=server.endpoint)
        await pool.start()
        try:
            assert (await pool.render(zenn.url + DEEPSEEK)).title == TITLE
            in_flight = asyncio.create_task(pool.render(zenn.url + "/hostile/never-loads",
                                                        deadline=Deadline.after(3.0)))
            await eventually(lambda: "/hostile/never-loads" in zenn.hits)
            server.signal(signal.SIGSTOP)  # frozen in the middle of a read
            with pytest.raises(PageLoadError, match="did not answer in time"):
                await in_flight
            with pytest.raises(PageLoadError, match="did not answer in time"):  # and before one
                await pool.render(zenn.url + DEEPSEEK, deadline=Deadline.after(3.0))
            await server.kill()
            await server.start()
            assert (await pool.render(zenn.url + DEEPSEEK)).title == TITLE
        finally:
            await pool.close()


async def test_reads_through_chromium_remote_debugging(tmp_path):
    chromium = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'profile'}", *LAUNCH_ARGS,
        "about:blank", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        start_new_session=True)
    try:
        async for line in chromium.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/…"
            if listening := re.search(rb"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line):
                port = int(listening[1])
                break
        async with site() as (private, zenn):
            async with reading(tmp_path, zenn, browser_cdp_url=f"http://127.0.0.1:{port}") as browsing:
                page = await browsing.reader.read(zenn.url + DEEPSEEK)
                with pytest.raises(BlockedUrl, match="refused address"):
                    await browsing.reader.read(zenn.url + "/hostile/redirect")
                await browsing.reader.read(zenn.url + "/hostile/subresources")
    finally:
        os.killpg(chromium.pid, signal.SIGKILL)
        await chromium.wait()
    assert TITLE in page.text
    assert private.hits == []



async def test_loopback_goes_through_the_proxy_whatever_playwright_is_told(tmp_path, monkeypatch):
    """Playwright leaves loopback out of the proxy when PLAYWRIGHT_DISABLE_FORCED_CHROMIUM_PROXIED_LOOPBACK
    is set where it creates contexts (the browser service for `connect`, the bot for CDP and a
    local launch). The bot asks for `<-loopback>` itself, so the variable changes nothing."""
    monkeypatch.setenv("PLAYWRIGHT_DISABLE_FORCED_CHROMIUM_PROXIED_LOOPBACK", "1")
    async with site() as (private, zenn):
        browsing = await open_browsing(make_settings(tmp_path, zenn.url), TRUSTED_REPLICA)
        try:
            page = await browsing.reader.read(zenn.url + "/hostile/subresources")
        finally:
            await browsing.close()
    assert "Harmless page" in page.text
    assert private.hits == []
