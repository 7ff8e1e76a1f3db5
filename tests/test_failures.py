"""Every failure says what happened, once: a burst on one database, a full disk, junk at the
Slack endpoint, an unreachable model endpoint, two processes on one thread, SIGTERM mid-answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sqlite3
import struct
import subprocess

import pytest
from langchain_core.messages import AIMessage

from bench.gemini_stub import GeminiStub, text_reply
from bench.replica import ReplicaServer
from tests.fakes.slack import MockSlackApi, event_body, eventually
from tests.forkserver import start_zennbot
from tests.helpers import count_rows, make_settings, store_env
from tests.pg import sqlite_only
from tests.test_slack import answers, mention, slack_bot


def direct_answer(messages) -> AIMessage:
    return AIMessage(content=f"answer to {str(messages[-1].content)[:30]}")


async def test_a_burst_of_30_slack_mentions_on_one_database(tmp_path):
    """Thirty mentions at once, all runs at once: every one answered, none "database is locked"."""
    async with ReplicaServer() as zenn, MockSlackApi() as slack:
        async with slack_bot(tmp_path, zenn, slack, direct_answer, zennbot_max_concurrent_runs=30,
                             zennbot_user_rate_limit=100) as (post, _):
            statuses = await asyncio.gather(*(
                post(event_body(mention(f"question {i}", f"20.{i:06d}", user=f"U{i}"), f"Ev{i}"))
                for i in range(30)))
            await eventually(lambda: len(answers(slack)) == 30, 120)
    assert [status for status, _ in statuses] == [200] * 30
    texts = sorted(answers(slack))
    assert texts == sorted(f"answer to question {i}" for i in range(30))
    assert [r for r in slack.named("reactions.add") if r["name"] == "warning"] == []


@contextlib.contextmanager
def tiny_disk(path, size: str = "2m"):
    """A tmpfs of `size` at `path` (needs root: skipped without it)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory) -> None:
    with open(directory / "filler", "wb") as filler:
        with contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
                os.fsync(filler.fileno())


@sqlite_only
async def test_a_full_disk_on_slack_is_said_in_the_thread(tmp_path, caplog):
    """A real full disk (tmpfs): the dedupe and claim writes fail; the user still gets one
    short message in the thread, the log one line per failure and no traceback."""
    with tiny_disk(tmp_path / "disk") as disk:
        async with ReplicaServer() as zenn, MockSlackApi() as slack:
            async with slack_bot(tmp_path, zenn, slack, direct_answer, zennbot_db=str(disk / "z.db")) as (post, _):
                fill(disk)
                caplog.clear()
                await post(event_body(mention("hello", "30.1"), "Ev1"))
                await post(event_body(mention("hello", "30.1"), "Ev1"))  # Slack's retry: said once
                await eventually(lambda: slack.named("chat.postMessage"), 30)
                await asyncio.sleep(0.5)
    said = [p.get("text", "") for p in slack.named("chat.postMessage")]
    assert len(said) == 1 and "database is unavailable (out of disk space)" in said[0]
    assert slack.named("chat.postMessage")[0]["thread_ts"] == "30.1"
    assert "Traceback" not in caplog.text


async def test_junk_at_the_slack_endpoint_gets_4xx_and_one_log_line(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with ReplicaServer() as zenn, MockSlackApi() as slack:
        async with slack_bot(tmp_path, zenn, slack) as (post, model):
            results = []
            for body, content_type, secret in [
                    ("garbage{", "application/json", "not-the-secret"),
                    ("\x00\x01 junk", "text/plain", "not-the-secret"),
                    ("garbage{", "application/json", None),
                    ("", "application/json", None),
                    ("payload=%7Bbroken", "application/x-www-form-urlencoded", None),
                    ('{"type": "event_callback", "event": "x"}', "application/json", None),
                    ("[1, 2]", "application/json", None)]:
                caplog.clear()
                kwargs = {"secret": secret} if secret else {}
                status, _ = await post(body, content_type, **kwargs)
                results.append((status, len([r for r in caplog.records if r.name.startswith(("adapters", "slack", "aiohttp"))]),
                                "Traceback" in caplog.text))
    assert results == [(401, 1, False)] * 2 + [(400, 1, False)] * 5
    assert model.records == [] and answers(slack) == []


class FlakyFront:
    """A TCP front for the Gemini stub that resets the first `resets` connections (RST), then
    forwards: an endpoint that is unreachable for a while."""

    def __init__(self, target_port: int, resets: int) -> None:
        self.target_port = target_port
        self.resets = resets
        self.connections = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FlakyFront:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.connections <= self.resets:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        target_reader, target_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, target_writer), pipe(target_reader, writer))


async def ask(env: dict, *args: str) -> tuple[int, str, str]:
    process = await start_zennbot(
        "ask", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **env})
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, out.decode(), err.decode()


def ask_env(tmp_path, gemini_url: str) -> dict:
    return store_env(tmp_path) | {"GOOGLE_API_KEY": "k", "GOOGLE_GEMINI_BASE_URL": gemini_url,
            "ZENNBOT_LLM_RETRY_INITIAL_DELAY": "0.05", "ZENNBOT_LLM_MAX_RETRIES": "4"}


async def test_model_endpoint_cut_off_then_back_the_answer_arrives(tmp_path):
    async with GeminiStub(lambda body, n: (200, text_reply("やっと届きました"))) as gemini:
        port = int(gemini.url.rsplit(":", 1)[1])
        async with FlakyFront(port, resets=2) as front:
            code, out, err = await ask(ask_env(tmp_path, front.url), "こんにちは")
    assert code == 0 and "やっと届きました" in out, err
    assert front.connections >= 3 and len(gemini.calls) == 1


