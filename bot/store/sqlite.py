"""The bot's one SQLite file (aiosqlite): thread history (LangGraph checkpoints), which chat
threads are the bot's, which platform events were handled, the page cache, and the bookkeeping
that makes a thread survive a crash (runs in progress, one run per thread across processes).

One writer discipline. The bot tables live on one connection that only one coroutine uses at a
time (an asyncio lock); every write is its own `BEGIN IMMEDIATE` transaction, so it takes the
write lock up front and waits for other processes (the busy timeout) instead of failing on a
stale read snapshot. The checkpointer has its own connection, serialised by its own lock.
The contract (errors, cancellation, turns across processes) is `bot.store.base`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from agent.types import CachedPage, TokenUsage
from bot.store.base import (CHANNEL_FULL, DEFAULT_SCHEDULE, EVENT_MEMORY, FEED_MEMORY, FOLLOW_ADDED, FOLLOW_EXISTS,
                            LEASE_TTL, PAGE_MEMORY, RATE_MEMORY, RESERVATION_TTL, USAGE_GROUPS, WORKSPACE_FULL,
                            BudgetClaim, BudgetRefusal, DigestChannel, DigestRecord, FeedEntry, Follow, Holder,
                            RunRecord, SaverErrors, StoreUnavailable, this_process, Turns, UsageRow, utc_day)

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS page_cache (
    url TEXT PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL, source TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '', fetched_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS bot_threads (
    thread_id TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS seen_events (
    event_id TEXT PRIMARY KEY, seen_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS run_usage (
    run_id TEXT NOT NULL, model TEXT NOT NULL, day TEXT NOT NULL, platform TEXT NOT NULL,
    workspace TEXT NOT NULL, thread_id TEXT NOT NULL, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (run_id, model));
CREATE INDEX IF NOT EXISTS run_usage_budget ON run_usage (platform, workspace, day);
CREATE TABLE IF NOT EXISTS feedback (
    platform TEXT NOT NULL, thread_id TEXT NOT NULL, message_id TEXT NOT NULL, user_id TEXT NOT NULL,
    value TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (platform, message_id, user_id));
CREATE TABLE IF NOT EXISTS thread_leases (
    thread_id TEXT PRIMARY KEY, lease TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
    process TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, platform TEXT NOT NULL, user_id TEXT NOT NULL,
    question TEXT NOT NULL, reply_to TEXT NOT NULL, checkpoint TEXT, started_at REAL NOT NULL,
    lease TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS waiting_runs (
    run_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, platform TEXT NOT NULL, user_id TEXT NOT NULL,
    question TEXT NOT NULL, reply_to TEXT NOT NULL, started_at REAL NOT NULL, host TEXT NOT NULL,
    pid INTEGER NOT NULL, process TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rate_events (key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rate_events_key_at ON rate_events (key, at);
CREATE TABLE IF NOT EXISTS zennbot_heartbeat (id INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS token_budget (
    run_id TEXT PRIMARY KEY, platform TEXT NOT NULL, bucket TEXT NOT NULL, user_id TEXT NOT NULL,
    day TEXT NOT NULL, tokens INTEGER NOT NULL, settled INTEGER NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS token_budget_bucket ON token_budget (platform, bucket, day);
CREATE TABLE IF NOT EXISTS follows (
    platform TEXT NOT NULL, workspace TEXT NOT NULL, channel_id TEXT NOT NULL, target TEXT NOT NULL,
    display TEXT NOT NULL, created_by TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (platform, channel_id, target));
CREATE INDEX IF NOT EXISTS follows_workspace ON follows (platform, workspace);
CREATE TABLE IF NOT EXISTS digest_channels (
    platform TEXT NOT NULL, channel_id TEXT NOT NULL, workspace TEXT NOT NULL, every TEXT NOT NULL,
    at TEXT NOT NULL, tz TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (platform, channel_id));
CREATE TABLE IF NOT EXISTS digests (
    platform TEXT NOT NULL, channel_id TEXT NOT NULL, period TEXT NOT NULL, state TEXT NOT NULL,
    since REAL NOT NULL, until REAL NOT NULL, holder TEXT NOT NULL, lease_until REAL NOT NULL,
    content TEXT NOT NULL DEFAULT '', message_ref TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (platform, channel_id, period));
CREATE TABLE IF NOT EXISTS feed_state (
    feed TEXT PRIMARY KEY, etag TEXT NOT NULL, last_modified TEXT NOT NULL, polled_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS feed_polls (feed TEXT PRIMARY KEY, busy_until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS feed_entries (
    feed TEXT NOT NULL, url TEXT NOT NULL, title TEXT NOT NULL, author TEXT NOT NULL,
    published_at REAL NOT NULL, PRIMARY KEY (feed, url));
CREATE INDEX IF NOT EXISTS feed_entries_published ON feed_entries (feed, published_at);
"""
BUSY_RETRY_DELAY = 0.05


