"""Stop at every moment: a Stop (pressed once or twice) at each stage of a run ends it with
exactly one `Done`, leaves nothing running, and charges what the model was asked for. The real
service, store, browser and Gemini client, against the replica and the Gemini stub."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage

from adapters.discord import buttons
from bench.gemini_stub import GeminiStub
from bench.replica import ReplicaOptions, ReplicaServer
from bench.scripted_model import current_turn, tool_call
from bot.messages import AnswerDelta, Ask, Done, Progress, Started
from bot.runtime import model_from, open_runtime
from bot.stats import collect, format_stats
from tests.fakes.discord import BOT, BOT_ID, CHANNEL_ID, FakeDiscord
from tests.fakes.slack import MockSlackApi, event_body, eventually
from tests.fakes.web import CountingServer, hostile_routes
from tests.helpers import TRUSTED_REPLICA, make_settings, query_rows
from tests.test_discord import ALICE, discord_bot
from tests.test_discord_streaming import buttons_of, stop_id, the_thread
from tests.test_slack import mention
from tests.test_slack_streaming import THREAD, slack_bot
from tests.test_streaming import ANSWER

LONG = ANSWER * 3
SLOW_PAGE = "遅いページ"  # a question whose page never loads


def reading(zenn_url: str):
    """Reads a page (one that never loads for a question with `SLOW_PAGE`), then answers `LONG`."""
    def policy(messages):
        _, human, since = current_turn(messages)
        if not since:
            slow = SLOW_PAGE in str(human.content)
            return tool_call("read_page", url=zenn_url + ("/hostile/never-loads" if slow else "/asap"))
        return AIMessage(content=LONG)
    return policy


class BlockingUsage:
    """The store's `record_usage`, held until `release` is set (the moment a Stop must not break)."""

    def __init__(self, store) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self._real = store.record_usage
        store.record_usage = self._record

    async def _record(self, *args, **kwargs) -> None:
        self.entered.set()
        await self.release.wait()
        await self._real(*args, **kwargs)


async def usage_rows(settings, run_id: str) -> list[tuple]:
    return await query_rows(settings, "SELECT model, input_tokens, output_tokens FROM run_usage WHERE run_id = ? "
                                      "ORDER BY model", (run_id,))


async def budget_row(settings, run_id: str) -> tuple | None:
    rows = await query_rows(settings, "SELECT tokens, settled FROM token_budget WHERE run_id = ?", (run_id,))
    return rows[0] if rows else None


async def _press(service, run_id: str, times: int) -> None:
    for _ in range(times):
        assert service.cancel(run_id)  # acknowledged every time, acted on once


def _pressing_moment(stage: str, event) -> bool:
    return ((stage == "before" and isinstance(event, Started))
            or (stage == "queued" and isinstance(event, Progress) and "previous message" in event.text)
            or (stage == "tool" and isinstance(event, Progress) and "never-loads" in event.text)
            or (stage == "stream" and isinstance(event, AnswerDelta)))


@pytest.mark.parametrize("presses", [1, 2])
@pytest.mark.parametrize("stage", ["before", "queued", "tool", "stream", "usage"])
async def test_stop_at_every_moment_ends_once_and_pays(tmp_path, stage, presses):
    async with CountingServer() as private, \
            ReplicaServer(ReplicaOptions(extra_routes=hostile_routes(private.url))) as zenn, \
            GeminiStub(policy=reading(zenn.url), chunk_chars=10, chunk_delay=0.05) as gemini:
        settings = make_settings(tmp_path, zenn.url, google_api_key="k", google_gemini_base_url=gemini.url,
                                 zennbot_page_timeout=60.0, zennbot_daily_token_budget=10**9,
                                 zennbot_run_token_estimate=1_000)
        async with await open_runtime(settings, model=model_from(settings), policy=TRUSTED_REPLICA) as rt:
            service = rt.service
            blocker = BlockingUsage(service.store) if stage == "usage" else None
            earlier = None
            if stage == "queued":  # the thread is busy with a run reading a page that never loads
                earlier = service.stream(Ask("console:s", "u", f"{zenn.url}/x {SLOW_PAGE}"))
                earlier_run = (await anext(earlier)).run_id
                assert "never-loads" in (await anext(earlier)).text
            question = f"{zenn.url}/asap {SLOW_PAGE if stage == 'tool' else '一番人気は？'}"
            events, presser = [], None
            async with asyncio.timeout(120):  # a hang guard, not a measurement
                async for event in service.stream(Ask("console:s", "u", question)):
                    events.append(event)
                    if isinstance(event, Started):
                        run_id = event.run_id
                        if blocker is not None:
                            async def press_while_paying(run_id=run_id):
                                await blocker.entered.wait()
                                await _press(service, run_id, presses)
                                blocker.release.set()
                            presser = asyncio.create_task(press_while_paying())
                    if _pressing_moment(stage, event) and len([e for e in events if _pressing_moment(stage, e)]) == 1:
                        await _press(service, run_id, presses)
                if presser is not None:
                    await presser
                if earlier is not None:
                    await _press(service, earlier_run, 1)
                    assert [isinstance(e, Done) async for e in earlier] == [True]
            assert service.run_owner(run_id) is None and not service.cancel(run_id)  # over: nothing to stop
            calls = list(gemini.calls)
            shown = format_stats(await collect(service.store))

    assert [type(e) for e in events].count(Done) == 1 and isinstance(events[-1], Done)
    reply = events[-1].reply
    assert reply.run_id == run_id
    rows = await usage_rows(settings, run_id)
    if stage == "usage":  # too late to stop: the answer stands, and is paid for
        assert reply.ok and not reply.stopped and reply.text == LONG
        reported = [c for c in calls if SLOW_PAGE not in str(c)]
        assert sum(r[1] + r[2] for r in rows) == sum(c.prompt_tokens + c.output_tokens for c in reported)
        assert not any(r[0].endswith("(estimated)") for r in rows)
    else:
        assert reply.stopped and not reply.ok and reply.text.startswith("Stopped")
    if stage in ("before", "queued"):
        assert rows == []  # the model was never asked
    elif stage == "tool":  # the model's tool call was complete, and reported
        assert rows and not any(r[0].endswith("(estimated)") for r in rows) and all(r[1] > 0 for r in rows)
    elif stage == "stream":  # the answer was cut off: what it reported so far, or an estimate
        assert any(r[0].endswith("(estimated)") and r[1] > 0 for r in rows)
        assert "(estimated)" in shown.split("Tokens per model")[1]  # and `zennbot stats` says so
    tokens, settled = await budget_row(settings, run_id)
    assert settled == 1 and tokens == sum(r[1] + r[2] for r in rows)


