"""The bot's one SQLite file (aiosqlite): thread history (LangGraph checkpoints), which chat
threads are the bot's, which platform events were handled, and the page cache.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import aiosqlite
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from agent.pages import CachedPage

if TYPE_CHECKING:
    from bot.settings import Settings

SCHEMA = """
CREATE TABLE IF NOT EXISTS page_cache (
    url TEXT PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL, source TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '', fetched_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS bot_threads (
    thread_id TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS seen_events (
    event_id TEXT PRIMARY KEY, seen_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rate_events (key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rate_events_key_at ON rate_events (key, at);
"""
EVENT_MEMORY = 7 * 24 * 3600.0  # how long a handled event id is remembered
PAGE_MEMORY = 7 * 24 * 3600.0  # cached pages older than this are deleted (the TTL decides freshness)


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

    # Rate limits, shared by every process on the file

    async def rate_wait(self, key: str, limit: int, window: float) -> float:
        """At most `limit` events per `key` in any `window` seconds: 0.0 and the event counted
        when allowed, else the seconds until it would be (nothing counted)."""
        await self.conn.execute("BEGIN IMMEDIATE")  # the check and the count in one write transaction
        try:
            now = time.time()
            await self.conn.execute("DELETE FROM rate_events WHERE key = ? AND at <= ?", (key, now - window))
            async with self.conn.execute("SELECT COUNT(*), MIN(at) FROM rate_events WHERE key = ?", (key,)) as cursor:
                count, oldest = await cursor.fetchone()
            if count >= limit:
                return max(oldest + window - now, 0.001)
            await self.conn.execute("INSERT INTO rate_events (key, at) VALUES (?, ?)", (key, now))
            return 0.0
        finally:
            await self.conn.commit()

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


async def open_store(settings: Settings) -> Store:
    """The store the settings name: PostgreSQL when `ZENNBOT_DATABASE_URL` is set (shared by
    replicas), else the SQLite file `ZENNBOT_DB`."""
    if settings.zennbot_database_url is not None:
        from bot.store_pg import PgStore

        return await PgStore.open(settings.zennbot_database_url.get_secret_value(),  # type: ignore[return-value]
                                  settings.zennbot_db_pool_size, settings.zennbot_db_busy_timeout)
    return await Store.open(settings.zennbot_db, settings.zennbot_db_busy_timeout)
