"""Memory comes back: a browser with nothing to render for `ZENNBOT_BROWSER_IDLE` s is closed,
Chromium and Playwright's driver both, and started again by the next read. Processes are
counted in /proc (this process's descendants), never timed."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from bench.load import process_tree
from bench.reads import bench_routes
from bench.replica import ReplicaOptions, ReplicaServer
from bot.runtime import open_browsing
from tests.helpers import TRUSTED_REPLICA, make_settings


def browser_processes() -> dict[str, int]:
    """This process's descendants that are Chromium, and that are Playwright's driver."""
    found = {"chromium": 0, "driver": 0}
    for pid in process_tree(os.getpid())[1:]:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"chrom" in os.path.basename(command[0]):
            found["chromium"] += 1
        elif any(b"playwright" in part for part in command):
            found["driver"] += 1
    return found


async def until(condition, deadline: float = 30.0) -> bool:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_an_idle_browser_is_closed_and_started_again_by_the_next_read(tmp_path):
    async with ReplicaServer(ReplicaOptions(extra_routes=bench_routes())) as site:
        browsing = await open_browsing(make_settings(tmp_path, site.url, zennbot_browser_idle=0.5), TRUSTED_REPLICA)
        try:
            first = await browsing.reader.read(site.url + "/bench/drawn?n=1")
            assert first.source == "browser" and "Drawn paragraph 11" in first.text
            running = browser_processes()
            assert running["chromium"] > 0 and running["driver"] > 0
            # nothing to render: Chromium and the driver go
            assert await until(lambda: browser_processes() == {"chromium": 0, "driver": 0})
            # a readiness probe does not start it again (a local browser needs only its executable)
            await browsing.browser.check()
            assert browser_processes() == {"chromium": 0, "driver": 0}
            again = await browsing.reader.read(site.url + "/bench/drawn?n=2")
            assert again.source == "browser" and "Drawn paragraph 11" in again.text
            assert browser_processes()["chromium"] > 0
        finally:
            await browsing.close()
    assert await until(lambda: browser_processes() == {"chromium": 0, "driver": 0})


async def test_a_busy_browser_is_not_closed(tmp_path):
    """Reads one after another, each shorter than the idle time apart: one browser serves them all."""
    async with ReplicaServer(ReplicaOptions(extra_routes=bench_routes())) as site:
        browsing = await open_browsing(make_settings(tmp_path, site.url, zennbot_browser_idle=30), TRUSTED_REPLICA)
        try:
            await browsing.reader.read(site.url + "/bench/drawn?n=1")
            browser = browsing.browser._browser  # noqa: SLF001
            for n in range(2, 5):
                page = await browsing.reader.read(site.url + f"/bench/drawn?n={n}")
                assert page.source == "browser"
            assert browsing.browser._browser is browser and browser.is_connected()  # noqa: SLF001
        finally:
            await browsing.close()
