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
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from langgraph.checkpoint.base import BaseCheckpointSaver

from agent.types import CachedPage, TokenUsage

EVENT_MEMORY = 7 * 24 * 3600.0  # how long a handled event id is remembered
PAGE_MEMORY = 7 * 24 * 3600.0  # cached pages older than this are deleted (the TTL decides freshness)
RATE_MEMORY = 24 * 3600.0  # rate-limit counts older than this are deleted, whatever their key
LEASE_TTL = 30.0  # a thread's lease lapses this long after its holder stopped renewing it
LEASE_POLL = (0.05, 1.0)  # first and longest wait between attempts to take a held lease
USAGE_GROUPS = ("day", "platform", "thread_id", "model")
RESERVATION_TTL = 3600.0  # an unsettled token reservation (its process died) stops counting after this long


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
        """Hold the thread for one run, across processes (see the module's docstring)."""

    # Runs in progress: what a crash leaves behind is rolled back, never kept as history
    async def begin_run(self, run: RunRecord) -> None:
        """Record `run` durably before the agent starts; call it while holding
        `turn_lock(run.thread_id)` (RuntimeError otherwise)."""

    async def update_reply_to(self, run_id: str, reply_to: str) -> None:
        """Change where to tell the user about a run; a run not begun or finished is left alone."""

    async def finish_run(self, run_id: str) -> None:
        """Forget a run that ended: answered, or rolled back."""

    async def unfinished_runs(self, platform: str | None = None) -> list[RunRecord]:
        """Lost runs, oldest first: begun, never finished, and their holder provably gone."""

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