async def test_model_endpoint_refusing_for_good_is_one_sentence(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = await ask(ask_env(tmp_path, f"http://127.0.0.1:{port}"), "こんにちは")
    assert code == 1
    assert out.strip() == ("⚠ I can't reach the language model (the connection was refused), even after several "
                           "tries. Please try again later; if it lasts, an admin should check the network and "
                           "GOOGLE_GEMINI_BASE_URL.")
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1


async def test_two_processes_on_one_thread_lose_no_turn(tmp_path):
    """Two `zennbot ask` on the same thread at once: one waits for the other (the lease), and
    the history holds both turns."""
    def respond(body: dict, n: int):
        questions = [p["text"] for c in body["contents"] if c["role"] == "user" for p in c["parts"] if "text" in p]
        return 200, text_reply(f"seen: {' / '.join(questions)}")

    async with GeminiStub(respond) as gemini:
        env = ask_env(tmp_path, gemini.url)
        first, second = await asyncio.gather(ask(env, "--thread", "t", "first"), ask(env, "--thread", "t", "second"))
        code, out, err = await ask(env, "--thread", "t", "third")
    assert first[0] == 0 and second[0] == 0, (first, second)
    assert {first[1].strip(), second[1].strip()} in (
        {"seen: first", "seen: first / second"}, {"seen: second", "seen: second / first"})
    assert code == 0 and out.strip() in ("seen: first / second / third", "seen: second / first / third"), out


async def test_sigterm_mid_answer_tells_the_user_and_leaves_the_thread_whole(tmp_path):
    """`zennbot ask` stopped with SIGTERM while the model thinks: after the shutdown grace the
    answer is given up, the user told, the run rolled back; the next question is answered."""
    from aiohttp import web

    from bench.local_server import LocalServer

    arrived = asyncio.Event()
    hold = asyncio.Event()

    async def generate(request: web.Request) -> web.Response:
        body = await request.json()
        texts = [p.get("text", "") for c in body["contents"] for p in c["parts"]]
        if "slow" in texts[-1]:
            arrived.set()
            await hold.wait()
        return web.json_response(text_reply(f"answered {texts[-1]}") | {"usageMetadata": {
            "promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}})

    app = web.Application()
    app.router.add_post("/{version}/models/{action}", generate)
    async with LocalServer(app) as gemini:
        env = ask_env(tmp_path, gemini.url) | {"ZENNBOT_SHUTDOWN_GRACE": "0.5"}
        process = await start_zennbot(
            "ask", "--thread", "t", "slow question", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **env})
        await asyncio.wait_for(arrived.wait(), 60)
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 30)
        hold.set()
        code, after, err2 = await ask(env, "--thread", "t", "next")
    assert process.returncode == 1 and "stopped while answering" in out.decode(), err.decode()
    assert "Traceback" not in err.decode()
    assert code == 0 and "answered next" in after and "stopped while answering" not in err2
    assert await count_rows(make_settings(tmp_path, zennbot_db=str(tmp_path / "z.db")), "runs") == 0


def test_unreachable_endpoints_are_named():
    import ssl

    import aiohttp
    import httpx

    from bot.service import unreachable_reason

    def caused(outer: BaseException, cause: BaseException) -> BaseException:
        outer.__cause__ = cause
        return outer

    key = type("Key", (), {"ssl": True, "host": "h", "port": 1})()
    assert unreachable_reason(caused(aiohttp.ClientConnectorDNSError(key, OSError("x")),
                                     socket.gaierror(-2, "Name or service not known"))) == "its address does not resolve"
    assert unreachable_reason(aiohttp.ClientConnectorSSLError(key, ssl.SSLError(1, "bad cert"))) == \
        "the secure (TLS) connection failed"
    assert unreachable_reason(aiohttp.ServerDisconnectedError()) == "the connection was cut"
    assert unreachable_reason(httpx.ConnectError("[Errno 111] Connection refused")) == "the connection was refused"


@sqlite_only
async def test_a_locked_database_on_discord_is_said_in_the_thread(tmp_path):
    from tests.fakes.discord import BOT, BOT_ID, CHANNEL_ID, FakeDiscord, user
    from tests.test_discord import discord_bot

    async with ReplicaServer() as zenn, FakeDiscord() as fake:
        async with discord_bot(tmp_path, zenn, fake, direct_answer, zennbot_db_busy_timeout=0.3):
            blocker = sqlite3.connect(tmp_path / "zennbot.db", timeout=0)
            blocker.execute("BEGIN EXCLUSIVE")
            try:
                await fake.dispatch("MESSAGE_CREATE", fake.message(CHANNEL_ID, user(7, "alice"),
                                                                   f"<@{BOT_ID}> hello", [BOT]))
                await eventually(lambda: fake.sent(), 30)
            finally:
                blocker.rollback()
                blocker.close()
            await asyncio.sleep(0.3)
    said = [m["content"] for m in fake.sent()]
    assert said == ["⚠️ The bot's database is unavailable (locked by another process), so nothing was saved. "
                    "Please try again later."]
    assert fake.sent()[0]["channel"] != str(CHANNEL_ID)  # in the thread opened for the question


async def test_sigterm_stops_an_idle_chat_cleanly(tmp_path):
    async with GeminiStub(lambda body, n: (200, text_reply("はい"))) as gemini:
        process = await start_zennbot(
            "chat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, **ask_env(tmp_path, gemini.url)})
        process.stdin.write("こんにちは\n".encode())
        await process.stdin.drain()
        assert "はい" in (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        process.send_signal(signal.SIGTERM)  # waiting for the next line, which never comes
        code = await asyncio.wait_for(process.wait(), 30)
        err = (await process.stderr.read()).decode()
    assert code == 0 and "Traceback" not in err
