"""The `zennbot` command as a user runs it: `python -m bot`, started from scratch, where the
start-up is what is tested (no key, the console chat, `run` to its SIGTERM); forked from the
pre-imported Python (`tests/forkserver.py`) where it is what the command prints."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from bench.replica import ReplicaServer
from tests.forkserver import start_zennbot


async def _zennbot(*args: str, env: dict | None = None, stdin: bytes = b"",
                   forked: bool = False) -> tuple[int, str, str]:
    pipes = dict(stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                 env={**os.environ, **(env or {})})
    process = await (start_zennbot(*args, **pipes) if forked else
                     asyncio.create_subprocess_exec(sys.executable, "-m", "bot", *args, **pipes))
    out, err = await process.communicate(stdin)
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("args", [("run",), ("chat",), ("ask", "hello")])
async def test_without_an_api_key_the_bot_says_what_to_set(tmp_path, args):
    code, out, err = await _zennbot(*args, env={"ZENNBOT_DB": str(tmp_path / "x.db")})
    assert code == 2 and err.strip().count("\n") == 0 and "GOOGLE_API_KEY" in err


async def test_read_prints_what_the_agent_sees(tmp_path):
    async with ReplicaServer() as zenn:
        code, out, err = await _zennbot("read", zenn.url + "/asap", forked=True, env={
            "ZENNBOT_DB": str(tmp_path / "x.db"), "ZENN_BASE_URL": zenn.url,
            "ZENNBOT_ALLOW_PRIVATE_NETWORK": "true"})
    assert code == 0, err
    assert "UNTRUSTED_PAGE_CONTENT" in out and "1 | 921 | 344 |" in out and "Articles: 72" in out


async def test_read_refuses_a_private_address(tmp_path):
    code, out, err = await _zennbot("read", "http://169.254.169.254/latest/meta-data/", forked=True,
                                    env={"ZENNBOT_DB": str(tmp_path / "x.db")})
    assert "cloud metadata" in out and "Traceback" not in out + err


async def test_chat_with_piped_stdin_against_a_gemini_stub(tmp_path):
    from tests.fakes.gemini import GeminiStub, call_reply, text_reply

    async with ReplicaServer() as zenn:
        def responder(body: dict, n: int):
            if n == 1:
                return 200, call_reply("read_page", {"url": zenn.url + "/asap"})
            if n == 2:
                return 200, text_reply("一番いいねが多いのは「DeepSeek-R1の論文読んだ？」(921) です。")
            history = json.dumps(body["contents"], ensure_ascii=False)
            return 200, text_reply("前の答えを覚えています。" if "921" in history else "覚えていません。")

        async with GeminiStub(responder) as gemini:
            code, out, err = await _zennbot("chat", "--thread", "t1", stdin=(
                f"{zenn.url}/asap 一番いいねが多い記事は？\n2番目は？\nexit\nこれは読まれない\n").encode(), env={
                "ZENNBOT_DB": str(tmp_path / "x.db"), "ZENN_BASE_URL": zenn.url, "GOOGLE_API_KEY": "k",
                "GOOGLE_GEMINI_BASE_URL": gemini.url, "ZENNBOT_ALLOW_PRIVATE_NETWORK": "true"})
    assert code == 0, err
    assert "(921)" in out and "前の答えを覚えています。" in out
    assert f"→ reading {zenn.url}/asap" in err
    assert len(gemini.requests) == 3  # "exit" ended the chat


async def test_run_serves_slack_and_stops_cleanly_on_sigterm(tmp_path):
    import signal

    import aiohttp

    from tests.fakes.gemini import GeminiStub, text_reply
    from tests.fakes.slack import MockSlackApi, event_body, eventually, signed_headers
    from tests.helpers import reported_port

    async with MockSlackApi() as slack, GeminiStub(lambda body, n: (200, text_reply("こんにちは！"))) as gemini:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={
                **os.environ, "ZENNBOT_DB": str(tmp_path / "x.db"), "GOOGLE_API_KEY": "k",
                "GOOGLE_GEMINI_BASE_URL": gemini.url, "SLACK_BOT_TOKEN": "xoxb-t", "SLACK_SIGNING_SECRET": "s",
                "SLACK_PORT": "0", "SLACK_API_URL": slack.url + "/api/"})
        try:
            port = await reported_port(process.stderr)
            body = event_body({"type": "app_mention", "user": "U1", "text": "<@UBOT> こんにちは", "ts": "1.1",
                               "channel": "C1", "event_ts": "1.1"}, "Ev1")
            async with aiohttp.ClientSession() as http:
                for _ in range(100):  # the HTTP server starts just after auth.test
                    try:
                        async with http.post(f"http://127.0.0.1:{port}/slack/events", data=body,
                                             headers=signed_headers("s", body, "application/json")) as response:
                            assert response.status == 200
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)
            await eventually(lambda: "こんにちは！" in slack.thread_text("C1", "1.1"))
        finally:
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 30)
            err = (await process.stderr.read()).decode()
    assert code == 0, err
    assert "shutting down" in err and "Traceback" not in err


@pytest.mark.parametrize("platform", ["slack", "discord"])
async def test_run_says_what_to_fix_when_a_token_is_rejected(tmp_path, platform):
    from tests.fakes.discord import FakeDiscord
    from tests.fakes.slack import MockSlackApi

    async with MockSlackApi() as slack, FakeDiscord() as discord_api:
        slack.reject_token = discord_api.reject_token = True
        env = {"ZENNBOT_DB": str(tmp_path / "x.db"), "GOOGLE_API_KEY": "k"}
        if platform == "slack":
            env |= {"SLACK_BOT_TOKEN": "xoxb-bad", "SLACK_SIGNING_SECRET": "s", "SLACK_PORT": "0",
                    "SLACK_API_URL": slack.url + "/api/"}
        else:
            env |= {"DISCORD_TOKEN": "bad", "DISCORD_API_BASE_URL": discord_api.url + "/api/v10",
                    "DISCORD_GATEWAY_URL": discord_api.url.replace("http", "ws") + "/gateway"}
        code, out, err = await asyncio.wait_for(_zennbot("run", env=env, forked=True), 60)
    assert code == 1
    assert f"{platform.capitalize()} rejected {platform.upper()}_" in err and "Traceback" not in err
    assert "xoxb-bad" not in err
