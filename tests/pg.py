"""A throwaway PostgreSQL server for tests: Debian's binaries, a data directory in a fresh temp
dir, a unix socket only (no port to collide with), started and stopped by the tests.

`ZENNBOT_TEST_STORE=postgres` makes `tests.helpers.make_settings` give a test its own database on
this server: set for the PostgreSQL variant of tests marked `both_stores` (see tests/conftest.py),
or for a whole run; `TEST_PG_DSN` uses an existing server instead of starting one.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

STORE_ENV = "ZENNBOT_TEST_STORE"


def on_postgres() -> bool:
    """True while the running test's store is PostgreSQL."""
    return os.environ.get(STORE_ENV, "sqlite").lower() in ("postgres", "postgresql", "pg")


# Tests about SQLite itself: never given the PostgreSQL store (skipped in a whole-suite
# PostgreSQL run, no PostgreSQL variant under `both_stores`).
sqlite_only = pytest.mark.sqlite_only
# Multi-process tests: run once on each store (parametrised by tests/conftest.py).
both_stores = pytest.mark.both_stores
# A case of a `both_stores` test whose PostgreSQL variant is left out: other cases of the same
# test already take the same store code through PostgreSQL (it runs in a whole-suite
# PostgreSQL run all the same).
postgres_elsewhere = pytest.mark.postgres_elsewhere


def server_bin() -> Path:
    """The newest installed server's bin directory. Raises `FileNotFoundError` with what to do."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise FileNotFoundError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: "
                                "run `sh scripts/install-postgres.sh` (or `make test`)")
    return Path(found[-1]).parent


class PostgresServer:
    """`start()` gives a DSN for the `postgres` database; `new_database()` one for a fresh,
    empty database; `stop()` removes everything."""

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.dsn = ""
        self._as_user: list[str] = []
        self._bin = Path()

    def start(self) -> str:
        if existing := os.environ.get("TEST_PG_DSN"):
            self.dsn = existing
            return self.dsn
        bin_dir = server_bin()
        # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700 and the server runs as postgres.
        self.dir = Path(tempfile.mkdtemp(prefix="zennbot-pg-"))
        if os.geteuid() == 0:  # initdb refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._bin = bin_dir
        as_user = self._as_user
        data = self.dir / "data"
        subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-w",
                        "-t", "120", "-o", f"-k {self.dir} -c listen_addresses='' -F -c max_connections=300 "
                        "-c synchronous_commit=off -c full_page_writes=off", "start"],
                       check=True, capture_output=True)
        self.dsn = f"postgresql://postgres@/postgres?host={self.dir}"
        return self.dsn

    def new_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return urlunsplit(urlsplit(self.dsn)._replace(path="/" + name))

    def stop(self) -> None:
        if self.dir is None:
            return
        subprocess.run([*self._as_user, str(self._bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate",
                        "-w", "stop"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None


_server: PostgresServer | None = None


def shared_server() -> PostgresServer:
    """The session's server, started on first use (stopped by the conftest at the end)."""
    global _server
    if _server is None:
        server = PostgresServer()
        server.start()
        _server = server
    return _server


def stop_shared_server() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None
