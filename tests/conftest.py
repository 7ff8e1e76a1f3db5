"""Shared fixtures. Every test runs inside the network jail (`tests/jail.py`)."""

from __future__ import annotations

import gc

# Collection imports the product and its libraries, hundreds of thousands of objects that live
# as long as the worker: the collector would go through them again and again (about a third of a
# worker's collection time). It is off until they are in, and they are then frozen (never
# collected again, see pytest_collection_finish).
gc.disable()

import socket
import sys

import pytest

from tests import jail
from tests.helpers import TRUSTED_REPLICA  # noqa: F401  (re-exported for tests)
from tests.pg import STORE_ENV, on_postgres, stop_shared_server


@pytest.fixture(autouse=True)
def network_jail(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", jail.jailed_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", jail.jailed_connect_ex)
    for name in ("GOOGLE_API_KEY", "DISCORD_TOKEN", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN",
                 "SLACK_SIGNING_SECRET", "GOOGLE_GEMINI_BASE_URL", "ZENNBOT_ALLOW_PRIVATE_NETWORK"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture(scope="session", autouse=True)
def postgres_server():
    """The test PostgreSQL server is started on first use (tests.pg.shared_server) and stopped
    here, at the end of the session."""
    yield
    stop_shared_server()


def pytest_report_header(config) -> str:
    if on_postgres():
        return "store: PostgreSQL for every test"
    return "store: SQLite; tests marked both_stores also on PostgreSQL"


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "both_stores: run once on SQLite and once on PostgreSQL")
    config.addinivalue_line("markers", "sqlite_only: about SQLite itself (no PostgreSQL variant)")
    config.addinivalue_line("markers", "postgres_elsewhere: a case whose PostgreSQL variant other cases cover")


def pytest_generate_tests(metafunc) -> None:
    """`both_stores` tests get a `store_kind` parameter ("sqlite", "postgres"), unless the whole
    run is on PostgreSQL already or the test is about SQLite only."""
    marked = metafunc.definition.get_closest_marker
    if marked("both_stores") and not on_postgres():
        kinds = ["sqlite"] if marked("sqlite_only") else ["sqlite", "postgres"]
        metafunc.parametrize("store_kind", kinds, indirect=True)


# Modules whose tests start real `zennbot` processes or browsers (15–60 s each on this 2-core
# machine): collected first, so that the workers start them early and no worker is left with one
# at the end while the others are idle.
SLOW_FIRST = ("test_crash.py", "test_crash_post.py", "test_digest_cli.py", "test_replicas.py", "test_failures.py",
              "test_cli.py", "test_browser_service.py", "test_turns.py", "test_reader.py")


def pytest_collection_modifyitems(config, items) -> None:
    items.sort(key=lambda item: item.path.name not in SLOW_FIRST)  # stable: the order within stays
    if on_postgres():
        skip = pytest.mark.skip(reason="about SQLite itself")
        for item in items:
            if item.get_closest_marker("sqlite_only"):
                item.add_marker(skip)
        return
    left_out = [item for item in items if item.get_closest_marker("postgres_elsewhere")
                and getattr(item, "callspec", None) is not None and item.callspec.params.get("store_kind") == "postgres"]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item not in left_out]


@pytest.fixture(autouse=True)
def store_kind(request, monkeypatch) -> str:
    """The store `tests.helpers.make_settings` gives the test (and its subprocesses)."""
    kind = getattr(request, "param", None)
    if kind is not None:
        monkeypatch.setenv(STORE_ENV, kind)
    return "postgres" if on_postgres() else "sqlite"


def pytest_collection_finish(session) -> None:
    gc.freeze()
    gc.enable()


def pytest_runtest_logreport(report) -> None:
    """A test that is run again (`--reruns`) shows why it failed, not only its name: a flake
    is a bug somewhere until its cause is known."""
    if report.outcome == "rerun":
        sys.stderr.write(f"\n--- failed, run again: {report.nodeid}\n{report.longreprtext[-4000:]}\n")
