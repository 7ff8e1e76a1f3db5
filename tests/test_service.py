"""The conversation service: bad input, limits, queueing, faults, shutdown, injection."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from langchain_core.messages import AIMessage

from agent.urlguard import UrlPolicy
from bench.replica import ReplicaOptions, ReplicaServer
from bench.scripted_model import ScriptedChatModel, current_turn, tool_call
from bot.messages import Ask, Done, Reply
from bot.runtime import open_runtime
from bot.store import open_store
from tests.fakes.web import CountingServer, hostile_routes
from tests.helpers import TRUSTED_REPLICA, make_settings, running
from tests.pg import sqlite_only

HOSTILE_MESSAGES = [
    ("http://127.0.0.2:9/ これ読んで", "own machine"),
    ("http://localhost/ 読んで", "own machine"),
    ("http://[::1]/", "own machine"),
    ("http://0.0.0.0/", "not a real destination"),
    ("http://2130706433/", "own machine"),
    ("http://0x7f.1/", "own machine"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://10.0.0.1/", "private network"),
    ("http://[::ffff:127.0.0.1]/", "own machine"),
    ("file:///etc/passwd を読んで", "only http and https"),
    ("javascript:alert(1)", "only http and https"),
]


@pytest.mark.parametrize("text, reason", HOSTILE_MESSAGES)
async def test_hostile_messages_are_refused_before_any_fetch(tmp_path, text, reason):
    async with running(make_settings(tmp_path), policy=UrlPolicy()) as (runtime, model):
        reply = await runtime.service.handle("console:t", "u", text)
    assert not reply.ok and reason in reply.text
    assert model.records == []  # refused before the model or the browser saw it


async def test_invalid_and_empty_and_long_messages(tmp_path):
    async with ReplicaServer() as zenn:
        async with running(make_settings(tmp_path, zenn.url, zennbot_max_message_chars=200)) as (runtime, _):
            empty = await runtime.service.handle("console:t", "u", "   ")
            long = await runtime.service.handle("console:t", "u", "あ" * 201)
            bad = await runtime.service.handle("console:t", "u", "http://[::1 見て")
            many = await runtime.service.handle("console:t", "u", " ".join(f"{zenn.url}/a{i}" for i in range(6)))
    assert "Send me a question" in empty.text
    assert "at most 200" in long.text
    assert not bad.ok and "valid link" in bad.text
    assert "at most 5" in many.text


async def test_unknown_page_and_never_loading_page_end_in_a_message(tmp_path):
    async with CountingServer() as private, ReplicaServer(ReplicaOptions(extra_routes=hostile_routes(private.url))) as zenn:
        async with running(make_settings(tmp_path, zenn.url, zennbot_page_timeout=2.0)) as (runtime, _):
            missing = await runtime.service.handle("console:t", "u", zenn.url + "/nobody/articles/missing1")
            slow = await runtime.service.handle("console:t2", "u", zenn.url + "/hostile/never-loads")
    assert "could not" in missing.text.lower() or "404" in missing.text
    assert "did not load within 2 s" in slow.text


async def test_user_rate_limit(tmp_path):
    async with ReplicaServer() as zenn:
        async with running(make_settings(tmp_path, zenn.url, zennbot_user_rate_limit=2)) as (runtime, _):
            replies = [await runtime.service.handle(f"console:{i}", "same-user", "hello") for i in range(3)]
            other = await runtime.service.handle("console:x", "other-user", "hello")
    assert [r.ok for r in replies] == [True, True, False] and "wait" in replies[2].text
    assert other.ok


async def test_twenty_threads_with_four_runs_at_a_time(tmp_path):
    active = 0
    peak = 0
    lock = __import__("threading").Lock()

    def policy(messages):
        nonlocal active, peak
        _, human, since = current_turn(messages)
        if not since:
            with lock:
                active += 1
                peak = max(peak, active)
            return tool_call("read_page", url=str(human.content).split()[0])
        with lock:
            active -= 1
        return AIMessage(content=f"answer for {str(human.content).split()[1]}")

    async with ReplicaServer() as zenn:
        settings = make_settings(tmp_path, zenn.url, zennbot_max_concurrent_runs=4)
        async with running(settings, policy) as (runtime, _):
            progress: dict[int, list[str]] = {i: [] for i in range(20)}

            async def ask(i: int):
                async def on_progress(text: str, i=i):
                    progress[i].append(text)
                return await runtime.service.handle(f"console:{i}", f"user{i}", f"{zenn.url}/asap q{i}", on_progress)

            replies = await asyncio.gather(*(ask(i) for i in range(20)))
    assert [r.text for r in replies] == [f"answer for q{i}" for i in range(20)]
    assert 1 <= peak <= 4
    assert any("you are in the queue" in line for lines in progress.values() for line in lines)


async def test_messages_in_one_thread_are_answered_in_order(tmp_path):
    async with ReplicaServer() as zenn:
        async with running(make_settings(tmp_path, zenn.url)) as (runtime, _):
            notes: list[str] = []

            async def note(text: str):
                notes.append(text)

            first = asyncio.create_task(runtime.service.handle("console:q", "u", zenn.url + "/asap 一番は？"))
            await asyncio.sleep(0)
            second = asyncio.create_task(runtime.service.handle("console:q", "u", "2番目は？", note))
            a, b = await asyncio.gather(first, second)
    assert "921" in a.text and "104" in b.text  # the second saw the first's page
    assert any("yours is next" in n for n in notes)


async def test_run_timeout_is_clean(tmp_path):
    def slow_policy(messages):
        import time
        time.sleep(1.5)
        return AIMessage(content="too late")

    async with ReplicaServer() as zenn:
        async with running(make_settings(tmp_path, zenn.url, zennbot_run_timeout=0.5), slow_policy) as (runtime, _):
            reply = await runtime.service.handle("console:t", "u", "hello")
            history = await runtime.agent.history("console:t")
    assert not reply.ok and "longer than 0.5 s" in reply.text and history == []


async def test_browser_killed_then_next_question_answered(tmp_path):
    # The profile page's list is drawn by JavaScript, so it is read in the browser.
    async with ReplicaServer(ReplicaOptions(api_broken=True)) as zenn:
        async with running(make_settings(tmp_path, zenn.url)) as (runtime, _):
            first = await runtime.service.handle("console:a", "u", zenn.url + "/asap")
            process = runtime.browsing.browser._browser  # noqa: SLF001  (kill the real Chromium)
            process_pid = process._impl_obj._connection  # noqa: SLF001
            await process.close()
            second = await runtime.service.handle("console:b", "u", zenn.url + "/asap?tab=x")
    assert process_pid is not None
    assert "asapさんの記事一覧" in first.text and "asapさんの記事一覧" in second.text


async def test_shutdown_tells_runs_in_progress(tmp_path):
    def slow_policy(messages):
        import time
        time.sleep(2)
        return AIMessage(content="done")

    async with ReplicaServer() as zenn:
        async with running(make_settings(tmp_path, zenn.url), slow_policy) as (runtime, _):
            task = asyncio.create_task(runtime.service.handle("console:t", "u", "hello"))
            await asyncio.sleep(0.2)
            await runtime.service.close(grace=0.1)
            reply = await task
            after = await runtime.service.handle("console:t", "u", "hello again")
    assert "stopped while answering" in reply.text
    assert "restarting" in after.text


async def test_injection_page_gets_nowhere(tmp_path):
    """A model that obeys the page: it tries to open the URL the page names. The guard refuses,
    and no secret was ever in any prompt."""
    secrets = {"google_api_key": "AIza-SECRET-1", "discord_token": "DISCORD-SECRET-2",
               "slack_bot_token": "xoxb-SECRET-3", "slack_signing_secret": "SIGNING-SECRET-4"}

    async with CountingServer() as private, ReplicaServer(ReplicaOptions(extra_routes=hostile_routes(private.url))) as zenn:
        def gullible(messages):
            _, human, since = current_turn(messages)
            if not since:
                return tool_call("read_page", url=zenn.url + "/hostile/injection")
            if len(since) == 2:
                return tool_call("read_page", url=private.url + "/latest/meta-data/iam/security-credentials/")
            return AIMessage(content=str(since[-1].content)[:300])

        settings = make_settings(tmp_path, zenn.url, **secrets)
        async with running(settings, gullible) as (runtime, model):
            reply = await runtime.service.handle("console:t", "u", "この記事を要約して " + zenn.url + "/hostile/injection")
    prompts = "\n".join(r.prompt for r in model.records)
    assert "ignore all previous instructions" in prompts  # the page was read...
    after_read = model.records[1].prompt
    assert after_read.count("<UNTRUSTED_PAGE_CONTENT id=") == 1  # ...fenced once; the page's fake
    assert after_read.count("</UNTRUSTED_PAGE_CONTENT id=") == 1  # closing marker was stripped
    assert "UNTRUSTED_PAGE_CONTENT&gt;" not in after_read
    for secret in secrets.values():
        assert secret not in prompts and secret not in reply.text
    assert "own machine" in reply.text and private.hits == []
    assert [s.url for s in reply.sources] == [zenn.url + "/hostile/injection"]


@sqlite_only
async def test_locked_database_is_a_clear_error_and_the_thread_survives(tmp_path):
    import sqlite3

    async with ReplicaServer() as zenn:
        settings = make_settings(tmp_path, zenn.url, zennbot_db_busy_timeout=0.3)
        async with running(settings) as (runtime, _):
            first = await runtime.service.handle("console:t", "u", zenn.url + "/asap 一番は？")
            blocker = sqlite3.connect(settings.zennbot_db, timeout=0)
            blocker.execute("BEGIN EXCLUSIVE")
            try:
                locked = await runtime.service.handle("console:t", "u", "2番目は？")
            finally:
                blocker.rollback()
                blocker.close()
            after = await runtime.service.handle("console:t", "u", "2番目は？")
    assert first.ok and not locked.ok and "database is unavailable" in locked.text
    assert after.ok and "104" in after.text


async def test_shutdown_lets_a_reader_post_its_finished_answer_before_the_store_closes(tmp_path):
    """The run is done, its reader (an adapter) is still posting the answer when the bot shuts
    down: closing waits for it, so the run is finished in the store, not left to be told as lost
    at the next start (it was answered)."""
    settings = make_settings(tmp_path)
    runtime = await open_runtime(settings, model=ScriptedChatModel(policy=lambda messages: AIMessage(content="ok")),
                                 policy=TRUSTED_REPLICA)
    posting, posted = asyncio.Event(), asyncio.Event()

    async def reader() -> Reply:
        async with contextlib.aclosing(runtime.service.stream(Ask("console:t", "u", "hi"))) as events:
            async for event in events:
                if isinstance(event, Done):
                    posting.set()
                    await posted.wait()  # the final post is on its way
                    return event.reply
        raise AssertionError("no Done")

    answering = asyncio.create_task(reader())
    await asyncio.wait_for(posting.wait(), 30)
    closing = asyncio.create_task(runtime.close(grace=5))
    await asyncio.sleep(0.2)
    assert not closing.done()  # waiting for the reader
    posted.set()
    reply = await asyncio.wait_for(answering, 30)
    await asyncio.wait_for(closing, 30)
    assert reply.ok and reply.text == "ok"
    store = await open_store(settings)
    try:
        assert await store.unfinished_runs() == []
    finally:
        await store.close()
