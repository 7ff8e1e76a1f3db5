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
import socket
import sys
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from langchain_core.messages import HumanMessage, ToolMessage

from bot.bench.gemini_stub import GeminiStub, call_reply, messages_from, text_reply
from bot.bench.replica import ReplicaOptions, ReplicaServer
from tests.fakes.slack import MockSlackApi, event_body, eventually, signed_headers
from tests.helpers import count_rows, make_settings, store_env

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
        victim.kill()  # the bot dies while its browser waits for this page
        return web.Response(text="<html><title>never read</title></html>", content_type="text/html")

    async def article(request: web.Request) -> web.Response:
        return web.Response(text="<html><head><title>Plain page</title></head><body><main><h1>Plain page</h1>"
                                 "<p>" + "A page about SQLite durability. " * 20 + "</p></main></body></html>",
                            content_type="text/html")

    return [web.get("/crashy/page", page_that_kills), web.get("/plain/page", article)]


STAGES = [
    ("during the page read", "{zenn}/crashy/page これを読んで"),
    ("after the tool result", "{zenn}/plain/page KILL-AFTER-READ 要約して"),
    ("while the model answers", "KILL-ANSWER こんにちは"),
]


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
        if urls and not since:
            return 200, call_reply("read_page", {"url": urls[0]})
        if "KILL-AFTER-READ" in question:
            victim.kill()
        read = [m for m in since if isinstance(m, ToolMessage)]
        seen = "page read" if read and "Plain page" in str(read[-1].content) else "no page"
        return 200, text_reply(f"answer #{len(humans)} ({seen}) to: {question[:40]}")
    return respond


async def zennbot(env: dict, *args: str, victim: Victim | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **env})
    if victim is not None:
        victim.pid = process.pid
    out, err = await asyncio.wait_for(process.communicate(), 120)
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
        code, out, err = await zennbot(env, "ask", "--thread", "t", f"{zenn.url}/plain/page 最初の質問")
        assert code == 0 and "answer #1 (page read)" in out, err

        lost = question.format(zenn=zenn.url)
        code, out, err = await zennbot(env, "ask", "--thread", "t", lost, victim=victim)
        assert victim.killed.is_set() and code == -signal.SIGKILL, (stage, out, err)
        assert _unfinished_runs(tmp_path) == 1

        code, out, err = await zennbot(env, "ask", "--thread", "t", "次の質問")
    assert code == 0, err
    assert "answer #2 (no page) to: 次の質問" in out  # the lost turn is not in the history
    assert f"The bot stopped while answering “{' '.join(lost.split())[:79]}" in err  # the asker is told
    assert "Traceback" not in err
    last_prompt = json.dumps(gemini.calls[-1].body, ensure_ascii=False)
    assert "最初の質問" in last_prompt and lost.split()[-1] not in last_prompt  # nothing of the lost turn
    assert last_prompt.count("SQLite durability") <= 1  # no uncompacted page riding along
    assert _unfinished_runs(tmp_path) == 0


def _unfinished_runs(tmp_path) -> int:
    return count_rows(make_settings(tmp_path, zennbot_db=str(tmp_path / "z.db")), "runs")


