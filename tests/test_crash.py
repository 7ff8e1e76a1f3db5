"""A thread survives any crash: the real `zennbot` process is SIGKILLed at each stage of a turn
(during a page read, after the tool result, while the model answers), then restarted on the same
database. The Gemini stub is the strict one (400 for a function call without its response, as
Gemini does), so a half turn left in the history would fail every later message."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from langchain_core.messages import HumanMessage, ToolMessage

from bench.gemini_stub import GeminiStub, call_reply, messages_from, text_reply
from bench.replica import ReplicaOptions, ReplicaServer
from tests.fakes.discord import BOT, BOT_ID, CHANNEL_ID, FakeDiscord, user
from tests.fakes.slack import MockSlackApi, event_body, eventually, signed_headers
from tests.forkserver import start_zennbot
from tests.helpers import count_rows, make_settings, reported_port, store_env
from tests.pg import both_stores, postgres_elsewhere, sqlite_only
from tests.test_discord_streaming import stop_id

pytestmark = both_stores  # the processes share the store: SQLite's file, or PostgreSQL

URL = re.compile(r"https?://\S+")


class Victim:
    """The bot process under test, and the moment it is to die."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.killed = asyncio.Event()

    def kill(self) -> None:
        if self.pid is not None and not self.killed.is_set():
            os.kill(self.pid, signal.SIGKILL)
            self.killed.set()


def crash_routes(victim: Victim) -> list[web.RouteDef]:
    async def page_that_kills(request: web.Request) -> web.Response:
        victim.kill()  # the bot dies while it waits for this page
        return web.Response(text="<html><title>never read</title></html>", content_type="text/html")

    async def article(request: web.Request) -> web.Response:  # text enough to be read without the browser
        return web.Response(text="<html><head><title>Plain page</title></head><body><main><h1>Plain page</h1>"
                                 "<p>" + "A page about SQLite durability. " * 30 + "</p></main></body></html>",
                            content_type="text/html")

    return [web.get("/crashy/page", page_that_kills), web.get("/plain/page", article)]


STAGES = [
    ("during the page read", "{zenn}/crashy/page これを読んで"),
    ("after the tool result", "{zenn}/plain/page KILL-AFTER-READ 要約して"),
    ("while the model answers", "KILL-ANSWER こんにちは"),
]
# Slack and Discord show the answer as it is written: the chat fake kills the bot once the half
# answer is in the thread (its first appendStream on Slack, its first edit with Stop on Discord).
HALF = "HALF-ANSWER"
DRAFT = "DRAFT-TEXT"  # written before a tool call, then withdrawn (AnswerReset)
# On a chat platform the store's part (the run's record, its rollback) is the console's, tested on
# both stores at every stage above; the platforms' own part runs on PostgreSQL once, where it is richest.
CHAT_STAGES = [*(pytest.param(*stage, marks=postgres_elsewhere) for stage in STAGES),
               ("while the answer is streamed", "KILL-STREAM 長く答えて"),
               pytest.param("after a streamed draft was withdrawn", "{zenn}/crashy/page KILL-DRAFT 読んで",
                            marks=postgres_elsewhere)]


def model(victim: Victim):
    """Reads the URL of the message, then answers with what it read and how many questions the
    thread holds; "KILL-AFTER-READ" dies once the page is read, "KILL-ANSWER" while answering."""
    def respond(body: dict, n: int) -> tuple[int, dict]:
        messages = messages_from(body)
        humans = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)]
        question = str(messages[humans[-1]].content)
        since = messages[humans[-1] + 1:]
        urls = URL.findall(question)
        if "KILL-ANSWER" in question:
            victim.kill()
            return 200, text_reply("(never delivered)")
        if "KILL-STREAM" in question:
            return 200, text_reply(f"{HALF} " + "この答えは書いている途中で失われます。" * 25)
        if urls and not since:
            call = call_reply("read_page", {"url": urls[0]})
            if "KILL-DRAFT" in question:  # a long preamble first, then the call (the page kills)
                call["candidates"][0]["content"]["parts"].insert(0, {"text": f"{DRAFT} " + "まず読みます。" * 40})
            return 200, call
        if "KILL-AFTER-READ" in question:
            victim.kill()
        read = [m for m in since if isinstance(m, ToolMessage)]
        seen = "page read" if read and "Plain page" in str(read[-1].content) else "no page"
        return 200, text_reply(f"answer #{len(humans)} ({seen}) to: {question[:40]}")
    return respond


async def zennbot(env: dict, *args: str, victim: Victim | None = None, stdin: str = "") -> tuple[int, str, str]:
    process = await start_zennbot(*args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                  stderr=asyncio.subprocess.PIPE, env={**os.environ, **env})
    if victim is not None:
        victim.pid = process.pid
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 120)
    return process.returncode, out.decode(), err.decode()


