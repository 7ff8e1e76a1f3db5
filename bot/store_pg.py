"""The bot's store on PostgreSQL, for any number of replicas sharing one database.

Thread history goes through LangGraph's Postgres checkpointer; the bot's own tables (handled
events, owned threads, the page cache, rate-limit counts) live in the same database. Same
methods and behaviour as `bot.store.Store` (SQLite). One psycopg pool serves both, with
`autocommit=True` (the checkpointer's migrations need it), `dict_row` rows and
`prepare_threshold=None`: no server-side prepared statements, so pgbouncer in transaction mode
works (psycopg's 0 would prepare every statement on first use, the opposite). Times that
replicas compare (event memory, rate windows) are the database's clock.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import errors
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from agent.pages import CachedPage
from bot.store import EVENT_MEMORY, PAGE_MEMORY

log = logging.getLogger(__name__)

CONNECTION_KWARGS: dict[str, Any] = {"autocommit": True, "prepare_threshold": None, "row_factory": dict_row}
# Session advisory lock held while the schema is set up; any constant no other code uses.
SETUP_LOCK = 0x7A656E6E626F74  # "zennbot"
SETUP_POLL = 0.1  # seconds between tries for the set-up lock
SWEEP_BATCH = 500  # expired rows deleted per call (skipping rows another replica is deleting)

# The bot's own tables. Position in the list is the version; append, never edit.
MIGRATIONS = [
    """
    CREATE TABLE page_cache (
        url TEXT PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL, source TEXT NOT NULL,
        summary TEXT NOT NULL DEFAULT '', fetched_at DOUBLE PRECISION NOT NULL);
    CREATE INDEX page_cache_fetched_at_idx ON page_cache (fetched_at);
    CREATE TABLE bot_threads (thread_id TEXT PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL DEFAULT now());
    CREATE TABLE seen_events (event_id TEXT PRIMARY KEY, seen_at TIMESTAMPTZ NOT NULL DEFAULT now());
    CREATE INDEX seen_events_seen_at_idx ON seen_events (seen_at);
    CREATE TABLE rate_events (key TEXT NOT NULL, at TIMESTAMPTZ NOT NULL);
    CREATE INDEX rate_events_key_at_idx ON rate_events (key, at);
    """,
]


class PgStore:
    """Open with `await PgStore.open(url)`, close with `await store.close()`. Database errors
    are `psycopg.Error` (a pool that cannot get a connection in time raises `PoolTimeout`,
    one of them)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self.checkpointer = AsyncPostgresSaver(pool)

    @classmethod
    async def open(cls, url: str, pool_size: int = 10, timeout: float = 10.0) -> PgStore:
        """Connect, bring the schema up to date (safe when several replicas start at once).
        Raises `psycopg.OperationalError` when the database cannot be reached."""
        await migrate(url, timeout)
        pool = AsyncConnectionPool(url, min_size=1, max_size=max(2, pool_size), open=False, timeout=timeout,
                                   kwargs=CONNECTION_KWARGS, name="zennbot")
        await pool.open(wait=True, timeout=timeout)
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    async def ping(self) -> None:
        """Raises `psycopg.Error` when the database does not answer."""
        await self._execute("SELECT 1")

    # Page cache (agent.pages.PageCache)

    async def get_page(self, url: str, max_age: float) -> CachedPage | None:
        row = await self._fetchone(
            "SELECT url, title, text, source, summary, fetched_at FROM page_cache "
            "WHERE url = %s AND fetched_at >= extract(epoch FROM now()) - %s", (url, max_age))
        return CachedPage(**row) if row else None

    async def put_page(self, page: CachedPage) -> None:
        # PostgreSQL text cannot hold NUL characters; SQLite keeps them, nobody reads them.
        title, text, summary = (value.replace("\x00", "") for value in (page.title, page.text, page.summary))
        await self._execute(
            "INSERT INTO page_cache (url, title, text, source, summary, fetched_at) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (url) DO UPDATE SET title = EXCLUDED.title, text = EXCLUDED.text, "
            "source = EXCLUDED.source, summary = EXCLUDED.summary, fetched_at = EXCLUDED.fetched_at",
            (page.url, title, text, page.source, summary, page.fetched_at))
        await self._sweep("page_cache", "fetched_at < extract(epoch FROM now()) - %s", PAGE_MEMORY)

    # Threads the bot owns (Discord threads it opened, Slack threads it answered in)

    async def claim_thread(self, thread_id: str) -> None:
        await self._execute("INSERT INTO bot_threads (thread_id) VALUES (%s) ON CONFLICT DO NOTHING", (thread_id,))

    async def owns_thread(self, thread_id: str) -> bool:
        return await self._fetchone("SELECT 1 FROM bot_threads WHERE thread_id = %s", (thread_id,)) is not None

    # Platform events handled once

    async def first_sighting(self, event_id: str) -> bool:
        """True the first time an event id is seen by any replica, False for every re-delivery."""
        row = await self._fetchone(
            "INSERT INTO seen_events (event_id) VALUES (%s) ON CONFLICT DO NOTHING RETURNING 1", (event_id,))
        await self._sweep("seen_events", "seen_at < now() - make_interval(secs => %s)", EVENT_MEMORY)
        return row is not None

    # Rate limits shared by every replica

    async def rate_wait(self, key: str, limit: int, window: float) -> float:
        """At most `limit` events per `key` in any `window` seconds: 0.0 and the event counted
        when allowed, else the seconds until it would be (nothing counted)."""
        async with self.pool.connection() as conn, conn.transaction():
            # One replica at a time per key; the lock ends with the transaction.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("rate:" + key,))
            await conn.execute("DELETE FROM rate_events WHERE key = %s AND at <= now() - make_interval(secs => %s)",
                               (key, window))
            row = await (await conn.execute(
                "SELECT count(*) AS n, extract(epoch FROM min(at) + make_interval(secs => %s) - now()) AS wait "
                "FROM rate_events WHERE key = %s", (window, key))).fetchone()
            if row["n"] >= limit:
                return max(float(row["wait"]), 0.001)
            await conn.execute("INSERT INTO rate_events (key, at) VALUES (%s, now())", (key,))
            return 0.0

    # Thread history housekeeping (the checkpoints themselves are LangGraph's)

    async def latest_checkpoint(self, thread_id: str) -> str | None:
        row = await self._fetchone(
            "SELECT max(checkpoint_id) AS id FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = ''",
            (thread_id,))
        return row["id"] if row else None

    async def prune_checkpoints(self, thread_id: str) -> None:
        """Keep only the newest checkpoint of a thread (and the blobs it reads): it holds the
        whole history."""
        for attempt in range(3):
            try:
                await self.checkpointer.aprune([thread_id], strategy="keep_latest")
                return
            except (errors.SerializationFailure, errors.DeadlockDetected):
                if attempt == 2:
                    raise  # a concurrent prune of the same thread; the next run prunes again

    async def rollback_checkpoints(self, thread_id: str, to: str | None) -> None:
        """Forget a failed run: drop every checkpoint newer than `to` (None: the whole thread),
        the writes made from them, and the blobs no remaining checkpoint reads, so that no
        later run can pick up anything of the failed one."""
        if to is None:
            await self.checkpointer.adelete_thread(thread_id)
            return
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM checkpoint_writes WHERE thread_id = %s AND checkpoint_id > %s",
                               (thread_id, to))
            await conn.execute("DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_id > %s", (thread_id, to))
            await conn.execute(
                "DELETE FROM checkpoint_blobs b WHERE b.thread_id = %s AND NOT EXISTS ("
                " SELECT 1 FROM checkpoints c WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns"
                " AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)", (thread_id,))

    # Helpers

    async def _execute(self, sql: str, params: tuple = ()) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(sql, params)

    async def _fetchone(self, sql: str, params: tuple = ()) -> dict | None:
        async with self.pool.connection() as conn:
            return await (await conn.execute(sql, params)).fetchone()

    async def _sweep(self, table: str, condition: str, *params: object) -> None:
        """Delete expired rows without waiting for, or deadlocking with, another replica
        sweeping the same table."""
        await self._execute(
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
            f"SELECT ctid FROM {table} WHERE {condition} LIMIT {SWEEP_BATCH} FOR UPDATE SKIP LOCKED))", params)