# --- The platforms show the end: Discord (fake Discord) and Slack (mock Slack Web API) -----------


@pytest.mark.parametrize("moment", ["stream", "usage"])
async def test_discord_stop_pressed_twice_leaves_no_stop_button_and_no_typing(tmp_path, moment):
    async with ReplicaServer() as zenn, FakeDiscord() as fake, GeminiStub(
            policy=reading(zenn.url), chunk_chars=10, chunk_delay=0.1) as gemini:
        async with discord_bot(tmp_path, zenn, fake, gemini=gemini) as adapter:
            blocker = BlockingUsage(adapter.service.store) if moment == "usage" else None
            await fake.dispatch("MESSAGE_CREATE", fake.message(
                CHANNEL_ID, ALICE, f"<@{BOT_ID}> {zenn.url}/asap 一番人気は？", [BOT]))
            if blocker is None:  # mid-stream: the answer is showing, with its Stop button
                await eventually(lambda: fake.threads and any(stop_id(m) and m["content"].startswith(ANSWER[:10])
                                                              for m in fake.thread_messages(the_thread(fake))))
            else:
                await blocker.entered.wait()
            thread = the_thread(fake)
            running = next(m for m in fake.thread_messages(thread) if stop_id(m))
            run_id = stop_id(running).rsplit(":", 1)[1]
            for _ in range(2):
                await fake.dispatch("INTERACTION_CREATE", fake.button_press(running, stop_id(running), ALICE))
            await eventually(lambda: len(fake.callbacks()) == 2)
            if blocker is not None:
                blocker.release.set()
            await eventually(lambda: adapter.answering == 0)  # the typing indicator ended with the answer
            final = fake.thread_messages(thread)
            rows = await usage_rows(adapter.settings, run_id)
    assert [c["type"] for c in fake.callbacks()] == [6, 6]  # both presses acknowledged, no error shown
    assert not any(stop_id(m) for m in final)  # no Stop button left anywhere
    assert rows and all(r[1] > 0 for r in rows)  # paid for
    if moment == "usage":  # too late to stop: the answer stands, with its feedback buttons
        assert len(final) == 1 and final[0]["content"].startswith(LONG[:20])
        assert buttons_of(final[0]) == [f"zennbot:fb:good:{thread}", f"zennbot:fb:bad:{thread}"]
    else:
        assert [m["content"][:2] for m in final] == ["⏹️"] and final[0]["components"] == []
        assert any(r[0].endswith("(estimated)") for r in rows)
    assert buttons.NOT_RUNNING not in str(fake.callbacks())


def reactions(slack: MockSlackApi) -> set[str]:
    """The reactions left on the asker's message, from the calls made."""
    left: set[str] = set()
    for name, args in slack.calls:
        if name == "reactions.add":
            left.add(args["name"])
        elif name == "reactions.remove":
            left.discard(args["name"])
    return left


@pytest.mark.parametrize("moment", ["stream", "usage"])
async def test_slack_stopped_run_clears_the_status_and_leaves_final_reactions(tmp_path, moment):
    async with ReplicaServer() as zenn, MockSlackApi() as slack, GeminiStub(
            policy=reading(zenn.url), chunk_chars=10, chunk_delay=0.1) as gemini:
        async with slack_bot(tmp_path, zenn, slack, gemini) as (post, runtime):
            service = runtime.service
            blocker = BlockingUsage(service.store) if moment == "usage" else None
            assert await post(event_body(mention(f"{zenn.url}/asap 一番人気は？", THREAD), "Ev1")) == 200
            if blocker is None:
                await eventually(lambda: slack.named("chat.startStream"))
            else:
                await blocker.entered.wait()
            [run_id] = list(service._active)  # noqa: SLF001  (Slack has no Stop button: the service's cancel)
            for _ in range(5):
                assert service.cancel(run_id)
            if blocker is not None:
                blocker.release.set()
            await eventually(lambda: len(slack.named("reactions.add")) == 2)
            rows = await usage_rows(runtime.browsing.settings, run_id)
            [message] = slack.thread("C1", THREAD)
    assert not message.streaming
    assert rows and all(r[1] > 0 for r in rows)
    if moment == "usage":
        assert message.text.startswith(LONG[:20]) and reactions(slack) == {"white_check_mark"}
    else:
        assert message.text.startswith(":warning: Stopped") and reactions(slack) == {"warning"}
        assert slack.named("assistant.threads.setStatus")[-1]["status"] == ""  # cleared