def bot_env(tmp_path, zenn: ReplicaServer, gemini: GeminiStub) -> dict:
    return store_env(tmp_path) | {"ZENN_BASE_URL": zenn.url, "GOOGLE_API_KEY": "k",
            "GOOGLE_GEMINI_BASE_URL": gemini.url, "ZENNBOT_ALLOW_PRIVATE_NETWORK": "true",
            "ZENNBOT_LLM_RETRY_INITIAL_DELAY": "0.01"}


@pytest.mark.parametrize("stage, question", STAGES)
async def test_console_thread_survives_sigkill(tmp_path, stage, question):
    victim = Victim()
    async with ReplicaServer(ReplicaOptions(extra_routes=crash_routes(victim))) as zenn, \
            GeminiStub(model(victim)) as gemini:
        env = bot_env(tmp_path, zenn, gemini)
        lost = question.format(zenn=zenn.url)
        code, out, err = await zennbot(env, "chat", "--thread", "t", victim=victim,
                                       stdin=f"{zenn.url}/plain/page 最初の質問\n{lost}\n")
        assert victim.killed.is_set() and code == -signal.SIGKILL, (stage, out, err)
        assert "answer #1 (page read)" in out and "answer #2" not in out, err
        assert await _unfinished_runs(tmp_path) == 1

        code, out, err = await zennbot(env, "ask", "--thread", "t", "次の質問")
    assert code == 0, err
    assert "answer #2 (no page) to: 次の質問" in out  # the lost turn is not in the history
    assert f"The bot stopped while answering “{' '.join(lost.split())[:79]}" in err  # the asker is told
    assert "Traceback" not in err
    last_prompt = json.dumps(gemini.calls[-1].body, ensure_ascii=False)
    assert "最初の質問" in last_prompt and lost.split()[-1] not in last_prompt  # nothing of the lost turn
    assert last_prompt.count("SQLite durability") <= 1  # no uncompacted page riding along
    assert await _unfinished_runs(tmp_path) == 0


async def _unfinished_runs(tmp_path) -> int:
    return await count_rows(make_settings(tmp_path, zennbot_db=str(tmp_path / "z.db")), "runs")


@asynccontextmanager
async def serving(tmp_path, env: dict, victim: Victim | None = None):
    """`zennbot run` in the background (its log in a file, so a full pipe never blocks it);
    stopped with SIGTERM at the end unless it died."""
    log_path = tmp_path / f"run-{len(list(tmp_path.glob('run-*.log')))}.log"
    log_file = open(log_path, "w+b")  # noqa: SIM115
    process = await start_zennbot("run", stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                  env={**os.environ, **env})
    process.log_path = log_path
    if victim is not None:
        victim.pid = process.pid
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 60)
        log_file.seek(0)
        process.log = log_file.read().decode()
        log_file.close()


async def slack_post(port: int, body: str) -> int:
    """Post a signed event, waiting for the bot's HTTP server to come up."""
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            try:
                async with http.post(f"http://127.0.0.1:{port}/slack/events", data=body,
                                     headers=signed_headers("s", body, "application/json")) as response:
                    return response.status
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    raise AssertionError("the Slack endpoint never came up")


def slow_gemini(victim: Victim) -> GeminiStub:
    """The model streaming its text in small pieces, so that an answer takes a few seconds."""
    return GeminiStub(model(victim), chunk_chars=20, chunk_delay=0.25)


def assert_lost_turn_not_sent(gemini: GeminiStub, lost: str) -> None:
    """Nothing of the lost turn reaches the model with the thread's next question."""
    last_prompt = json.dumps(gemini.calls[-1].body, ensure_ascii=False)
    assert "最初の質問" in last_prompt and "次の質問" in last_prompt
    assert lost.split()[-1] not in last_prompt and HALF not in last_prompt and DRAFT not in last_prompt
    assert last_prompt.count("SQLite durability") <= 1  # no uncompacted page riding along


class DyingSlack(MockSlackApi):
    """Slack, where the bot dies as it appends to the half answer it streams."""

    def __init__(self, victim: Victim) -> None:
        super().__init__()
        self.victim = victim

    def _chat_appendStream(self, args: dict) -> web.Response:
        streamed = self.messages.get((args.get("channel", ""), args.get("ts", "")))
        if streamed is not None and HALF in streamed.text:
            self.victim.kill()
        return super()._chat_appendStream(args)


