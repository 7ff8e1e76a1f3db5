"""The console chat: the prototype's loop, on the same service as Discord and Slack. The answer
is printed as it is written (stdout), progress lines go to stderr."""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import TextIO

from adapters.sink import deliver
from bot.recovery import short_question
from bot.messages import Ask, Reply
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


class ConsoleAnswer:
    """The answer on a terminal (an `AnswerSink`): text as it is written to `out`, progress to
    `progress_out`."""

    def __init__(self, out: TextIO, progress_out: TextIO) -> None:
        self.out = out
        self.progress_out = progress_out
        self.shown = ""  # answer text printed so far

    async def started(self, run_id: str) -> None:
        pass

    async def progress(self, text: str) -> None:
        print(f"→ {text}", file=self.progress_out, flush=True)

    async def delta(self, text: str) -> None:
        print(text, end="", file=self.out, flush=True)
        self.shown += text

    async def reset(self) -> None:
        if self.shown:
            print(file=self.out, flush=True)
            print("→ (that was the model thinking aloud; it reads on)", file=self.progress_out, flush=True)
            self.shown = ""

    async def done(self, reply: Reply) -> None:
        if self.shown and reply.ok and self.shown.strip() == reply.text:
            print(format_sources(reply), file=self.out, flush=True)  # the answer is already on the screen
        else:
            if self.shown:
                print(file=self.out)
            print(format_reply(reply), file=self.out, flush=True)

    async def finish(self) -> None:
        pass


async def ask(service: ConversationService, thread: str, text: str, out: TextIO = sys.stdout,
              progress_out: TextIO = sys.stderr) -> Reply:
    return await deliver(service.stream(Ask(f"console:{thread}", "console", text)), ConsoleAnswer(out, progress_out))


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
