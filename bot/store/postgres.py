"""The bot's store on PostgreSQL, for any number of replicas sharing one database.

Thread history goes through LangGraph's Postgres checkpointer; the bot's own tables (handled
events, owned threads, the page cache, runs in progress, rate-limit counts, token usage,
feedback) live in the same database, set up by `migrate` (also run by `open`). The contract
(errors, cancellation, turns across replicas) is `bot.store.base`'s. One psycopg pool serves both, with
`autocommit=True` (the checkpointer's migrations need it), `dict_row` rows and
`prepare_threshold=None`: no server-side prepared statements, so pgbouncer in transaction mode
works (psycopg's 0 would prepare every statement on first use, the opposite). Times that
replicas compare (event memory, rate windows) are the database's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import errors, pq
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from agent.types import CachedPage, TokenUsage
from bot.store.base import (CHANNEL_FULL, DEFAULT_SCHEDULE, EVENT_MEMORY, FEED_MEMORY, FOLLOW_ADDED, FOLLOW_EXISTS,
                            LEASE_TTL, PAGE_MEMORY, RATE_MEMORY, RESERVATION_TTL, USAGE_GROUPS, WORKSPACE_FULL,
                            BudgetClaim, BudgetRefusal, DigestChannel, DigestRecord, FeedEntry, Follow, Holder,
                            RunRecord, SaverErrors, StoreUnavailable, this_process, Turns, UsageRow, utc_day)

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
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, platform TEXT NOT NULL, user_id TEXT NOT NULL,
        question TEXT NOT NULL, reply_to TEXT NOT NULL, checkpoint TEXT, started_at DOUBLE PRECISION NOT NULL,
        holder_pid INTEGER NOT NULL, lock_classid BIGINT NOT NULL, lock_objid BIGINT NOT NULL);
    CREATE TABLE run_usage (
        run_id TEXT NOT NULL, model TEXT NOT NULL, day TEXT NOT NULL, platform TEXT NOT NULL,
        workspace TEXT NOT NULL, thread_id TEXT NOT NULL, input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (run_id, model));
    CREATE INDEX run_usage_budget_idx ON run_usage (platform, workspace, day);
    CREATE TABLE feedback (
        platform TEXT NOT NULL, thread_id TEXT NOT NULL, message_id TEXT NOT NULL, user_id TEXT NOT NULL,
        value TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (platform, message_id, user_id));
    """,
    """
    CREATE TABLE zennbot_heartbeat (id INTEGER PRIMARY KEY, at TIMESTAMPTZ NOT NULL);
    CREATE TABLE thread_leases (
        thread_id TEXT PRIMARY KEY, lease TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
        process TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL);
    ALTER TABLE runs ADD COLUMN lease TEXT;
    ALTER TABLE runs ALTER COLUMN holder_pid DROP NOT NULL;
    ALTER TABLE runs ALTER COLUMN lock_classid DROP NOT NULL;
    ALTER TABLE runs ALTER COLUMN lock_objid DROP NOT NULL;
    """,
    """
    CREATE TABLE token_budget (
        run_id TEXT PRIMARY KEY, platform TEXT NOT NULL, bucket TEXT NOT NULL, user_id TEXT NOT NULL,
        day TEXT NOT NULL, tokens BIGINT NOT NULL, settled BOOLEAN NOT NULL, expires_at DOUBLE PRECISION NOT NULL);
    CREATE INDEX token_budget_bucket_idx ON token_budget (platform, bucket, day);
    """,
    # 3: follows and digests (bot.digest)
    """
    CREATE TABLE follows (
        platform TEXT NOT NULL, workspace TEXT NOT NULL, channel_id TEXT NOT NULL, target TEXT NOT NULL,
        display TEXT NOT NULL, created_by TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (platform, channel_id, target));
    CREATE INDEX follows_workspace_idx ON follows (platform, workspace);
    CREATE TABLE digest_channels (
        platform TEXT NOT NULL, channel_id TEXT NOT NULL, workspace TEXT NOT NULL, every TEXT NOT NULL,
        at TEXT NOT NULL, tz TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (platform, channel_id));
    CREATE TABLE digests (
        platform TEXT NOT NULL, channel_id TEXT NOT NULL, period TEXT NOT NULL, state TEXT NOT NULL,
        since DOUBLE PRECISION NOT NULL, until DOUBLE PRECISION NOT NULL, holder TEXT NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL, content TEXT NOT NULL DEFAULT '', message_ref TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (platform, channel_id, period));
    CREATE TABLE feed_state (
        feed TEXT PRIMARY KEY, etag TEXT NOT NULL, last_modified TEXT NOT NULL, polled_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE feed_entries (
        feed TEXT NOT NULL, url TEXT NOT NULL, title TEXT NOT NULL, author TEXT NOT NULL,
        published_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (feed, url));
    CREATE INDEX feed_entries_published_idx ON feed_entries (feed, published_at);
    """,
    # 4: runs waiting for their turn (told to their askers when their process died meanwhile)
    """
    CREATE TABLE waiting_runs (
        run_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, platform TEXT NOT NULL, user_id TEXT NOT NULL,
        question TEXT NOT NULL, reply_to TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL, host TEXT NOT NULL,
        pid INTEGER NOT NULL, process TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL);
    """,
    # 5: feed polls under way (a digest waits for them rather than miss what they bring)
    """
    CREATE TABLE feed_polls (feed TEXT PRIMARY KEY, busy_until DOUBLE PRECISION NOT NULL);
    """,
]


