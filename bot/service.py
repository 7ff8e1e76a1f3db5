"""The conversation service: one platform-neutral entry point for every adapter.

`stream(ask)` checks the message, waits its turn (one run at a time per thread, a global bound
on concurrent runs), runs the agent with a time limit and yields what happens as it happens:
`Started` (the run's id, for a Stop button), `Progress`, `AnswerDelta`/`AnswerReset` (the answer
as it is written), and always, last, one `Done` with the `Reply`: the answer, or one short
sentence saying what went wrong. `handle()` is the same without the events. Details of failures
go to the log, never to the chat. A run that fails, times out or is stopped leaves nothing of
itself in the thread's history.

A run ends once: whatever lands when (Stop once or many times, the run timeout, shutdown, the
reader going away, a store error), it emits exactly one `Done`. From the moment its outcome is
decided (the agent answered, failed or was stopped), it is *ending*: a Stop is a no-op, and what
is left (rolling back, finishing the run record, paying for it) runs to its end within
`ENDING_TIMEOUT`.

What was used is paid for: every run that called the model records its usage (the tokens the
model reported, and estimates for calls cut off; see `agent.usage`), whether it answered, failed,
timed out or was stopped. With a daily token budget, a run is admitted only by reserving an
estimate in the store (atomically, across replicas; queued runs hold theirs), and its end
settles the reservation with what it used. Direct messages (no server or workspace) have a
bucket per user, counting towards nothing else; a user whose server has used its budget is not
answered in direct messages either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import socket
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

import aiohttp
import httpx
from langchain_core.exceptions import (ModelAPIError, ModelAuthenticationError, ModelConnectionError,
                                       ModelPermissionDeniedError, ModelRateLimitError, ModelTimeoutError)
from langgraph.errors import GraphRecursionError

from agent.browser import PageLoadError
from agent.events import AgentReply
from agent.graph import UNREACHABLE_ERRORS, ResearchAgent
from agent.usage import UsageCollector
from agent.llm import MissingApiKey
from agent.urlguard import BlockedUrl, UrlPolicy
from agent.zenn_client import ZennRefused
from bot.messages import Ask, Done, Event, Progress, Reply, Started, TokenUsage
from bot.recovery import roll_back_lost_runs, short_question
from bot.store import RunRecord, Store, StoreUnavailable, TurnLost
from bot.store.base import BudgetClaim

log = logging.getLogger(__name__)

USAGE = ("Send me a question, with a link if it is about a page, e.g. “Zennで Next.js の記事で一番いいねが多いのは？” "
         "or “https://zenn.dev/asap この執筆者の一番いいねが多い記事を調べて”.")
URL_PATTERN = re.compile(r"https?://[^\s<>\"'「」『』（）()、。，！？!?]+", re.IGNORECASE)
FOREIGN_SCHEME_PATTERN = re.compile(
    r"(?<![\w/])(?:file|javascript|data|chrome|chrome-extension|view-source|about|ftp|gopher|blob):\S+",
    re.IGNORECASE)


@dataclass(frozen=True)
class ServiceLimits:
    run_timeout: float = 180.0
    max_concurrent_runs: int = 64  # runs in progress; what they use is bounded where it is used
    max_urls_per_turn: int = 5
    max_message_chars: int = 4_000
    user_rate_limit: int = 10  # messages per user per minute
    thread_rate_limit: int = 20  # messages per thread per minute
    daily_token_budget: int = 0  # tokens per Discord server / Slack workspace per UTC day; 0: no limit
    run_token_estimate: int = 20_000  # tokens a run sets aside from the budget when admitted (at least)


RATE_WINDOW = 60.0  # seconds the rate limits count over
ENDING_TIMEOUT = 30.0  # s for what an ending run still does (roll back, finish, pay) before `Done` regardless
DELIVERY_GRACE = 3.0  # s a closing service gives readers at least, to post finished answers
QUEUE_MARGIN = 60.0  # s a waiting run's record outlives its longest wait (the run timeout) on another host
STOPPED = "Stopped. Nothing of that answer was kept; ask again any time."
SHUT_DOWN = "The bot was stopped while answering; please ask again when it is back."
BUG = "Something went wrong on my side; the details are in the bot's log."


ProgressCallback = Callable[[str], Awaitable[None]]


@dataclass
class _ThreadTurns:
    """One run at a time per thread; the entry lives while anyone is running or waiting."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0


