"""The store contract, written once: what every backend (`bot.store.sqlite`,
`bot.store.postgres`) guarantees, and the pieces they share.

Errors. Every method raises `StoreUnavailable` when the database cannot be used (locked beyond
the busy timeout, unreachable, no free connection within the timeout, disk full, I/O error) and
nothing else for database trouble, on both backends; the checkpointer's own methods included.

Cancellation. Any method may be cancelled at any await. A cancelled write either happened
completely or not at all; it leaves no transaction open, no lock held and no connection out of
its pool, so the next call of this process and writes of other processes go on as usual.

Threads across processes. `turn_lock` gives one run at a time per thread across every process
on the database. Waiting for it holds no database connection. A holder that loses its hold
(connection dropped, database restarted, lease taken over) notices within seconds and stops its
run before any other process can take the thread over; another process takes a thread over only
from a holder that has provably stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from langgraph.checkpoint.base import BaseCheckpointSaver

from agent.types import CachedPage, TokenUsage

EVENT_MEMORY = 7 * 24 * 3600.0  # how long a handled event id is remembered
PAGE_MEMORY = 7 * 24 * 3600.0  # cached pages older than this are deleted (the TTL decides freshness)
RATE_MEMORY = 24 * 3600.0  # rate-limit counts older than this are deleted, whatever their key
LEASE_TTL = 15.0  # a thread's lease lapses this long after its holder last renewed it
LEASE_POLL = (0.05, 1.0)  # first and longest wait between attempts to take a held lease
TAKE_TRIES = 3  # attempts in a row that may fail (StoreUnavailable) while waiting for a lease
USAGE_GROUPS = ("day", "platform", "thread_id", "model")
RESERVATION_TTL = 3600.0  # an unsettled token reservation (its process died) stops counting after this long

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """The database cannot be used right now: locked beyond the busy timeout, out of disk space,
    an I/O error. `reason` is one short phrase for the user ("locked", "out of disk space")."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"database unavailable ({reason}): {detail}" if detail else f"database unavailable ({reason})")
        self.reason = reason


@dataclass(frozen=True)
class RunRecord:
    """One run of the agent on a thread, recorded durably before it starts (`begin_run`) and
    removed when it ends (`finish_run`). A record that outlives its process is a lost run:
    its thread is rolled back to `checkpoint` and its asker told through `reply_to`."""

    thread_id: str
    platform: str  # "console", "slack", "discord": which adapter acknowledges it if lost
    user_id: str
    question: str
    checkpoint: str | None  # the thread's latest checkpoint before the run (None: a new thread)
    reply_to: str = ""  # where to tell the user, opaque to the store (the adapter's JSON)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class UsageRow:
    """Tokens summed over one group of runs (a day, a platform, a thread…)."""

    key: str
    runs: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class BudgetClaim:
    """Tokens a run sets aside from its bucket's daily budget when it is admitted.

    `bucket` is the Discord server, the Slack workspace, or `user:<id>` for a user's direct
    messages. `estimate` is the least a run sets aside; the store sets aside the largest run the
    bucket settled today when that is more. `guard_user`: also refuse while any other bucket the
    user spent in today (on this platform) is exhausted (a DM is no way around a server's budget)."""

    run_id: str
    platform: str
    bucket: str
    user_id: str
    estimate: int
    guard_user: bool = False


@dataclass(frozen=True)
class BudgetRefusal:
    """Why a claim was refused: `bucket` has spent or set aside `used` tokens today."""

    bucket: str
    used: int


def utc_day(timestamp: float | None = None) -> str:
    """The UTC date a token budget counts in (budgets start again at 00:00 UTC)."""
    return dt.datetime.fromtimestamp(time.time() if timestamp is None else timestamp, dt.UTC).date().isoformat()


