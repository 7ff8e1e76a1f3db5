"""The console chat: the prototype's loop, on the same service as Discord and Slack."""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import TextIO

from bot.recovery import short_question
from bot.service import ConversationService, Reply
from bot.store import RunRecord

EXIT_WORDS = {"exit", "quit", ":q"}


def format_reply(reply: Reply) -> str:
    text = reply.text if reply.ok else f"⚠ {reply.text}"
    if reply.sources:
        text += "\n\nSources:\n" + "\n".join(
            f"- {s.title} — {s.url}" + (f" ({s.summary})" if s.summary else "") for s in reply.sources)
    return text


async def ask(service: ConversationService, thread: str, text: str, out: TextIO = sys.stdout,
              progress_out: TextIO = sys.stderr) -> Reply:
    async def progress(line: str) -> None:
        print(f"→ {line}", file=progress_out, flush=True)

    reply = await service.handle(f"console:{thread}", "console", text, progress)
    print(format_reply(reply), file=out, flush=True)
    return reply


async def chat(service: ConversationService, thread: str, stdin: TextIO = sys.stdin) -> None:
    interactive = stdin.isatty()
    if interactive:
        print(f"zennbot (thread “{thread}”). Ask about a page, e.g. https://zenn.dev/asap — `exit` to quit.")
    while True:
        if interactive:
            print("\n> ", end="", flush=True)
        line = await _readline(stdin)
        if not line:
            break
        text = line.strip()
        if text.lower() in EXIT_WORDS:
            break
        if text:
            await ask(service, thread, text)


async def _readline(stdin: TextIO) -> str:
    """One line, read in a daemon thread: a shutdown never waits for a user who types nothing."""
    loop = asyncio.get_running_loop()
    line: asyncio.Future[str] = loop.create_future()

    def read() -> None:
        try:
            text = stdin.readline()
        except Exception as exc:  # noqa: BLE001  (handed to the waiting coroutine)
            loop.call_soon_threadsafe(lambda: line.done() or line.set_exception(exc))
        else:
            loop.call_soon_threadsafe(lambda: line.done() or line.set_result(text))

    threading.Thread(target=read, daemon=True, name="console-stdin").start()
    return await line


async def acknowledge_lost_run(run: RunRecord, out: TextIO = sys.stderr) -> None:
    """Say that a question was lost when the bot stopped (the thread is whole again)."""
    thread = run.thread_id.removeprefix("console:")
    print(f"⚠ The bot stopped while answering “{short_question(run)}” (thread “{thread}”); that answer was "
          "lost. Please ask again.", file=out, flush=True)