@pytest.mark.parametrize("stage, question", CHAT_STAGES)
async def test_slack_thread_survives_sigkill(tmp_path, stage, question):
    from tests.test_slack import answers, mention, message

    victim = Victim()
    async with ReplicaServer(ReplicaOptions(extra_routes=crash_routes(victim))) as zenn, \
            slow_gemini(victim) as gemini, DyingSlack(victim) as slack:
        env = bot_env(tmp_path, zenn, gemini) | {
            "SLACK_BOT_TOKEN": "xoxb-t", "SLACK_SIGNING_SECRET": "s", "SLACK_PORT": "0",
            "SLACK_API_URL": slack.url + "/api/"}
        lost = question.format(zenn=zenn.url)
        async with serving(tmp_path, env, victim) as process:
            port = await reported_port(process.log_path)
            assert await slack_post(port, event_body(mention(f"{zenn.url}/plain/page 最初の質問", "10.1"), "Ev1")) == 200
            await eventually(lambda: len(answers(slack)) == 1, 60)
            assert "answer #1 (page read)" in answers(slack)[0]
            first = slack.thread("C1", "10.1")[0]
            before = len(slack.calls)
            await slack_post(port, event_body(message(lost, "10.2", "10.1"), "Ev2"))
            await asyncio.wait_for(process.wait(), 60)
        assert victim.killed.is_set() and await _unfinished_runs(tmp_path) == 1
        lost_calls = slack.calls[before:]
        shown = [a["status"] for name, a in lost_calls if name == "assistant.threads.setStatus"]
        # the lost run showed the loading status, and nothing cleared it (whether its "reading"
        # line went out before the model's next call killed the bot is a race, not asserted)
        assert shown and all(shown)
        half = [m for m in slack.thread("C1", "10.1") if m.ts != first.ts]
        if "KILL-STREAM" in lost:  # the half answer is in the thread, still streaming
            assert len(half) == 1 and half[0].streaming and half[0].text.startswith(HALF)
        elif "KILL-DRAFT" in lost:  # the draft was streamed, then deleted
            assert half == [] and [n for n, _ in lost_calls if n.startswith("chat.")][-1] == "chat.delete"
        else:  # the run died before it wrote anything
            assert half == [] and not [n for n, _ in lost_calls if n.startswith("chat.")]
        assert [n["name"] for n in slack.named("reactions.add")][-1] == "eyes"

        def told() -> list:
            return [m for m in slack.thread("C1", "10.1") if "was lost" in m.text]

        async with serving(tmp_path, env) as process:
            port = await reported_port(process.log_path)
            await eventually(lambda: len(told()) == 1, 60)
            await eventually(lambda: any(r.get("timestamp") == "10.2" and r["name"] == "warning"
                                         for r in slack.named("reactions.add")))
            assert any(r.get("timestamp") == "10.2" and r["name"] == "eyes" for r in slack.named("reactions.remove"))
            statuses = [s for s in slack.named("assistant.threads.setStatus") if s["thread_ts"] == "10.1"]
            assert statuses[-1]["status"] == ""  # the loading status is cleared
            ended = told()[0]
            assert not ended.streaming and f"“{' '.join(lost.split())[:40]}" in ended.text
            if half:  # the half answer became the news, nothing of it is left
                assert ended.ts == half[0].ts
            assert [m.ts for m in slack.thread("C1", "10.1")] == [first.ts, ended.ts]
            assert HALF not in slack.thread_text("C1", "10.1") and DRAFT not in slack.thread_text("C1", "10.1")
            # and the thread goes on
            await slack_post(port, event_body(message("次の質問", "10.3", "10.1"), "Ev3"))
            await eventually(lambda: len(answers(slack)) == 3, 60)
        assert "answer #2 (no page) to: 次の質問" in answers(slack)[2]
        assert [m.text for m in slack.thread("C1", "10.1")][:2] == [first.text, ended.text]
        assert not any(m.streaming for m in slack.messages.values())
        assert process.returncode == 0 and "Traceback" not in process.log
    assert_lost_turn_not_sent(gemini, lost)
    assert await _unfinished_runs(tmp_path) == 0


def discord_env(fake: FakeDiscord) -> dict:
    """What a `zennbot run` needs to serve the fake Discord."""
    return {"DISCORD_TOKEN": "t", "DISCORD_API_BASE_URL": fake.url + "/api/v10",
            "DISCORD_GATEWAY_URL": fake.url.replace("http", "ws") + "/gateway"}


async def discord_connected(fake: FakeDiscord) -> None:
    """The bot identified itself, and has handled the guild it was given."""
    await asyncio.wait_for(fake.identified.wait(), 60)
    await asyncio.sleep(0.5)  # GUILD_CREATE handled


class DyingDiscord(FakeDiscord):
    """Discord, where the bot dies as it edits the half answer into the message it streams."""

    def __init__(self, victim: Victim) -> None:
        super().__init__()
        self.victim = victim

    def _write_message(self, method: str, channel: str, message_id: str, body: dict) -> web.Response:
        if method == "PATCH" and HALF in (body.get("content") or "") and stop_id(body):
            self.victim.kill()
        return super()._write_message(method, channel, message_id, body)


