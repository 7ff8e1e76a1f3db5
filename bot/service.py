"""The conversation service: one platform-neutral entry point for every adapter.

`handle(thread_id, user_id, text)` checks the message, waits its turn (one run at a time per
thread, a global bound on concurrent runs), runs the agent with a time limit, and always
returns a `Reply`: the answer, or one short sentence saying what went wrong. Details of
failures go to the log, never to the chat.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from dataclasses import dataclass, field

import httpx
from langchain_core.exceptions import (ModelAPIError, ModelAuthenticationError, ModelConnectionError,
                                       ModelPermissionDeniedError, ModelRateLimitError, ModelTimeoutError)
from langgraph.errors import GraphRecursionError

from agent.browser import PageLoadError
from agent.graph import ResearchAgent
from agent.pages import Source
from agent.llm import MissingApiKey
from agent.tools import ProgressCallback
from agent.urlguard import BlockedUrl, UrlPolicy
from bot.store import Store

log = logging.getLogger(__name__)

USAGE = ("Send me a question, with a link if it is about a page, e.g. "
         "“https://zenn.dev/asap この執筆者の一番いいねが多い記事を調べて”.")
URL_PATTERN = re.compile(r"https?://[^\s<>\"'「」『』（）()、。，！？!?]+", re.IGNORECASE)
FOREIGN_SCHEME_PATTERN = re.compile(
    r"(?<![\w/])(?:file|javascript|data|chrome|chrome-extension|view-source|about|ftp|gopher|blob):\S+",
    re.IGNORECASE)


@dataclass(frozen=True)
class ServiceLimits:
    run_timeout: float = 180.0
    max_concurrent_runs: int = 4
    max_urls_per_turn: int = 5
    max_message_chars: int = 4_000
    user_rate_limit: int = 10  # messages per user per minute
    thread_rate_limit: int = 20  # messages per thread per minute


RATE_WINDOW = 60.0  # seconds the rate limits count over


@dataclass(frozen=True)
class Reply:
    text: str
    sources: list[Source] = field(default_factory=list)
    ok: bool = True


@dataclass
class _ThreadTurns:
    """One run at a time per thread; the entry lives while anyone is running or waiting."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0


def find_urls(text: str) -> list[str]:
    seen: list[str] = []
    for url in URL_PATTERN.findall(text):
        url = url.rstrip(".,;:!?)]}>")
        if url not in seen:
            seen.append(url)
    return seen


