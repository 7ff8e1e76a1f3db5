"""One fixture per store backend for the contract tests (`tests/test_store_contract.py`): how to
open a store on a fresh database, and the few backend-specific moves a test needs (leave a
connection inside a transaction, block writes from outside, check nothing is left open)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from bot.store import Store
from tests.pg import shared_server


class Backend:
    name = ""

    async def open(self, busy_timeout: float = 10.0, **kwargs) -> Store:
        raise NotImplementedError

    async def wedge(self, store: Store) -> None:
        """Leave one of the store's connections inside an open write transaction."""
        raise NotImplementedError

    def write_blocked(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Another session holds the database's (or the heartbeat's) write lock meanwhile."""
        raise NotImplementedError

    def execute(self, sql: str) -> None:
        """Run a statement on the database from outside the store."""
        raise NotImplementedError

    async def assert_clean(self, store: Store) -> None:
        """No transaction left open, no connection out of its pool."""
        raise NotImplementedError


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def open(self, busy_timeout: float = 10.0, **kwargs) -> Store:
        from bot.store.sqlite import SqliteStore

        return await SqliteStore.open(str(self.path), busy_timeout, **kwargs)

    async def wedge(self, store: Store) -> None:
        await store.conn.execute("BEGIN IMMEDIATE")  # type: ignore[attr-defined]

    @contextlib.asynccontextmanager
    async def write_blocked(self) -> AsyncIterator[None]:
        blocker = sqlite3.connect(self.path, timeout=0)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            yield
        finally:
            blocker.rollback()
            blocker.close()

    def execute(self, sql: str) -> None:
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            db.execute(sql)
            db.commit()

    async def assert_clean(self, store: Store) -> None:
        assert not store.conn.in_transaction  # type: ignore[attr-defined]
        assert not store.checkpointer.conn.in_transaction  # type: ignore[attr-defined]


class PostgresBackend(Backend):
    name = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self._observer: psycopg.Connection | None = None

    def close(self) -> None:
        if self._observer is not None:
            self._observer.close()

    async def open(self, busy_timeout: float = 10.0, **kwargs) -> Store:
        from bot.store.postgres import PgStore

        return await PgStore.open(self.url, kwargs.pop("pool_size", 4), busy_timeout, **kwargs)

    async def wedge(self, store: Store) -> None:
        pool = store.pool  # type: ignore[attr-defined]
        conn = await pool.getconn()
        await conn.execute("BEGIN")
        await conn.execute("INSERT INTO bot_threads (thread_id) VALUES ('wedge') ON CONFLICT DO NOTHING")
        await pool.putconn(conn)  # returned inside its transaction: the pool must roll it back

    @contextlib.asynccontextmanager
    async def write_blocked(self) -> AsyncIterator[None]:
        async with await psycopg.AsyncConnection.connect(self.url) as blocker:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE zennbot_heartbeat IN ACCESS EXCLUSIVE MODE")
                yield

    def execute(self, sql: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute(sql)

    async def assert_clean(self, store: Store) -> None:
        stats = store.pool.get_stats()  # type: ignore[attr-defined]
        assert stats["pool_size"] <= stats["pool_max"]
        if self._observer is None:
            self._observer = psycopg.connect(self.url, autocommit=True)
        stale = self._observer.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                       "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'").fetchone()[0]
        assert stale == 0


@pytest.fixture
def sqlite_backend(tmp_path) -> SqliteBackend:
    return SqliteBackend(tmp_path / "z.db")


@pytest.fixture
def postgres_backend() -> Iterator[PostgresBackend]:
    backend = PostgresBackend(shared_server().new_database())
    yield backend
    backend.close()
