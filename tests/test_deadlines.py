"""Every read has one deadline: servers that never finish end the read at the page timeout, with
the text that arrived when it is worth reading, else one sentence; and the server sees its
connection closed. The reads here use a 2 s page timeout; `eventually` waits for the server's
side, with its own generous limit as the failure condition (no timing is asserted)."""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager

import pytest

from agent.browser import PageLoadError
from bench.replica import ReplicaOptions, ReplicaServer
from bot.runtime import open_browsing
from tests.fakes.slack import eventually
from tests.fakes.web import SlowSite
from tests.forkserver import start_zennbot
from tests.helpers import TRUSTED_REPLICA, make_settings, store_env

PAGE_TIMEOUT = 2.0


@asynccontextmanager
async def slow_reading(tmp_path, **settings):
    """The reader (real proxy, real Chromium) with a 2 s page timeout, over the slow pages."""
    slow = SlowSite()
    async with ReplicaServer(ReplicaOptions(extra_routes=slow.routes())) as site:
        browsing = await open_browsing(make_settings(tmp_path, site.url, zennbot_page_timeout=PAGE_TIMEOUT,
                                                     **settings), TRUSTED_REPLICA)
        try:
            yield site, slow, browsing.reader
        finally:
            await browsing.close()


async def test_a_trickling_page_ends_at_the_page_timeout_with_one_sentence(tmp_path):
    async with slow_reading(tmp_path) as (site, slow, reader):
        with pytest.raises(PageLoadError) as failed:
            await reader.read(site.url + "/slow/trickle")
        await eventually(lambda: "/slow/trickle" in slow.closed)
    assert failed.value.reason == "the page did not load within 2 s"


async def test_a_body_that_never_ends_is_read_as_far_as_it_came(tmp_path):
    async with slow_reading(tmp_path) as (site, slow, reader):
        page = await reader.read(site.url + "/slow/never-closes")
        await eventually(lambda: "/slow/never-closes" in slow.closed)
    assert page.source == "server-html"
    assert "Paragraph 1 of the slow article" in page.text and "Paragraph 12 of the slow article" in page.text
    assert page.text.endswith("(cut: the page did not finish loading within 2 s; this is what arrived)")


async def test_an_endless_body_is_read_up_to_the_byte_limit(tmp_path):
    async with slow_reading(tmp_path, zennbot_page_max_bytes=300_000) as (site, slow, reader):
        page = await reader.read(site.url + "/slow/endless")
        await eventually(lambda: "/slow/endless" in slow.closed)
    assert "An endless paragraph of text." in page.text
    assert page.text.endswith("(cut: the page is larger than the 300,000 bytes the bot reads; this is what arrived)")


async def test_redirects_in_a_circle_end_with_a_clear_error(tmp_path):
    async with slow_reading(tmp_path) as (site, slow, reader):
        with pytest.raises(PageLoadError) as failed:
            await reader.read(site.url + "/slow/loop/a")
    assert failed.value.reason == "the page redirects in a loop"
    assert slow.requested == ["/slow/loop/a", "/slow/loop/b"]


async def test_an_endless_chain_of_slow_redirects_ends_at_the_page_timeout(tmp_path):
    async with slow_reading(tmp_path) as (site, slow, reader):
        with pytest.raises(PageLoadError) as failed:
            await reader.read(site.url + "/slow/hops/1")
    assert failed.value.reason == "the page did not load within 2 s"
    assert 1 <= len(slow.requested) <= 3  # a redirect a second: the deadline, not the hop limit (5), ended it


async def test_a_drawn_page_whose_script_never_arrives_ends_at_the_page_timeout(tmp_path):
    """The server's HTML is an empty app root, so the browser reads it; its script trickles for
    ever, so the page never loads in the browser either. (On a very busy machine the deadline
    may pass before Chromium asks for the script: the outcome is the same, and whatever it
    opened is closed.)"""
    async with slow_reading(tmp_path) as (site, slow, reader):
        with pytest.raises(PageLoadError) as failed:
            await reader.read(site.url + "/slow/drawn")
        await eventually(lambda: set(slow.requested) - {"/slow/drawn"} <= slow.closed)
    assert failed.value.reason == "the page did not load within 2 s"
    assert slow.requested[0] == "/slow/drawn" and set(slow.requested) <= {"/slow/drawn", "/slow/trickle.js"}


async def test_zennbot_read_of_a_trickling_page_ends_within_the_page_timeout(tmp_path):
    """`zennbot read` as a user runs it: once its request reached the server, it must end within
    the page timeout plus 5 s (the failure condition of `wait_for`), saying why in one line."""
    slow = SlowSite()
    async with ReplicaServer(ReplicaOptions(extra_routes=slow.routes())) as site:
        process = await start_zennbot(
            "read", site.url + "/slow/trickle",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **store_env(tmp_path), "ZENN_BASE_URL": site.url,
                 "ZENNBOT_ALLOW_PRIVATE_NETWORK": "true", "ZENNBOT_PAGE_TIMEOUT": str(PAGE_TIMEOUT)})
        try:
            await eventually(lambda: "/slow/trickle" in slow.requested, timeout=60)  # started up
            out, err = await asyncio.wait_for(process.communicate(), PAGE_TIMEOUT + 5)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await eventually(lambda: "/slow/trickle" in slow.closed)
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == (f"ERROR: Could not read {site.url}/slow/trickle: the page did not load "
                                    "within 2 s. Tell the user; do not guess the page's content.")
    assert "Traceback" not in err.decode()