class SqliteStore:
    """The SQLite backend of `bot.store.base.Store`. Open with `await SqliteStore.open(path)`,
    close with `await store.close()`."""

    def __init__(self, conn: aiosqlite.Connection, checkpoint_conn: aiosqlite.Connection, *,
                 busy_timeout: float = 10.0, lease_ttl: float = LEASE_TTL) -> None:
        self.conn = conn
        self.checkpointer = _Checkpointer(checkpoint_conn)
        self.busy_timeout = busy_timeout
        self.lease_ttl = lease_ttl
        self._serial = asyncio.Lock()  # one coroutine at a time on `conn`
        self._turns = Turns(self, lease_ttl)
        self.checkpointer.turns = self._turns
        self._me = this_process()

    @classmethod
    async def open(cls, path: str, busy_timeout: float = 10.0, lease_ttl: float = LEASE_TTL) -> SqliteStore:
        """Raises `StoreUnavailable` when the file cannot be opened or set up."""
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = await _connect(path, busy_timeout, autocommit=True)
            await conn.executescript(SCHEMA)
            store = cls(conn, await _connect(path, busy_timeout), busy_timeout=busy_timeout, lease_ttl=lease_ttl)
            await store.checkpointer.setup()
        except (sqlite3.Error, OSError) as exc:
            raise unavailable(exc) from exc
        return store

    async def close(self) -> None:
        await self.checkpointer.conn.close()
        await self.conn.close()

    async def ping(self) -> None:
        """Readiness: returns when the store can write (a heartbeat row, in its own transaction;
        it also rolls back a connection found inside a stale transaction) and the checkpointer's
        connection answers. Raises `StoreUnavailable`."""
        async def write(conn: aiosqlite.Connection) -> None:
            await conn.execute("INSERT OR REPLACE INTO zennbot_heartbeat (id, at) VALUES (1, ?)", (time.time(),))
        await self._write(write)
        try:
            async with self.checkpointer.lock, self.checkpointer.conn.execute("SELECT 1") as cursor:
                await cursor.fetchone()
        except sqlite3.Error as exc:
            raise unavailable(exc) from exc

    # Page cache (agent.pages.PageCache)

    async def get_page(self, url: str, max_age: float) -> CachedPage | None:
        rows = await self._read(
            "SELECT url, title, text, source, summary, fetched_at FROM page_cache WHERE url = ? AND fetched_at >= ?",
            (url, time.time() - max_age))
        return CachedPage(*rows[0]) if rows else None

    async def put_page(self, page: CachedPage) -> None:
        async def write(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT OR REPLACE INTO page_cache (url, title, text, source, summary, fetched_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (page.url, page.title, page.text, page.source, page.summary, page.fetched_at))
            await conn.execute("DELETE FROM page_cache WHERE fetched_at < ?", (time.time() - PAGE_MEMORY,))
        await self._write(write)

    # Threads the bot owns (Discord threads it opened, Slack threads it answered in)

    async def claim_thread(self, thread_id: str) -> None:
        async def write(conn: aiosqlite.Connection) -> None:
            await conn.execute("INSERT OR IGNORE INTO bot_threads (thread_id, created_at) VALUES (?, ?)",
                               (thread_id, time.time()))
        await self._write(write)

    async def owns_thread(self, thread_id: str) -> bool:
        return bool(await self._read("SELECT 1 FROM bot_threads WHERE thread_id = ?", (thread_id,)))

    # Platform events handled once

    async def first_sighting(self, event_id: str) -> bool:
        """True the first time an event id is seen, False for every re-delivery (across
        processes: the insert and its check are one transaction)."""
        async def write(conn: aiosqlite.Connection) -> bool:
            now = time.time()
            cursor = await conn.execute("INSERT OR IGNORE INTO seen_events (event_id, seen_at) VALUES (?, ?)",
                                        (event_id, now))
            fresh = cursor.rowcount == 1
            await conn.execute("DELETE FROM seen_events WHERE seen_at < ?", (now - EVENT_MEMORY,))
            return fresh
        return await self._write(write)

    # One run at a time per thread, across processes

    def turn_lock(self, thread_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the thread for one run (`bot.store.base.Turns`): a lease row, taken in one short
        `BEGIN IMMEDIATE` transaction, renewed while held, released on exit. A holder that died
        is taken over at once when it ran on this host, else when its lease lapses. Raises
        `StoreUnavailable`, and `TurnLost` when the lease was lost while held."""
        return self._turns.hold(thread_id)

    async def confirm_turn(self, thread_id: str) -> None:
        await self._turns.confirm(thread_id)

    async def take_lease(self, thread_id: str, lease: str) -> bool:
        async def write(conn: aiosqlite.Connection) -> bool:
            async with conn.execute("SELECT host, pid, process, expires_at FROM thread_leases WHERE thread_id = ?",
                                    (thread_id,)) as cursor:
                row = await cursor.fetchone()
            if row is not None and self._live(row):
                return False
            await conn.execute(
                "INSERT OR REPLACE INTO thread_leases (thread_id, lease, host, pid, process, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (thread_id, lease, self._me.host, self._me.pid, self._me.token, time.time() + self._turns.ttl))
            return True
        return await self._write(write)

    async def renew_lease(self, thread_id: str, lease: str) -> bool:
        async def write(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute("UPDATE thread_leases SET expires_at = ? WHERE thread_id = ? AND lease = ?",
                                        (time.time() + self._turns.ttl, thread_id, lease))
            return cursor.rowcount == 1
        return await self._write(write)

    async def release_lease(self, thread_id: str, lease: str) -> None:
        async def write(conn: aiosqlite.Connection) -> None:
            await conn.execute("DELETE FROM thread_leases WHERE thread_id = ? AND lease = ?", (thread_id, lease))
        await self._write(write)

    def _live(self, lease_row: tuple) -> bool:
        host, pid, token, expires_at = lease_row
        return expires_at >= time.time() and Holder(host, pid, token).alive(self._me)

    # Runs in progress: what a crash leaves behind is rolled back, never kept as history

    async def begin_run(self, run: RunRecord) -> None:
        """Record `run` durably before the agent starts. Call it while holding
        `turn_lock(run.thread_id)`: the run belongs to that lease, and counts as lost once the
        lease is gone. Raises `StoreUnavailable`."""
        lease = self._turns.lease_of(run.thread_id)
        if lease is None:
            raise RuntimeError(f"begin_run outside turn_lock({run.thread_id!r})")

        async def write(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT INTO runs (run_id, thread_id, platform, user_id, question, reply_to, checkpoint, "
                "started_at, lease) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run.run_id, run.thread_id, run.platform, run.user_id, run.question, run.reply_to,
                 run.checkpoint, run.started_at, lease))
            await conn.execute("DELETE FROM waiting_runs WHERE run_id = ?", (run.run_id,))
        await self._write(write)

    async def queue_run(self, run: RunRecord, wait: float) -> None:
        """Record `run` as waiting for its turn (see `bot.store.base.Store.queue_run`). Raises
        `StoreUnavailable`."""
        async def write(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT OR REPLACE INTO waiting_runs (run_id, thread_id, platform, user_id, question, reply_to, "
                "started_at, host, pid, process, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run.run_id, run.thread_id, run.platform, run.user_id, run.question, run.reply_to, run.started_at,
                 self._me.host, self._me.pid, self._me.token, time.time() + wait))
        await self._write(write)

    async def update_reply_to(self, run_id: str, reply_to: str) -> None:
        """Change where to tell the user about a run, waiting or begun (e.g. once its status
        message exists). Any other run is left alone. Raises `StoreUnavailable`."""
        async def write(conn: aiosqlite.Connection) -> None:
            await conn.execute("UPDATE runs SET reply_to = ? WHERE run_id = ?", (reply_to, run_id))
            await conn.execute("UPDATE waiting_runs SET reply_to = ? WHERE run_id = ?", (reply_to, run_id))
        await self._write(write)

    async def finish_run(self, run_id: str) -> None:
        """Forget a run that ended (answered, rolled back, or never begun). Raises `StoreUnavailable`."""
        async def write(conn: aiosqlite.Connection) -> None:
            await conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            await conn.execute("DELETE FROM waiting_runs WHERE run_id = ?", (run_id,))
        await self._write(write)

    async def abandoned_runs(self, platform: str | None = None) -> list[RunRecord]:
        """Runs whose wait for their turn was cut short by their process's end (see
        `bot.store.base.Store.abandoned_runs`). Raises `StoreUnavailable`."""
        rows = await self._read(
            "SELECT thread_id, platform, user_id, question, NULL, reply_to, run_id, started_at, host, pid, process, "
            "expires_at FROM waiting_runs w WHERE (? IS NULL OR platform = ?) "
            "AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.run_id = w.run_id) ORDER BY started_at",
            (platform, platform))
        return [RunRecord(*row[:8]) for row in rows if not self._live(row[8:])]

    async def unfinished_runs(self, platform: str | None = None) -> list[RunRecord]:
        """Lost runs, oldest first: begun, never finished, and their process is gone (its lease
        on the thread was released, lapsed, or belongs to a process that is known dead). Runs
        that a live process is still working on are not listed. Raises `StoreUnavailable`."""
        rows = await self._read(
            "SELECT r.thread_id, r.platform, r.user_id, r.question, r.checkpoint, r.reply_to, r.run_id, "
            "r.started_at, l.host, l.pid, l.process, l.expires_at FROM runs r LEFT JOIN thread_leases l "
            "ON l.thread_id = r.thread_id AND l.lease = r.lease "
            "WHERE ? IS NULL OR r.platform = ? ORDER BY r.started_at", (platform, platform))
        return [RunRecord(*row[:8]) for row in rows if row[8] is None or not self._live(row[8:])]

    # What answers cost, and what people thought of them

    async def record_usage(self, run_id: str, platform: str, workspace: str, thread_id: str,
                           usage: list[TokenUsage]) -> None:
        now = time.time()

        async def write(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "INSERT OR REPLACE INTO run_usage (run_id, model, day, platform, workspace, thread_id, "
                "input_tokens, output_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, u.model, utc_day(now), platform, workspace, thread_id, u.input_tokens,
                  u.output_tokens, now) for u in usage])
        await self._write(write)

    async def tokens_today(self, platform: str, workspace: str) -> int:
        rows = await self._read(
            "SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM run_usage "
            "WHERE platform = ? AND workspace = ? AND day = ?", (platform, workspace, utc_day()))
        return rows[0][0]

    async def usage_by(self, column: str, limit: int = 20) -> list[UsageRow]:
        """Token totals grouped by `day`, `platform` or `thread_id`, largest (or latest day) first."""
        if column not in USAGE_GROUPS:
            raise ValueError(column)
        order = "key DESC" if column == "day" else "SUM(input_tokens + output_tokens) DESC"
        rows = await self._read(
            f"SELECT {column} AS key, COUNT(DISTINCT run_id), SUM(input_tokens), SUM(output_tokens) "
            f"FROM run_usage GROUP BY {column} ORDER BY {order} LIMIT ?", (limit,))
        return [UsageRow(*row) for row in rows]

    async def record_feedback(self, platform: str, thread_id: str, message_id: str, user_id: str,
                              value: str) -> None:
        """One vote per user and message: a second click replaces the first."""
        async def write(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT OR REPLACE INTO feedback (platform, thread_id, message_id, user_id, value, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", (platform, thread_id, message_id, user_id, value, time.time()))
        await self._write(write)

    async def feedback_counts(self) -> dict[tuple[str, str], int]:
        """(platform, value) → number of votes."""
        rows = await self._read("SELECT platform, value, COUNT(*) FROM feedback GROUP BY platform, value")
        return {(platform, value): count for platform, value, count in rows}

    # Rate limits, shared by every process on the file

    async def rate_wait(self, key: str, limit: int, window: float) -> float:
        """At most `limit` events per `key` in any `window` seconds: 0.0 and the event counted
        when allowed, else the seconds until it would be (nothing counted). Raises
        `StoreUnavailable`."""
        async def write(conn: aiosqlite.Connection) -> float:
            now = time.time()
            await conn.execute("DELETE FROM rate_events WHERE (key = ? AND at <= ?) OR at < ?",
                               (key, now - window, now - RATE_MEMORY))
            async with conn.execute("SELECT COUNT(*), MIN(at) FROM rate_events WHERE key = ?", (key,)) as cursor:
                count, oldest = await cursor.fetchone()
            if count >= limit:
                return max(oldest + window - now, 0.001)
            await conn.execute("INSERT INTO rate_events (key, at) VALUES (?, ?)", (key, now))
            return 0.0
        return await self._write(write)

    # Thread history housekeeping (the checkpoints themselves are LangGraph's)

    async def latest_checkpoint(self, thread_id: str) -> str | None:
        try:
            async with self.checkpointer.lock, self.checkpointer.conn.execute(
                "SELECT MAX(checkpoint_id) FROM checkpoints WHERE thread_id = ?", (thread_id,)
            ) as cursor:
                row = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise unavailable(exc) from exc
        return row[0] if row else None

    async def prune_checkpoints(self, thread_id: str) -> None:
        """Keep only the newest checkpoint of a thread: it holds the whole history."""
        latest = await self.latest_checkpoint(thread_id)
        if latest is not None:
            await self._delete_checkpoints(thread_id, "checkpoint_id < ?", latest)

    async def rollback_checkpoints(self, thread_id: str, to: str | None) -> None:
        """Forget a failed run: drop every checkpoint newer than `to` (None: the whole thread).
        Idempotent, so a rollback cut short by a crash is simply done again."""
        if to is None:
            await self._delete_checkpoints(thread_id, "1 = 1")
        else:
            await self._delete_checkpoints(thread_id, "checkpoint_id > ?", to)

    async def _delete_checkpoints(self, thread_id: str, condition: str, *args: str) -> None:
        conn = self.checkpointer.conn
        with self.checkpointer.translated_errors():
            async with self.checkpointer.lock:  # rolls back when left with an exception
                for table in ("checkpoints", "writes"):
                    await conn.execute(f"DELETE FROM {table} WHERE thread_id = ? AND {condition}", (thread_id, *args))
                await conn.commit()

    # Follows and digests (bot.digest); the contract is `bot.store.base.DigestStore`'s

    async def add_follow(self, follow: Follow, schedule: tuple[str, str, str] | None, max_per_channel: int,
                         max_per_workspace: int, default: tuple[str, str, str] = DEFAULT_SCHEDULE) -> str:
        async def write(conn: aiosqlite.Connection) -> str:
            async def count(sql: str, params: tuple) -> int:
                async with conn.execute(sql, params) as cursor:
                    return (await cursor.fetchone())[0]
            if await count("SELECT COUNT(*) FROM follows WHERE platform = ? AND channel_id = ? AND target = ?",
                           (follow.platform, follow.channel_id, follow.target)):
                result = FOLLOW_EXISTS
            elif await count("SELECT COUNT(*) FROM follows WHERE platform = ? AND channel_id = ?",
                             (follow.platform, follow.channel_id)) >= max_per_channel:
                return CHANNEL_FULL
            elif await count("SELECT COUNT(*) FROM follows WHERE platform = ? AND workspace = ?",
                             (follow.platform, follow.workspace)) >= max_per_workspace:
                return WORKSPACE_FULL
            else:
                await conn.execute(
                    "INSERT INTO follows (platform, workspace, channel_id, target, display, created_by, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", (follow.platform, follow.workspace, follow.channel_id,
                                                     follow.target, follow.display, follow.created_by,
                                                     follow.created_at))
                result = FOLLOW_ADDED
            every, at, tz = schedule or default
            await conn.execute(
                "INSERT OR IGNORE INTO digest_channels (platform, channel_id, workspace, every, at, tz, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (follow.platform, follow.channel_id, follow.workspace, every, at,
                                                 tz, follow.created_at))
            if schedule is not None:
                await conn.execute("UPDATE digest_channels SET every = ?, at = ?, tz = ? WHERE platform = ? "
                                   "AND channel_id = ?", (every, at, tz, follow.platform, follow.channel_id))
            return result
        return await self._write(write)

    async def remove_follow(self, platform: str, channel_id: str, target: str) -> bool:
        async def write(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute("DELETE FROM follows WHERE platform = ? AND channel_id = ? AND target = ?",
                                        (platform, channel_id, target))
            await conn.execute("DELETE FROM digest_channels WHERE platform = ? AND channel_id = ? AND NOT EXISTS "
                               "(SELECT 1 FROM follows WHERE platform = ? AND channel_id = ?)",
                               (platform, channel_id, platform, channel_id))
            return cursor.rowcount == 1
        return await self._write(write)

    async def list_follows(self, platform: str | None = None, channel_id: str | None = None) -> list[Follow]:
        rows = await self._read(
            "SELECT platform, workspace, channel_id, target, display, created_by, created_at FROM follows "
            "WHERE (? IS NULL OR platform = ?) AND (? IS NULL OR channel_id = ?) "
            "ORDER BY platform, channel_id, created_at, target", (platform, platform, channel_id, channel_id))
        return [Follow(*row) for row in rows]

    async def digest_channels(self) -> list[DigestChannel]:
        rows = await self._read("SELECT platform, workspace, channel_id, every, at, tz, created_at FROM "
                                "digest_channels ORDER BY platform, channel_id")
        return [DigestChannel(*row) for row in rows]

    async def claim_digest(self, platform: str, channel_id: str, period: str, holder: str, now: float,
                           lease: float, since: float, until: float, take_from: str = "") -> DigestRecord | None:
        async def write(conn: aiosqlite.Connection) -> DigestRecord | None:
            await conn.execute(
                "INSERT OR IGNORE INTO digests (platform, channel_id, period, state, since, until, holder, "
                "lease_until) VALUES (?, ?, ?, 'claimed', ?, ?, '', 0)", (platform, channel_id, period, since, until))
            cursor = await conn.execute(
                "UPDATE digests SET holder = ?, lease_until = ? WHERE platform = ? AND channel_id = ? AND period = ? "
                "AND state NOT IN ('posted', 'empty') AND (lease_until < ? OR (holder = ? AND holder != ''))",
                (holder, now + lease, platform, channel_id, period, now, take_from))
            if cursor.rowcount != 1:
                return None
            async with conn.execute(
                "SELECT platform, channel_id, period, state, since, until, holder, lease_until, content, message_ref "
                "FROM digests WHERE platform = ? AND channel_id = ? AND period = ?",
                (platform, channel_id, period)) as rows:
                return DigestRecord(*await rows.fetchone())
        return await self._write(write)

    async def digest_record(self, platform: str, channel_id: str, period: str) -> DigestRecord | None:
        rows = await self._read(
            "SELECT platform, channel_id, period, state, since, until, holder, lease_until, content, message_ref "
            "FROM digests WHERE platform = ? AND channel_id = ? AND period = ?", (platform, channel_id, period))
        return DigestRecord(*rows[0]) if rows else None

    async def update_digest(self, record: DigestRecord, *, state: str, lease_until: float,
                            content: str | None = None, message_ref: str | None = None) -> bool:
        async def write(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute(
                "UPDATE digests SET state = ?, lease_until = ?, content = COALESCE(?, content), "
                "message_ref = COALESCE(?, message_ref) WHERE platform = ? AND channel_id = ? AND period = ? "
                "AND holder = ? AND state NOT IN ('posted', 'empty')",
                (state, lease_until, content, message_ref, record.platform, record.channel_id, record.period,
                 record.holder))
            return cursor.rowcount == 1
        return await self._write(write)

    async def last_digest(self, platform: str, channel_id: str) -> DigestRecord | None:
        rows = await self._read(
            "SELECT platform, channel_id, period, state, since, until, holder, lease_until, content, message_ref "
            "FROM digests WHERE platform = ? AND channel_id = ? AND state IN ('posted', 'empty') "
            "ORDER BY until DESC LIMIT 1", (platform, channel_id))
        return DigestRecord(*rows[0]) if rows else None

    async def claim_feed_poll(self, feed: str, now: float, min_interval: float,
                              busy_for: float) -> tuple[str, str] | None:
        async def write(conn: aiosqlite.Connection) -> tuple[str, str] | None:
            await conn.execute("INSERT OR IGNORE INTO feed_state (feed, etag, last_modified, polled_at) "
                               "VALUES (?, '', '', ?)", (feed, now - min_interval - 1))
            cursor = await conn.execute("UPDATE feed_state SET polled_at = ? WHERE feed = ? AND polled_at <= ?",
                                        (now, feed, now - min_interval))
            if cursor.rowcount != 1:
                return None
            await conn.execute("INSERT OR REPLACE INTO feed_polls (feed, busy_until) VALUES (?, ?)",
                               (feed, now + busy_for))
            async with conn.execute("SELECT etag, last_modified FROM feed_state WHERE feed = ?", (feed,)) as rows:
                etag, last_modified = await rows.fetchone()
            return etag, last_modified
        return await self._write(write)

    async def record_feed_poll(self, feed: str, etag: str, last_modified: str, entries: list[FeedEntry]) -> None:
        async def write(conn: aiosqlite.Connection) -> None:
            await conn.execute("UPDATE feed_state SET etag = ?, last_modified = ? WHERE feed = ?",
                               (etag, last_modified, feed))
            await conn.execute("DELETE FROM feed_polls WHERE feed = ?", (feed,))
            await conn.executemany(
                "INSERT OR IGNORE INTO feed_entries (feed, url, title, author, published_at) VALUES (?, ?, ?, ?, ?)",
                [(feed, e.url, e.title, e.author, e.published_at) for e in entries])
            if entries:  # entries far older than the feed's newest are past any digest
                await conn.execute("DELETE FROM feed_entries WHERE feed = ? AND published_at < ?",
                                   (feed, max(e.published_at for e in entries) - FEED_MEMORY))
        await self._write(write)

    async def polls_under_way(self, feeds: list[str], now: float) -> list[str]:
        if not feeds:
            return []
        marks = ", ".join("?" for _ in feeds)
        rows = await self._read(f"SELECT feed FROM feed_polls WHERE feed IN ({marks}) AND busy_until > ?",
                                (*feeds, now))
        return [feed for (feed,) in rows]

    async def feed_entries(self, feeds: list[str], since: float, until: float) -> list[FeedEntry]:
        if not feeds:
            return []
        marks = ", ".join("?" for _ in feeds)
        rows = await self._read(
            f"SELECT feed, url, title, author, published_at FROM feed_entries WHERE feed IN ({marks}) "
            "AND published_at > ? AND published_at <= ? ORDER BY published_at DESC", (*feeds, since, until))
        return [FeedEntry(*row) for row in rows]

    # The one-writer discipline on `conn`

    async def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        async def read(conn: aiosqlite.Connection) -> list[tuple]:
            async with conn.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        return await self._serialised(read, begin=None)

    async def _write(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        return await self._serialised(fn, begin="BEGIN IMMEDIATE")

    async def _serialised(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]], begin: str | None) -> T:
        """Run `fn` alone on `conn`, in its own transaction when `begin` is given; retry while
        the database is busy, up to the busy timeout."""
        deadline = time.monotonic() + self.busy_timeout
        async with self._serial:
            while True:
                try:
                    return await self._once(fn, begin)
                except sqlite3.OperationalError as exc:
                    if _busy(exc) and time.monotonic() < deadline:
                        await asyncio.sleep(BUSY_RETRY_DELAY)
                        continue
                    raise unavailable(exc) from exc
                except sqlite3.Error as exc:
                    raise unavailable(exc) from exc

    async def _once(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]], begin: str | None) -> T:
        if self.conn.in_transaction:  # left by a use cut short where nothing could roll it back
            log.warning("rolling back a stale transaction on the store's connection")
            await _roll_back(self.conn)
        if begin is None:
            return await fn(self.conn)
        try:
            await self.conn.execute(begin)
            result = await fn(self.conn)
            await self.conn.execute("COMMIT")
            return result
        except BaseException:
            # Shielded: a cancellation (even a second one) must not keep the write lock held.
            # aiosqlite runs statements in order, so the ROLLBACK follows whatever was queued.
            await asyncio.shield(_roll_back(self.conn))
            raise

    # The daily token budget (BEGIN IMMEDIATE: one writer at a time across processes)

    async def reserve_tokens(self, claim: BudgetClaim, budget: int) -> BudgetRefusal | None:
        now = time.time()
        day = utc_day(now)
        live = "(settled = 1 OR expires_at > ?)"

        async def spent(conn: aiosqlite.Connection, bucket: str) -> int:
            async with conn.execute(f"SELECT COALESCE(SUM(tokens), 0) FROM token_budget WHERE platform = ? "
                                    f"AND bucket = ? AND day = ? AND {live}", (claim.platform, bucket, day, now)) as c:
                return (await c.fetchone())[0]

        async def write(conn: aiosqlite.Connection) -> BudgetRefusal | None:
            buckets = [claim.bucket]
            if claim.guard_user:
                async with conn.execute("SELECT DISTINCT bucket FROM token_budget WHERE platform = ? AND day = ? "
                                        "AND user_id = ? AND bucket != ?",
                                        (claim.platform, day, claim.user_id, claim.bucket)) as cursor:
                    buckets += [row[0] for row in await cursor.fetchall()]
            for bucket in buckets:
                used = await spent(conn, bucket)
                if used >= budget:
                    return BudgetRefusal(bucket, used)
            async with conn.execute("SELECT COALESCE(MAX(tokens), 0) FROM token_budget WHERE platform = ? AND "
                                    "bucket = ? AND day = ? AND settled = 1", (claim.platform, claim.bucket, day)) as c:
                largest = (await c.fetchone())[0]
            await conn.execute(
                "INSERT OR REPLACE INTO token_budget (run_id, platform, bucket, user_id, day, tokens, settled, "
                "expires_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                (claim.run_id, claim.platform, claim.bucket, claim.user_id, day, max(claim.estimate, largest),
                 now + RESERVATION_TTL))
            return None
        return await self._write(write)

    async def settle_tokens(self, run_id: str, tokens: int) -> None:
        async def write(conn: aiosqlite.Connection) -> None:
            await conn.execute("UPDATE token_budget SET tokens = ?, settled = 1 WHERE run_id = ?", (tokens, run_id))
        await self._write(write)

    async def keep_run(self, run_id: str, checkpoint: str | None) -> None:
        async def write(conn: aiosqlite.Connection) -> None:
            await conn.execute("UPDATE runs SET checkpoint = ? WHERE run_id = ?", (checkpoint, run_id))
        await self._write(write)


async def _roll_back(conn: aiosqlite.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):  # none open (the BEGIN failed, or the COMMIT ran)
        await conn.execute("ROLLBACK")


class _RollbackLock(asyncio.Lock):
    """The checkpointer's lock on its connection (which opens transactions implicitly): a holder
    that leaves with an exception (a cancellation between a write and its commit) has its
    transaction rolled back before the next holder gets the connection."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        super().__init__()
        self._conn = conn

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                await asyncio.shield(self._roll_back())
        finally:
            self.release()

    async def _roll_back(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            await self._conn.rollback()


class _Checkpointer(SaverErrors, AsyncSqliteSaver):
    """LangGraph's saver, with database errors raised as `StoreUnavailable` (`SaverErrors`) and
    no write left uncommitted by a cancellation."""

    database_error = sqlite3.Error

    def __init__(self, conn: aiosqlite.Connection) -> None:
        super().__init__(conn)
        self.lock = _RollbackLock(conn)

    @staticmethod
    def unavailable(exc: Exception) -> StoreUnavailable:
        return unavailable(exc)


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The `StoreUnavailable` for a sqlite3 or OS error, with the reason a user can act on."""
    text = str(exc).lower()
    if "full" in text or "no space" in text or getattr(exc, "errno", None) == 28:
        reason = "out of disk space"
    elif _busy(exc):
        reason = "locked by another process"
    elif "readonly" in text or "read-only" in text:
        reason = "read-only"
    else:
        reason = "cannot be read or written"
    return StoreUnavailable(reason, str(exc))


def _busy(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


async def _connect(path: str, busy_timeout: float, autocommit: bool = False) -> aiosqlite.Connection:
    kwargs: dict[str, Any] = {"isolation_level": None} if autocommit else {}
    conn = await aiosqlite.connect(path, timeout=busy_timeout, **kwargs)
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    if path != ":memory:":
        await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute("PRAGMA synchronous = NORMAL")
    return conn
