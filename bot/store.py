"""The bot's one SQLite file (aiosqlite): thread history (LangGraph checkpoints), which chat
threads are the bot's, which platform events were handled, and the page cache.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from agent.events import TokenUsage
from agent.pages import CachedPage

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
"""
EVENT_MEMORY = 7 * 24 * 3600.0  # how long a handled event id is remembered
PAGE_MEMORY = 7 * 24 * 3600.0  # cached pages older than this are deleted (the TTL decides freshness)


@dataclass(frozen=True)
class UsageRow:
    """Tokens summed over one group of runs (a day, a platform, a thread…)."""

    key: str
    runs: int
    input_tokens: int
    output_tokens: int


def utc_day(timestamp: float | None = None) -> str:
    """The UTC date a token budget counts in (budgets start again at 00:00 UTC)."""
    return dt.datetime.fromtimestamp(time.time() if timestamp is None else timestamp, dt.UTC).date().isoformat()


class Store:
    """Open with `await Store.open(path)`, close with `await store.close()`."""

    def __init__(self, conn: aiosqlite.Connection, checkpoint_conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self.checkpointer = AsyncSqliteSaver(checkpoint_conn)

    @classmethod
    async def open(cls, path: str, busy_timeout: float = 10.0) -> Store:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = await _connect(path, busy_timeout)
        await conn.executescript(SCHEMA)
        await conn.commit()
        store = cls(conn, await _connect(path, busy_timeout))
        await store.checkpointer.setup()
        return store

    async def close(self) -> None:
        await self.checkpointer.conn.close()
        await self.conn.close()

    # Page cache (agent.pages.PageCache)

    async def get_page(self, url: str, max_age: float) -> CachedPage | None:
        async with self.conn.execute(
            "SELECT url, title, text, source, summary, fetched_at FROM page_cache WHERE url = ? AND fetched_at >= ?",
            (url, time.time() - max_age),
        ) as cursor:
            row = await cursor.fetchone()
        return CachedPage(*row) if row else None

    async def put_page(self, page: CachedPage) -> None:
        await self.conn.execute(
            "INSERT OR REPLACE INTO page_cache (url, title, text, source, summary, fetched_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (page.url, page.title, page.text, page.source, page.summary, page.fetched_at),
        )
        await self.conn.execute("DELETE FROM page_cache WHERE fetched_at < ?", (time.time() - PAGE_MEMORY,))
        await self.conn.commit()

    # Threads the bot owns (Discord threads it opened, Slack threads it answered in)

    async def claim_thread(self, thread_id: str) -> None:
        await self.conn.execute("INSERT OR IGNORE INTO bot_threads (thread_id, created_at) VALUES (?, ?)",
                                (thread_id, time.time()))
        await self.conn.commit()

    async def owns_thread(self, thread_id: str) -> bool:
        async with self.conn.execute("SELECT 1 FROM bot_threads WHERE thread_id = ?", (thread_id,)) as cursor:
            return await cursor.fetchone() is not None

    # Platform events handled once

    async def first_sighting(self, event_id: str) -> bool:
        """True the first time an event id is seen, False for every re-delivery."""
        now = time.time()
        cursor = await self.conn.execute(
            "INSERT OR IGNORE INTO seen_events (event_id, seen_at) VALUES (?, ?)", (event_id, now))
        fresh = cursor.rowcount == 1
        await self.conn.execute("DELETE FROM seen_events WHERE seen_at < ?", (now - EVENT_MEMORY,))
        await self.conn.commit()
        return fresh

    # What answers cost, and what people thought of them

    async def record_usage(self, run_id: str, platform: str, workspace: str, thread_id: str,
                           usage: list[TokenUsage]) -> None:
        now = time.time()
        await self.conn.executemany(
            "INSERT OR REPLACE INTO run_usage (run_id, model, day, platform, workspace, thread_id, "
            "input_tokens, output_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(run_id, u.model, utc_day(now), platform, workspace, thread_id, u.input_tokens, u.output_tokens, now)
             for u in usage])
        await self.conn.commit()

    async def tokens_today(self, platform: str, workspace: str) -> int:
        async with self.conn.execute(
            "SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM run_usage "
            "WHERE platform = ? AND workspace = ? AND day = ?", (platform, workspace, utc_day())) as cursor:
            return (await cursor.fetchone())[0]

    async def usage_by(self, column: str, limit: int = 20) -> list[UsageRow]:
        """Token totals grouped by `day`, `platform` or `thread_id`, largest (or latest day) first."""
        if column not in ("day", "platform", "thread_id"):
            raise ValueError(column)
        order = "key DESC" if column == "day" else "SUM(input_tokens + output_tokens) DESC"
        async with self.conn.execute(
            f"SELECT {column} AS key, COUNT(DISTINCT run_id), SUM(input_tokens), SUM(output_tokens) "
            f"FROM run_usage GROUP BY {column} ORDER BY {order} LIMIT ?", (limit,)) as cursor:
            return [UsageRow(*row) for row in await cursor.fetchall()]

    async def record_feedback(self, platform: str, thread_id: str, message_id: str, user_id: str,
                              value: str) -> None:
        """One vote per user and message: a second click replaces the first."""
        await self.conn.execute(
            "INSERT OR REPLACE INTO feedback (platform, thread_id, message_id, user_id, value, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)", (platform, thread_id, message_id, user_id, value, time.time()))
        await self.conn.commit()

    async def feedback_counts(self) -> dict[tuple[str, str], int]:
        """(platform, value) → number of votes."""
        async with self.conn.execute(
                "SELECT platform, value, COUNT(*) FROM feedback GROUP BY platform, value") as cursor:
            return {(platform, value): count for platform, value, count in await cursor.fetchall()}

    # Thread history housekeeping (the checkpoints themselves are LangGraph's)

    async def latest_checkpoint(self, thread_id: str) -> str | None:
        async with self.checkpointer.lock, self.checkpointer.conn.execute(
            "SELECT MAX(checkpoint_id) FROM checkpoints WHERE thread_id = ?", (thread_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    async def prune_checkpoints(self, thread_id: str) -> None:
        """Keep only the newest checkpoint of a thread: it holds the whole history."""
        latest = await self.latest_checkpoint(thread_id)
        if latest is not None:
            await self._delete_checkpoints(thread_id, "checkpoint_id < ?", latest)

    async def rollback_checkpoints(self, thread_id: str, to: str | None) -> None:
        """Forget a failed run: drop every checkpoint newer than `to` (None: the whole thread)."""
        if to is None:
            await self._delete_checkpoints(thread_id, "1 = 1")
        else:
            await self._delete_checkpoints(thread_id, "checkpoint_id > ?", to)

    async def _delete_checkpoints(self, thread_id: str, condition: str, *args: str) -> None:
        conn = self.checkpointer.conn
        async with self.checkpointer.lock:
            for table in ("checkpoints", "writes"):
                await conn.execute(f"DELETE FROM {table} WHERE thread_id = ? AND {condition}", (thread_id, *args))
            await conn.commit()


async def _connect(path: str, busy_timeout: float) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, timeout=busy_timeout)
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    if path != ":memory:":
        await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute("PRAGMA synchronous = NORMAL")
    return conn
