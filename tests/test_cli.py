"""The `zennbot` command as a user runs it."""

from __future__ import annotations

import asyncio
import os
import sys

from bot.bench.replica import ReplicaServer


async def _zennbot(*args: str, env: dict | None = None, stdin: bytes = b"") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    out, err = await process.communicate(stdin)
    return process.returncode, out.decode(), err.decode()


async def test_without_an_api_key_the_bot_says_what_to_set(tmp_path):
    code, out, err = await _zennbot("ask", "hello", env={"ZENNBOT_DB": str(tmp_path / "x.db")})
    assert code == 2 and err.strip().count("\n") == 0 and "GOOGLE_API_KEY" in err


async def test_read_prints_what_the_agent_sees(tmp_path):
    async with ReplicaServer() as zenn:
        code, out, err = await _zennbot("read", zenn.url + "/asap", env={
            "ZENNBOT_DB": str(tmp_path / "x.db"), "ZENN_BASE_URL": zenn.url,
            "ZENNBOT_ALLOW_PRIVATE_NETWORK": "true"})
    assert code == 0, err
    assert "UNTRUSTED_PAGE_CONTENT" in out and "1 | 921 | 344 |" in out and "Articles: 72" in out


async def test_read_refuses_a_private_address(tmp_path):
    code, out, err = await _zennbot("read", "http://169.254.169.254/latest/meta-data/",
                                    env={"ZENNBOT_DB": str(tmp_path / "x.db")})
    assert "cloud metadata" in out and "Traceback" not in out + err
