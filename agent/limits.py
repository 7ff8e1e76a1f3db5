"""Named bounds on the scarce resources a run uses, each held only while it is used.

A run waiting for the model holds no browser render, and a run reading a page holds no model
call: each resource is bounded on its own, where it is used (`BrowserPool.render`, the reader's
fetch of a server's HTML, the graph's model call). `in_use` and `peak` say how full a bound is
and was (for health checks, benchmarks and tests).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Limit:
    """At most `size` holders at once; the others wait in arrival order. A holder that is
    cancelled, while waiting or while holding, gives its place back."""

    def __init__(self, name: str, size: int) -> None:
        if size < 1:
            raise ValueError(f"the limit on {name} must be at least 1, not {size}")
        self.name = name
        self.size = size
        self.in_use = 0
        self.peak = 0  # the most holders seen at once
        self.waiting = 0
        self._free = asyncio.Semaphore(size)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        self.waiting += 1
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            self.in_use -= 1
            self._free.release()

    def __repr__(self) -> str:
        return f"Limit({self.name!r}, {self.in_use}/{self.size}, {self.waiting} waiting)"


def cpu_count() -> int:
    """The CPU cores this process may run on (its affinity, where the system tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