@pytest.mark.parametrize("stage, question", CHAT_STAGES)
async def test_discord_thread_survives_sigkill(tmp_path, stage, question):
    alice = user(7, "alice")
    victim = Victim()
    async with ReplicaServer(ReplicaOptions(extra_routes=crash_routes(victim))) as zenn, \
            slow_gemini(victim) as gemini, DyingDiscord(victim) as fake:
        env = bot_env(tmp_path, zenn, gemini) | discord_env(fake)
        lost = question.format(zenn=zenn.url)

        def said(text: str) -> list[dict]:
            return [m for m in fake.thread_messages(thread) if text in m["content"]]

        async with serving(tmp_path, env, victim) as process:
            await discord_connected(fake)
            await fake.dispatch("MESSAGE_CREATE", fake.message(
                CHANNEL_ID, alice, f"<@{BOT_ID}> {zenn.url}/plain/page 最初の質問", [BOT], mid=5001))
            await eventually(lambda: fake.threads, 60)
            thread = next(iter(fake.threads))
            await eventually(lambda: said("answer #1 (page read)") and not stop_id(said("answer #1")[0]), 60)
            [first] = fake.thread_messages(thread)
            calls_before = len(fake.calls)
            await fake.dispatch("MESSAGE_CREATE", fake.message(int(thread), alice, lost))
            await asyncio.wait_for(process.wait(), 60)
        assert victim.killed.is_set() and await _unfinished_runs(tmp_path) == 1
        fake.identified.clear()
        half = [m for m in fake.thread_messages(thread) if m["id"] != first["id"]]
        if "KILL-STREAM" in lost:  # the half answer is in the thread, under a Stop button
            assert len(half) == 1 and half[0]["content"].startswith(HALF)
        # the run's one message (its progress line or the answer so far), unless it died before
        # its first write (one a second per channel, so the first may still have been waiting)
        assert len(half) <= 1 and all(stop_id(m) for m in half)
        assert [p for m, p, _ in fake.calls[calls_before:] if m == "POST"][0] == f"/channels/{thread}/typing"
        writes_before = len(fake.writes)

        async with serving(tmp_path, env) as process:
            await asyncio.wait_for(fake.identified.wait(), 60)
            await eventually(lambda: said("was lost"), 60)
            [told] = said("was lost")
            assert f"“{' '.join(lost.split())[:40]}" in told["content"]
            if half:  # the message the run was writing now says so, with no Stop button left
                assert told["id"] == half[0]["id"] and told["components"] == [] and told["embeds"] == []
                assert [(w.method, w.message_id) for w in fake.writes[writes_before:]] == [("PATCH", told["id"])]
            else:
                assert [w.method for w in fake.writes[writes_before:]] == ["POST"]
            assert [m["id"] for m in fake.thread_messages(thread)] == [first["id"], told["id"]]
            assert HALF not in told["content"] and DRAFT not in told["content"]
            await fake.dispatch("MESSAGE_CREATE", fake.message(int(thread), alice, "次の質問"))
            await eventually(lambda: said("answer #2 (no page) to: 次の質問")
                             and not stop_id(said("answer #2")[0]), 60)
        assert process.returncode == 0 and "Traceback" not in process.log
        messages = fake.thread_messages(thread)
        assert [m["id"] for m in messages[:2]] == [first["id"], told["id"]] and len(messages) == 3
        assert not any(stop_id(m) for m in messages)
    assert_lost_turn_not_sent(gemini, lost)
    assert await _unfinished_runs(tmp_path) == 0


@sqlite_only  # the service's ordering, whatever the store; it looks into the SQLite file directly
async def test_where_to_tell_the_asker_is_kept_when_set_before_the_run_is_recorded(tmp_path):
    """Discord posts the run's first message as soon as the run is started, which can be before
    the run is recorded (it waits for its turn): where that message is must still reach the
    record, or recovery would leave the message (and its Stop button) behind."""
    from langchain_core.messages import AIMessage

    from bot.messages import Ask, Started
    from tests.helpers import make_settings, running

    settings = make_settings(tmp_path)
    recorded: list[list[tuple]] = []

    def answer_and_look(messages) -> AIMessage:  # while the run works, its record is in the database
        with sqlite3.connect(settings.zennbot_db) as conn:
            recorded.append(conn.execute("SELECT reply_to FROM runs").fetchall())
        return AIMessage(content="ok")

    async with running(settings, answer_and_look) as (runtime, _):
        async for event in runtime.service.stream(Ask("t", "u", "hi", reply_to='{"channel_id": 1}')):
            if isinstance(event, Started):
                await runtime.service.update_reply_to(event.run_id, '{"channel_id": 1, "status_id": 2}')
    assert recorded == [[('{"channel_id": 1, "status_id": 2}',)]]