async def migrate(url: str, timeout: float = 10.0) -> None:
    """Create or update every table (the bot's and LangGraph's). Safe to run from several
    replicas at once: one sets up while the others wait for it. Raises `psycopg.Error`."""
    async with await psycopg.AsyncConnection.connect(url, connect_timeout=max(1, round(timeout)),
                                                     **CONNECTION_KWARGS) as lock_conn:
        # Polled, never a blocking pg_advisory_lock: the checkpointer's CREATE INDEX
        # CONCURRENTLY waits for every open transaction, including a blocked lock call, whose
        # session waits for us: a cycle Postgres cannot see.
        while not (await (await lock_conn.execute("SELECT pg_try_advisory_lock(%s) AS ok",
                                                  (SETUP_LOCK,))).fetchone())["ok"]:
            await asyncio.sleep(SETUP_POLL)
        try:
            async with await psycopg.AsyncConnection.connect(url, **CONNECTION_KWARGS) as conn:
                await _migrate_own_tables(conn)
                await AsyncPostgresSaver(conn).setup()
        finally:
            await lock_conn.execute("SELECT pg_advisory_unlock(%s)", (SETUP_LOCK,))


async def _migrate_own_tables(conn: psycopg.AsyncConnection) -> None:
    await conn.execute("CREATE TABLE IF NOT EXISTS zennbot_migrations (v INTEGER PRIMARY KEY)")
    row = await (await conn.execute("SELECT max(v) AS v FROM zennbot_migrations")).fetchone()
    done = -1 if row["v"] is None else row["v"]
    for version in range(done + 1, len(MIGRATIONS)):
        async with conn.transaction():
            await conn.execute(MIGRATIONS[version])
            await conn.execute("INSERT INTO zennbot_migrations (v) VALUES (%s)", (version,))
        log.info("database: applied migration %d", version)