class ConversationService:
    def __init__(self, agent: ResearchAgent, store: Store, policy: UrlPolicy,
                 limits: ServiceLimits = ServiceLimits()) -> None:
        self.agent = agent
        self.store = store
        self.policy = policy
        self.limits = limits
        self._runs = asyncio.Semaphore(limits.max_concurrent_runs)
        self._threads: dict[str, _ThreadTurns] = {}
        self._active: set[asyncio.Task] = set()
        self._closing = False

    async def handle(self, thread_id: str, user_id: str, text: str,
                     on_progress: ProgressCallback | None = None) -> Reply:
        """Answer one message of a thread. Never raises for anything a user can cause."""
        if self._closing:
            return Reply("The bot is restarting; please ask again in a minute.", ok=False)
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
        try:
            refusal = await self._check_message(thread_id, user_id, text)
            if refusal is not None:
                return Reply(refusal, ok=False)
            return await self._run_in_turn(thread_id, text.strip(), on_progress)
        except asyncio.CancelledError:
            if self._closing:
                return Reply("The bot was stopped while answering; please ask again when it is back.", ok=False)
            raise
        except Exception as exc:  # a bug of ours still ends in one sentence, never in silence
            log.exception("handling a message in %s failed", thread_id)
            return Reply(friendly_error(exc, self.limits), ok=False)
        finally:
            if task is not None:
                self._active.discard(task)

    async def _check_message(self, thread_id: str, user_id: str, text: str) -> str | None:
        text = text.strip()
        if not text:
            return USAGE
        if len(text) > self.limits.max_message_chars:
            return (f"That message is {len(text):,} characters long; I read at most "
                    f"{self.limits.max_message_chars:,}. Please shorten it.")
        for key, limit in ((f"user:{user_id}", self.limits.user_rate_limit),
                           (f"thread:{thread_id}", self.limits.thread_rate_limit)):
            wait = await self.store.rate_wait(key, limit, RATE_WINDOW)  # shared by every replica
            if wait:
                return f"You're asking faster than I can read. Please wait {max(1, round(wait))} s and ask again."
        if match := FOREIGN_SCHEME_PATTERN.search(text):
            return f"I can't read `{match.group(0)[:80]}`: only http and https links can be read."
        urls = find_urls(text)
        if len(urls) > self.limits.max_urls_per_turn:
            return (f"That message has {len(urls)} links; I read at most {self.limits.max_urls_per_turn} "
                    "per message. Please split it up.")
        for url in urls:
            try:
                await self.policy.check(url)
            except BlockedUrl as exc:
                log.info("refused %s: %s", url, exc)
                return f"I can't read {url[:200]}: {exc.reason}."
        return None

    async def _run_in_turn(self, thread_id: str, text: str, on_progress: ProgressCallback | None) -> Reply:
        turns = self._threads.setdefault(thread_id, _ThreadTurns())
        turns.waiting += 1
        try:
            if turns.lock.locked() and on_progress is not None:
                await _notify(on_progress, "still answering the previous message in this thread; yours is next")
            async with turns.lock:
                if self._runs.locked() and on_progress is not None:
                    await _notify(on_progress, "busy with other questions right now; you are in the queue and will be answered in turn")
                async with self._runs:
                    return await self._run(thread_id, text, on_progress)
        finally:
            turns.waiting -= 1
            if turns.waiting == 0:
                del self._threads[thread_id]

    async def _run(self, thread_id: str, text: str, on_progress: ProgressCallback | None) -> Reply:
        try:
            before = await self.store.latest_checkpoint(thread_id)
        except sqlite3.Error as exc:
            log.error("database unavailable: %s", exc)
            return Reply(friendly_error(exc, self.limits), ok=False)
        try:
            async with asyncio.timeout(self.limits.run_timeout):
                answer = await self.agent.run(thread_id, text, on_progress)
        except asyncio.CancelledError:
            await self._forget_failed_run(thread_id, before)
            raise
        except Exception as exc:  # every failure becomes one sentence; the detail goes to the log
            log.error("run failed in %s: %s", thread_id, exc, exc_info=not _expected(exc))
            await self._forget_failed_run(thread_id, before)
            return Reply(friendly_error(exc, self.limits), ok=False)
        try:
            await self.store.prune_checkpoints(thread_id)
        except sqlite3.Error:
            log.warning("could not prune checkpoints of %s", thread_id, exc_info=True)
        return Reply(answer.text, answer.sources)

    async def _forget_failed_run(self, thread_id: str, before: str | None) -> None:
        try:
            await self.store.rollback_checkpoints(thread_id, before)
        except sqlite3.Error:
            log.error("could not roll back the failed run of %s", thread_id, exc_info=True)

    async def close(self, grace: float = 30.0) -> None:
        """Stop taking messages; let runs in progress finish for `grace` s, then cancel them
        (their users are told)."""
        self._closing = True
        if self._active:
            _, pending = await asyncio.wait(set(self._active), timeout=grace)
            for task in pending:
                task.cancel()


async def _notify(on_progress: ProgressCallback, text: str) -> None:
    try:
        await on_progress(text)
    except Exception:
        log.warning("progress callback failed", exc_info=True)


def _expected(exc: Exception) -> bool:
    return isinstance(exc, (BlockedUrl, PageLoadError, TimeoutError, ModelRateLimitError, MissingApiKey))


def friendly_error(exc: BaseException, limits: ServiceLimits) -> str:
    """One short sentence for the chat; never a stack trace, never a secret."""
    if isinstance(exc, BlockedUrl):
        return f"I can't read that link: {exc.reason}."
    if isinstance(exc, PageLoadError):
        return f"I couldn't read the page: {exc.reason}."
    if isinstance(exc, MissingApiKey):
        return str(exc)
    if isinstance(exc, ModelRateLimitError):
        return "The language model's rate limit or quota is used up right now. Please try again in a minute."
    if isinstance(exc, (ModelAuthenticationError, ModelPermissionDeniedError)):
        return "The language model rejected the bot's API key. An admin should check GOOGLE_API_KEY."
    if isinstance(exc, (ModelAPIError, ModelConnectionError, ModelTimeoutError, httpx.HTTPError)):
        return "The language model is not answering right now, even after several tries. Please try again later."
    if isinstance(exc, GraphRecursionError):
        return "That question needed too many steps. Please ask something narrower."
    if isinstance(exc, TimeoutError):
        return f"That took longer than {limits.run_timeout:g} s, so I stopped. Please ask something narrower."
    if isinstance(exc, sqlite3.Error):
        return ("The bot's database is unavailable (locked or out of disk space), so nothing was saved. "
                "Please try again later.")
    return "Something went wrong on my side; the details are in the bot's log."