class SaverErrors:
    """Put first among the bases of a backend's LangGraph saver: its database errors
    (`database_error`) are raised as `StoreUnavailable` (`unavailable(exc)`), like the store's,
    so the service words them the same way on every backend; and it writes a thread's history
    only while the thread is still this process's (`Turns.confirm`)."""

    database_error: type[Exception] = Exception
    turns: Turns | None = None  # the store's: history is written only to a thread still ours

    async def confirm(self, config) -> None:
        if self.turns is not None:
            await self.turns.confirm(config["configurable"]["thread_id"])

    @staticmethod
    def unavailable(exc: Exception) -> StoreUnavailable:
        raise NotImplementedError

    @contextlib.contextmanager
    def translated_errors(self):
        try:
            yield
        except self.database_error as exc:
            raise self.unavailable(exc) from exc

    async def setup(self) -> None:
        with self.translated_errors():
            await super().setup()  # type: ignore[misc]

    async def aget_tuple(self, config):
        with self.translated_errors():
            return await super().aget_tuple(config)  # type: ignore[misc]

    async def alist(self, config, **kwargs):
        with self.translated_errors():
            async for item in super().alist(config, **kwargs):  # type: ignore[misc]
                yield item

    async def aput(self, config, checkpoint, metadata, new_versions):
        await self.confirm(config)
        with self.translated_errors():
            return await super().aput(config, checkpoint, metadata, new_versions)  # type: ignore[misc]

    async def aput_writes(self, config, writes, task_id, task_path=""):
        await self.confirm(config)
        with self.translated_errors():
            return await super().aput_writes(config, writes, task_id, task_path)  # type: ignore[misc]

    async def adelete_thread(self, thread_id):
        with self.translated_errors():
            return await super().adelete_thread(thread_id)  # type: ignore[misc]

    async def aprune(self, thread_ids, *, strategy="keep_latest"):
        with self.translated_errors():
            return await super().aprune(thread_ids, strategy=strategy)  # type: ignore[misc]

    async def aget_delta_channel_history(self, *, config, channels):
        with self.translated_errors():
            return await super().aget_delta_channel_history(config=config, channels=channels)  # type: ignore[misc]


class TurnLost(Exception):
    """The run lost its hold on its thread (the lease was taken away, or could not be renewed in
    time) and was stopped, before any other process could take the thread over."""

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"lost the hold on thread {thread_id}")
        self.thread_id = thread_id


class LocalTurns:
    """One run at a time per thread within this process, in arrival order, before the backend's
    cross-process lock is tried (so waiters of one process do not poll the database)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, thread_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(thread_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[thread_id]


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: a process on a host; `token` tells a restarted process with the same
    pid (pid 1 in a container) from the one that died."""

    host: str
    pid: int
    token: str

    def alive(self, me: Holder) -> bool:
        """False only when the holder is provably gone: it ran on this host and its process is
        no more (or is a restarted one). Elsewhere only the lease's expiry can tell."""
        if self.host != me.host:
            return True
        if self.pid == me.pid:
            return self.token == me.token
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _host() -> str:
    """This machine, as far as pids mean anything: the host name and the pid namespace (two
    containers with the host's name still have separate pids)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


_ME = Holder(_host(), os.getpid(), uuid.uuid4().hex)


def this_process() -> Holder:
    """This process as a lease holder (a fork gets a token of its own)."""
    global _ME
    if os.getpid() != _ME.pid:
        _ME = Holder(_ME.host, os.getpid(), uuid.uuid4().hex)
    return _ME


class LeaseTable(Protocol):
    """A backend's three lease writes, each one short transaction of its own."""

    async def take_lease(self, thread_id: str, lease: str) -> bool:
        """Take the thread for `lease` unless a live holder has it (a lease that has not expired
        and whose holder is not provably gone). Raises `StoreUnavailable`."""

    async def renew_lease(self, thread_id: str, lease: str) -> bool:
        """Push the lease's expiry `ttl` ahead; False when it is no longer ours."""

    async def release_lease(self, thread_id: str, lease: str) -> None: ...