def budget_bucket(ask: Ask) -> str:
    """Whose daily budget a message spends: its server or workspace, or its user's own for a
    direct message (no workspace)."""
    return ask.workspace or f"user:{ask.user_id}"


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
        self._active: dict[str, _ActiveRun] = {}
        self._closing = False
        self._threads_here: set[str] = set()  # threads claimed by this process, when the database cannot tell
        self._seen_here: OrderedDict[str, None] = OrderedDict()  # event keys, likewise

    async def handle(self, thread_id: str, user_id: str, text: str,
                     on_progress: ProgressCallback | None = None, *, platform: str = "console",
                     workspace: str = "", reply_to: str = "") -> Reply:
        """Answer one message of a thread; progress lines go to `on_progress`. Never raises for
        anything a user can cause."""
        reply = Reply(BUG, ok=False)
        async for event in self.stream(Ask(thread_id, user_id, text, platform, workspace, reply_to)):
            if isinstance(event, Progress) and on_progress is not None:
                await _notify(on_progress, event.text)
            elif isinstance(event, Done):
                reply = event.reply
        return reply

    async def stream(self, ask: Ask) -> AsyncIterator[Event]:
        """The events of answering `ask`, ending with exactly one `Done`. Never raises for
        anything a user can cause. The run works in a task of its own: a slow reader of the
        events does not hold it, and `cancel(run_id)` stops it."""
        if self._closing:
            yield Done(Reply("The bot is restarting; please ask again in a minute.", ok=False))
            return
        # The message's place in its thread's line is taken on arrival: the checks await the
        # database, and must not let a later message of the thread overtake it.
        place = self._take_place(ask.thread_id)
        run = _ActiveRun(secrets.token_hex(8), ask, place, reply_to=ask.reply_to)
        try:
            refusal = await self._check_message(ask)
            if refusal is None:
                refusal = await self._reserve_tokens(run)
        except asyncio.CancelledError:
            self._leave_place(ask.thread_id, place)
            raise
        except Exception as exc:  # a bug of ours still ends in one sentence, never in silence
            log.error("checking a message in %s failed: %s", ask.thread_id, exc, exc_info=not _expected(exc))
            refusal = friendly_error(exc, self.limits)
        if refusal is not None:
            self._leave_place(ask.thread_id, place)
            yield Done(Reply(refusal, ok=False))
            return
        run.task = asyncio.create_task(self._work(run), name=f"run {run.id}")
        self._active[run.id] = run
        try:
            yield Started(run.id)
            while True:
                event = await run.events.get()
                yield event
                if isinstance(event, Done):
                    return
        finally:
            try:
                self._stop(run)  # the reader went away (its task was cancelled): stop the run, if not ending
                await asyncio.gather(run.task, return_exceptions=True)
                if run.kept:  # the reader is done with the answer (posted it): forget the run
                    try:
                        await asyncio.shield(self.store.finish_run(run.id))
                    except StoreUnavailable as exc:  # its next run or start-up tells the asker, harmlessly
                        log.warning("could not finish run %s: %s", run.id, exc)
            finally:
                self._active.pop(run.id, None)
                run.delivered.set()

    # Which chat threads are the bot's, and which platform events were handled. When the
    # database fails, this process's memory decides, and the answer path says what happened in
    # the thread (never a silent drop).

    async def claim_thread(self, thread_id: str) -> None:
        """The bot answers in this thread from now on. Raises `StoreUnavailable` (remembered in
        this process all the same)."""
        self._threads_here.add(thread_id)
        await self.store.claim_thread(thread_id)

    async def owns_thread(self, thread_id: str) -> bool:
        try:
            return await self.store.owns_thread(thread_id)
        except StoreUnavailable as exc:
            log.warning("%s; thread ownership from memory", exc)
            return thread_id in self._threads_here

    async def first_sighting(self, event_key: str) -> bool:
        """True the first time a platform event is seen (by any process), False for re-deliveries."""
        try:
            fresh = await self.store.first_sighting(event_key)
        except StoreUnavailable as exc:
            log.warning("%s; duplicate events detected from memory", exc)
            fresh = event_key not in self._seen_here
        self._seen_here[event_key] = None
        while len(self._seen_here) > 10_000:
            self._seen_here.popitem(last=False)
        return fresh

    async def seed_thread(self, thread_id: str, opening: str, text: str) -> None:
        """A thread the bot opened under a message of its own (a digest): the bot answers in it,
        and its history begins with that message (`opening` → `text`), so questions about it
        are answered with it in view. Raises `StoreUnavailable`."""
        await self.claim_thread(thread_id)
        async with self.store.turn_lock(thread_id):
            await self.agent.seed(thread_id, opening, text)
            await self.store.prune_checkpoints(thread_id)

    def run_owner(self, run_id: str) -> str | None:
        """Who asked the question that run `run_id` answers, while it runs."""
        run = self._active.get(run_id)
        return run.ask.user_id if run else None

    async def update_reply_to(self, run_id: str, reply_to: str) -> None:
        """From now on, tell the asker at `reply_to` if the process dies during run `run_id` (e.g.
        the message the answer is written into). Kept even when the run is not recorded yet (it
        may wait for its turn). A run that is over is left alone. Raises `StoreUnavailable`."""
        run = self._active.get(run_id)
        if run is None:
            return
        run.reply_to = reply_to
        if run.recorded or run.queued:
            await self.store.update_reply_to(run_id, reply_to)

    def cancel(self, run_id: str) -> bool:
        """Stop a run in progress (a Stop button). False when no such run is active. A run
        already stopping or ending is left to end as it does (the press is acknowledged)."""
        run = self._active.get(run_id)
        if run is None or run.task is None or run.task.done():
            return False
        self._stop(run, by_user=True)
        return True

    def _stop(self, run: _ActiveRun, by_user: bool = False) -> None:
        """Cancel `run`'s task, once, and only before it is ending."""
        if run.task is None or run.task.done() or run.ending or run.cancelled:
            return
        run.cancelled = True
        run.stop_requested = by_user
        if run.begun:  # else `_work` sees `cancelled` when it starts (a task cancelled before it ran never runs)
            run.task.cancel()

    async def _work(self, run: _ActiveRun) -> None:
        """Run `run` and emit its one `Done`, whatever happens (see the module's docstring)."""
        emit = run.events.put_nowait
        reply = Reply(BUG, ok=False)
        try:
            try:
                run.begun = True
                if run.cancelled:
                    raise asyncio.CancelledError
                reply = await self._run_in_turn(run, emit)
            except asyncio.CancelledError:
                if run.cancelled:  # our own Stop or shutdown: this task goes on to end the run
                    asyncio.current_task().uncancel()
                reply = Reply(STOPPED, ok=False, stopped=True) if run.stop_requested else Reply(SHUT_DOWN, ok=False)
                if not run.cancelled:
                    raise  # cancelled by someone else (the event loop closing): still one Done, below
            except Exception as exc:  # a bug of ours still ends in one sentence, never in silence
                log.error("handling a message in %s failed: %s", run.ask.thread_id, exc, exc_info=not _expected(exc))
                reply = Reply(friendly_error(exc, self.limits), ok=False)
            run.ending = True
            reply = replace(reply, usage=run.usage.usage())
            try:
                async with asyncio.timeout(ENDING_TIMEOUT):
                    await self._pay(run, reply.usage)
            except (StoreUnavailable, TimeoutError) as exc:
                log.warning("could not record the token usage of run %s: %s", run.id, exc)
        finally:
            run.ending = True
            emit(Done(replace(reply, run_id=run.id)))

    async def _pay(self, run: _ActiveRun, usage: list[TokenUsage]) -> None:
        """Record what the run used (estimates under their own model name, see `zennbot stats`)
        and settle its budget reservation."""
        if usage:
            await self.store.record_usage(run.id, run.ask.platform, run.ask.workspace, run.ask.thread_id,
                                          [TokenUsage(f"{u.model} (estimated)", u.input_tokens, u.output_tokens)
                                           if u.estimated else u for u in usage])
        if run.reserved:
            await self.store.settle_tokens(run.id, sum(u.input_tokens + u.output_tokens for u in usage))

    async def _reserve_tokens(self, run: _ActiveRun) -> str | None:
        """Admit the run against the daily budget of its bucket (see the module's docstring):
        None when admitted (its estimate set aside), else the sentence refusing it."""
        budget = self.limits.daily_token_budget
        if not budget:
            return None
        ask = run.ask
        dm = not ask.workspace
        claim = BudgetClaim(run.id, ask.platform, budget_bucket(ask), ask.user_id, self.limits.run_token_estimate,
                            guard_user=dm)
        refusal = await self.store.reserve_tokens(claim, budget)
        if refusal is None:
            run.reserved = True
            return None
        if refusal.bucket != claim.bucket:
            return (f"Sorry, a server you asked me in today has used its token budget for me ({refusal.used:,} of "
                    f"{budget:,} tokens), so I can't answer in direct messages either. I can answer again after "
                    "00:00 UTC.")
        where = "your direct messages" if dm else {"discord": "this server", "slack": "this workspace"}.get(
            ask.platform, "this bot")
        return (f"Sorry, {where} has used today's token budget for me ({refusal.used:,} of "
                f"{budget:,} tokens). I can answer again after 00:00 UTC.")

    async def record_feedback(self, platform: str, thread_id: str, message_id: str, user_id: str,
                              value: str) -> None:
        """A 👍 ("good") or 👎 ("bad") on an answer. Raises `StoreUnavailable` when it cannot be stored."""
        if value not in ("good", "bad"):
            raise ValueError(f"feedback is 'good' or 'bad', not {value!r}")
        await self.store.record_feedback(platform, thread_id, message_id, user_id, value)

    async def _check_message(self, ask: Ask) -> str | None:
        text = ask.text.strip()
        if not text:
            return USAGE
        if len(text) > self.limits.max_message_chars:
            return (f"That message is {len(text):,} characters long; I read at most "
                    f"{self.limits.max_message_chars:,}. Please shorten it.")
        for key, limit in ((f"user:{ask.user_id}", self.limits.user_rate_limit),
                           (f"thread:{ask.thread_id}", self.limits.thread_rate_limit)):
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

    def _take_place(self, thread_id: str) -> asyncio.Task:
        """Queue for the thread's turn (asyncio.Lock serves waiters in order); the task completes
        when it is this message's turn. Give it back with `_leave_place`."""
        turns = self._threads.setdefault(thread_id, _ThreadTurns())
        turns.waiting += 1
        return asyncio.ensure_future(turns.lock.acquire())

    def _leave_place(self, thread_id: str, place: asyncio.Task) -> None:
        """Release the thread's turn if `place` got it, else stop waiting for it."""
        turns = self._threads[thread_id]
        if place.done() and not place.cancelled() and place.exception() is None:
            turns.lock.release()
        else:
            place.cancel()
        turns.waiting -= 1
        if turns.waiting == 0:
            del self._threads[thread_id]

    async def _run_in_turn(self, run: _ActiveRun, emit) -> Reply:
        """Wait for the thread's turn (in this process, then across processes) and a run slot,
        at most `run_timeout` in all; waiting holds no database connection (the store's
        `turn_lock` polls its lease in short transactions)."""
        thread_id = run.ask.thread_id
        started = False
        await self._queue(run)
        try:
            async with asyncio.timeout(self.limits.run_timeout) as waiting:
                if not run.place.done():
                    emit(Progress("still answering the previous message in this thread; yours is next"))
                await asyncio.shield(run.place)
                async with self.store.turn_lock(thread_id):  # one run per thread across processes
                    if self._runs.locked():
                        emit(Progress("busy with other questions right now; you are in the queue and will be "
                                      "answered in turn"))
                    async with self._runs:
                        waiting.reschedule(None)  # the run has a time limit of its own
                        started = True
                        return await self._run(run, emit)
        except TimeoutError:
            if started:
                raise
            log.warning("no turn in %s within %g s", thread_id, self.limits.run_timeout)
            return Reply(f"I couldn't get to your message within {self.limits.run_timeout:g} s (the thread or the "
                         "bot was busy the whole time). Please ask again.", ok=False)
        except TurnLost:
            return Reply("The bot lost its hold on this thread (its database lease), so it stopped answering and "
                         "kept nothing of it. Please ask again.", ok=False)
        finally:
            self._leave_place(thread_id, run.place)
            if run.queued and not run.recorded:  # it never began: its asker is told by this run's reply
                await self._unqueue(run)

    async def _queue(self, run: _ActiveRun) -> None:
        """Record the run as waiting for its turn, so that a crash while it waits is told to its
        asker at restart (`bot.recovery`). Best effort: without it the run still runs."""
        ask, reply_to = run.ask, run.reply_to
        try:
            await self.store.queue_run(RunRecord(ask.thread_id, ask.platform, ask.user_id, ask.text.strip(), None,
                                                 reply_to, run.id), self.limits.run_timeout + QUEUE_MARGIN)
            run.queued = True
            if run.reply_to != reply_to:  # the adapter moved it while the run was being queued
                await self.store.update_reply_to(run.id, run.reply_to)
        except StoreUnavailable as exc:
            log.warning("could not record that run %s waits for its turn: %s", run.id, exc)
        except asyncio.CancelledError:
            await self._unqueue(run)
            raise

    async def _unqueue(self, run: _ActiveRun) -> None:
        try:
            async with asyncio.timeout(ENDING_TIMEOUT):
                await asyncio.shield(self.store.finish_run(run.id))
        except (StoreUnavailable, TimeoutError) as exc:  # its wait lapses; a restart may tell its asker
            log.warning("could not forget waiting run %s: %s", run.id, exc)

    async def _run(self, run: _ActiveRun, emit) -> Reply:
        ask = run.ask
        thread_id = ask.thread_id
        # A run's steps become history only once it ends well: it is recorded durably first, so
        # that a crash at any instant is rolled back here (the thread's next run) or at start-up.
        try:
            lost = await roll_back_lost_runs(self.store, thread_id, frozenset(self._active))
            before = await self.store.latest_checkpoint(thread_id)
            reply_to = run.reply_to
            await self.store.begin_run(RunRecord(thread_id, ask.platform, ask.user_id, ask.text.strip(), before,
                                                 reply_to, run.id))
            run.recorded = True
            if run.reply_to != reply_to:  # the adapter moved it while the run was being recorded
                await self.store.update_reply_to(run.id, run.reply_to)
        except StoreUnavailable as exc:
            log.error("%s", exc)
            return Reply(friendly_error(exc, self.limits), ok=False)
        except asyncio.CancelledError:  # stopped while being recorded: no record may stay behind
            run.ending = True
            with contextlib.suppress(StoreUnavailable):
                await self.store.finish_run(run.id)
            raise
        for lost_run in lost:
            emit(Progress(f"your earlier question “{short_question(lost_run)}” was lost when the bot stopped; "
                          "please ask it again if you still need it"))
        answer: AgentReply | None = None
        try:
            async with asyncio.timeout(self.limits.run_timeout):
                async for item in self.agent.stream(thread_id, ask.text.strip(), run.usage):
                    if isinstance(item, AgentReply):
                        answer = item
                    else:
                        await self.store.confirm_turn(thread_id)  # nothing reaches the chat from a lost thread
                        emit(item)
                await self.store.confirm_turn(thread_id)
        except asyncio.CancelledError:
            run.ending = True
            await self._forget_failed_run(thread_id, before, run.id)
            raise
        except TurnLost:  # another process has the thread: its next run rolls this one back
            run.ending = True
            raise
        except Exception as exc:  # every failure becomes one sentence; the detail goes to the log
            run.ending = True
            log.error("run failed in %s: %s", thread_id, exc, exc_info=not _expected(exc))
            await self._forget_failed_run(thread_id, before, run.id)
            return Reply(friendly_error(exc, self.limits), ok=False)
        assert answer is not None
        run.ending = True  # the answer is in: a Stop from now on is too late
        try:  # the run is finished once its answer is posted (`stream`): a crash before, and it is told
            await self.store.prune_checkpoints(thread_id)
            await self.store.keep_run(run.id, await self.store.latest_checkpoint(thread_id))
            run.kept = True
        except StoreUnavailable as exc:  # the answer stands; a stale run row is rolled back later
            log.warning("could not finish the run of %s: %s", thread_id, exc)
        return Reply(answer.text, answer.sources)

    async def _forget_failed_run(self, thread_id: str, before: str | None, run_id: str) -> None:
        try:
            await self.store.confirm_turn(thread_id)  # a rollback too touches only a thread still ours
            await self.store.rollback_checkpoints(thread_id, before)
            await self.store.finish_run(run_id)
        except TurnLost:
            log.warning("left the failed run of %s to the process that took the thread over", thread_id)
        except StoreUnavailable as exc:  # the run row stays, so the next run or start-up rolls back
            log.error("could not roll back the failed run of %s: %s", thread_id, exc)

    async def close(self, grace: float = 30.0) -> None:
        """Stop taking messages; let runs in progress finish for `grace` s, then cancel them
        (their users are told); then give their readers what is left of `grace` (at least
        `DELIVERY_GRACE` s) to post the answers and finish the runs, before the store may close."""
        self._closing = True
        until = asyncio.get_running_loop().time() + grace
        runs = list(self._active.values())
        tasks = {run.task for run in runs if run.task is not None}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for run in runs:
                self._stop(run)
            if pending:
                await asyncio.wait(pending, timeout=ENDING_TIMEOUT + 5)
        left = max(until - asyncio.get_running_loop().time(), DELIVERY_GRACE)
        # A reader still writing after that: its run is told at the next start.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left):
                for run in runs:
                    await run.delivered.wait()


