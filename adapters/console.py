"""The console chat: the prototype's loop, on the same service as Discord and Slack. The answer
is printed as it is written (stdout), progress lines go to stderr."""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import TextIO

from bot.recovery import short_question
from bot.messages import AnswerDelta, AnswerReset, Ask, Done, Progress, Reply
from bot.service import ConversationService
from bot.store import RunRecord

EXIT_WORDS = {"exit", "quit", ":q"}


def format_sources(reply: Reply) -> str:
    if not reply.sources:
        return ""
    return "\n\nSources:\n" + "\n".join(
        f"- {s.title} — {s.url}" + (f" ({s.summary})" if s.summary else "") for s in reply.sources)


def format_reply(reply: Reply) -> str:
    return (reply.text if reply.ok else f"⚠ {reply.text}") + format_sources(reply)


async def ask(service: ConversationService, thread: str, text: str, out: TextIO = sys.stdout,
              progress_out: TextIO = sys.stderr) -> Reply:
    shown = ""  # answer text printed so far
    reply = Reply("", ok=False)
    async for event in service.stream(Ask(f"console:{thread}", "console", text)):
        if isinstance(event, Progress):
            print(f"→ {event.text}", file=progress_out, flush=True)
        elif isinstance(event, AnswerDelta):
            print(event.text, end="", file=out, flush=True)
            shown += event.text
        elif isinstance(event, AnswerReset) and shown:
            print(file=out, flush=True)
            print("→ (that was the model thinking aloud; it reads on)", file=progress_out, flush=True)
            shown = ""
        elif isinstance(event, Done):
            reply = event.reply
    if shown and reply.ok and shown.strip() == reply.text:
        print(format_sources(reply), file=out, flush=True)  # the answer is already on the screen
    else:
        if shown:
            print(file=out)
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
            loop.call_soon_threadsafe(lambda error=exc: line.done() or line.set_exception(error))
        else:
            loop.call_soon_threadsafe(lambda: line.done() or line.set_result(text))

    threading.Thread(target=read, daemon=True, name="console-stdin").start()
    return await line


async def acknowledge_lost_run(run: RunRecord, out: TextIO = sys.stderr) -> None:
    """Say that a question was lost when the bot stopped (the thread is whole again)."""
    thread = run.thread_id.removeprefix("console:")
    print(f"⚠ The bot stopped while answering “{short_question(run)}” (thread “{thread}”); that answer was "
          "lost. Please ask again.", file=out, flush=True)