class Turns:
    """One run at a time per thread across processes, with leases (both backends).

    Waiting costs nothing: the coroutines of one process queue in memory (`LocalTurns`); the
    first of them tries the lease in one short transaction at a time, backing off from 50 ms to
    1 s, so a waiting run holds no database connection. The holder renews its lease every
    `ttl / 3`. When a renewal finds the lease gone, or renewals keep failing until `2 ttl / 3`
    have passed since the last good one, the holder's run is cancelled and `hold` raises
    `TurnLost` (as `asyncio.timeout` turns its cancellation into `TimeoutError`): the owner
    stops at least `ttl / 3` before its lease expires, and another process takes a thread over
    only once the lease expired, or at once when its holder is provably gone (same host, dead
    process). So two processes never run the same thread at once.

    A process that did not run for a while (stopped, a paused VM, a clock jump) may wake up past
    its lease's expiry, with another process on the thread. So what makes a run's work visible
    (its history, its messages) first calls `confirm`: past `2 ttl / 3` since the last renewal,
    only the database can tell whether the thread is still ours. A thread taken over is left to
    its new holder, untouched: it rolls the lost run back (`bot.recovery`)."""

    def __init__(self, table: LeaseTable, ttl: float = LEASE_TTL) -> None:
        self.table = table
        self.ttl = ttl
        self.held: dict[str, _Hold] = {}  # thread id -> our hold on it
        self._local = LocalTurns()

    @contextlib.asynccontextmanager
    async def hold(self, thread_id: str) -> AsyncIterator[None]:
        async with self._local.hold(thread_id):
            lease = uuid.uuid4().hex
            delay = LEASE_POLL[0]
            failures = 0
            try:
                while True:
                    taken_at = time.monotonic()
                    try:
                        if await self.table.take_lease(thread_id, lease):
                            break
                        failures = 0
                    except StoreUnavailable as exc:  # a dropped connection is replaced for the next try
                        failures += 1
                        if failures == TAKE_TRIES:
                            raise
                        log.warning("could not try the lease on %s (%s); trying again", thread_id, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, LEASE_POLL[1])
            except BaseException:  # a take cut short may have committed: give it back
                await asyncio.shield(self._release(thread_id, lease))
                raise
            holder = asyncio.current_task()
            state = _Hold(lease, taken_at)
            keeper = asyncio.create_task(self._keep(thread_id, lease, state, holder),
                                         name=f"lease keeper {thread_id}")
            self.held[thread_id] = state
            try:
                yield
            except asyncio.CancelledError as exc:
                if state.lost and holder is not None and holder.uncancel() == 0:
                    raise TurnLost(thread_id) from exc
                raise
            finally:
                state.in_body = False
                self.held.pop(thread_id, None)
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)
                await asyncio.shield(self._release(thread_id, lease))

    async def _keep(self, thread_id: str, lease: str, state: _Hold, holder: asyncio.Task | None) -> None:
        interval = self.ttl / 3
        next_try = state.renewed_at + interval
        while True:
            await asyncio.sleep(max(0.0, next_try - time.monotonic()))
            attempt_at = time.monotonic()
            deadline = state.vouched_until(self.ttl)  # stop before the lease can expire
            # Woken past the deadline (this process did not run: stopped, or the clock jumped):
            # the lease may have lapsed, and only the database can tell whether it was taken.
            overslept = attempt_at > deadline
            try:
                async with asyncio.timeout(interval if overslept else deadline - attempt_at):
                    ours = await self.table.renew_lease(thread_id, lease)
            except (StoreUnavailable, TimeoutError) as exc:
                exc = exc if str(exc) else "timed out"
                if not overslept and time.monotonic() < deadline:
                    log.warning("could not renew the lease on %s (%s); trying again", thread_id, exc)
                    next_try = min(time.monotonic() + interval / 4, deadline)
                    continue
                log.error("could not renew the lease on %s in time (%s): stopping its run", thread_id, exc)
            else:
                if ours:
                    state.renewed_at = attempt_at
                    next_try = attempt_at + interval
                    continue
                log.error("the lease on %s was taken away: stopping its run", thread_id)
                state.taken = True
            state.lost = True
            if state.in_body and holder is not None:
                holder.cancel()
            return

    def lease_of(self, thread_id: str) -> str | None:
        """This process's lease on the thread while it holds it, else None."""
        state = self.held.get(thread_id)
        return state.lease if state is not None else None

    async def confirm(self, thread_id: str) -> None:
        """Before a write that makes the run's work visible: returns when the thread is still
        ours, raises `TurnLost` when another process has taken it over (then nothing more may
        be written to it: not even a rollback). Within `2 ttl / 3` of the last renewal this
        process's clock says so; past it, the lease is renewed if no one took it. A no-op for
        a thread this process does not hold. Raises `StoreUnavailable`."""
        state = self.held.get(thread_id)
        if state is None:
            return
        if state.taken:
            raise TurnLost(thread_id)
        attempt_at = time.monotonic()
        if not state.lost and attempt_at < state.vouched_until(self.ttl):
            return
        if await self.table.renew_lease(thread_id, state.lease):
            state.renewed_at = max(state.renewed_at, attempt_at)
            return
        log.error("the lease on %s was taken over while this process was not running", thread_id)
        state.taken = state.lost = True
        raise TurnLost(thread_id)

    async def _release(self, thread_id: str, lease: str) -> None:
        try:
            await self.table.release_lease(thread_id, lease)
        except StoreUnavailable as exc:  # it lapses by itself (or at once, for a restarted process)
            log.warning("could not release the lease on %s: %s", thread_id, exc)


