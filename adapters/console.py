"""The console chat: the prototype's loop, on the same service as Discord and Slack."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from bot.service import ConversationService, Reply

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
        line = await asyncio.to_thread(stdin.readline)
        if not line:
            break
        text = line.strip()
        if text.lower() in EXIT_WORDS:
            break
        if text:
            await ask(service, thread, text)
