"""The switches the bot launches Chromium with: Playwright's own disabled features are kept (Chromium
honours only the last --disable-features), and a new window loads no browser UI of its own."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import playwright
import pytest
from playwright.async_api import async_playwright

from agent.browser import (
    DISABLED_FEATURES,
    LAUNCH_ARGS,
    PLAYWRIGHT_DISABLED_FEATURES,
    find_chromium,
)
from bench.replica import ReplicaServer

CHROMIUM = find_chromium()


def playwright_disabled_features() -> set[str]:
    """The features the installed Playwright disables (its `chromiumSwitches.ts`, bundled)."""
    bundle = Path(playwright.__file__).parent / "driver" / "package" / "lib" / "coreBundle.js"
    text = bundle.read_text(encoding="utf-8")
    block = re.search(r"disabledFeatures = \[(.*?)\]\.filter", text, re.DOTALL)
    assert block, "Playwright's disabledFeatures list moved: look for it in the driver and update this test"
    code = "\n".join(line.split("//")[0] for line in block[1].splitlines())
    return set(re.findall(r'"([A-Za-z0-9]+)"', code))


def test_one_disable_features_switch_that_keeps_playwrights_list():
    switches = [arg for arg in LAUNCH_ARGS if arg.startswith("--disable-features=")]
    assert switches == ["--disable-features=" + ",".join(DISABLED_FEATURES)]
    assert playwright_disabled_features() <= set(PLAYWRIGHT_DISABLED_FEATURES)


@pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium")
async def test_a_new_window_loads_only_the_page():
    """Chromium 156 loads the address bar's popup (a WebUI page of ~400 modules, about 1 CPU-s)
    for every new window; with the bot's switches a read loads nothing but its page."""
    async with ReplicaServer() as site, async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            await browser.start_tracing(categories=["blink", "loading", "devtools.timeline"])
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(site.url + "/asap", wait_until="load")
            await asyncio.sleep(1.0)  # the popup loaded within a second of the window opening
            await context.close()
            trace = json.loads(await browser.stop_tracing())
        finally:
            await browser.close()
    urls = {url for url in re.findall(r'"(\w+://[^"]+)"', json.dumps(trace["traceEvents"]))}
    assert any(url.startswith(site.url) for url in urls)  # the trace does show what was loaded
    assert not [url for url in urls if url.startswith("chrome://")]