@dataclass
class _Hold:
    lease: str
    renewed_at: float  # monotonic time the last successful take or renewal was sent
    lost: bool = False  # the run was stopped (or is to be): the hold could not be kept
    taken: bool = False  # another process has the thread now: leave it alone
    in_body: bool = True

    def vouched_until(self, ttl: float) -> float:
        """Until when this process's own clock vouches for the lease: `2 ttl / 3` after the last
        renewal, a third of the lease before it can expire."""
        return self.renewed_at + 2 * ttl / 3


@runtime_checkable
class Store(Protocol):
    """What the conversation service, the adapters (through the service) and the CLI need of a
    database. Open a backend with `bot.store.open_store(settings)`; close it with `close()`."""

    checkpointer: BaseCheckpointSaver  # LangGraph's, for thread history

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Readiness: returns when the store can write (a tiny write in its own transaction)."""

    # Page cache (agent.pages.PageCache)
    async def get_page(self, url: str, max_age: float) -> CachedPage | None: ...

    async def put_page(self, page: CachedPage) -> None: ...

    # Threads the bot owns (Discord threads it opened, Slack threads it answered in)
    async def claim_thread(self, thread_id: str) -> None: ...

    async def owns_thread(self, thread_id: str) -> bool: ...

    async def first_sighting(self, event_id: str) -> bool:
        """True the first time an event id is seen by any process, False for every re-delivery."""

    def turn_lock(self, thread_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the thread for one run, across processes (see `Turns`). Waiting holds no
        database connection. Raises `StoreUnavailable`, and `TurnLost` when the hold was lost
        while held (the body was cancelled)."""

    async def confirm_turn(self, thread_id: str) -> None:
        """Within `turn_lock(thread_id)`, before what makes a run's work visible (an event for
        the chat, history, a rollback): returns while the thread is still this process's,
        raises `TurnLost` once another process has taken it over (see `Turns.confirm`). The
        checkpointer's writes call it too. Raises `StoreUnavailable`."""

    # Runs in progress: what a crash leaves behind is rolled back, never kept as history
    async def begin_run(self, run: RunRecord) -> None:
        """Record `run` durably before the agent starts; call it while holding
        `turn_lock(run.thread_id)` (RuntimeError otherwise)."""

    async def queue_run(self, run: RunRecord, wait: float) -> None:
        """Record `run` as waiting for its turn, for at most `wait` s, held by this process: a
        crash while it waits leaves its asker to be told (`abandoned_runs`). `begin_run` and
        `finish_run` end the record."""

    async def update_reply_to(self, run_id: str, reply_to: str) -> None:
        """Change where to tell the user about a run, waiting or begun; a run neither waiting
        nor begun is left alone."""

    async def finish_run(self, run_id: str) -> None:
        """Forget a run that ended (answered, rolled back, or never begun)."""

    async def unfinished_runs(self, platform: str | None = None) -> list[RunRecord]:
        """Lost runs, oldest first: begun, never finished, and their holder provably gone."""

    async def abandoned_runs(self, platform: str | None = None) -> list[RunRecord]:
        """Runs that were waiting for their turn when their process died (or whose wait ran out
        unrecorded), oldest first: nothing of them ran, only their askers are to be told. A run
        that got as far as `begin_run` is not listed (`unfinished_runs` has it)."""

    # What answers cost, and what people thought of them
    async def record_usage(self, run_id: str, platform: str, workspace: str, thread_id: str,
                           usage: list[TokenUsage]) -> None:
        """Store a run's usage; recording the same run and model again replaces it."""

    async def tokens_today(self, platform: str, workspace: str) -> int: ...

    async def usage_by(self, column: str, limit: int = 20) -> list[UsageRow]:
        """Token totals grouped by `day`, `platform` or `thread_id`, largest (or latest day) first."""

    async def record_feedback(self, platform: str, thread_id: str, message_id: str, user_id: str,
                              value: str) -> None:
        """One vote per user and message: a second click replaces the first."""

    async def feedback_counts(self) -> dict[tuple[str, str], int]: ...

    async def rate_wait(self, key: str, limit: int, window: float) -> float:
        """At most `limit` events per `key` in any `window` seconds, across processes: 0.0 and the
        event counted when allowed, else the seconds until it would be (nothing counted)."""

    # Thread history housekeeping (the checkpoints themselves are LangGraph's)
    async def latest_checkpoint(self, thread_id: str) -> str | None: ...

    async def prune_checkpoints(self, thread_id: str) -> None:
        """Keep only the newest checkpoint of a thread: it holds the whole history."""

    async def rollback_checkpoints(self, thread_id: str, to: str | None) -> None:
        """Drop every checkpoint newer than `to` (None: the whole thread). Idempotent."""

    # The daily token budget, reserved at admission and settled at the end of the run
    async def reserve_tokens(self, claim: BudgetClaim, budget: int) -> BudgetRefusal | None:
        """Atomically across processes: refuse when the claim's bucket (or, with `guard_user`, a
        bucket of the same user) has spent or set aside `budget` tokens today, else set the run's
        estimate aside (None). A reservation never settled stops counting after `RESERVATION_TTL`."""

    async def settle_tokens(self, run_id: str, tokens: int) -> None:
        """Replace a run's reservation by what it really used (0 for a run that never ran)."""

    async def keep_run(self, run_id: str, checkpoint: str | None) -> None:
        """The run answered: its thread is whole at `checkpoint` (the history with the answer).
        Until `finish_run`, a crash leaves the answer in the history and its asker is told
        (the answer may not have been posted)."""