@dataclass
class _ActiveRun:
    id: str
    ask: Ask
    place: asyncio.Task  # its turn in the thread's line (see `_take_place`)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    task: asyncio.Task | None = None
    stop_requested: bool = False  # cancelled by a Stop (else by shutdown or the reader going away)
    cancelled: bool = False  # its task was cancelled (once, never again)
    begun: bool = False  # its task has started running (`_work`)
    ending: bool = False  # its outcome is decided: a Stop is a no-op (see the module's docstring)
    reply_to: str = ""  # where a lost run is told, as the adapter last said (`update_reply_to`)
    queued: bool = False  # `store.queue_run` is done: changes of `reply_to` go to the store
    recorded: bool = False  # `store.begin_run` is done (it ended the waiting record)
    kept: bool = False  # answered, history kept (`store.keep_run`): finished once the answer is read
    reserved: bool = False  # its estimate is set aside from a daily budget: settle it at the end
    usage: UsageCollector = field(default_factory=UsageCollector)
    delivered: asyncio.Event = field(default_factory=asyncio.Event)  # its reader is done (`stream` ended)


async def _notify(on_progress: ProgressCallback, text: str) -> None:
    try:
        await on_progress(text)
    except Exception:
        log.warning("progress callback failed", exc_info=True)


def _expected(exc: Exception) -> bool:
    """Failures that are the world's, not a bug of ours: one log line, no traceback."""
    return isinstance(exc, (BlockedUrl, PageLoadError, ZennRefused, TimeoutError, ModelRateLimitError, MissingApiKey,
                            StoreUnavailable, ModelAPIError, ModelConnectionError,
                            ModelTimeoutError, ModelAuthenticationError, ModelPermissionDeniedError,
                            *UNREACHABLE_ERRORS))


def friendly_error(exc: BaseException, limits: ServiceLimits) -> str:
    """One short sentence for the chat; never a stack trace, never a secret."""
    if isinstance(exc, BlockedUrl):
        return f"I can't read that link: {exc.reason}."
    if isinstance(exc, PageLoadError):
        return f"I couldn't read the page: {exc.reason}."
    if isinstance(exc, ZennRefused):
        return exc.reason
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
    return "Something went wrong on my side; the details are in the bot's log."


def unreachable_reason(exc: BaseException) -> str:
    """What kept the model's endpoint out of reach, in a few words, from the error and its causes."""
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
