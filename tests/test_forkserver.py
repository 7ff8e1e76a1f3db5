"""The fork server the tests start `zennbot` processes with (`tests/forkserver.py`)."""

from __future__ import annotations

import asyncio
import os
import signal

from tests.forkserver import start_zennbot

PIPE = asyncio.subprocess.PIPE


def chat_env(tmp_path) -> dict[str, str]:
    return {**os.environ, "ZENNBOT_DB": str(tmp_path / "x.db"), "GOOGLE_API_KEY": "k"}


async def gone(pid: int) -> None:
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.05)


async def test_a_child_is_its_own_process_with_its_own_stdio_and_exit_status(tmp_path):
    process = await start_zennbot("chat", env=chat_env(tmp_path), stdin=PIPE, stdout=PIPE, stderr=PIPE)
    assert process.pid != os.getpid()
    out, err = await asyncio.wait_for(process.communicate(b"exit\n"), 60)
    assert process.returncode == 0, err

    waiting = await start_zennbot("chat", env=chat_env(tmp_path), stdin=PIPE, stdout=PIPE, stderr=PIPE)
    waiting.send_signal(signal.SIGKILL)
    assert await asyncio.wait_for(waiting.wait(), 60) == -signal.SIGKILL


async def test_a_child_the_test_let_go_of_is_killed_and_the_server_goes_on(tmp_path):
    process = await start_zennbot("chat", env=chat_env(tmp_path), stdin=PIPE, stdout=PIPE, stderr=PIPE)
    await asyncio.sleep(0)  # its wait for the exit status has begun
    process._exited.cancel()  # as when a test ends without waiting: its end of the socket closes
    await asyncio.gather(process._exited, return_exceptions=True)
    await asyncio.wait_for(gone(process.pid), 60)
    again = await start_zennbot("chat", env=chat_env(tmp_path), stdin=PIPE, stdout=PIPE, stderr=PIPE)
    await asyncio.wait_for(again.communicate(b"exit\n"), 60)
    assert again.returncode == 0