# Follows and digests (bot.digest). Times here are epoch seconds from the caller's clock, so a
# test can move it; the store never reads the time for them.

FOLLOW_ADDED, FOLLOW_EXISTS, CHANNEL_FULL, WORKSPACE_FULL = "added", "exists", "channel_full", "workspace_full"
DIGEST_DONE = ("posted", "empty")  # states of a digest that is over
DEFAULT_SCHEDULE = ("daily", "09:00", "Asia/Tokyo")  # a new channel's (every, at, tz)
FEED_MEMORY = 35 * 24 * 3600.0  # feed entries this much older than a feed's newest are deleted


@dataclass(frozen=True)
class Follow:
    """A channel follows a target (`bot.digest.targets.Target.key`)."""

    platform: str
    workspace: str
    channel_id: str
    target: str
    display: str = ""
    created_by: str = ""
    created_at: float = 0.0


@dataclass(frozen=True)
class DigestChannel:
    """A channel with follows, and when its digest goes out."""

    platform: str
    workspace: str
    channel_id: str
    every: str
    at: str
    tz: str
    created_at: float


@dataclass(frozen=True)
class DigestRecord:
    """One digest of a channel for one period: claimed (being built), posting (built, `content`
    kept, being posted), posted, or empty (nothing new). Covers items published in (since, until]."""

    platform: str
    channel_id: str
    period: str
    state: str
    since: float
    until: float
    holder: str
    lease_until: float
    content: str = ""  # the built digest (JSON), kept so a taken-over digest is posted as built
    message_ref: str = ""  # where it was posted (the adapter's JSON)