@asynccontextmanager
async def serving(tmp_path, env: dict, victim: Victim | None = None):
    """`zennbot run` in the background (its log in a file, so a full pipe never blocks it);
    stopped with SIGTERM at the end unless it died."""
    log_file = open(tmp_path / f"run-{len(list(tmp_path.glob('run-*.log')))}.log", "w+b")  # noqa: SIM115
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run", stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
        env={**os.environ, **env})
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.mark.parametrize("stage, question", STAGES)
async def test_slack_thread_survives_sigkill(tmp_path, stage, question):
    from tests.test_slack import answers, mention, message

    victim = Victim()
    async with ReplicaServer(ReplicaOptions(extra_routes=crash_routes(victim))) as zenn, \
            GeminiStub(model(victim)) as gemini, MockSlackApi() as slack:
        port = free_port()
        env = bot_env(tmp_path, zenn, gemini) | {
            "SLACK_BOT_TOKEN": "xoxb-t", "SLACK_SIGNING_SECRET": "s", "SLACK_PORT": str(port),
            "SLACK_API_URL": slack.url + "/api/"}
        async with serving(tmp_path, env, victim) as process:
            assert await slack_post(port, event_body(mention(f"{zenn.url}/plain/page 最初の質問", "10.1"), "Ev1")) == 200
            await eventually(lambda: len(answers(slack)) == 1, 60)
            assert "answer #1 (page read)" in answers(slack)[0]["markdown_text"]
            before = len(slack.named("chat.postMessage"))
            await slack_post(port, event_body(message(question.format(zenn=zenn.url), "10.2", "10.1"), "Ev2"))
            await asyncio.wait_for(process.wait(), 60)
        assert victim.killed.is_set()
        status = [i for i, p in enumerate(slack.named("chat.postMessage")) if i >= before and "reading" in p["text"]]
        assert bool(status) == ("KILL-ANSWER" not in question)  # no page read, no status message
        status_ts = f"1700000000.{status[-1] + 1:06d}" if status else None  # the mock numbers messages in order
        assert [n["name"] for n in slack.named("reactions.add")][-1] == "eyes"

        def acknowledged() -> bool:
            if status_ts:  # the status message is ended with the news
                return any(u.get("ts") == status_ts and "was lost" in u.get("text", "")
                           for u in slack.named("chat.update"))
            return any(p.get("thread_ts") == "10.1" and "was lost" in p.get("text", "")
                       for p in slack.named("chat.postMessage"))

        async with serving(tmp_path, env) as process:
            await eventually(acknowledged, 60)
            await eventually(lambda: any(r.get("timestamp") == "10.2" and r["name"] == "warning"
                                         for r in slack.named("reactions.add")))
            assert any(r.get("timestamp") == "10.2" and r["name"] == "eyes" for r in slack.named("reactions.remove"))
            # and the thread goes on
            await slack_post(port, event_body(message("次の質問", "10.3", "10.1"), "Ev3"))
            await eventually(lambda: len(answers(slack)) == 2, 60)
        assert any("answer #2 (no page) to: 次の質問" in a["markdown_text"] for a in answers(slack))
        assert process.returncode == 0 and "Traceback" not in process.log


@pytest.mark.parametrize("stage, question", STAGES)
async def test_discord_thread_survives_sigkill(tmp_path, stage, question):
    from tests.fakes.discord import BOT, BOT_ID, CHANNEL_ID, FakeDiscord, user

    alice = user(7, "alice")
    victim = Victim()
    async with ReplicaServer(ReplicaOptions(extra_routes=crash_routes(victim))) as zenn, \
            GeminiStub(model(victim)) as gemini, FakeDiscord() as fake:
        env = bot_env(tmp_path, zenn, gemini) | {
            "DISCORD_TOKEN": "t", "DISCORD_API_BASE_URL": fake.url + "/api/v10",
            "DISCORD_GATEWAY_URL": fake.url.replace("http", "ws") + "/gateway"}

        def said(text: str) -> list[dict]:
            return [m for m in fake.sent() + fake.edits() if text in m.get("content", "")]

        async with serving(tmp_path, env, victim) as process:
            await asyncio.wait_for(fake.identified.wait(), 60)
            await asyncio.sleep(0.5)  # GUILD_CREATE handled
            await fake.dispatch("MESSAGE_CREATE", fake.message(
                CHANNEL_ID, alice, f"<@{BOT_ID}> {zenn.url}/plain/page 最初の質問", [BOT], mid=5001))
            await eventually(lambda: said("answer #1 (page read)"), 60)
            thread = int([p for _, p, _ in fake.calls if p.endswith("/typing")][0].split("/")[2])
            await fake.dispatch("MESSAGE_CREATE", fake.message(thread, alice, question.format(zenn=zenn.url)))
            await asyncio.wait_for(process.wait(), 60)
        assert victim.killed.is_set()
        fake.identified.clear()
        status = [(p, b) for m, p, b in fake.calls if m == "POST" and p == f"/channels/{thread}/messages"
                  and "reading" in b.get("content", "")]
        reads = "KILL-ANSWER" not in question
        assert len(status) == (2 if reads else 1)  # the first turn's, and the lost one's if it read

        async with serving(tmp_path, env) as process:
            await asyncio.wait_for(fake.identified.wait(), 60)
            await eventually(lambda: said("was lost"), 60)
            ack = [(m, p) for m, p, b in fake.calls if isinstance(b, dict) and "was lost" in b.get("content", "")]
            if reads:  # the status message, ended
                assert len(ack) == 1 and ack[0][0] == "PATCH" and ack[0][1].startswith(f"/channels/{thread}/messages/")
            else:
                assert ack == [("POST", f"/channels/{thread}/messages")]
            await fake.dispatch("MESSAGE_CREATE", fake.message(thread, alice, "次の質問"))
            await eventually(lambda: said("answer #2 (no page) to: 次の質問"), 60)
        assert process.returncode == 0 and "Traceback" not in process.log