class PgStore:
    """Open with `await PgStore.open(url)`, close with `await store.close()`. Every method
    raises `StoreUnavailable` when the database cannot be used (unreachable, no free connection
    within the timeout, disk full); so do the checkpointer's."""

    def __init__(self, url: str, pool: AsyncConnectionPool, timeout: float, lease_ttl: float = LEASE_TTL) -> None:
        self.url = url
        self.pool = pool
        self.timeout = timeout
        self.checkpointer = _Checkpointer(pool)
        self._turns = Turns(self, lease_ttl)
        self.checkpointer.turns = self._turns
        self._me = this_process()

    @classmethod
    async def open(cls, url: str, pool_size: int = 10, timeout: float = 10.0, lease_ttl: float = LEASE_TTL) -> PgStore:
        """Connect and bring the schema up to date (safe when several replicas start at once).
        Every connection of the store is one of its pool's: at most `max(2, pool_size)` per
        replica, however many runs wait (set-up briefly uses two more, closed before it
        returns). Raises `StoreUnavailable` when the database cannot be reached or set up."""
        try:
            await migrate(url, timeout)
            pool = AsyncConnectionPool(url, min_size=1, max_size=max(2, pool_size), open=False, timeout=timeout,
                                       kwargs=CONNECTION_KWARGS, name="zennbot", reset=_check_returned)
            await pool.open(wait=True, timeout=timeout)
        except psycopg.Error as exc:
            raise unavailable(exc) from exc
        return cls(url, pool, timeout, lease_ttl)

    async def close(self) -> None:
        await self.pool.close()

    async def ping(self) -> None:
        """Readiness: returns when the store can write (a heartbeat row, in its own transaction)
        within the timeout. Raises `StoreUnavailable`."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._execute("INSERT INTO zennbot_heartbeat (id, at) VALUES (1, now()) "
                                    "ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at")
        except TimeoutError as exc:
            raise StoreUnavailable("cannot be written", "the readiness write timed out") from exc

    # Page cache (agent.pages.PageCache)

    async def get_page(self, url: str, max_age: float) -> CachedPage | None:
        row = await self._fetchone(
            "SELECT url, title, text, source, summary, fetched_at FROM page_cache "
            "WHERE url = %s AND fetched_at >= extract(epoch FROM now()) - %s", (url, max_age))
        return CachedPage(**row) if row else None

    async def put_page(self, page: CachedPage) -> None:
        title, text, summary = _text(page.title), _text(page.text), _text(page.summary)
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

    # One run at a time per thread, across replicas

    def turn_lock(self, thread_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the thread for one run (`bot.store.base.Turns`): a lease row, taken, renewed and
        released in short statements on pool connections, with expiry on the database's clock.
        Chosen over an advisory lock held on a connection for the whole run: waiting (for the
        turn or a run slot) then holds no connection, connections stay bounded by the pool, and
        a dropped connection (a network blip, `pg_terminate_backend`) no longer lets another
        replica take over a run whose owner is still alive: only an expired lease does, or at
        once a holder on this host whose process is gone. Raises `StoreUnavailable`, and
        `TurnLost` when the lease was lost while held."""
        return self._turns.hold(thread_id)

    async def confirm_turn(self, thread_id: str) -> None:
        await self._turns.confirm(thread_id)

    async def take_lease(self, thread_id: str, lease: str) -> bool:
        row = await self._fetchone("SELECT lease, host, pid, process, expires_at > now() AS fresh FROM thread_leases "
                                   "WHERE thread_id = %s", (thread_id,))
        values = (lease, self._me.host, self._me.pid, self._me.token, self._turns.ttl)
        if row is None:
            taken = await self._fetchone(
                "INSERT INTO thread_leases (thread_id, lease, host, pid, process, expires_at) "
                "VALUES (%s, %s, %s, %s, %s, now() + make_interval(secs => %s)) ON CONFLICT DO NOTHING RETURNING 1",
                (thread_id, *values))
            return taken is not None
        if row["fresh"] and Holder(row["host"], row["pid"], row["process"]).alive(self._me):
            return False
        taken = await self._fetchone(  # only if nobody else took it meanwhile
            "UPDATE thread_leases SET lease = %s, host = %s, pid = %s, process = %s, "
            "expires_at = now() + make_interval(secs => %s) WHERE thread_id = %s AND lease = %s RETURNING 1",
            (*values, thread_id, row["lease"]))
        return taken is not None

    async def renew_lease(self, thread_id: str, lease: str) -> bool:
        row = await self._fetchone("UPDATE thread_leases SET expires_at = now() + make_interval(secs => %s) "
                                   "WHERE thread_id = %s AND lease = %s RETURNING 1", (self._turns.ttl, thread_id, lease))
        return row is not None

    async def release_lease(self, thread_id: str, lease: str) -> None:
        await self._execute("DELETE FROM thread_leases WHERE thread_id = %s AND lease = %s", (thread_id, lease))

    # Runs in progress: what a crash leaves behind is rolled back, never kept as history

    async def begin_run(self, run: RunRecord) -> None:
        """Record `run` durably before the agent starts. Call it while holding
        `turn_lock(run.thread_id)`: the run belongs to that lock, and counts as lost once the
        lock is gone. Raises `StoreUnavailable`."""
        lease = self._turns.lease_of(run.thread_id)
        if lease is None:
            raise RuntimeError(f"begin_run outside turn_lock({run.thread_id!r})")
        await self._execute(  # one statement: the run stops waiting as it begins
            "WITH waited AS (DELETE FROM waiting_runs WHERE run_id = %s) "
            "INSERT INTO runs (run_id, thread_id, platform, user_id, question, reply_to, checkpoint, started_at, lease) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (run.run_id, run.run_id, run.thread_id, run.platform, run.user_id, _text(run.question),
             _text(run.reply_to), run.checkpoint, run.started_at, lease))

    async def queue_run(self, run: RunRecord, wait: float) -> None:
        """Record `run` as waiting for its turn (see `bot.store.base.Store.queue_run`), until
        `wait` s from now on the database's clock. Raises `StoreUnavailable`."""
        await self._execute(
            "INSERT INTO waiting_runs (run_id, thread_id, platform, user_id, question, reply_to, started_at, host, "
            "pid, process, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "now() + make_interval(secs => %s)) ON CONFLICT (run_id) DO NOTHING",
            (run.run_id, run.thread_id, run.platform, run.user_id, _text(run.question), _text(run.reply_to),
             run.started_at, self._me.host, self._me.pid, self._me.token, wait))

    async def update_reply_to(self, run_id: str, reply_to: str) -> None:
        """Change where to tell the user about a run, waiting or begun (e.g. once its status
        message exists). Any other run is left alone. Raises `StoreUnavailable`."""
        await self._execute("WITH waiting AS (UPDATE waiting_runs SET reply_to = %s WHERE run_id = %s) "
                            "UPDATE runs SET reply_to = %s WHERE run_id = %s",
                            (_text(reply_to), run_id, _text(reply_to), run_id))

    async def finish_run(self, run_id: str) -> None:
        """Forget a run that ended (answered, rolled back, or never begun). Raises `StoreUnavailable`."""
        await self._execute("WITH waited AS (DELETE FROM waiting_runs WHERE run_id = %s) "
                            "DELETE FROM runs WHERE run_id = %s", (run_id, run_id))

    async def abandoned_runs(self, platform: str | None = None) -> list[RunRecord]:
        """Runs whose wait for their turn was cut short by their process's end (see
        `bot.store.base.Store.abandoned_runs`). Raises `StoreUnavailable`."""
        rows = await self._fetchall(
            "SELECT thread_id, platform, user_id, question, reply_to, run_id, started_at, host, pid, process, "
            "expires_at > now() AS fresh FROM waiting_runs w WHERE (%s::text IS NULL OR platform = %s) "
            "AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.run_id = w.run_id) ORDER BY started_at",
            (platform, platform))
        return [RunRecord(row["thread_id"], row["platform"], row["user_id"], row["question"], None, row["reply_to"],
                          row["run_id"], row["started_at"])
                for row in rows if not row["fresh"] or not Holder(row["host"], row["pid"], row["process"]).alive(self._me)]

    async def unfinished_runs(self, platform: str | None = None) -> list[RunRecord]:
        """Lost runs, oldest first: begun, never finished, and their holder is gone (its lease on
        the thread was released, expired, or belongs to a process on this host that is known
        dead). Runs that a live replica is still working on are not listed. Raises
        `StoreUnavailable`."""
        rows = await self._fetchall(
            "SELECT r.thread_id, r.platform, r.user_id, r.question, r.checkpoint, r.reply_to, r.run_id, r.started_at, "
            "l.host, l.pid, l.process, l.expires_at > now() AS fresh FROM runs r LEFT JOIN thread_leases l "
            "ON l.thread_id = r.thread_id AND l.lease = r.lease "
            "WHERE (%s::text IS NULL OR r.platform = %s) ORDER BY r.started_at", (platform, platform))
        return [RunRecord(**{k: row[k] for k in ("thread_id", "platform", "user_id", "question", "checkpoint",
                                                 "reply_to", "run_id", "started_at")})
                for row in rows
                if row["host"] is None or not row["fresh"]
                or not Holder(row["host"], row["pid"], row["process"]).alive(self._me)]

    # What answers cost, and what people thought of them (the daily token budget counts over
    # every replica)

    async def record_usage(self, run_id: str, platform: str, workspace: str, thread_id: str,
                           usage: list[TokenUsage]) -> None:
        now = time.time()
        async with self._connection(transaction=True) as conn:
            for u in usage:
                await conn.execute(
                    "INSERT INTO run_usage (run_id, model, day, platform, workspace, thread_id, input_tokens, "
                    "output_tokens, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (run_id, model) DO UPDATE SET day = EXCLUDED.day, platform = EXCLUDED.platform, "
                    "workspace = EXCLUDED.workspace, thread_id = EXCLUDED.thread_id, "
                    "input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens, "
                    "created_at = EXCLUDED.created_at",
                    (run_id, u.model, utc_day(now), platform, workspace, thread_id, u.input_tokens,
                     u.output_tokens, now))

    async def tokens_today(self, platform: str, workspace: str) -> int:
        row = await self._fetchone(
            "SELECT COALESCE(SUM(input_tokens + output_tokens), 0) AS n FROM run_usage "
            "WHERE platform = %s AND workspace = %s AND day = %s", (platform, workspace, utc_day()))
        return int(row["n"])

    async def usage_by(self, column: str, limit: int = 20) -> list[UsageRow]:
        """Token totals grouped by `day`, `platform` or `thread_id`, largest (or latest day) first."""
        if column not in USAGE_GROUPS:
            raise ValueError(column)
        order = "key DESC" if column == "day" else "SUM(input_tokens + output_tokens) DESC"
        rows = await self._fetchall(
            f"SELECT {column} AS key, COUNT(DISTINCT run_id) AS runs, SUM(input_tokens) AS input_tokens, "
            f"SUM(output_tokens) AS output_tokens FROM run_usage GROUP BY {column} ORDER BY {order} LIMIT %s",
            (limit,))
        return [UsageRow(r["key"], r["runs"], int(r["input_tokens"]), int(r["output_tokens"])) for r in rows]

    async def record_feedback(self, platform: str, thread_id: str, message_id: str, user_id: str,
                              value: str) -> None:
        """One vote per user and message: a second click replaces the first."""
        await self._execute(
            "INSERT INTO feedback (platform, thread_id, message_id, user_id, value, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (platform, message_id, user_id) DO UPDATE SET "
            "thread_id = EXCLUDED.thread_id, value = EXCLUDED.value, created_at = EXCLUDED.created_at",
            (platform, thread_id, message_id, user_id, _text(value), time.time()))

    async def feedback_counts(self) -> dict[tuple[str, str], int]:
        """(platform, value) → number of votes."""
        rows = await self._fetchall("SELECT platform, value, COUNT(*) AS n FROM feedback GROUP BY platform, value")
        return {(r["platform"], r["value"]): r["n"] for r in rows}

    # Rate limits shared by every replica

    async def rate_wait(self, key: str, limit: int, window: float) -> float:
        """At most `limit` events per `key` in any `window` seconds: 0.0 and the event counted
        when allowed, else the seconds until it would be (nothing counted). Times are the
        database's clock when the key's lock is held. Raises `StoreUnavailable`."""
        async with self._connection(transaction=True) as conn:
            # One replica at a time per key; the lock ends with the transaction.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("rate:" + key,))
            await conn.execute("DELETE FROM rate_events WHERE key = %s "
                               "AND at <= clock_timestamp() - make_interval(secs => %s)", (key, window))
            row = await (await conn.execute(
                "SELECT count(*) AS n, "
                "extract(epoch FROM min(at) + make_interval(secs => %s) - clock_timestamp()) AS wait "
                "FROM rate_events WHERE key = %s", (window, key))).fetchone()
            if row["n"] >= limit:
                return max(float(row["wait"]), 0.001)
            await conn.execute("INSERT INTO rate_events (key, at) VALUES (%s, clock_timestamp())", (key,))
        await self._sweep("rate_events", "at < now() - make_interval(secs => %s)", RATE_MEMORY)
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
            except StoreUnavailable as exc:
                if attempt == 2 or not isinstance(exc.__cause__, (errors.SerializationFailure,
                                                                  errors.DeadlockDetected)):
                    raise  # else a concurrent prune of the same thread: try again

    async def rollback_checkpoints(self, thread_id: str, to: str | None) -> None:
        """Forget a failed run: drop every checkpoint newer than `to` (None: the whole thread),
        the writes made from them, and the blobs no remaining checkpoint reads, so that no
        later run can pick up anything of the failed one."""
        if to is None:
            await self.checkpointer.adelete_thread(thread_id)
            return
        async with self._connection(transaction=True) as conn:
            await conn.execute("DELETE FROM checkpoint_writes WHERE thread_id = %s AND checkpoint_id > %s",
                               (thread_id, to))
            await conn.execute("DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_id > %s", (thread_id, to))
            await conn.execute(
                "DELETE FROM checkpoint_blobs b WHERE b.thread_id = %s AND NOT EXISTS ("
                " SELECT 1 FROM checkpoints c WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns"
                " AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)", (thread_id,))

    # Follows and digests (bot.digest); the contract is `bot.store.base.DigestStore`'s

    async def add_follow(self, follow: Follow, schedule: tuple[str, str, str] | None, max_per_channel: int,
                         max_per_workspace: int, default: tuple[str, str, str] = DEFAULT_SCHEDULE) -> str:
        async with self._connection(transaction=True) as conn:
            # counts and insert are one step per workspace across replicas
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                               (f"follows:{follow.platform}:{follow.workspace}",))

            async def count(sql: str, params: tuple) -> int:
                return (await (await conn.execute(sql, params)).fetchone())["n"]
            if await count("SELECT COUNT(*) AS n FROM follows WHERE platform = %s AND channel_id = %s AND target = %s",
                           (follow.platform, follow.channel_id, follow.target)):
                result = FOLLOW_EXISTS
            elif await count("SELECT COUNT(*) AS n FROM follows WHERE platform = %s AND channel_id = %s",
                             (follow.platform, follow.channel_id)) >= max_per_channel:
                return CHANNEL_FULL
            elif await count("SELECT COUNT(*) AS n FROM follows WHERE platform = %s AND workspace = %s",
                             (follow.platform, follow.workspace)) >= max_per_workspace:
                return WORKSPACE_FULL
            else:
                await conn.execute(
                    "INSERT INTO follows (platform, workspace, channel_id, target, display, created_by, created_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (follow.platform, follow.workspace, follow.channel_id, follow.target, _text(follow.display),
                     follow.created_by, follow.created_at))
                result = FOLLOW_ADDED
            every, at, tz = schedule or default
            await conn.execute(
                "INSERT INTO digest_channels (platform, channel_id, workspace, every, at, tz, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (follow.platform, follow.channel_id, follow.workspace, every, at, tz, follow.created_at))
            if schedule is not None:
                await conn.execute("UPDATE digest_channels SET every = %s, at = %s, tz = %s WHERE platform = %s "
                                   "AND channel_id = %s", (every, at, tz, follow.platform, follow.channel_id))
            return result

    async def remove_follow(self, platform: str, channel_id: str, target: str) -> bool:
        async with self._connection(transaction=True) as conn:
            removed = await (await conn.execute(
                "DELETE FROM follows WHERE platform = %s AND channel_id = %s AND target = %s RETURNING 1",
                (platform, channel_id, target))).fetchone()
            await conn.execute("DELETE FROM digest_channels WHERE platform = %s AND channel_id = %s AND NOT EXISTS "
                               "(SELECT 1 FROM follows WHERE platform = %s AND channel_id = %s)",
                               (platform, channel_id, platform, channel_id))
            return removed is not None

    async def list_follows(self, platform: str | None = None, channel_id: str | None = None) -> list[Follow]:
        rows = await self._fetchall(
            "SELECT platform, workspace, channel_id, target, display, created_by, created_at FROM follows "
            "WHERE (%s::text IS NULL OR platform = %s) AND (%s::text IS NULL OR channel_id = %s) "
            "ORDER BY platform, channel_id, created_at, target", (platform, platform, channel_id, channel_id))
        return [Follow(**row) for row in rows]

    async def digest_channels(self) -> list[DigestChannel]:
        rows = await self._fetchall("SELECT platform, workspace, channel_id, every, at, tz, created_at FROM "
                                    "digest_channels ORDER BY platform, channel_id")
        return [DigestChannel(**row) for row in rows]

    async def claim_digest(self, platform: str, channel_id: str, period: str, holder: str, now: float,
                           lease: float, since: float, until: float, take_from: str = "") -> DigestRecord | None:
        async with self._connection(transaction=True) as conn:
            await conn.execute(
                "INSERT INTO digests (platform, channel_id, period, state, since, until, holder, lease_until) "
                "VALUES (%s, %s, %s, 'claimed', %s, %s, '', 0) ON CONFLICT DO NOTHING",
                (platform, channel_id, period, since, until))
            row = await (await conn.execute(
                "UPDATE digests SET holder = %s, lease_until = %s WHERE platform = %s AND channel_id = %s "
                "AND period = %s AND state NOT IN ('posted', 'empty') AND (lease_until < %s OR (holder = %s AND "
                "holder != '')) RETURNING platform, channel_id, period, state, since, until, holder, lease_until, "
                "content, message_ref", (holder, now + lease, platform, channel_id, period, now, take_from))).fetchone()
            return DigestRecord(**row) if row else None

    async def digest_record(self, platform: str, channel_id: str, period: str) -> DigestRecord | None:
        row = await self._fetchone(
            "SELECT platform, channel_id, period, state, since, until, holder, lease_until, content, message_ref "
            "FROM digests WHERE platform = %s AND channel_id = %s AND period = %s", (platform, channel_id, period))
        return DigestRecord(**row) if row else None

    async def update_digest(self, record: DigestRecord, *, state: str, lease_until: float,
                            content: str | None = None, message_ref: str | None = None) -> bool:
        row = await self._fetchone(
            "UPDATE digests SET state = %s, lease_until = %s, content = COALESCE(%s, content), "
            "message_ref = COALESCE(%s, message_ref) WHERE platform = %s AND channel_id = %s AND period = %s "
            "AND holder = %s AND state NOT IN ('posted', 'empty') RETURNING 1",
            (state, lease_until, None if content is None else _text(content), message_ref, record.platform,
             record.channel_id, record.period, record.holder))
        return row is not None

    async def last_digest(self, platform: str, channel_id: str) -> DigestRecord | None:
        row = await self._fetchone(
            "SELECT platform, channel_id, period, state, since, until, holder, lease_until, content, message_ref "
            "FROM digests WHERE platform = %s AND channel_id = %s AND state IN ('posted', 'empty') "
            "ORDER BY until DESC LIMIT 1", (platform, channel_id))
        return DigestRecord(**row) if row else None

    async def claim_feed_poll(self, feed: str, now: float, min_interval: float,
                              busy_for: float) -> tuple[str, str] | None:
        async with self._connection(transaction=True) as conn:
            await conn.execute("INSERT INTO feed_state (feed, etag, last_modified, polled_at) VALUES (%s, '', '', %s) "
                               "ON CONFLICT DO NOTHING", (feed, now - min_interval - 1))
            row = await (await conn.execute(
                "UPDATE feed_state SET polled_at = %s WHERE feed = %s AND polled_at <= %s "
                "RETURNING etag, last_modified", (now, feed, now - min_interval))).fetchone()
            if row is None:
                return None
            await conn.execute("INSERT INTO feed_polls (feed, busy_until) VALUES (%s, %s) "
                               "ON CONFLICT (feed) DO UPDATE SET busy_until = EXCLUDED.busy_until",
                               (feed, now + busy_for))
            return row["etag"], row["last_modified"]

    async def record_feed_poll(self, feed: str, etag: str, last_modified: str, entries: list[FeedEntry]) -> None:
        async with self._connection(transaction=True) as conn:
            await conn.execute("UPDATE feed_state SET etag = %s, last_modified = %s WHERE feed = %s",
                               (etag, last_modified, feed))
            await conn.execute("DELETE FROM feed_polls WHERE feed = %s", (feed,))
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO feed_entries (feed, url, title, author, published_at) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    [(feed, e.url, _text(e.title), _text(e.author), e.published_at) for e in entries])
            if entries:  # entries far older than the feed's newest are past any digest
                await conn.execute("DELETE FROM feed_entries WHERE feed = %s AND published_at < %s",
                                   (feed, max(e.published_at for e in entries) - FEED_MEMORY))

    async def polls_under_way(self, feeds: list[str], now: float) -> list[str]:
        if not feeds:
            return []
        rows = await self._fetchall("SELECT feed FROM feed_polls WHERE feed = ANY(%s) AND busy_until > %s",
                                    (list(feeds), now))
        return [row["feed"] for row in rows]

    async def feed_entries(self, feeds: list[str], since: float, until: float) -> list[FeedEntry]:
        if not feeds:
            return []
        rows = await self._fetchall(
            "SELECT feed, url, title, author, published_at FROM feed_entries WHERE feed = ANY(%s) "
            "AND published_at > %s AND published_at <= %s ORDER BY published_at DESC", (list(feeds), since, until))
        return [FeedEntry(**row) for row in rows]

    # Helpers

    @contextlib.asynccontextmanager
    async def _connection(self, transaction: bool = False) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pool connection (in a transaction if asked); psycopg errors become `StoreUnavailable`."""
        conn: psycopg.AsyncConnection | None = None
        try:
            async with self.pool.connection() as conn:
                if transaction:
                    async with conn.transaction():
                        yield conn
                else:
                    yield conn
        except psycopg.Error as exc:
            if conn is not None and conn.broken:  # the server went away: so did its other connections
                await self._drop_broken_connections()
            raise unavailable(exc) from exc

    async def _drop_broken_connections(self) -> None:
        """After a dropped connection (a restart, a network blip, `pg_terminate_backend`), check
        the pool's idle connections at once, so that the next call (a retry) gets a live one
        instead of failing on each dead connection in turn. (The pool's own `check` on every
        checkout backs off a second and more per dead connection.)"""
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(self.pool.check())
        except (psycopg.Error, TimeoutError) as exc:
            log.warning("checking the pool's connections failed: %s", exc)

    async def _execute(self, sql: str, params: tuple = ()) -> None:
        async with self._connection() as conn:
            await conn.execute(sql, params)

    async def _fetchone(self, sql: str, params: tuple = ()) -> dict | None:
        async with self._connection() as conn:
            return await (await conn.execute(sql, params)).fetchone()

    async def _fetchall(self, sql: str, params: tuple = ()) -> list[dict]:
        async with self._connection() as conn:
            return await (await conn.execute(sql, params)).fetchall()

    async def _sweep(self, table: str, condition: str, *params: object) -> None:
        """Delete expired rows without waiting for, or deadlocking with, another replica
        sweeping the same table."""
        await self._execute(
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
            f"SELECT ctid FROM {table} WHERE {condition} LIMIT {SWEEP_BATCH} FOR UPDATE SKIP LOCKED))", params)

    # The daily token budget: one admission at a time per bucket (a transaction-level advisory lock)

    async def reserve_tokens(self, claim: BudgetClaim, budget: int) -> BudgetRefusal | None:
        now = time.time()
        day = utc_day(now)
        async with self._connection(transaction=True) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                               (f"budget:{claim.platform}:{claim.bucket}",))
            buckets = [claim.bucket]
            if claim.guard_user:
                rows = await (await conn.execute(
                    "SELECT DISTINCT bucket FROM token_budget WHERE platform = %s AND day = %s AND user_id = %s "
                    "AND bucket <> %s", (claim.platform, day, claim.user_id, claim.bucket))).fetchall()
                buckets += [row["bucket"] for row in rows]
            for bucket in buckets:
                row = await (await conn.execute(
                    "SELECT COALESCE(SUM(tokens), 0) AS n FROM token_budget WHERE platform = %s AND bucket = %s "
                    "AND day = %s AND (settled OR expires_at > %s)", (claim.platform, bucket, day, now))).fetchone()
                if row["n"] >= budget:
                    return BudgetRefusal(bucket, int(row["n"]))
            row = await (await conn.execute(
                "SELECT COALESCE(MAX(tokens), 0) AS n FROM token_budget WHERE platform = %s AND bucket = %s "
                "AND day = %s AND settled", (claim.platform, claim.bucket, day))).fetchone()
            await conn.execute(
                "INSERT INTO token_budget (run_id, platform, bucket, user_id, day, tokens, settled, expires_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, false, %s) ON CONFLICT (run_id) DO NOTHING",
                (claim.run_id, claim.platform, _text(claim.bucket), _text(claim.user_id), day,
                 max(claim.estimate, int(row["n"])), now + RESERVATION_TTL))
        return None

    async def settle_tokens(self, run_id: str, tokens: int) -> None:
        await self._execute("UPDATE token_budget SET tokens = %s, settled = true WHERE run_id = %s", (tokens, run_id))

    async def keep_run(self, run_id: str, checkpoint: str | None) -> None:
        await self._execute("UPDATE runs SET checkpoint = %s WHERE run_id = %s", (checkpoint, run_id))


class _Checkpointer(SaverErrors, AsyncPostgresSaver):
    """LangGraph's saver, with database errors raised as `StoreUnavailable` (`SaverErrors`)."""

    database_error = psycopg.Error

    @staticmethod
    def unavailable(exc: Exception) -> StoreUnavailable:
        return unavailable(exc)


async def _check_returned(conn: psycopg.AsyncConnection) -> None:
    """Called by the pool on every connection given back (after its own rollback of an open
    transaction): one that a cancellation left in pipeline mode is discarded (raising here makes
    the pool close it), so the next user never inherits half a pipeline."""
    if conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
        raise psycopg.InterfaceError("connection returned in pipeline mode")


def unavailable(exc: psycopg.Error) -> StoreUnavailable:
    """The `StoreUnavailable` for a psycopg error, with the reason a user can act on."""
    if isinstance(exc, errors.DiskFull):
        reason = "out of disk space"
    elif isinstance(exc, (errors.ReadOnlySqlTransaction,)):
        reason = "read-only"
    elif isinstance(exc, psycopg.OperationalError):
        reason = "cannot be reached"
    else:
        reason = "cannot be read or written"
    return StoreUnavailable(reason, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


def _text(value: str) -> str:
    return value.replace("\x00", "")  # PostgreSQL text cannot hold NUL characters


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