@dataclass(frozen=True)
class FeedEntry:
    """An item seen in a followed feed."""

    feed: str  # the feed's path
    url: str
    title: str
    author: str
    published_at: float


class DigestStore(Protocol):
    """The part of the store that follows and digests use (every backend implements it)."""

    async def add_follow(self, follow: Follow, schedule: tuple[str, str, str] | None, max_per_channel: int,
                         max_per_workspace: int, default: tuple[str, str, str] = DEFAULT_SCHEDULE) -> str:
        """Add a follow within the limits, atomically: `FOLLOW_ADDED`, `FOLLOW_EXISTS`,
        `CHANNEL_FULL` or `WORKSPACE_FULL`. The channel's schedule (every, at, tz) is set when given,
        else kept (a new channel gets `default`)."""

    async def remove_follow(self, platform: str, channel_id: str, target: str) -> bool: ...

    async def list_follows(self, platform: str | None = None, channel_id: str | None = None) -> list[Follow]: ...

    async def digest_channels(self) -> list[DigestChannel]: ...

    async def claim_digest(self, platform: str, channel_id: str, period: str, holder: str, now: float,
                           lease: float, since: float, until: float, take_from: str = "") -> DigestRecord | None:
        """Take the digest of a channel and period to build and post it: a new row, or one whose
        holder's lease lapsed before it was done, or (`take_from`) one still held by a holder
        known to be dead. None when it is done or held by someone else."""

    async def digest_record(self, platform: str, channel_id: str, period: str) -> DigestRecord | None:
        """The digest of a channel and period as it is now, None when nobody claimed it."""

    async def update_digest(self, record: DigestRecord, *, state: str, lease_until: float,
                            content: str | None = None, message_ref: str | None = None) -> bool:
        """Move a digest on, only while `record.holder` still holds it; False when it does not."""

    async def last_digest(self, platform: str, channel_id: str) -> DigestRecord | None:
        """The latest digest of the channel that is over (posted or empty), by `until`."""

    async def claim_feed_poll(self, feed: str, now: float, min_interval: float,
                              busy_for: float) -> tuple[str, str] | None:
        """(etag, last_modified) to poll `feed` now, when no process polled it in the last
        `min_interval` seconds; None otherwise. The poll is counted, and under way until it is
        recorded or `busy_for` seconds have passed."""

    async def record_feed_poll(self, feed: str, etag: str, last_modified: str, entries: list[FeedEntry]) -> None:
        """End the feed's poll: keep its validators and the entries it found (entries already
        known are kept as they are). A poll that failed is ended with its old validators."""

    async def polls_under_way(self, feeds: list[str], now: float) -> list[str]:
        """Those feeds whose poll was claimed (here or by another process) and is not over."""

    async def feed_entries(self, feeds: list[str], since: float, until: float) -> list[FeedEntry]:
        """Entries of those feeds published in (since, until], newest first."""
