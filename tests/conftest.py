"""Shared fixtures. Every test runs inside a network jail: Python code may connect only to
loopback (127.0.0.0/8, ::1) or Unix sockets, so no test can reach another address even when
the guard under test is broken."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from tests.helpers import TRUSTED_REPLICA  # noqa: F401  (re-exported for tests)
from tests.pg import on_postgres, stop_shared_server

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _allowed(sock: socket.socket, address) -> bool:
    if sock.family == socket.AF_UNIX:
        return True
    host = address[0] if isinstance(address, tuple) else address
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def _jailed_connect(self, address):
    if not _allowed(self, address):
        raise ConnectionRefusedError(f"test network jail: connection to {address!r} refused")
    return _real_connect(self, address)


def _jailed_connect_ex(self, address):
    if not _allowed(self, address):
        raise ConnectionRefusedError(f"test network jail: connection to {address!r} refused")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def network_jail(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _jailed_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _jailed_connect_ex)
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
    return f"store: {'PostgreSQL' if on_postgres() else 'SQLite'}"
