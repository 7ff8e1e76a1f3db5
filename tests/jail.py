"""The tests' network jail: Python code may connect only to loopback (127.0.0.0/8, ::1) or Unix
sockets, so no test can reach another address even when the guard under test is broken. Every
test runs inside it (`tests/conftest.py`), and so does every `zennbot` process forked for a test
(`tests/forkserver.py`)."""

from __future__ import annotations

import ipaddress
import socket

real_connect = socket.socket.connect
real_connect_ex = socket.socket.connect_ex


def allowed(sock: socket.socket, address) -> bool:
    if sock.family == socket.AF_UNIX:
        return True
    host = address[0] if isinstance(address, tuple) else address
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def jailed_connect(self, address):
    if not allowed(self, address):
        raise ConnectionRefusedError(f"test network jail: connection to {address!r} refused")
    return real_connect(self, address)


def jailed_connect_ex(self, address):
    if not allowed(self, address):
        raise ConnectionRefusedError(f"test network jail: connection to {address!r} refused")
    return real_connect_ex(self, address)


def lock_up() -> None:
    """For good, in this process (a forked child)."""
    socket.socket.connect = jailed_connect
    socket.socket.connect_ex = jailed_connect_ex
