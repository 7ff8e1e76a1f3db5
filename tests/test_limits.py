"""Each scarce resource is bounded on its own, where it is used: browser renders, fetches of a
server's HTML, model calls. A run waiting for the model holds no render. Concurrency is counted
by instruments of the tests' own (the pages' server, the model, the browser's read), never by
the clock."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from agent.limits import Limit
from bench.reads import bench_routes
from bench.replica import ReplicaOptions, ReplicaServer
from bench.scripted_model import ScriptedChatModel, current_turn, tool_call
from bot.runtime import open_browsing
from tests.helpers import TRUSTED_REPLICA, URL, make_settings, running

DEADLINE = 60.0  # no test here waits longer for a condition (it fails instead)


class Gauge:
    """How many are inside at once, and the most seen."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def enter(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def leave(self) -> None:
        self.now -= 1


async def until(condition, deadline: float = DEADLINE) -> bool:
    """Wait until `condition()` holds; False when it did not within `deadline` s."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.01)
    return True


class GatedModel(ScriptedChatModel):
    """A scripted model whose calls may wait (`hold(messages) -> awaitable`) while counted."""

    hold: Any = None
    gauge: Any = Field(default_factory=Gauge)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: Any = None, **kwargs: Any) -> ChatResult:
        self.gauge.enter()
        try:
            if self.hold is not None:
                await self.hold(messages)
            return ChatResult(generations=[ChatGeneration(message=self.policy(messages))])
        finally:
            self.gauge.leave()


def read_then_answer(messages: list[BaseMessage]) -> AIMessage:
    _, human, since = current_turn(messages)
    results = [m for m in since if isinstance(m, ToolMessage)]
    if not results and URL.findall(str(human.content)):
        return tool_call("read_page", url=URL.findall(str(human.content))[0])
    return AIMessage(content="answered: " + str(results[-1].content)[:3000] if results else "answered")


def answering_call(messages: list[BaseMessage]) -> bool:
    return any(isinstance(m, ToolMessage) for m in current_turn(messages)[2])


def test_a_limit_is_at_least_one():
    try:
        Limit("renders", 0)
    except ValueError as exc:
        assert "at least 1" in str(exc)
    else:
        raise AssertionError("a limit of 0 was accepted")


async def test_a_limit_admits_its_size_and_gives_places_back_on_cancel():
    limit = Limit("things", 2)
    inside = Gauge()
    release = asyncio.Event()

    async def user() -> None:
        async with limit.hold():
            inside.enter()
            try:
                await release.wait()
            finally:
                inside.leave()

    tasks = [asyncio.create_task(user()) for _ in range(5)]
    assert await until(lambda: limit.in_use == 2 and limit.waiting == 3)
    tasks[0].cancel()  # a holder cancelled: its place goes to a waiter
    tasks[4].cancel()  # a waiter cancelled: it leaves the line
    assert await until(lambda: limit.in_use == 2 and limit.waiting == 1)
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert inside.most == 2 and limit.peak == 2 and limit.in_use == 0 and limit.waiting == 0


async def test_renders_stay_within_their_limit_while_runs_wait_for_the_model(tmp_path):
    """Six questions about six pages that need the browser, two renders allowed: every page is
    read while the runs that have read theirs wait for the model, all six at once (a run that
    held its render while waiting would leave the others unread: the gate would never open)."""
    questions = 6
    async with ReplicaServer(ReplicaOptions(extra_routes=bench_routes())) as site:
        settings = make_settings(tmp_path, site.url, zennbot_max_renders=2, zennbot_user_rate_limit=1000,
                                 zennbot_thread_rate_limit=1000)
        model = GatedModel(policy=read_then_answer)
        renders = Gauge()
        all_waiting = asyncio.Event()

        async def hold(messages: list[BaseMessage]) -> None:
            if answering_call(messages):
                if model.gauge.now == questions:
                    all_waiting.set()
                async with asyncio.timeout(DEADLINE):
                    await all_waiting.wait()

        model.hold = hold
        async with running(settings, model=model) as (runtime, _):
            browser = runtime.browsing.browser
            real_read = browser._read  # noqa: SLF001

            async def counted_read(*args, **kwargs):
                renders.enter()
                try:
                    return await real_read(*args, **kwargs)
                finally:
                    renders.leave()

            browser._read = counted_read  # noqa: SLF001
            replies = await asyncio.gather(*(
                runtime.service.handle(f"limits:{n}", f"user{n}", f"{site.url}/bench/drawn?page={n} 何のページ？")
                for n in range(questions)))
            peak = browser.renders.peak
    assert all(r.ok for r in replies), [r.text for r in replies]
    assert all("Drawn paragraph 11" in r.text for r in replies), [r.text[:300] for r in replies]
    assert all_waiting.is_set()  # all six waited for the model at one moment, holding no render
    assert renders.most == 2 and peak == 2  # never more than the setting, and the setting was used


async def test_model_calls_stay_within_their_limit(tmp_path):
    questions = 6
    async with ReplicaServer() as site:
        settings = make_settings(tmp_path, site.url, zennbot_max_model_calls=2, zennbot_user_rate_limit=1000,
                                 zennbot_thread_rate_limit=1000)
        model = GatedModel(policy=read_then_answer)
        calls = {"done": 0}

        async def hold(messages: list[BaseMessage]) -> None:
            # each call waits for a second one to be inside too (or for the last call to come)
            await until(lambda: model.gauge.now >= 2 or calls["done"] == questions - 1)
            await asyncio.sleep(0)
            calls["done"] += 1

        model.hold = hold
        async with running(settings, model=model) as (runtime, _):
            replies = await asyncio.gather(*(
                runtime.service.handle(f"calls:{n}", f"user{n}", f"質問 {n} です") for n in range(questions)))
            peak = runtime.agent.model_calls.peak
    assert all(r.ok for r in replies), [r.text for r in replies]
    assert model.gauge.most == 2 and peak == 2


async def test_fetches_of_server_html_stay_within_their_limit(tmp_path):
    in_flight = Gauge()
    article = "".join(f"<p>Sentence {n} of an article the server sends whole, with enough words in it.</p>"
                      for n in range(40))

    async def slow_article(request: web.Request) -> web.Response:
        in_flight.enter()
        try:
            # wait for a second fetch to arrive (or give up after a while): the bound is reached
            await until(lambda: in_flight.now >= 2, deadline=5.0)
            return web.Response(text=f"<html><head><title>Article</title></head><body><article>{article}"
                                     f"</article></body></html>", content_type="text/html")
        finally:
            in_flight.leave()

    async with ReplicaServer(ReplicaOptions(extra_routes=[web.get("/slow/{n}", slow_article)])) as site:
        browsing = await open_browsing(make_settings(tmp_path, site.url, zennbot_max_fetches=2), TRUSTED_REPLICA)
        try:
            pages = await asyncio.gather(*(browsing.reader.read(f"{site.url}/slow/{n}") for n in range(6)))
            peak = browsing.reader.fetches.peak
        finally:
            await browsing.close()
    assert all(p.source == "server-html" and "Sentence 39" in p.text for p in pages)
    assert in_flight.most == 2 and peak == 2
