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
from agent.graph import UNREACHABLE_ERRORS, ResearchAgent
from agent.pages import Source
from agent.llm import MissingApiKey
from agent.tools import ProgressCallback
from agent.urlguard import BlockedUrl, UrlPolicy
from bot.recovery import RunTicket, roll_back_lost_runs, short_question
from bot.store import RunRecord, Store, StoreUnavailable

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
                     on_progress: ProgressCallback | None = None, ticket: RunTicket | None = None) -> Reply:
        """Answer one message of a thread. Never raises for anything a user can cause.
        `ticket` says where to tell the user if the process dies during the run (default: the
        platform named by the thread id's prefix, nowhere in particular)."""
        if self._closing:
            return Reply("The bot is restarting; please ask again in a minute.", ok=False)
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
        # The message's place in its thread's line is taken on arrival: the checks await the
        # database, and must not let a later message of the thread overtake it.
        turns = self._threads.setdefault(thread_id, _ThreadTurns())
        turns.waiting += 1
        place = asyncio.ensure_future(turns.lock.acquire())
        try:
            refusal = await self._check_message(thread_id, user_id, text)
            if refusal is not None:
                return Reply(refusal, ok=False)
            ticket = ticket or RunTicket(platform=thread_id.partition(":")[0])
            return await self._run_in_turn(thread_id, user_id, text.strip(), on_progress, ticket, place)
        except asyncio.CancelledError:
            if self._closing:
                return Reply("The bot was stopped while answering; please ask again when it is back.", ok=False)
            raise
        except Exception as exc:  # a bug of ours still ends in one sentence, never in silence
            log.error("handling a message in %s failed: %s", thread_id, exc, exc_info=not _expected(exc))
            return Reply(friendly_error(exc, self.limits), ok=False)
        finally:
            if place.done() and not place.cancelled():
                turns.lock.release()
            place.cancel()
            turns.waiting -= 1
            if turns.waiting == 0:
                del self._threads[thread_id]
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

    async def _run_in_turn(self, thread_id: str, user_id: str, text: str, on_progress: ProgressCallback | None,
                           ticket: RunTicket, place: asyncio.Future) -> Reply:
        """Wait for `place` (this process's lock on the thread, released by `handle`), then
        for the thread across processes, then for a free run slot."""
        if not place.done() and on_progress is not None:
            await _notify(on_progress, "still answering the previous message in this thread; yours is next")
        await asyncio.shield(place)
        async with self.store.turn_lock(thread_id):  # across processes
            if self._runs.locked() and on_progress is not None:
                await _notify(on_progress, "busy with other questions right now; you are in the queue and will be answered in turn")
            async with self._runs:
                return await self._run(thread_id, user_id, text, on_progress, ticket)

    async def _run(self, thread_id: str, user_id: str, text: str, on_progress: ProgressCallback | None,
                   ticket: RunTicket) -> Reply:
        # A run's steps become history only once it ends well: it is recorded durably first, so
        # that a crash at any instant is rolled back here (next run) or at start-up.
        try:
            lost = await roll_back_lost_runs(self.store, thread_id)
            before = await self.store.latest_checkpoint(thread_id)
            await self.store.begin_run(RunRecord(thread_id, ticket.platform, user_id, text, before,
                                                 ticket.reply_to, ticket.run_id))
        except StoreUnavailable as exc:
            log.error("%s", exc)
            return Reply(friendly_error(exc, self.limits), ok=False)
        for run in lost:
            if on_progress is not None:
                await _notify(on_progress, f"your earlier question “{short_question(run)}” was lost when the bot "
                                           "stopped; please ask it again if you still need it")
        try:
            async with asyncio.timeout(self.limits.run_timeout):
                answer = await self.agent.run(thread_id, text, on_progress)
        except asyncio.CancelledError:
            await self._forget_failed_run(thread_id, before, ticket.run_id)
            raise
        except Exception as exc:  # every failure becomes one sentence; the detail goes to the log
            log.error("run failed in %s: %s", thread_id, exc, exc_info=not _expected(exc))
            await self._forget_failed_run(thread_id, before, ticket.run_id)
            return Reply(friendly_error(exc, self.limits), ok=False)
        try:
            await self.store.prune_checkpoints(thread_id)
            await self.store.finish_run(ticket.run_id)
        except StoreUnavailable as exc:  # the answer stands; a stale run row is rolled back later
            log.warning("could not finish the run of %s: %s", thread_id, exc)
        return Reply(answer.text, answer.sources)

    async def _forget_failed_run(self, thread_id: str, before: str | None, run_id: str) -> None:
        try:
            await self.store.rollback_checkpoints(thread_id, before)
            await self.store.finish_run(run_id)
        except StoreUnavailable as exc:  # the run row stays, so the next run or start-up rolls back
            log.error("could not roll back the failed run of %s: %s", thread_id, exc)

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
    """Failures that are the world's, not a bug of ours: one log line, no traceback."""
    return isinstance(exc, (BlockedUrl, PageLoadError, TimeoutError, ModelRateLimitError, MissingApiKey,
                            StoreUnavailable, sqlite3.Error, ModelAPIError, ModelConnectionError,
                            ModelTimeoutError, ModelAuthenticationError, ModelPermissionDeniedError,
                            *UNREACHABLE_ERRORS))


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
    if isinstance(exc, UNREACHABLE_ERRORS):
        return (f"I can't reach the language model ({unreachable_reason(exc)}), even after several tries. "
                "Please try again later; if it lasts, an admin should check the network and GOOGLE_GEMINI_BASE_URL.")
    if isinstance(exc, (ModelAPIError, ModelConnectionError, ModelTimeoutError, httpx.HTTPError)):
        return "The language model is not answering right now, even after several tries. Please try again later."
    if isinstance(exc, GraphRecursionError):
        return "That question needed too many steps. Please ask something narrower."
    if isinstance(exc, TimeoutError):
        return f"That took longer than {limits.run_timeout:g} s, so I stopped. Please ask something narrower."
    if isinstance(exc, StoreUnavailable):
        return f"The bot's database is unavailable ({exc.reason}), so nothing was saved. Please try again later."
    if isinstance(exc, sqlite3.Error):
        return ("The bot's database is unavailable (locked or out of disk space), so nothing was saved. "
                "Please try again later.")
    return "Something went wrong on my side; the details are in the bot's log."


def unreachable_reason(exc: BaseException) -> str:
    """What kept the model's endpoint out of reach, in a few words, from the error and its causes."""
    import socket
    import ssl

    import aiohttp

    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    if any(isinstance(e, (socket.gaierror, aiohttp.ClientConnectorDNSError)) for e in chain):
        return "its address does not resolve"
    if any(isinstance(e, (ssl.SSLError, aiohttp.ClientSSLError)) for e in chain):
        return "the secure (TLS) connection failed"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "the connection was refused"
    if any(isinstance(e, (ConnectionResetError, BrokenPipeError, aiohttp.ServerDisconnectedError,
                          aiohttp.ClientPayloadError)) for e in chain):
        return "the connection was cut"
    text = " ".join(str(e).lower() for e in chain)  # httpx names the cause only in its message
    for words, reason in ((("name or service", "nodename", "resolve"), "its address does not resolve"),
                          (("ssl", "certificate"), "the secure (TLS) connection failed"),
                          (("refused",), "the connection was refused"),
                          (("reset", "disconnected", "broken pipe"), "the connection was cut")):
        if any(w in text for w in words):
            return reason
    return "the connection failed"
